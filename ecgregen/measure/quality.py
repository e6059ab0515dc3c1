"""Per-lead signal quality: flat, saturated, lead off, baseline drift, static noise, burst noise.

Two passes, because noise can only be judged between the QRS complexes: :func:`dead_leads` before beat
detection (a lead without signal must not vote for QRS complexes or fiducials), :func:`noise_flags` after it.
Every criterion is relative to the lead's own QRS amplitude, so it reads raw millivolts and PTB-XL's z-scored
"NU" records alike. The thresholds were chosen on PTB-XL folds 1-8 against the database's own noise
annotations, at the best F1 on folds 1-8 (lead level for drift and bursts, record level for static noise). Those
annotations are weakly predictable from any of these criteria (best lead-level F1 0.25 drift, 0.25 static, 0.10
burst on folds 1-8): most records were band-passed and z-scored before we got them, which removed much of what the
annotators saw. ``ecgregen evaluate measurements`` reports them on other folds.

Leads the ECG does not record (:attr:`ecgregen.ecg.Ecg.not_recorded`: a monitor that sends II and V5) are not
judged at all: they get no entry in the flags (a zero row is no electrode problem), take no part in what the typical
lead is, and are never usable.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from ecgregen.ecg import STANDARD_LEADS
from ecgregen.measure.signal import filtered, median_of, moving_average, percentile, samples_of, spread
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


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def dead_leads(x: np.ndarray, rate_hz: float, not_recorded: Collection[str] = ()
               ) -> tuple[dict[str, list[QualityFlag]], np.ndarray, np.ndarray, np.ndarray]:
    """Flags for leads without usable signal, which leads may be used, each lead's band-passed amplitude, and the
    0.5-40 Hz band-passed leads (the noise pass reuses them).

    `x` is (12, n) at `rate_hz`. Flat: no signal at all, or far below the other leads. Saturated: clipped at a
    rail. Lead off: flat while other leads carry signal, or railed most of the time. The flags hold the recorded
    leads only (`not_recorded` are left out and unusable).
    """
    recorded = np.array([lead not in not_recorded for lead in STANDARD_LEADS])
    flags: dict[str, list[QualityFlag]] = {lead: [] for lead, kept in zip(STANDARD_LEADS, recorded) if kept}
    bandpassed = filtered(x, rate_hz, 0.5, 40.0)
    amplitude = spread(bandpassed, 0.005)  # robust peak-to-peak: one spike does not make a lead look alive
    top, bottom = x.max(axis=1), x.min(axis=1)
    raw_range = top - bottom
    typical = percentile(amplitude[recorded], 0.75)
    flat = (raw_range < FLAT_PEAK_TO_PEAK) | (amplitude < FLAT_RELATIVE * typical)
    all_flat = bool(flat[recorded].all())
    tolerance = (0.002 * raw_range)[:, None]
    railed = (x >= (top[:, None] - tolerance)) | (x <= (bottom[:, None] + tolerance))
    shares = railed.mean(axis=1)
    run = max(2, samples_of(RAIL_RUN_MS, rate_hz))
    for i, lead in enumerate(STANDARD_LEADS):
        if lead not in flags:
            continue
        if flat[i]:
            flags[lead].append(QualityFlag.FLAT)
            if not all_flat:
                flags[lead].append(QualityFlag.LEAD_OFF)
            continue
        if shares[i] >= RAIL_SHARE and _longest_run(railed[i]) >= run:
            flags[lead].append(QualityFlag.SATURATED)
            if shares[i] >= OFF_RAIL_SHARE:
                flags[lead].append(QualityFlag.LEAD_OFF)
    usable = np.array([lead in flags and not flags[lead] for lead in STANDARD_LEADS])
    return flags, usable, amplitude, bandpassed


def noise_flags(x: np.ndarray, bandpassed: np.ndarray, rate_hz: float, r_peaks: np.ndarray, amplitude: np.ndarray,
                flags: dict[str, list[QualityFlag]]) -> None:
    """Add baseline drift, static and burst noise to `flags` (in place) for the leads that carry signal (those in
    `flags` without a flag yet: a lead not recorded is not in it).

    Drift: what the 0.5-40 Hz band-pass removed, smoothed over half a second. Noise: the band-passed lead minus
    its 1/15 s moving average (its content above ~10 Hz) outside the QRS complexes (``r_peaks``, samples), per 1 s
    stretch: the median stretch says static noise, a stretch far above it says a burst. Moving averages instead of
    more filters: this pass runs on every request.
    """
    n = x.shape[1]
    alive = [i for i, lead in enumerate(STANDARD_LEADS) if lead in flags and not flags[lead]]
    if not alive:
        return
    band = bandpassed[alive]
    drift = np.ptp(moving_average(x[alive] - band, samples_of(500, rate_hz)), axis=1)
    high = band - moving_average(band, samples_of(1000 / 15, rate_hz))
    keep = np.ones(n, bool)
    half = samples_of(QRS_MASK_MS, rate_hz)
    if r_peaks.size:
        edges = np.zeros(n + 1, int)
        np.add.at(edges, np.maximum(0, r_peaks - half), 1)
        np.add.at(edges, np.minimum(n, r_peaks + half), -1)
        keep = np.cumsum(edges[:-1]) == 0
    # The high-frequency RMS outside the QRS complexes per 1 s stretch; stretches with too little of it left are
    # not judged (NaN).
    second = max(1, int(round(rate_hz)))
    starts = np.arange(0, n, second)
    kept = np.add.reduceat(keep.astype(np.int64), starts)
    power = np.add.reduceat(high * high * keep, starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.where(kept >= second // 4, np.sqrt(power / np.maximum(kept, 1)), np.nan)
    # A lead nearly perpendicular to the heart's axis has a tiny QRS; its noise is judged against a quarter of the
    # typical lead's amplitude at least, or every such lead would read as noisy.
    floor = 0.25 * median_of(amplitude[alive])
    judged = np.isfinite(rms).sum(axis=1)
    ordered = np.sort(rms, axis=1)  # the unjudged stretches (NaN) sort last
    rows = np.arange(len(alive))
    last = np.maximum(judged - 1, 0)
    typical = 0.5 * (ordered[rows, last // 2] + ordered[rows, judged // 2])  # the median of the judged stretches
    loudest = ordered[rows, last]
    for row, i in enumerate(alive):
        lead, amp = STANDARD_LEADS[i], max(float(amplitude[i]), floor, 1e-12)
        if drift[row] > DRIFT_RELATIVE * amp:
            flags[lead].append(QualityFlag.BASELINE_DRIFT)
        if judged[row] == 0:
            continue
        if typical[row] > STATIC_RELATIVE * amp:
            flags[lead].append(QualityFlag.STATIC_NOISE)
        if (judged[row] >= 2 and loudest[row] > BURST_FACTOR * max(typical[row], 1e-12)
                and loudest[row] > BURST_RELATIVE * amp):
            flags[lead].append(QualityFlag.BURST_NOISE)
