"""The ECG encoder: 1-D convolutional patch embedding -> transformer -> global max pooling -> unit vector.

One readable file with a plain config, in the style of Hugging Face's modeling files. Only what serving needs
lives here (pre-training heads belong to the training code and are not saved with the serving checkpoint).
A checkpoint is self-describing: it carries the model config, the preprocessing config the model was trained
with, and an id that the vector store keeps beside the corpus, so an index is never queried with another model.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ecgregen.ecg import STANDARD_LEADS
from ecgregen.preprocess import PreprocessConfig


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture. `small` is sized for CPUs; `paper` is the ECG-ReGen / M3AE size."""

    name: str = "small"
    in_leads: int = len(STANDARD_LEADS)
    conv_channels: int = 128
    conv_layers: int = 4  # each halves the time axis: 4 layers -> 16x, 10 s at 100 Hz -> 62 tokens
    dim: int = 256
    depth: int = 4
    heads: int = 4
    ffn_dim: int = 1024
    pos_kernel: int = 31  # convolutional positional encoding (M3AE uses 128 on 500 Hz input)
    pos_groups: int = 16
    dropout: float = 0.1


CONFIGS: dict[str, EncoderConfig] = {
    "small": EncoderConfig(),
    "paper": EncoderConfig(
        name="paper", conv_channels=256, dim=768, depth=12, heads=12, ffn_dim=3072, pos_kernel=128, pos_groups=16
    ),
}


