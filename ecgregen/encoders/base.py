"""What every encoder runtime offers the pipeline, and the one way ECGs become vectors through it.

Every runtime (PyTorch, onnxruntime, Triton, Triton with the in-process fallback) takes the same fixed-shape
windows with their real lengths (:func:`ecgregen.preprocess.preprocess`), and :func:`embed_prepared` is the
only place that turns an ECG's windows into its one vector: unary calls, stream windows, indexing, evaluation
and benchmarks all go through it, so the same ECG gets the same vector whichever way it came in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ecgregen.preprocess import Preprocessed, PreprocessConfig


class Encoder(Protocol):
    """An encoder runtime: in-process (:mod:`ecgregen.encoders.pytorch`, :mod:`~ecgregen.encoders.onnxrt`) or
    Triton (:mod:`ecgregen.encoders.triton`, :mod:`~ecgregen.encoders.fallback`)."""

    @property
    def dim(self) -> int: ...

    @property
    def encoder_id(self) -> str: ...

    @property
    def preprocess_config(self) -> PreprocessConfig: ...

    def encode(self, windows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(n, 12, window_samples) float32 windows and their real lengths (n,) -> (n, dim) unit vectors."""
        ...

    def encode_noting(self, windows: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, str]:
        """:meth:`encode`, and a note for the response when the vectors came a degraded way ("" when not)."""
        ...


def pool_windows(vectors: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """One unit vector per ECG: the normalised mean of its `counts[i]` consecutive window vectors."""
    out = np.empty((len(counts), vectors.shape[1]), np.float32)
    start = 0
    for i, count in enumerate(counts):
        mean = vectors[start : start + count].mean(axis=0)
        out[i] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        start += count
    return out


def embed_prepared(encoder: Encoder, prepared: Sequence[Preprocessed]) -> tuple[np.ndarray, str]:
    """(len(prepared), dim) unit vectors, one per preprocessed ECG, in one encoder call; and the encoder's note."""
    if not prepared:
        return np.empty((0, encoder.dim), np.float32), ""
    windows = np.concatenate([p.windows for p in prepared])
    lengths = np.concatenate([p.lengths for p in prepared])
    vectors, note = encoder.encode_noting(windows, lengths)
    return pool_windows(vectors, [len(p.windows) for p in prepared]), note
