"""Device augmentations for the label stage: make recordings from other devices and sampling pipelines look familiar.

The raw record (as read from disk, before any preprocessing) goes through what another device and the server would
do to it, then through the very :func:`~ecgregen.preprocess.preprocess` that serving uses:

1. resampling to 100, 250 or 500 Hz (polyphase, anti-aliased); at 250/500 Hz the server resamples back to 100 Hz,
   which is exactly what happens to a 500 Hz input at serving time;
2. a random overall gain and a small per-lead gain (in raw units, before the per-lead z-score: it changes the
   signal-to-noise ratio of what is added next, not the z-scored amplitude);
3. baseline wander (sinusoids below 0.5 Hz, partly left after the 0.5 Hz high-pass) and a baseline offset;
4. band-limited noise: white noise band-passed to a random band (muscle/EMG-like high band or in-band noise) and,
   at 250/500 Hz, mains hum at 50 or 60 Hz (removed by the 40 Hz low-pass, as on a real device);
5. after preprocessing: dropping one or two leads (set to zero, as :func:`preprocess` does with a flat lead).

Nothing stretches, warps, shifts or crops time: R-peaks stay where they are (within one sample, from resampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal as sps

from ecgregen.ecg import Ecg
from ecgregen.preprocess import PreprocessConfig, preprocess, resample


@dataclass(frozen=True)
class AugmentConfig:
    rates_hz: tuple[float, ...] = (100.0, 250.0, 500.0)
    rate_probs: tuple[float, ...] = (0.4, 0.3, 0.3)
    gain: tuple[float, float] = (0.5, 2.0)  # overall, log-uniform
    lead_gain: tuple[float, float] = (0.85, 1.15)
    wander_prob: float = 0.5
    wander_rel: tuple[float, float] = (0.05, 0.5)  # amplitude relative to the lead's standard deviation
    noise_prob: float = 0.6
    noise_rel: tuple[float, float] = (0.02, 0.15)
    hum_prob: float = 0.3
    hum_rel: tuple[float, float] = (0.05, 0.5)
    lead_drop_prob: float = 0.15


@lru_cache(maxsize=64)
def _band_sos(rate_hz: float, low: float, high: float) -> np.ndarray:
    nyquist = rate_hz / 2.0
    return sps.butter(2, [low / nyquist, min(high, 0.95 * nyquist) / nyquist], btype="bandpass", output="sos")


def augment_raw(ecg: Ecg, rng: np.random.Generator, config: AugmentConfig = AugmentConfig(),
                preprocess_config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Raw :class:`Ecg` -> augmented model input (12, n) float32, through the serving preprocessing."""
    rate = float(rng.choice(config.rates_hz, p=config.rate_probs))
    x = resample(ecg.signal.astype(np.float64), ecg.sampling_rate_hz, rate)
    leads, n = x.shape
    std = x.std(axis=1, keepdims=True)
    std = np.where(std < 1e-8, 1.0, std)
    t = np.arange(n) / rate
    if rng.random() < config.wander_prob:
        for _ in range(rng.integers(1, 3)):
            amp = rng.uniform(*config.wander_rel, size=(leads, 1)) * std
            x = x + amp * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 2 * np.pi, size=(leads, 1)))
        x = x + rng.normal(0, 0.5, size=(leads, 1)) * std  # offset
    if rng.random() < config.noise_prob:
        low = rng.uniform(0.5, 20.0)
        high = rng.uniform(low + 5.0, min(150.0, 0.95 * rate / 2))
        if high > low + 1.0:
            noise = sps.sosfilt(_band_sos(rate, low, high), rng.normal(size=(leads, n)), axis=-1)
            noise /= noise.std(axis=1, keepdims=True) + 1e-12
            x = x + rng.uniform(*config.noise_rel) * std * noise
    if rate >= 150.0 and rng.random() < config.hum_prob:
        mains = 50.0 if rng.random() < 0.5 else 60.0
        x = x + rng.uniform(*config.hum_rel) * std * np.sin(2 * np.pi * mains * t + rng.uniform(0, 2 * np.pi))
    gain = np.exp(rng.uniform(np.log(config.gain[0]), np.log(config.gain[1])))
    x = x * gain * rng.uniform(*config.lead_gain, size=(leads, 1))
    y = preprocess(Ecg(x.astype(np.float32), rate), preprocess_config).first_window
    if rng.random() < config.lead_drop_prob:
        y = y.copy()
        y[rng.choice(leads, size=int(rng.integers(1, 3)), replace=False)] = 0.0
    return y
