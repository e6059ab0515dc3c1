"""The measuring rate and the few zero-phase filters every part of the stage shares.

Carts measure at 500 Hz: intervals need a few milliseconds of resolution (the encoder's 100 Hz is too coarse for
QRS onset and offset). A faster recording is brought down to 500 Hz; a slower one is measured at its own rate
(upsampling adds no information to the detection), and only its median beat is interpolated to 500 Hz for the
fiducials (:mod:`ecgregen.measure.delineate`).
"""

from __future__ import annotations

from functools import lru_cache

import numba
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


def moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along the last axis (same length, float64), by cumulative sums of the edge-padded
    signal: the differences `width` apart of ``cumsum(pad(x, (width // 2 + 1, width - 1 - width // 2), "edge"))``.

    Compiled (:func:`_moving_average_rows`): numpy's edge padding alone cost more than the sums, and the stage
    takes five of these per ECG over whole recordings; the kernel adds in numpy's order (a running sum), so the
    values are the same to the bit."""
    width = max(1, int(width))
    if width == 1:
        return x
    rows = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    return _moving_average_rows(rows, width).reshape(x.shape)


@numba.njit(cache=True, nogil=True)
def _moving_average_rows(x: np.ndarray, width: int) -> np.ndarray:  # pragma: no cover
    """:func:`moving_average` of each row of the C-contiguous float64 (rows, n) `x`, `width` > 1."""
    rows, n = x.shape
    before, after = width // 2 + 1, width - 1 - width // 2
    sums = np.empty(n + width)
    out = np.empty((rows, n))
    for r in range(rows):
        total = x[r, 0]  # cumsum starts from the first value itself, not from 0 + it
        sums[0] = total
        for j in range(1, before):
            total += x[r, 0]
            sums[j] = total
        for k in range(n):
            total += x[r, k]
            sums[before + k] = total
        for j in range(after):
            total += x[r, n - 1]
            sums[before + n + j] = total
        for k in range(n):
            out[r, k] = (sums[k + width] - sums[k]) / width
    return out


def windows_minus_moving_average(x: np.ndarray, width: int, starts: np.ndarray, length: int) -> np.ndarray:
    """(leads, len(starts), length): the stretches of `length` samples of (leads, n) `x` from each of `starts`,
    less :func:`moving_average` of `x` there. Each window is cut as a slice (a gather of the windows through a
    sliding view, as before issue 33, cost 2.5x more at 500 Hz: numpy copies a strided view element by element)."""
    width = max(1, int(width))
    if width == 1:
        return np.zeros((x.shape[0], starts.size, length))
    out = np.empty((x.shape[0], starts.size, length))
    baseline = moving_average(x, width)
    for k, start in enumerate(starts.tolist()):
        np.subtract(x[:, start: start + length], baseline[:, start: start + length], out=out[:, k])
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


def median_of(values: np.ndarray) -> float:
    """``np.median`` of a few values, to the bit (the middle one, or half the sum of the middle two), without its
    30-microsecond argument handling; the values are finite."""
    s = np.sort(np.asarray(values, dtype=np.float64).ravel())
    return float(0.5 * (s[(s.size - 1) // 2] + s[s.size // 2])) if s.size else float("nan")


def percentile(values: np.ndarray, share: float) -> float:
    """``np.percentile(values, 100 * share)`` of a few values (linear, numpy's two-sided interpolation), to the bit,
    without its 100-microsecond argument handling."""
    s = np.sort(np.asarray(values, dtype=np.float64).ravel())
    position = share * (s.size - 1)
    below = int(np.floor(position))
    if below + 1 >= s.size:
        return float(s[-1])
    a, b, t = float(s[below]), float(s[below + 1]), position - below
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


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
