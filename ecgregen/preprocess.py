"""The one preprocessing function shared by indexing, serving, training and streaming.

Resample to the model rate, keep one window, band-pass 0.5-40 Hz (Butterworth, zero-phase) and z-score each
lead. The shared PTB-XL records were partly distributed already filtered and z-scored ("NU" units); applying the
same chain to every recording makes raw-mV and pre-processed records land in the same space, and using a single
function everywhere rules out train/serve skew.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

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


@dataclass(frozen=True)
class Preprocessed:
    """Model-ready signal plus what was done to it that the caller should know about."""

    signal: np.ndarray  # float32, (12, n) with n <= config.window_samples
    flat_leads: tuple[str, ...]
    warnings: tuple[str, ...]


def resample(x: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliased); exact for rational rate ratios."""
    if from_hz == to_hz:
        return x
    ratio = Fraction(to_hz / from_hz).limit_denominator(1000)
    return sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


@lru_cache(maxsize=16)
def _bandpass_sos(rate_hz: float, low: float, high: float, order: int) -> np.ndarray:
    nyquist = rate_hz / 2.0
    return sps.butter(order, [low / nyquist, min(high, 0.95 * nyquist) / nyquist], btype="bandpass", output="sos")


def preprocess(ecg: Ecg, config: PreprocessConfig = PreprocessConfig()) -> Preprocessed:
    """Turn a checked :class:`Ecg` into the encoder's input.

    Recordings longer than the window keep their first ``window_s`` seconds (streams are cut into windows
    before they get here). Flat leads are set to zero and reported, because z-scoring them would amplify
    quantisation noise into a fake signal; if every lead is flat there is nothing to encode and the ECG is refused.
    """
    warnings: list[str] = []
    x = resample(ecg.signal.astype(np.float64), ecg.sampling_rate_hz, config.rate_hz)
    if x.shape[1] > config.window_samples:
        warnings.append(
            f"ECG is {ecg.duration_s:.1f} s long; only the first {config.window_s:g} s were used"
        )
        x = x[:, : config.window_samples]
    flat = np.ptp(x, axis=1) < FLAT_PEAK_TO_PEAK
    if flat.all():
        raise EcgInputError("all 12 leads are flat (no signal)")
    sos = _bandpass_sos(config.rate_hz, config.band_hz[0], config.band_hz[1], config.filter_order)
    x = sps.sosfiltfilt(sos, x, axis=-1)
    std = x.std(axis=1, keepdims=True)
    flat |= std[:, 0] < 1e-8
    x = (x - x.mean(axis=1, keepdims=True)) / np.where(std < 1e-8, 1.0, std)
    x[flat] = 0.0
    flat_leads = tuple(name for name, is_flat in zip(STANDARD_LEADS, flat) if is_flat)
    if flat_leads:
        warnings.append(f"flat lead(s) {', '.join(flat_leads)} set to zero")
    return Preprocessed(signal=x.astype(np.float32), flat_leads=flat_leads, warnings=tuple(warnings))
