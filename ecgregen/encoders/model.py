"""The ECG encoder: 1-D convolutional patch embedding -> transformer -> global max pooling -> unit vector.

One readable file with a plain config, in the style of Hugging Face's modeling files. Only what serving needs
lives here (pre-training heads belong to the training code and are not saved with the serving checkpoint).

The model takes fixed windows (``PreprocessConfig.window_samples``, 10 s at 100 Hz) and, per window, how many of
its samples are real (:func:`ecgregen.preprocess.preprocess` zero-pads an ECG shorter than the window). The
padding is masked everywhere it could leak in - zeroed before the convolutional positional encoding, masked as
attention keys, left out of the max pooling - so a padded window embeds exactly as the short ECG alone would,
and every runtime (PyTorch, onnxruntime, Triton) runs one fixed-shape graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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

    def contextualize(self, h: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """Positional encoding + transformer over patch embeddings; `padding` (batch, tokens) marks pad tokens."""
        if padding is not None:  # pad tokens contribute zeros to the positional convolution, as its own padding does
            h = h.masked_fill(padding[..., None], 0.0)
        pos = self.pos_conv(h.transpose(1, 2))[..., : h.shape[1]]
        h = h + nn.functional.gelu(pos).transpose(1, 2)
        return self.final_norm(self.transformer(h, src_key_padding_mask=padding))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Contextualised ECG tokens (batch, samples // 16, dim); pre-training heads work on these."""
        return self.contextualize(self.patches(x))

    def padding(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, tokens) True where a token lies past the window's `lengths` real samples (a partial patch too).

        At least the first token stays real: a window with nothing real (e.g. Triton's zero warm-up input) still
        gives a finite vector instead of NaN."""
        tokens = x.shape[-1] // self.downsample
        real = torch.clamp(lengths // self.downsample, min=1)
        return torch.arange(tokens, device=x.device)[None, :] >= real[:, None]

    @staticmethod
    def pool(tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """Global max pooling over the real tokens, L2-normalised: the embedding that is indexed and searched."""
        if padding is not None:
            tokens = tokens.masked_fill(padding[..., None], float("-inf"))
        return nn.functional.normalize(tokens.max(dim=1).values, dim=-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, 12, samples) windows, optionally with the real samples of each -> (batch, dim) unit vectors."""
        if lengths is None:
            return self.pool(self.tokens(x))
        padding = self.padding(x, lengths)
        return self.pool(self.contextualize(self.patches(x), padding), padding)


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


