"""Triton first, the same model in-process while Triton is unavailable (``serve --triton-fallback-local``)."""

from __future__ import annotations

import numpy as np

from ecgregen.encoders.base import Encoder
from ecgregen.encoders.triton import TritonEncoder
from ecgregen.errors import EncoderUnavailable
from ecgregen.metrics import ENCODER_FALLBACKS, dependency_failed
from ecgregen.preprocess import PreprocessConfig


class FallbackEncoder:
    """Triton first; while Triton is unavailable, the same model in-process (``--triton-fallback-local``).

    Both must be the same encoder (same id), or the corpus would be searched with vectors from another space.
    """

    def __init__(self, primary: TritonEncoder, fallback: Encoder) -> None:
        if primary.encoder_id != fallback.encoder_id:
            raise EncoderUnavailable(f"the in-process fallback is {fallback.encoder_id}, Triton serves "
                                     f"{primary.encoder_id}; give --checkpoint of the model Triton serves")
        self.primary, self.fallback = primary, fallback

    @property
    def dim(self) -> int:
        return self.primary.dim

    @property
    def encoder_id(self) -> str:
        return self.primary.encoder_id

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.primary.preprocess_config

    def encode(self, windows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.encode_noting(windows, lengths)[0]

    def encode_noting(self, windows: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, str]:
        """Vectors, and a note for the response when they came from the fallback."""
        try:
            return self.primary.encode(windows, lengths), ""
        except EncoderUnavailable as exc:
            dependency_failed("triton")
            ENCODER_FALLBACKS.inc()
            return self.fallback.encode(windows, lengths), f"encoded in-process: Triton unavailable ({exc})"

    def close(self) -> None:
        self.primary.close()
