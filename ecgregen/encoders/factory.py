"""Which encoder runtime serves: chosen once at start-up from the command line, the only place that decides."""

from __future__ import annotations

from pathlib import Path

from ecgregen.encoders.base import Encoder
from ecgregen.encoders.checkpoint import load_encoder
from ecgregen.encoders.pytorch import InProcessEncoder
from ecgregen.settings import ENCODER_RUNTIMES, TRITON_MODEL, TRITON_WAIT_S


def in_process_encoder(checkpoint: Path | None, runtime: str = "onnxruntime", threads: int = 0) -> Encoder:
    """The encoder of `checkpoint` (default: the shipped one) run in this process by `runtime`, onnxruntime with
    `threads` per forward pass (0: one per core)."""
    bundle = load_encoder(checkpoint)
    if runtime == "onnxruntime":
        from ecgregen.encoders.onnxrt import OnnxRuntimeEncoder

        return OnnxRuntimeEncoder(bundle, threads=threads)
    if runtime == "torch":
        return InProcessEncoder(bundle)
    raise ValueError(f"unknown encoder runtime {runtime!r}; one of {', '.join(ENCODER_RUNTIMES)}")


def open_encoder(
    checkpoint: Path | None, runtime: str = "onnxruntime", *, triton_url: str | None = None,
    triton_model: str = TRITON_MODEL, triton_wait_s: float = TRITON_WAIT_S, triton_fallback_local: bool = False,
    threads: int = 0,
) -> Encoder:
    """In-process from `checkpoint` with `runtime`, or Triton at `triton_url` (optionally falling back in-process)."""
    if not triton_url:
        return in_process_encoder(checkpoint, runtime, threads)
    from ecgregen.encoders.fallback import FallbackEncoder
    from ecgregen.encoders.triton import TritonEncoder

    encoder: Encoder = TritonEncoder(triton_url, triton_model, startup_wait_s=triton_wait_s)
    if triton_fallback_local:
        encoder = FallbackEncoder(encoder, in_process_encoder(checkpoint, runtime, threads))
    return encoder
