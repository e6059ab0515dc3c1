"""The one preprocessing function shared by indexing, serving, streaming, evaluation and training.

Resample to the model rate, cut into the encoder's windows, band-pass 0.5-40 Hz (Butterworth, zero-phase) and
z-score each lead of each window. The shared PTB-XL records were partly distributed already filtered and z-scored
("NU" units); applying the same chain to every recording makes raw-mV and pre-processed records land in the same
space, and using a single function everywhere rules out train/serve skew.

The length policy, the same on every way in (unary calls, stream windows, bulk indexing, evaluation, training)
and for every runtime (PyTorch, onnxruntime, Triton, the fallback):
- an ECG as long as the window (10 s) is one window;
- a shorter one (2 s at least, see :mod:`ecgregen.ecg`) is one window zero-padded at the end, with its real
  length, which the encoder masks (:class:`ecgregen.encoders.model.EcgEncoder`): it embeds as itself;
- a longer one is cut into ceil(duration / window) windows from its start, the last one ending at the ECG's end
  (overlapping the one before), and embeds as the normalised mean of its windows' embeddings
  (:func:`ecgregen.encoders.base.pool_windows`). Nothing is cut off.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numba
import numpy as np
from scipy import signal as sps

from ecgregen.ecg import STANDARD_LEADS, Ecg, EcgInputError

# A lead whose raw peak-to-peak range is below this (in mV or NU) carries no signal: an unplugged electrode
# or a zero-filled channel.
FLAT_PEAK_TO_PEAK = 1e-4


@dataclass(frozen=True)
class PreprocessConfig:
    """What the encoder expects. The encoder checkpoint carries its own copy so both always agree."""

    rate_hz: float = 100.0
    window_s: float = 10.0
    band_hz: tuple[float, float] = (0.5, 40.0)
    filter_order: int = 4

    @property
    def window_samples(self) -> int:
        return int(round(self.rate_hz * self.window_s))

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessConfig:
        """From its JSON form (checkpoints, Triton model configs), where the band is a list."""
        return cls(**{**values, "band_hz": tuple(values["band_hz"])})


@dataclass(frozen=True)
class Preprocessed:
    """Model-ready windows plus what was done to them that the caller should know about."""

    windows: np.ndarray  # float32, (n_windows, 12, config.window_samples), zero past each window's length
    lengths: np.ndarray  # int64, (n_windows,): real samples per window (the window, or a shorter ECG's length)
    flat_leads: tuple[str, ...]  # flat (zeroed) in at least one window
    warnings: tuple[str, ...]

    @property
    def first_window(self) -> np.ndarray:
        """(12, length) real samples of the first window: a 10 s PTB-XL record whole (training, baselines)."""
        return self.windows[0, :, : self.lengths[0]]


def window_starts(samples: int, window: int) -> list[int]:
    """Where each window of an ECG of `samples` starts: back to back from 0, the last one ending at the end."""
    if samples <= window:
        return [0]
    count = -(-samples // window)
    return [min(i * window, samples - window) for i in range(count)]


def resample(x: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliased); exact for rational rate ratios."""
    if from_hz == to_hz:
        return x
    ratio = Fraction(to_hz / from_hz).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    return sps.resample_poly(x, up, down, axis=-1, window=_resampling_filter(up, down))


@lru_cache(maxsize=32)
def _resampling_filter(up: int, down: int) -> np.ndarray:
    """The anti-aliasing FIR ``resample_poly`` designs by default (Kaiser, beta 5, 10 taps per phase each side),
    designed once per rate pair: every call resamples (the encoder's 100 Hz, the measurements' 500 Hz), and the
    design costs more than the filtering of a 10 s ECG."""
    rate = max(up, down)
    return sps.firwin(2 * 10 * rate + 1, 1.0 / rate, window=("kaiser", 5.0))


