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


class InProcessEncoder:
    """Runs the encoder on the CPU in this process.

    Batches of equal-length signals are encoded in one forward pass. A lock serialises forward passes: torch
    already uses every core inside one pass, and interleaving passes from several threads only thrashes caches.
    """

    def __init__(self, bundle: EncoderBundle) -> None:
        self.bundle = bundle
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.bundle.model.config.dim

    @property
    def encoder_id(self) -> str:
        return self.bundle.encoder_id

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.bundle.preprocess

    def encode(self, signals: list[np.ndarray]) -> np.ndarray:
        """(12, n_i) float32 arrays -> (len(signals), dim) float32 unit vectors, in input order."""
        out = np.empty((len(signals), self.dim), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(signals):
            by_length.setdefault(s.shape[1], []).append(i)
        with self._lock, torch.inference_mode():
            for indices in by_length.values():
                batch = torch.from_numpy(np.stack([signals[i] for i in indices]))
                out[indices] = self.bundle.model(batch).numpy()
        return out
