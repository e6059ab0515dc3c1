"""The representative (median) beat and its global fiducials, as carts measure them.

QRS onset/offset come from the spatial velocity of all usable independent leads (I, II, V1-V6) - the earliest
onset and the latest offset over the leads at once, which no single lead's delineation gives (a single-lead DWT
delineation put QRS up to 100 ms off the carts on the format files). The P wave is found on the spatial magnitude
of the same leads (against the line from the window's start to QRS onset) and its edges by slope; T end where
their spatial magnitude's downslope meets the baseline (the knee of its tail, by the trapezium method, searched
up to a little past where the tangent at its steepest descent meets the level at QRS onset; see
:func:`_find_t_end` for why the tangent alone ends it early). Axes come from the net areas of leads I and II
(:func:`frontal_axis`: a fit over the usable limb leads when one of those two is unusable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgregen.ecg import STANDARD_LEADS
from ecgregen.measure.signal import (
    MEASURE_RATE_HZ,
    filtered,
    median_along,
    median_of,
    quantiles,
    rows_dot,
    samples_of,
    windows_minus_moving_average,
)
from ecgregen.preprocess import resample

INDEPENDENT = np.array([STANDARD_LEADS.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")])
LIMB = np.array([STANDARD_LEADS.index(n) for n in ("I", "II", "III", "aVR", "aVL", "aVF")])
# Frontal-plane direction (degrees) and gain of each limb lead (augmented leads see sqrt(3)/2 of the vector).
_LIMB_ANGLES = np.radians([0.0, 60.0, 120.0, -150.0, -30.0, 90.0])
_LIMB_GAINS = np.array([1.0, 1.0, 1.0, np.sqrt(3) / 2, np.sqrt(3) / 2, np.sqrt(3) / 2])

# Threshold of the spatial velocity, as a share of its QRS peak above its resting level.
QRS_ONSET_SHARE = 0.03
QRS_OFFSET_SHARE = 0.06
# The velocity must stay below the threshold this long for the QRS to have begun / ended.
QRS_QUIET_MS = 10.0
# P onset / offset: where the P wave's spatial velocity falls to this share of its up- / downstroke's peak.
P_EDGE_SHARE = 0.3
# A P wave is there when its magnitude reaches this share of the QRS's.
P_MIN_SHARE = 0.02
# ... and the P waves of single beats resemble the median's (median correlation).
P_CONSISTENCY = 0.6
# T end is only trusted when the T wave rises this many times above the level after it.
T_MIN_RATIO = 2.0
# How far past the tangent's end the T wave's knee is looked for (chosen on the two Mortara ECGs among 80, 120 ms
# and the whole search window; the GE MUSE and Philips files were held out of this choice).
T_KNEE_REACH_MS = 80.0
# Where flutter waves are largest: the inferior leads' sawtooth and V1's discrete waves.
ATRIAL_LEADS = np.array([STANDARD_LEADS.index(n) for n in ("II", "III", "aVF", "V1")])
# Harmonics of the ventricular rate the cycle's power is shared among (a flutter wave is 200-250 ms wide, its
# sawtooth's power mostly in its first three harmonics; at 2:1 those are the cycle's 2nd, 4th and 6th).
CYCLE_HARMONICS = 5
# The QRS core left out of the cycle (ms before and after its peak).
QRS_BLANK_MS = (50.0, 70.0)


@dataclass(frozen=True)
class Delineation:
    """Fiducials (samples of the median beat at :data:`MEASURE_RATE_HZ`) and what could not be found, and why."""

    beat: np.ndarray  # (12, L) at MEASURE_RATE_HZ, baseline (QRS onset level) at 0
    r_index: int
    points: dict[str, int]
    missing: dict[str, str]


def median_beat(x: np.ndarray, peaks: np.ndarray, dominant: np.ndarray, rr_samples: float,
                rate_hz: float) -> tuple[np.ndarray, int, np.ndarray] | None:
    """The median of the dominant beats' windows, (12, L) at `rate_hz`, its R sample, and the windows used
    (leads, beats, L).

    The window spans 0.5 RR (at most 400 ms) before the QRS peak and 0.8 RR (at most 700 ms) after it; beats whose
    window runs past the recording are left out. None when no beat fits. Wander is removed by subtracting the
    moving average over one RR, evaluated under the windows only: over a whole cycle the average of a repeating
    beat is a constant, so the beat's shape is kept (a filter of every lead would cost as much as the rest of the
    stage).
    """
    pre = int(min(samples_of(400, rate_hz), 0.5 * rr_samples))
    post = int(min(samples_of(700, rate_hz), 0.8 * rr_samples))
    use = peaks[dominant]
    use = use[(use - pre >= 0) & (use + post < x.shape[1])]
    if use.size == 0:
        return None
    windows = windows_minus_moving_average(x, int(rr_samples), use - pre, pre + post + 1)
    return median_along(windows, 1), pre, windows


def twice_rate_share(beat: np.ndarray, r_index: int, rr_samples: float, usable: np.ndarray,
                     rate_hz: float) -> float | None:
    """The share of one cardiac cycle's power, QRS left out, at twice the ventricular rate (2nd harmonic, of
    harmonics 1-:data:`CYCLE_HARMONICS`) in II, III, aVF and V1; None when no full cycle or none of those leads.

    Why: in atrial flutter with 2:1 block every QRS follows every second flutter wave, so the atrial activity
    repeats exactly twice per cycle (a flutter wave before the QRS, another hidden in its ST-T) and is locked to
    the QRS - subtracting the median beat would cancel it along with the QRS-T. Within one cycle it shows as power
    at the 2nd harmonic. In sinus rhythm P and T each come once per cycle, so the 1st harmonic carries more. The
    QRS core (:data:`QRS_BLANK_MS` around its peak) is replaced by a line: its sharp power is the ventricles'.
    `beat` is the median beat at `rate_hz`, its QRS peak at `r_index`; the cycle is the RR centred on that peak.
    """
    leads = ATRIAL_LEADS[usable[ATRIAL_LEADS]]
    length = int(round(rr_samples))
    start = r_index - length // 2
    if leads.size == 0 or start < 0 or start + length > beat.shape[1]:
        return None
    onset = r_index - start - samples_of(QRS_BLANK_MS[0], rate_hz)
    offset = r_index - start + samples_of(QRS_BLANK_MS[1], rate_hz)
    cycle = beat[leads, start: start + length].copy()
    cycle[:, onset: offset + 1] = cycle[:, onset: onset + 1] + np.outer(
        cycle[:, offset] - cycle[:, onset], np.linspace(0.0, 1.0, offset - onset + 1))
    power = (np.abs(np.fft.rfft(cycle, axis=1)[:, 1: CYCLE_HARMONICS + 1]) ** 2).sum(axis=0)
    total = float(power.sum())
    return float(power[1]) / total if total > 0 else None


def _quiet_crossing(v: np.ndarray, start: int, stop: int, threshold: float, quiet: int) -> int | None:
    """First sample from `start` towards `stop` (either direction) after which `v` stays below `threshold` for
    `quiet` samples."""
    step = 1 if stop >= start else -1
    run = 0
    for i in range(start, stop, step):
        run = run + 1 if v[i] < threshold else 0
        if run >= quiet:
            return i - step * (quiet - 1)
    return None


def delineate(beat: np.ndarray, r_index: int, usable: np.ndarray, rate_hz: float, windows: np.ndarray,
              rr_ms: float) -> Delineation:
    """Global fiducials of a median beat given at `rate_hz` (interpolated to 500 Hz first when slower); `rr_ms`
    bounds the T wave's search (it ends before the next beat's P wave)."""
    if rate_hz != MEASURE_RATE_HZ:
        beat = resample(beat, rate_hz, MEASURE_RATE_HZ)
        r_index = int(round(r_index * MEASURE_RATE_HZ / rate_hz))
    fs = MEASURE_RATE_HZ
    length = beat.shape[1]
    leads = INDEPENDENT[usable[INDEPENDENT]]
    if leads.size == 0:
        leads = np.flatnonzero(usable)
    missing: dict[str, str] = {}
    points: dict[str, int] = {}
    smooth = filtered(beat, fs, None, 45.0)
    velocity = np.sqrt((np.gradient(smooth[leads], axis=1) ** 2).sum(axis=0))
    near = samples_of(60, fs)
    lo, hi = max(0, r_index - near), min(length, r_index + near + 1)
    peak = lo + int(np.argmax(velocity[lo:hi]))
    rest = float(quantiles(velocity, (0.1,))[0])
    top = float(velocity[peak])
    quiet = samples_of(QRS_QUIET_MS, fs)
    onset = _quiet_crossing(velocity, peak, 0, rest + QRS_ONSET_SHARE * (top - rest), quiet)
    offset = _quiet_crossing(velocity, peak, length, rest + QRS_OFFSET_SHARE * (top - rest), quiet)
    if onset is None or offset is None:
        return Delineation(beat, r_index, points, {"qrs_duration_ms": "QRS onset or offset not found"})
    points["qrs_onset"], points["qrs_offset"] = onset, offset
    reference = smooth[:, max(0, onset - samples_of(10, fs)): onset + 1].mean(axis=1, keepdims=True)
    beat = beat - reference
    slow = filtered(smooth[leads] - reference[leads], fs, None, 20.0)
    magnitude = np.sqrt((slow**2).sum(axis=0))
    qrs_size = float(magnitude[onset: offset + 1].max())
    _find_t_end(magnitude, onset, offset, length, fs, rr_ms, points, missing)
    _find_p(slow, windows[leads], onset, rate_hz, fs, qrs_size, points, missing)
    return Delineation(beat, r_index, points, missing)


def _find_t_end(magnitude: np.ndarray, onset: int, offset: int, length: int, fs: float, rr_ms: float,
                points: dict[str, int], missing: dict[str, str]) -> None:
    """T end where the T wave's downslope meets the baseline: the knee of the spatial magnitude's tail, found by
    Zhang's trapezium method (Zhang et al., IEEE TBME 2006) from the steepest descent after the T peak.

    Why not the tangent alone: the tangent at the steepest descent, drawn down to the isoelectric level, meets it
    where the T wave *would* end if its downslope were straight. It is not: the tail flattens into the baseline
    (and on the spatial magnitude the leads whose T wave ends last are the small ones, which barely bend the
    steepest part), so the tangent ends the T wave early - QT was 14-22 ms short of three of the four carts here
    and about 25 ms short on GE and Philips files elsewhere. The trapezium method takes the point t of the tail that
    maximises the area of the trapezium (steepest point, t, and a point xr past the T end): the place where the
    curve stops falling, whatever the level it settles at. xr is the tangent's end plus :data:`T_KNEE_REACH_MS`
    (the tangent is early by tens of milliseconds, not more), kept before the next beat's P wave.
    """
    start = offset + samples_of(40, fs)
    stop = min(length, onset + samples_of(min(650.0, 0.75 * rr_ms), fs))
    if stop - start < samples_of(80, fs):
        missing["qt_interval_ms"] = "T end not found (beat too short to hold the T wave)"
        return
    t_peak = start + int(np.argmax(magnitude[start:stop]))
    slope = np.gradient(magnitude)
    if stop - t_peak < 3:
        missing["qt_interval_ms"] = "T end not found (T wave runs past the beat)"
        return
    steepest = t_peak + int(np.argmin(slope[t_peak:stop]))
    floor = float(magnitude[steepest:stop].min())
    if slope[steepest] >= 0 or magnitude[t_peak] < T_MIN_RATIO * max(floor, 1e-12):
        missing["qt_interval_ms"] = "T end not found (no T wave above the noise)"
        return
    # The tangent meets the isoelectric level (0: the level at QRS onset); it bounds the knee's search.
    tangent_end = steepest - magnitude[steepest] / slope[steepest]
    if not steepest <= tangent_end < length:
        missing["qt_interval_ms"] = "T end not found"
        return
    reach = min(stop - 1, int(round(tangent_end)) + samples_of(T_KNEE_REACH_MS, fs))
    if reach <= steepest:
        points["t_end"] = int(round(tangent_end))
        return
    t = np.arange(steepest, reach + 1)
    area = (magnitude[steepest] - magnitude[t]) * (2 * reach - t - steepest)
    points["t_end"] = int(t[np.argmax(area)])


def _find_p(slow: np.ndarray, windows: np.ndarray, onset: int, rate_hz: float, fs: float, qrs_size: float,
            points: dict[str, int], missing: dict[str, str]) -> None:
    """P onset/offset on the median beat when a P wave is there: big enough and the same from beat to beat."""
    start, stop = max(0, onset - samples_of(300, fs)), onset - samples_of(20, fs)
    if stop - start < samples_of(60, fs):
        missing["pr_interval_ms"] = "no P waves (the beat leaves no room before the QRS)"
        return
    # Against the line from the window's start to QRS onset: the level before the P wave may differ from the
    # level at QRS onset (slow drift, the previous T wave's tail), which would otherwise read as P wave.
    head = slow[:, start: start + samples_of(10, fs)].mean(axis=1, keepdims=True)
    ramp = np.linspace(0.0, 1.0, onset - start + 1)[None, :]
    detrended = slow[:, start: onset + 1] - head * (1.0 - ramp)
    magnitude = np.concatenate([np.zeros(start), np.sqrt((detrended**2).sum(axis=0))])
    p_peak = start + int(np.argmax(magnitude[start:stop]))
    floor = float(magnitude[start: p_peak + 1].min())
    size = float(magnitude[p_peak]) - floor
    share = size / max(qrs_size, 1e-12)
    consistent = _p_consistency(windows, start, stop, rate_hz / fs)
    if share < P_MIN_SHARE or consistent < P_CONSISTENCY:
        missing["pr_interval_ms"] = "no P waves"
        return
    # Edges by slope: the P wave's velocity falls to P_EDGE_SHARE of its up- and downstroke's peaks. Slopes do not
    # see the level offsets (drift, the previous T wave's tail) that thresholds on the magnitude would.
    velocity = np.sqrt((np.gradient(slow, axis=1) ** 2).sum(axis=0))
    reach = samples_of(80, fs)  # a P wave's half is shorter than this
    first = max(start, p_peak - reach)
    up = first + int(np.argmax(velocity[first: p_peak + 1]))
    down = p_peak + int(np.argmax(velocity[p_peak: max(p_peak + 1, min(stop, p_peak + reach))]))
    # Where the velocity never falls that low (a P wave running into the QRS, or out of a T wave), the edge is its
    # quietest point between the stroke and the QRS / the window's start.
    before = np.flatnonzero(velocity[start:up] < P_EDGE_SHARE * velocity[up])
    after = np.flatnonzero(velocity[down:onset] < P_EDGE_SHARE * velocity[down])
    if up <= start or down >= onset:
        missing["pr_interval_ms"] = "P wave edges not found"
        return
    points["p_onset"] = start + int(before[-1] if before.size else np.argmin(velocity[start:up]))
    points["p_offset"] = down + int(after[0] if after.size else np.argmin(velocity[down:onset]))


def _p_consistency(windows: np.ndarray, start: int, stop: int, scale: float) -> float:
    """Median correlation of single beats' P windows with their median (1.0 with fewer than 3 beats).

    `windows` are the beats (leads, beats, samples) at the recording's rate, `scale` that rate / the median beat's.
    Sinus P waves repeat from beat to beat; AF's fibrillation waves do not, and their median is a small smear.
    """
    if windows.shape[1] < 3:
        return 1.0
    a = int(start * scale)
    b = max(a + 2, int(stop * scale))
    single = windows[:, :, a:b]
    single = single - single.mean(axis=2, keepdims=True)
    t = median_along(single, 1).ravel()
    s = np.moveaxis(single, 1, 0).reshape(single.shape[1], -1)
    corr = rows_dot(s, t) / (np.sqrt(rows_dot(s * s, None)) * (float(np.sqrt(np.einsum("i,i->", t, t))) or 1.0)
                               + 1e-12)
    return median_of(corr)


def frontal_axis(beat: np.ndarray, start: int, stop: int, usable: np.ndarray) -> float | None:
    """Frontal-plane axis (degrees) of the net areas of the limb leads between two samples.

    From leads I and II when both are usable: every other limb lead is a combination of them in a real recording,
    and the -30 and +90 degree borders (left axis, right axis) are then where II or I changes sign, which stays
    true when leads were rescaled one by one (PTB-XL's z-scored records). Otherwise a least-squares fit of the
    usable limb leads.
    """
    i, ii = STANDARD_LEADS.index("I"), STANDARD_LEADS.index("II")
    if stop <= start:
        return None
    if usable[i] and usable[ii]:
        lead_i, lead_ii = beat[[i, ii], start: stop + 1].sum(axis=1)
        hx, hy = lead_i, (lead_ii - 0.5 * lead_i) / (np.sqrt(3) / 2)
    else:
        leads = [k for k, lead in enumerate(LIMB) if usable[lead]]
        if len(leads) < 2:
            return None
        areas = beat[LIMB[leads], start: stop + 1].sum(axis=1)
        design = _LIMB_GAINS[leads, None] * np.stack([np.cos(_LIMB_ANGLES[leads]), np.sin(_LIMB_ANGLES[leads])],
                                                     axis=1)
        (hx, hy), *_ = np.linalg.lstsq(design, areas, rcond=None)
    if np.hypot(hx, hy) == 0:
        return None
    return float(np.degrees(np.arctan2(hy, hx)))


def arm_leads_reversed(beat: np.ndarray, points: dict[str, int], usable: np.ndarray) -> bool:
    """Suspected left/right arm electrode reversal: P, QRS and T all negative in lead I and P positive in aVR.

    A swap of the arm electrodes inverts lead I (and swaps II/III, aVR/aVL). A real heart gives this picture only
    in dextrocardia; a normal or ectopic atrial rhythm keeps the P wave upright in I or negative in aVR. Only said
    when all three waves were delineated.
    """
    i, avr = STANDARD_LEADS.index("I"), STANDARD_LEADS.index("aVR")
    needed = ("p_onset", "p_offset", "qrs_onset", "qrs_offset", "t_end")
    if not (usable[i] and usable[avr]) or any(p not in points for p in needed):
        return False
    p = slice(points["p_onset"], points["p_offset"] + 1)
    qrs = slice(points["qrs_onset"], points["qrs_offset"] + 1)
    t = slice(points["qrs_offset"], points["t_end"] + 1)
    return bool(beat[i, p].sum() < 0 and beat[i, qrs].sum() < 0 and beat[i, t].sum() < 0 and beat[avr, p].sum() > 0)