@lru_cache(maxsize=16)
def _bandpass(rate_hz: float, low: float, high: float, order: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The encoder's band-pass: its sections, their steady-state start and scipy's default pad length, designed
    once (``sosfiltfilt`` solves for the start states on every call: a large part of preprocessing a 10 s ECG)."""
    nyquist = rate_hz / 2.0
    sos = sps.butter(order, [low / nyquist, min(high, 0.95 * nyquist) / nyquist], btype="bandpass", output="sos")
    taps = 2 * sos.shape[0] + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return sos, sps.sosfilt_zi(sos), 3 * taps


def zero_phase(x: np.ndarray, sos: np.ndarray, zi: np.ndarray, pad: int) -> np.ndarray:
    """``scipy.signal.sosfiltfilt(sos, x, axis=-1, padlen=pad)`` to the bit (odd extension at both ends, forward and
    backward passes from the steady state), with the steady state `zi` (``sosfilt_zi(sos)``) given rather than
    solved for again: the encoder's preprocessing and the measurement stage filter every ECG.

    Compiled (:func:`_zero_phase_rows`): scipy's ``sosfilt`` runs each lead's recursion alone, one dependent step
    after the other, and spends as long again checking and copying its arguments; the kernel steps all leads at
    once (their recursions are independent, so the processor overlaps them) and is 3-7x faster on the arrays the
    service filters (12 x 650-2,500 samples; 2026-12-07), with the same operations in the same order, hence the same
    bits (``tests/test_signal_kernels.py``)."""
    rows = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    out = _zero_phase_rows(rows, np.ascontiguousarray(sos, dtype=np.float64),
                           np.ascontiguousarray(zi, dtype=np.float64), min(int(pad), x.shape[-1] - 1))
    return out.reshape(x.shape)


@numba.njit(cache=True, nogil=True)
def _zero_phase_rows(x: np.ndarray, sos: np.ndarray, zi: np.ndarray, pad: int) -> np.ndarray:  # pragma: no cover
    """:func:`zero_phase` of each row of the C-contiguous float64 (rows, n) `x`: extension, forward pass from
    ``zi`` x the first sample, backward pass from ``zi`` x the last, as scipy's ``sosfiltfilt`` and its
    direct-form-II-transposed ``sosfilt`` compute them (time outermost, leads innermost)."""
    rows, n = x.shape
    m = n + 2 * pad
    ext = np.empty((m, rows))
    for r in range(rows):
        for k in range(pad):
            ext[k, r] = 2 * x[r, 0] - x[r, pad - k]
            ext[pad + n + k, r] = 2 * x[r, n - 1] - x[r, n - 2 - k]
        for k in range(n):
            ext[pad + k, r] = x[r, k]
    z0 = np.empty((sos.shape[0], rows))
    z1 = np.empty((sos.shape[0], rows))
    for backward in (False, True):
        start = m - 1 if backward else 0
        for s in range(sos.shape[0]):
            for r in range(rows):
                z0[s, r] = zi[s, 0] * ext[start, r]
                z1[s, r] = zi[s, 1] * ext[start, r]
        for step in range(m):
            k = m - 1 - step if backward else step
            for s in range(sos.shape[0]):
                b0, b1, b2, a1, a2 = sos[s, 0], sos[s, 1], sos[s, 2], sos[s, 4], sos[s, 5]
                for r in range(rows):
                    cur = ext[k, r]
                    new = b0 * cur + z0[s, r]
                    z0[s, r] = b1 * cur - a1 * new + z1[s, r]
                    z1[s, r] = b2 * cur - a2 * new
                    ext[k, r] = new
    out = np.empty((rows, n))
    for r in range(rows):
        for k in range(n):
            out[r, k] = ext[pad + k, r]
    return out


def preprocess(ecg: Ecg, config: PreprocessConfig = PreprocessConfig()) -> Preprocessed:
    """Turn a checked :class:`Ecg` into the encoder's windows (the length policy is in the module docstring).

    Flat leads are set to zero and reported, because z-scoring them would amplify quantisation noise into a fake
    signal. A window in which every lead is flat has nothing to encode: it is left out with a warning, and an ECG
    with no window left is refused.
    """
    x = resample(ecg.signal.astype(np.float64), ecg.sampling_rate_hz, config.rate_hz)
    window = config.window_samples
    windows, lengths, warnings = [], [], []
    flat_any = np.zeros(len(STANDARD_LEADS), bool)
    starts = window_starts(x.shape[1], window)
    for start in starts:
        part = x[:, start : start + window]
        flat = np.ptp(part, axis=1) < FLAT_PEAK_TO_PEAK
        if flat.all():
            if len(starts) > 1:
                warnings.append(f"all 12 leads are flat at {start / config.rate_hz:.0f}-"
                                f"{(start + part.shape[1]) / config.rate_hz:.0f} s; that window is left out")
            continue
        filtered, flat = _filter_and_scale(part, flat, config)
        flat_any |= flat
        windows.append(np.pad(filtered, ((0, 0), (0, window - part.shape[1]))))
        lengths.append(part.shape[1])
    if not windows:
        raise EcgInputError("all 12 leads are flat (no signal)")
    flat_leads = tuple(name for name, is_flat in zip(STANDARD_LEADS, flat_any) if is_flat)
    if flat_leads:
        warnings.append(f"flat lead(s) {', '.join(flat_leads)} set to zero")
    return Preprocessed(np.stack(windows).astype(np.float32), np.asarray(lengths, np.int64), flat_leads,
                        tuple(warnings))


def _filter_and_scale(x: np.ndarray, flat: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Band-pass and z-score one window's leads; flat ones (given, or flat after filtering) are zero."""
    x = zero_phase(x, *_bandpass(config.rate_hz, config.band_hz[0], config.band_hz[1], config.filter_order))
    std = x.std(axis=1, keepdims=True)
    flat = flat | (std[:, 0] < 1e-8)
    x = (x - x.mean(axis=1, keepdims=True)) / np.where(std < 1e-8, 1.0, std)
    x[flat] = 0.0
    return x, flat