class EcgEncoder(nn.Module):
    """(batch, 12, samples) -> (batch, dim) L2-normalised embeddings."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_leads
        for _ in range(config.conv_layers):
            layers += [nn.Conv1d(channels, config.conv_channels, kernel_size=2, stride=2), nn.GELU()]
            channels = config.conv_channels
        self.patch_embed = nn.Sequential(*layers)
        self.patch_norm = nn.LayerNorm(config.conv_channels)
        self.project = nn.Linear(config.conv_channels, config.dim)
        self.pos_conv = nn.Conv1d(
            config.dim, config.dim, kernel_size=config.pos_kernel, padding=config.pos_kernel // 2,
            groups=config.pos_groups,
        )
        layer = nn.TransformerEncoderLayer(
            config.dim, config.heads, config.ffn_dim, config.dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(config.dim)

    @property
    def downsample(self) -> int:
        return 2 ** self.config.conv_layers

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (batch, samples // 16, dim) before any context: where pre-training masks tokens."""
        return self.project(self.patch_norm(self.patch_embed(x).transpose(1, 2)))

    def contextualize(self, h: torch.Tensor) -> torch.Tensor:
        """Positional encoding + transformer over patch embeddings."""
        pos = self.pos_conv(h.transpose(1, 2))[..., : h.shape[1]]
        h = h + nn.functional.gelu(pos).transpose(1, 2)
        return self.final_norm(self.transformer(h))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Contextualised ECG tokens (batch, samples // 16, dim); pre-training heads work on these."""
        return self.contextualize(self.patches(x))

    @staticmethod
    def pool(tokens: torch.Tensor) -> torch.Tensor:
        """Global max pooling over tokens, L2-normalised: the embedding that is indexed and searched."""
        return nn.functional.normalize(tokens.max(dim=1).values, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.tokens(x))


@dataclass(frozen=True)
class EncoderBundle:
    """A model ready to serve, with the preprocessing it expects and its identity."""

    model: EcgEncoder
    preprocess: PreprocessConfig
    encoder_id: str


def weights_digest(model: nn.Module) -> str:
    """Short content hash of the weights: two models with the same digest embed identically."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def random_encoder(config: EncoderConfig = CONFIGS["small"], seed: int = 0) -> EncoderBundle:
    """A randomly initialised encoder with a fixed seed: the same weights in every process.

    This is the default until a pre-trained checkpoint is given; the code path is the real one.
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = EcgEncoder(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    return EncoderBundle(model, PreprocessConfig(), f"{config.name}-random-seed{seed}-{weights_digest(model)}")


def save_checkpoint(bundle: EncoderBundle, path: str | Path) -> None:
    """Serving checkpoint: config + preprocessing + weights + id (no training state)."""
    torch.save(
        {
            "config": asdict(bundle.model.config),
            "preprocess": asdict(bundle.preprocess),
            "encoder_id": bundle.encoder_id,
            "state_dict": bundle.model.state_dict(),
        },
        Path(path),
    )


def load_checkpoint(path: str | Path) -> EncoderBundle:
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    config = replace(EncoderConfig(), **payload["config"])
    pre = payload["preprocess"]
    model = EcgEncoder(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    preprocess = PreprocessConfig(**{**pre, "band_hz": tuple(pre["band_hz"])})
    return EncoderBundle(model, preprocess, str(payload["encoder_id"]))


# The pre-trained encoder shipped with the package (see ecgregen/models/MODEL_CARD.md); the served default.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "models" / "encoder-small.pt"
# The self-supervised stage it was trained from (recipe paper+contrastive): the paper's kind of encoder, kept for
# reproducing Table I and as the label stage's starting point.
SELF_SUPERVISED_CHECKPOINT = SHIPPED_CHECKPOINT.with_name("encoder-small-ssl.pt")


def load_encoder(checkpoint: str | Path | None) -> EncoderBundle:
    """The given checkpoint; else the shipped pre-trained one; else (no file shipped) the seeded random encoder."""
    if checkpoint:
        return load_checkpoint(checkpoint)
    return load_checkpoint(SHIPPED_CHECKPOINT) if SHIPPED_CHECKPOINT.exists() else random_encoder()


class EncoderUnavailable(RuntimeError):
    """A remote encoder (Triton) cannot answer now; the request may be retried later."""


class Encoder(Protocol):
    """What the pipeline needs from an encoder: in-process (:class:`InProcessEncoder`) or Triton."""

    @property
    def dim(self) -> int: ...

    @property
    def encoder_id(self) -> str: ...

    @property
    def preprocess_config(self) -> PreprocessConfig: ...

    def encode(self, signals: list[np.ndarray]) -> np.ndarray: ...


class BatchingEncoder:
    """Runs a model in this process, batching concurrent callers into one forward pass.

    One forward pass runs at a time: the runtime already uses every core inside a pass, and interleaving passes
    from several threads only thrashes caches. Callers that arrive while a pass runs wait, and the next pass takes
    all of them at once (up to ``max_batch`` ECGs): on CPU a batch of 8 costs 20-35% less per ECG than 8 single
    passes, and a lone caller never waits for company, so batching adds no latency to an idle server.
    Subclasses say how one batch of equal-length signals is run (:meth:`_forward`).
    """

    def __init__(self, bundle: EncoderBundle, max_batch: int = 64) -> None:
        self.bundle = bundle
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._waiting: list[_EncodeJob] = []
        self._running = False

    @property
    def dim(self) -> int:
        return self.bundle.model.config.dim

    @property
    def encoder_id(self) -> str:
        return self.bundle.encoder_id

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.bundle.preprocess

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """(n, 12, samples) float32 -> (n, dim) float32 unit vectors."""
        raise NotImplementedError

    def encode(self, signals: list[np.ndarray]) -> np.ndarray:
        """(12, n_i) float32 arrays -> (len(signals), dim) float32 unit vectors, in input order."""
        job = _EncodeJob(signals)
        with self._cv:
            self._waiting.append(job)
            while not job.done:
                if self._running:
                    self._cv.wait()
                    continue
                batch = self._take_batch()
                self._running = True
                self._cv.release()
                try:
                    self._run(batch)
                finally:
                    self._cv.acquire()
                    self._running = False
                    self._cv.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _take_batch(self) -> list[_EncodeJob]:
        """The waiting jobs, oldest first, up to ``max_batch`` ECGs (always at least one job)."""
        take, size = 0, 0
        while take < len(self._waiting) and (take == 0 or size + len(self._waiting[take].signals) <= self.max_batch):
            size += len(self._waiting[take].signals)
            take += 1
        batch, self._waiting = self._waiting[:take], self._waiting[take:]
        return batch

    def _run(self, jobs: list[_EncodeJob]) -> None:
        """One forward pass per signal length over every job's signals; results (or the error) to each job."""
        signals = [s for job in jobs for s in job.signals]
        try:
            out = np.empty((len(signals), self.dim), dtype=np.float32)
            by_length: dict[int, list[int]] = {}
            for i, s in enumerate(signals):
                by_length.setdefault(s.shape[1], []).append(i)
            for indices in by_length.values():
                out[indices] = self._forward(np.stack([signals[i] for i in indices]))
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].error, jobs[0].done = exc, True
            else:  # one caller's bad input must not fail the others: each job again on its own
                for job in jobs:
                    self._run([job])
            return
        start = 0
        for job in jobs:
            job.result, job.done = out[start : start + len(job.signals)], True
            start += len(job.signals)


@dataclass
class _EncodeJob:
    signals: list[np.ndarray]
    result: np.ndarray | None = None
    error: Exception | None = None
    done: bool = False


def embed_batch(model: EcgEncoder, batch: np.ndarray) -> np.ndarray:
    """(n, 12, samples) float32 -> (n, dim) embeddings by the PyTorch model, without autograd bookkeeping."""
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


class InProcessEncoder(BatchingEncoder):
    """The PyTorch model, eager, on the CPU (see :class:`BatchingEncoder` for how callers share it).

    On CPU, torch's intra-op threads only pay off when the pass is started from the main thread (measured: 2-core
    forward 3.9 ms from the main thread, 7.5 ms from a worker thread); a server calls from worker threads, so
    it serves with onnxruntime (:class:`ecgregen.onnx_encoder.OnnxRuntimeEncoder`) unless told otherwise.
    """

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return embed_batch(self.bundle.model, batch)
