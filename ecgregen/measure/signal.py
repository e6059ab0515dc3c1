"""The measuring rate and the few zero-phase filters every part of the stage shares.

Carts measure at 500 Hz: intervals need a few milliseconds of resolution (the encoder's 100 Hz is too coarse for
QRS onset and offset). A faster recording is brought down to 500 Hz; a slower one is measured at its own rate
(upsampling adds no information to the detection), and only its median beat is interpolated to 500 Hz for the
fiducials (:mod:`ecgregen.measure.delineate`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import signal as sps

from ecgregen.preprocess import resample, zero_phase

MEASURE_RATE_HZ = 500.0


def detection_signal(x: np.ndarray, rate_hz: float) -> tuple[np.ndarray, float]:
    """The signal beats and quality are judged on: at 400 Hz and above, pairs of samples averaged (a cheap
    low-pass with its zero at the new Nyquist rate) and halved in rate. QRS detection and noise need no more than
    200-250 Hz, and the whole-recording passes are most of the stage's cost; fiducials still use every sample."""
    if rate_hz < 400.0:
        return x, rate_hz
    n = x.shape[1] // 2 * 2
    return 0.5 * (x[:, 0:n:2] + x[:, 1:n:2]), rate_hz / 2.0


def working_signal(x: np.ndarray, rate_hz: float) -> tuple[np.ndarray, float]:
    """(12, n) float64 at the measuring rate: 500 Hz, or the recording's own rate when that is lower."""
    if rate_hz > MEASURE_RATE_HZ:
        return resample(x.astype(np.float64), rate_hz, MEASURE_RATE_HZ), MEASURE_RATE_HZ
    return x.astype(np.float64), float(rate_hz)


@lru_cache(maxsize=64)
def _sos(rate_hz: float, low: float | None, high: float | None, order: int) -> np.ndarray:
    nyquist = rate_hz / 2.0
    if high is not None:
        high = min(high, 0.9 * nyquist)
    if low is not None and high is not None:
        return sps.butter(order, [low / nyquist, high / nyquist], btype="bandpass", output="sos")
    if low is not None:
        return sps.butter(order, low / nyquist, btype="highpass", output="sos")
    return sps.butter(order, high / nyquist, btype="lowpass", output="sos")


@lru_cache(maxsize=64)
def _sos_zi(rate_hz: float, low: float | None, high: float | None, order: int) -> np.ndarray:
    """Each section's steady-state start (scipy recomputes it, with a linear solve, on every sosfiltfilt call)."""
    return sps.sosfilt_zi(_sos(rate_hz, low, high, order))


def filtered(x: np.ndarray, rate_hz: float, low: float | None = None, high: float | None = None,
             order: int = 2) -> np.ndarray:
    """Zero-phase Butterworth along the last axis (so fiducials keep their place), as ``sosfiltfilt`` does it
    (odd extension at both ends, steady-state start) with the start states cached: the stage filters a dozen
    times per ECG and must cost a few milliseconds."""
    key = (float(rate_hz), low, high, order)
    return zero_phase(x, _sos(*key), _sos_zi(*key), 3 * (2 * order + 1) * 4)


def _window_sums(x: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """The edge-padded cumulative sum whose differences `width` apart are the centred window sums."""
    pad = width // 2
    # One extra sample in front: window sums are then differences of the cumulative sum, with no zero prepended.
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad + 1, width - 1 - pad)], mode="edge")
    return np.cumsum(padded, axis=-1), width


def moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along the last axis (same length), by cumulative sums."""
    width = max(1, int(width))
    if width == 1:
        return x
    c, width = _window_sums(x, width)
    return (c[..., width:] - c[..., :-width]) / width


def windows_minus_moving_average(x: np.ndarray, width: int, starts: np.ndarray, length: int) -> np.ndarray:
    """(leads, len(starts), length): the stretches of `length` samples of (leads, n) `x` from each of `starts`,
    less :func:`moving_average` of `x` there. The median beat needs the baseline under its windows only; each
    window is cut as a slice (a gather of the windows through a sliding view, as before issue 33, cost 2.5x more
    at 500 Hz: numpy copies a strided view element by element)."""
    width = max(1, int(width))
    out = np.empty((x.shape[0], starts.size, length))
    if width == 1:
        out.fill(0.0)
        return out
    c, width = _window_sums(x, width)
    sums = c[:, width:] - c[:, :-width]
    for k, start in enumerate(starts.tolist()):
        np.subtract(x[:, start: start + length], sums[:, start: start + length] / width, out=out[:, k])
    return out


def median_along(a: np.ndarray, axis: int) -> np.ndarray:
    """Median along `axis`, by a sort: ``np.median`` partitions each short row separately, which costs 5x more for
    the few beats (or RRs) a 10 s ECG holds."""
    s = np.sort(a, axis=axis)
    n = s.shape[axis]
    return 0.5 * (np.take(s, (n - 1) // 2, axis=axis) + np.take(s, n // 2, axis=axis))


def quantiles(x: np.ndarray, shares: tuple[float, ...]) -> list[np.ndarray]:
    """Each row's quantiles at `shares` (linear interpolation, as ``np.percentile``) by one partition for all the
    ranks involved: 3x cheaper than ``np.percentile``, which the stage would otherwise call on every lead."""
    n = x.shape[-1]
    if n < 2:
        return [x[..., 0] if n else np.zeros(x.shape[:-1]) for _ in shares]
    ranks = []
    for share in shares:
        position = share * (n - 1)
        below = min(int(np.floor(position)), n - 2)
        ranks.append((below, position - below))
    p = np.partition(x, sorted({r for below, _ in ranks for r in (below, below + 1)}), axis=-1)
    return [p[..., below] + weight * (p[..., below + 1] - p[..., below]) for below, weight in ranks]


def spread(x: np.ndarray, share: float) -> np.ndarray:
    """Each row's range between its `share` and 1 - `share` quantiles: one spike does not widen it."""
    low, high = quantiles(x, (share, 1.0 - share))
    return high - low


def rows_dot(rows: np.ndarray, vector: np.ndarray | None) -> np.ndarray:
    """Each row's dot product with `vector` (its sum when None) by einsum, not BLAS: these products are small, and a
    BLAS call wakes the math library's other threads, which then spin for the rest of the stage (measured: a third
    more CPU per ECG)."""
    return np.einsum("ij->i", rows) if vector is None else np.einsum("ij,j->i", rows, vector)


def ms(samples: float, rate_hz: float) -> float:
    return samples * 1000.0 / rate_hz


def samples_of(milliseconds: float, rate_hz: float) -> int:
    return int(round(milliseconds * rate_hz / 1000.0))
