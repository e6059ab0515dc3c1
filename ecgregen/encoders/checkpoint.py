"""Serving checkpoints: one self-describing file per encoder, and the ones shipped with the package.

A checkpoint carries the model config, the preprocessing the model was trained with, and an id that the vector
store keeps beside the corpus, so an index is never queried with another model. It also carries a format
version, so a file this code cannot read is refused with what to do instead of a stack trace.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch

from ecgregen.encoders.model import EcgEncoder, EncoderBundle, EncoderConfig, random_encoder
from ecgregen.preprocess import PreprocessConfig

# 1: config + preprocess + encoder_id + state_dict. Files written before the version was recorded have this
# layout and no "format" key.
CHECKPOINT_FORMAT = 1

# The pre-trained encoder shipped with the package (see ecgregen/models/MODEL_CARD.md); the served default.
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "encoder-small.pt"
# The self-supervised stage it was trained from (recipe paper+contrastive): the paper's kind of encoder, kept for
# reproducing Table I and as the label stage's starting point.
SELF_SUPERVISED_CHECKPOINT = SHIPPED_CHECKPOINT.with_name("encoder-small-ssl.pt")


class CheckpointError(ValueError):
    """A file that is not a serving checkpoint this code can load; the message says what to do."""


def save_checkpoint(bundle: EncoderBundle, path: str | Path) -> None:
    """Serving checkpoint: config + preprocessing + weights + id (no training state)."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(bundle.model.config),
            "preprocess": asdict(bundle.preprocess),
            "encoder_id": bundle.encoder_id,
            "state_dict": bundle.model.state_dict(),
        },
        Path(path),
    )


def load_checkpoint(path: str | Path) -> EncoderBundle:
    """The encoder saved at `path`; :class:`CheckpointError` says what to do with any other file."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as exc:  # training state (pickled objects), a truncated or a foreign file
        raise CheckpointError(f"{path} is not a serving checkpoint ({type(exc).__name__}): serve the best.pt that "
                              "`ecgregen pretrain` writes, not its last.pt resume state") from None
    version = payload.get("format", 1) if isinstance(payload, dict) else None
    if version is None or not {"config", "preprocess", "encoder_id", "state_dict"} <= payload.keys():
        raise CheckpointError(f"{path} is not a serving checkpoint (no config/preprocess/encoder_id/state_dict): "
                              "serve the best.pt that `ecgregen pretrain` writes")
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {version}, newer than this ecgregen reads "
                              f"({CHECKPOINT_FORMAT}): upgrade ecgregen")
    config = replace(EncoderConfig(), **payload["config"])
    model = EcgEncoder(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return EncoderBundle(model, PreprocessConfig.from_dict(payload["preprocess"]), str(payload["encoder_id"]))


def load_encoder(checkpoint: str | Path | None) -> EncoderBundle:
    """The given checkpoint; else the shipped pre-trained one; else (no file shipped) the seeded random encoder."""
    if checkpoint:
        return load_checkpoint(checkpoint)
    return load_checkpoint(SHIPPED_CHECKPOINT) if SHIPPED_CHECKPOINT.exists() else random_encoder()
