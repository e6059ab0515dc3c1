"""``measure(ecg)``: quality -> beats -> rhythm -> median beat -> fiducials -> intervals and axes.

Every value is computed from the samples; one that cannot be measured is left out with its reason
(:class:`ecgregen.measure.types.Measurements`). Works on any length the service accepts (2-300 s, stream windows
included) and any rate from 50 Hz to 1 kHz.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ecgregen.ecg import STANDARD_LEADS, Ecg
from ecgregen.measure.beats import Beats, classify_beats, detect_qrs, rr_irregularity
from ecgregen.measure.delineate import (
    LIMB,
    MEASURE_RATE_HZ,
    arm_leads_reversed,
    delineate,
    frontal_axis,
    median_beat,
    twice_rate_share,
)
from ecgregen.measure.quality import dead_leads, noise_flags
from ecgregen.measure.signal import detection_signal, median_of, ms, working_signal
from ecgregen.measure.types import (
    BeatOrigin,
    Measurements,
    MedianBeat,
    PrematureBeat,
    QualityFlag,
    Rhythm,
)

# RR irregularity (median |successive difference| / median RR) above which the rhythm is irregular.
IRREGULAR = 0.08
# Sinus arrhythmia: P waves, no ectopic beats, and the RR range exceeds this share of the mean RR (chosen on PTB-XL
# folds 1-8 against SARRH).
SINUS_ARRHYTHMIA_RANGE = 0.25
BRADYCARDIA_BPM = 60.0
TACHYCARDIA_BPM = 100.0
# A regular tachycardia is atrial flutter (2:1 block) when more than this share of its cycle's power, QRS left out,
# is at twice the ventricular rate (:func:`~ecgregen.measure.delineate.twice_rate_share`). Chosen on PTB-XL folds
# 1-8, which hold one flutter (ecg_id 14083: 0.66) among 97 ECGs above 100 bpm; the highest of the others was 0.58
# (an AF, 10613), the highest sinus 0.55 (STACH 18241). One flutter cannot say how far below 0.66 others fall.
FLUTTER_TWICE_RATE_SHARE = 0.6


def _lead_list(leads: list[str]) -> str:
    """'I-aVF' for all six limb leads, else the names joined."""
    return "I-aVF" if len(leads) == 6 else ", ".join(leads)


def measure(ecg: Ecg, units: str | Sequence[str] = "mV") -> Measurements:
    """Measure one ECG. Never raises for a poor signal: what cannot be measured is absent with its reason. Leads
    the ECG does not record (``ecg.not_recorded``) take no part and are said to be not recorded.

    `units` are the input's as it stated them (one for all leads, or one per lead): an :class:`Ecg` holds NU
    (signals z-scored upstream) unscaled beside mV, so only the caller knows which it has, and the median beat
    must not call z-scores millivolts (:attr:`MedianBeat.units`).
    """
    return replace(_measure_recorded(ecg, median_units(units)), not_recorded=ecg.not_recorded)


def median_units(units: str | Sequence[str]) -> str:
    """"NU" when any lead is in normalised units (its amplitudes are not mV), else "mV" (every other unit the
    service accepts is scaled to mV on the way in)."""
    given = [units] if isinstance(units, str) else list(units)
    return "NU" if any(u.strip().upper() == "NU" for u in given) else "mV"


def _measure_recorded(ecg: Ecg, units: str) -> Measurements:
    x, fs = working_signal(ecg.signal, ecg.sampling_rate_hz)
    xd, fsd = detection_signal(x, fs)
    flags, usable, amplitude, bandpassed = dead_leads(xd, fsd, ecg.not_recorded)
    missing: dict[str, str] = {}
    if not usable.any():
        reason = "no lead carries signal"
        return Measurements(lead_quality=_quality(flags), missing={f: reason for f in _ALL}, measured_at_hz=fs)
    peaks, band = detect_qrs(xd, usable, fsd)
    beats = classify_beats(band, usable, peaks, fsd)
    noise_flags(xd, bandpassed, fsd, beats.peaks, amplitude, flags)
    values: dict[str, float | None] = {}
    if beats.peaks.size < 2:
        for f in _RATE_FIELDS + _BEAT_FIELDS:
            missing[f] = "too few beats" if beats.peaks.size else "no QRS complexes found"
        return _result(values, beats, flags, missing, fsd, fs, None, None, None)
    rr = np.diff(beats.peaks) * 1000.0 / fsd
    values.update(rr_interval_ms=float(rr.mean()), rr_min_ms=float(rr.min()), rr_max_ms=float(rr.max()))
    values["heart_rate_bpm"] = 60000.0 / values["rr_interval_ms"]
    irregularity = rr_irregularity(beats)
    values["rr_irregularity"] = irregularity
    irregular = None if irregularity is None else irregularity > IRREGULAR
    if irregularity is None:
        missing["rr_irregularity"] = "too few beats"
    dominant = beats.dominant
    if not dominant.any():
        dominant = ~beats.other_shape if (~beats.other_shape).any() else np.ones_like(dominant)
    # Back to the measuring rate for the median beat.
    peaks_full = np.minimum(np.round(beats.peaks * (fs / fsd)).astype(int), x.shape[1] - 1)
    rr_dominant = median_of(np.diff(peaks_full))
    found = median_beat(x, peaks_full, dominant, rr_dominant, fs)
    if found is None:
        for f in _BEAT_FIELDS:
            missing[f] = "too few beats (none wholly inside the recording)"
        return _result(values, beats, flags, missing, fsd, fs, irregular, None, None)
    beat, r_index, windows = found
    flutter = bool(values["heart_rate_bpm"] > TACHYCARDIA_BPM and irregular is False
                   and (twice_rate_share(beat, r_index, rr_dominant, usable, fs) or 0.0) > FLUTTER_TWICE_RATE_SHARE)
    d = delineate(beat, r_index, usable, fs, windows, ms(rr_dominant, fs))
    missing.update(d.missing)
    p_present = "p_onset" in d.points
    points_ms = {name: ms(sample - d.r_index, MEASURE_RATE_HZ) for name, sample in d.points.items()}
    on, off = d.points.get("qrs_onset"), d.points.get("qrs_offset")
    if on is not None and off is not None:
        values["qrs_duration_ms"] = ms(off - on, MEASURE_RATE_HZ)
        values["qrs_axis_deg"] = frontal_axis(d.beat, on, off, usable)
        if "t_end" in d.points:
            qt = ms(d.points["t_end"] - on, MEASURE_RATE_HZ)
            rr_s = values["rr_interval_ms"] / 1000.0
            values.update(qt_interval_ms=qt, qtc_bazett_ms=qt / np.sqrt(rr_s), qtc_fridericia_ms=qt / np.cbrt(rr_s))
            values["t_axis_deg"] = frontal_axis(d.beat, off, d.points["t_end"], usable)
        if p_present:
            values["pr_interval_ms"] = ms(on - d.points["p_onset"], MEASURE_RATE_HZ)
            values["p_duration_ms"] = ms(d.points["p_offset"] - d.points["p_onset"], MEASURE_RATE_HZ)
            values["p_axis_deg"] = frontal_axis(d.beat, d.points["p_onset"], d.points["p_offset"], usable)
    if not p_present and "pr_interval_ms" in missing and irregular:
        missing["pr_interval_ms"] = "no P waves (irregular rhythm)"
    limb_dead = [STANDARD_LEADS[i] for i in LIMB if not usable[i]]
    for f in ("p_axis_deg", "qrs_axis_deg", "t_axis_deg"):
        if values.get(f) is None and limb_dead:
            missing[f] = f"limb lead(s) {_lead_list(limb_dead)} unusable"
    median = MedianBeat(d.beat.astype(np.float32), MEASURE_RATE_HZ, d.r_index, points_ms, units)
    reversed_arms = arm_leads_reversed(d.beat, d.points, usable)
    return _result(values, beats, flags, missing, fsd, fs, irregular, p_present if on is not None else None, median,
                   reversed_arms, flutter)


def _rhythm(rate: float | None, irregular: bool | None, p_present: bool | None, rr_range_share: float,
            flutter: bool) -> Rhythm:
    """By the clinical definitions; `flutter` (a regular tachycardia whose atrial activity repeats twice per cycle)
    comes before P waves, since a flutter wave before each QRS is taken for a P wave."""
    if rate is None or irregular is None or p_present is None:
        return Rhythm.UNDETERMINED
    if flutter:
        return Rhythm.ATRIAL_FLUTTER
    if not p_present:
        return Rhythm.ATRIAL_FIBRILLATION if irregular else Rhythm.REGULAR_WITHOUT_P
    if rate < BRADYCARDIA_BPM:
        return Rhythm.SINUS_BRADYCARDIA
    if rate > TACHYCARDIA_BPM:
        return Rhythm.SINUS_TACHYCARDIA
    if irregular or rr_range_share > SINUS_ARRHYTHMIA_RANGE:
        return Rhythm.SINUS_ARRHYTHMIA
    return Rhythm.SINUS


def _premature(beats: Beats, fs: float, fibrillating: bool) -> tuple[PrematureBeat, ...]:
    """Ventricular: another shape and wide (or another shape and early); supraventricular: early, usual shape -
    not in AF, where every short RR is "early"."""
    out = []
    for i in range(1, beats.peaks.size):
        coupling = ms(beats.peaks[i] - beats.peaks[i - 1], fs)
        if beats.other_shape[i] and (beats.wide[i] or beats.premature[i]):
            out.append(PrematureBeat(beats.peaks[i] / fs, BeatOrigin.VENTRICULAR, coupling))
        elif beats.premature[i] and not beats.other_shape[i] and not fibrillating:
            out.append(PrematureBeat(beats.peaks[i] / fs, BeatOrigin.SUPRAVENTRICULAR, coupling))
    return tuple(out)


def _quality(flags: dict[str, list[QualityFlag]]) -> dict[str, tuple[QualityFlag, ...]]:
    return {lead: tuple(dict.fromkeys(flags[lead])) for lead in STANDARD_LEADS if lead in flags}


def _result(values: dict[str, float | None], beats: Beats, flags: dict[str, list[QualityFlag]],
            missing: dict[str, str], fs: float, measured_at_hz: float, irregular: bool | None,
            p_present: bool | None, median: MedianBeat | None, reversed_arms: bool = False,
            flutter: bool = False) -> Measurements:
    """`fs`: the rate beats were detected at; `measured_at_hz`: the rate of the samples the fiducials rest on (the
    input's, at most 500 Hz). A slower ECG's median beat is interpolated to 500 Hz for the search, which adds no
    information: saying 500 Hz for a 100 Hz ECG would claim 2 ms where it has 10."""
    rate = values.get("heart_rate_bpm")
    rr_share = 0.0
    if rate is not None and values.get("rr_interval_ms"):
        rr_share = (values["rr_max_ms"] - values["rr_min_ms"]) / values["rr_interval_ms"]
        if any(beats.premature) or any(beats.other_shape):
            rr_share = 0.0  # the range then says "ectopic beats", not sinus arrhythmia
    rhythm = _rhythm(rate, irregular, p_present, rr_share, flutter)
    fibrillating = rhythm is Rhythm.ATRIAL_FIBRILLATION
    for name in _ALL:  # a list: the reasons must not depend on a set's order, which differs from process to process
        if values.get(name) is None and name not in missing:
            missing[name] = _derived_reason(name, missing, values)
    clean = {k: (round(float(v), 3 if k == "rr_irregularity" else 1) if v is not None else None)
             for k, v in values.items()}
    return Measurements(
        **{k: v for k, v in clean.items() if k in _VALUE_NAMES}, beat_count=int(beats.peaks.size),
        rr_irregular=irregular, p_waves_present=p_present, rhythm=rhythm,
        premature_beats=_premature(beats, fs, fibrillating), lead_quality=_quality(flags),
        limb_lead_reversal=reversed_arms,
        missing={k: missing[k] for k in _ALL if k in missing}, measured_at_hz=measured_at_hz,
        median_beat=median,
    )


def _derived_reason(name: str, missing: dict[str, str], values: dict[str, float | None]) -> str:
    """The reason of a value that depends on another that is missing (QTc on QT, P axis on P waves, ...), followed
    down the chain when that one has no reason of its own yet (the P axis on the PR interval on the QRS)."""
    for source in _DEPENDS.get(name, ()):
        if source in missing:
            return missing[source]
        if values.get(source) is None:
            return _derived_reason(source, missing, values)
    return "not measurable"


_RATE_FIELDS = ["heart_rate_bpm", "rr_interval_ms", "rr_min_ms", "rr_max_ms", "rr_irregularity"]
_BEAT_FIELDS = ["pr_interval_ms", "p_duration_ms", "qrs_duration_ms", "qt_interval_ms", "qtc_bazett_ms",
                "qtc_fridericia_ms", "p_axis_deg", "qrs_axis_deg", "t_axis_deg"]
_ALL = _RATE_FIELDS + _BEAT_FIELDS
_VALUE_NAMES = frozenset(_ALL)
_DEPENDS = {
    "p_duration_ms": ("pr_interval_ms",), "p_axis_deg": ("pr_interval_ms",),
    "qt_interval_ms": ("qrs_duration_ms",), "qtc_bazett_ms": ("qt_interval_ms", "qrs_duration_ms"),
    "qtc_fridericia_ms": ("qt_interval_ms", "qrs_duration_ms"), "t_axis_deg": ("qt_interval_ms", "qrs_duration_ms"),
    "pr_interval_ms": ("qrs_duration_ms",), "qrs_axis_deg": ("qrs_duration_ms",),
}
