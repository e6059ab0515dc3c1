"""Per-lead signal quality: flat, saturated, lead off, baseline drift, static noise, burst noise.

Two passes, because noise can only be judged between the QRS complexes: :func:`dead_leads` before beat
detection (a lead without signal must not vote for QRS complexes or fiducials), :func:`noise_flags` after it.
Every criterion is relative to the lead's own QRS amplitude, so it reads raw millivolts and PTB-XL's z-scored
"NU" records alike. The thresholds were chosen on PTB-XL folds 1-8 against the database's own noise
annotations, at the best F1 on folds 1-8 (lead level for drift and bursts, record level for static noise). Those
annotations are weakly predictable from any of these criteria (best lead-level F1 0.25 drift, 0.25 static, 0.10
burst on folds 1-8): most records were band-passed and z-scored before we got them, which removed much of what the
annotators saw. ``ecgregen evaluate measurements`` reports them on other folds.
"""

from __future__ import annotations

import numpy as np

from ecgregen.ecg import STANDARD_LEADS
from ecgregen.measure.signal import filtered, moving_average, samples_of
from ecgregen.measure.types import QualityFlag
from ecgregen.preprocess import FLAT_PEAK_TO_PEAK

# A lead whose band-passed amplitude is below this share of the typical lead's carries no ECG.
FLAT_RELATIVE = 0.03
# Clipping: this share of samples sits at the lead's extreme value, in runs of at least RAIL_RUN_MS.
RAIL_SHARE = 0.03
RAIL_RUN_MS = 40.0
# Off: railed for most of the recording.
OFF_RAIL_SHARE = 0.5
# Baseline drift: the wander below 0.5 Hz spans this share of the QRS amplitude.
DRIFT_RELATIVE = 0.6
# Static noise: the median 1 s stretch's high-frequency RMS between QRS complexes, relative to the QRS amplitude.
STATIC_RELATIVE = 0.025
# Burst noise: a 1 s stretch's noise is this many times the lead's median stretch and above BURST_RELATIVE.
BURST_FACTOR = 2.0
BURST_RELATIVE = 0.03
# Half-width of the QRS complex masked out of the noise estimate.
QRS_MASK_MS = 70.0


def _amplitude(bandpassed: np.ndarray) -> np.ndarray:
    """Robust peak-to-peak per lead (0.5th-99.5th percentile): one spike does not make a lead look alive."""
    lo, hi = np.percentile(bandpassed, [0.5, 99.5], axis=1)
    return hi - lo


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def dead_leads(x: np.ndarray, rate_hz: float
               ) -> tuple[dict[str, list[QualityFlag]], np.ndarray, np.ndarray, np.ndarray]:
    """Flags for leads without usable signal, which leads may be used, each lead's band-passed amplitude, and the
    0.5-40 Hz band-passed leads (the noise pass reuses them).

    `x` is (12, n) at `rate_hz`. Flat: no signal at all, or far below the other leads. Saturated: clipped at a
    rail. Lead off: flat while other leads carry signal, or railed most of the time.
    """
    flags: dict[str, list[QualityFlag]] = {lead: [] for lead in STANDARD_LEADS}
    bandpassed = filtered(x, rate_hz, 0.5, 40.0)
    amplitude = _amplitude(bandpassed)
    raw_range = np.ptp(x, axis=1)
    typical = float(np.percentile(amplitude, 75))
    flat = (raw_range < FLAT_PEAK_TO_PEAK) | (amplitude < FLAT_RELATIVE * typical)
    run = max(2, samples_of(RAIL_RUN_MS, rate_hz))
    for i, lead in enumerate(STANDARD_LEADS):
        if flat[i]:
            flags[lead].append(QualityFlag.FLAT)
            if not flat.all():
                flags[lead].append(QualityFlag.LEAD_OFF)
            continue
        tolerance = 0.002 * raw_range[i]
        railed = (x[i] >= x[i].max() - tolerance) | (x[i] <= x[i].min() + tolerance)
        share = railed.mean()
        if share >= RAIL_SHARE and _longest_run(railed) >= run:
            flags[lead].append(QualityFlag.SATURATED)
            if share >= OFF_RAIL_SHARE:
                flags[lead].append(QualityFlag.LEAD_OFF)
    usable = np.array([not flags[lead] for lead in STANDARD_LEADS])
    return flags, usable, amplitude, bandpassed


def noise_flags(x: np.ndarray, bandpassed: np.ndarray, rate_hz: float, r_peaks: np.ndarray, amplitude: np.ndarray,
                flags: dict[str, list[QualityFlag]]) -> None:
    """Add baseline drift, static and burst noise to `flags` (in place) for the leads that carry signal.

    Drift: what the 0.5-40 Hz band-pass removed, smoothed over half a second. Noise: the band-passed lead minus
    its 1/15 s moving average (its content above ~10 Hz) outside the QRS complexes (``r_peaks``, samples), per 1 s
    stretch: the median stretch says static noise, a stretch far above it says a burst. Moving averages instead of
    more filters: this pass runs on every request.
    """
    n = x.shape[1]
    alive = [i for i, lead in enumerate(STANDARD_LEADS) if not flags[lead]]
    if not alive:
        return
    band = bandpassed[alive]
    drift = np.ptp(moving_average(x[alive] - band, samples_of(500, rate_hz)), axis=1)
    high = band - moving_average(band, samples_of(1000 / 15, rate_hz))
    keep = np.ones(n, bool)
    half = samples_of(QRS_MASK_MS, rate_hz)
    for r in r_peaks:
        keep[max(0, r - half): r + half] = False
    second = max(1, int(round(rate_hz)))
    stretches = [slice(s, min(n, s + second)) for s in range(0, n, second)]
    rms = np.full((len(alive), len(stretches)), np.nan)
    for j, part in enumerate(stretches):
        mask = keep[part]
        if mask.sum() >= second // 4:
            rms[:, j] = np.sqrt(np.mean(high[:, part][:, mask] ** 2, axis=1))
    # A lead nearly perpendicular to the heart's axis has a tiny QRS; its noise is judged against a quarter of the
    # typical lead's amplitude at least, or every such lead would read as noisy.
    floor = 0.25 * float(np.median(amplitude[alive]))
    for row, i in enumerate(alive):
        lead, amp = STANDARD_LEADS[i], max(float(amplitude[i]), floor, 1e-12)
        if drift[row] > DRIFT_RELATIVE * amp:
            flags[lead].append(QualityFlag.BASELINE_DRIFT)
        values = rms[row][np.isfinite(rms[row])]
        if values.size == 0:
            continue
        typical = float(np.median(values))
        if typical > STATIC_RELATIVE * amp:
            flags[lead].append(QualityFlag.STATIC_NOISE)
        if values.size >= 2 and values.max() > BURST_FACTOR * max(typical, 1e-12) and values.max() > BURST_RELATIVE * amp:
            flags[lead].append(QualityFlag.BURST_NOISE)
