"""What a statement about an ECG means in measurable terms, and when the ECG's own measurements contradict it.

A cart never prints "normal axis" beside an axis of -67 degrees: its statements are derived from its measurements.
This module holds the definitions that make that true for ours. Each :class:`Finding` that a measurement defines
has its condition from the standard definitions (AHA/ACC/HRS recommendations for the standardization and
interpretation of the ECG, 2007-2009): sinus bradycardia < 60 bpm, sinus tachycardia > 100 bpm, first degree AV
block PR > 200 ms, complete bundle branch block QRS >= 120 ms, left anterior fascicular block QRS axis -45 degrees
or beyond, left posterior fascicular block +90 or beyond, atrial fibrillation irregular RR without P waves, prolonged
QT by QTc; the axis classes are those of the corpus's German carts as the glossary header defines them ("normal
axis" -30..+90, "leftward axis" -30..+30, "vertical axis" +60..+90, "rightward axis" +90..+120, "left axis
deviation" < -30, "right axis deviation" > +120 for the German "überdrehter Rechtstyp" the corpus translates so,
"extreme axis deviation" -90..-180).

A statement is **contradicted** only when the measurement lies beyond its limit by more than a borderline margin
(:data:`MARGINS`): a measurement has its error, and a report saying "first degree AV block" at PR 196 ms is
borderline, not wrong. Within the margin nothing is contradicted, and nothing is claimed either: the
definitions' own limits decide what the measurements state (:func:`measured_findings`).

Pure functions of :class:`~ecgregen.measure.types.Measurements`; no report or diagnosis code is imported here, so the
report reader, the diagnoses and the evaluation share one set of definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ecgregen.measure.types import Measurements, Rhythm


class Finding(StrEnum):
    """A statement's meaning, where a measurement defines it (a closed set)."""

    SINUS_RHYTHM = "sinus_rhythm"  # sinus, 60-100 bpm
    SINUS_BRADYCARDIA = "sinus_bradycardia"
    SINUS_TACHYCARDIA = "sinus_tachycardia"
    SINUS_ARRHYTHMIA = "sinus_arrhythmia"  # sinus, RR varying
    ATRIAL_FIBRILLATION = "atrial_fibrillation"
    ATRIAL_FLUTTER = "atrial_flutter"
    WITHOUT_P_WAVES = "rhythm_without_p_waves"  # junctional, "no P wave detected"
    BRADYCARDIA = "bradycardia"  # rate < 60, any rhythm
    TACHYCARDIA = "tachycardia"  # rate > 100, any rhythm
    AXIS_NORMAL = "axis_normal"
    AXIS_LEFTWARD = "axis_leftward"
    AXIS_VERTICAL = "axis_vertical"
    AXIS_RIGHTWARD = "axis_rightward"
    AXIS_LEFT_DEVIATION = "axis_left_deviation"
    AXIS_RIGHT_DEVIATION = "axis_right_deviation"
    AXIS_EXTREME = "axis_extreme"
    LAFB = "left_anterior_fascicular_block"
    LPFB = "left_posterior_fascicular_block"
    AV_BLOCK_1 = "first_degree_av_block"  # also "prolonged PR"
    PR_NORMAL = "pr_normal"
    BBB_COMPLETE = "complete_bundle_branch_block"
    BBB_INCOMPLETE = "incomplete_bundle_branch_block"
    IVCD = "intraventricular_conduction_delay"
    QT_PROLONGED = "prolonged_qt"
    PREMATURE_BEATS = "premature_beats"
    NORMAL_ECG = "normal_ecg"


# The definitions' limits.
BRADYCARDIA_BPM, TACHYCARDIA_BPM = 60.0, 100.0
PR_LONG_MS = 200.0
QRS_COMPLETE_MS = 120.0
QRS_IVCD_MS = 110.0
QTC_LONG_MS = 460.0  # Bazett; 450 men / 460 women, the higher so that a woman's normal QTc is not called long
LAFB_AXIS_DEG, LPFB_AXIS_DEG = -45.0, 90.0
# How far beyond a limit a measurement must lie before it contradicts a statement (the measurement's error plus the
# width of "borderline"): rate 5 bpm, intervals 10 ms (QTc 20 ms: its T end is the least certain point), axis 10
# degrees (15 for the fascicular blocks, whose -45 is itself debated against -30).
MARGINS = {"rate": 5.0, "pr": 10.0, "qrs": 10.0, "qtc": 20.0, "axis": 10.0, "fascicular": 15.0}
# A sinus rhythm whose RR range is below this share of the mean RR is regular: "sinus arrhythmia" is contradicted
# (the stage calls 0.25 sinus arrhythmia; half of it is clearly regular).
REGULAR_RR_RANGE = 0.12
# Premature beats: "no premature beat" needs this many beats looked at.
ECTOPY_MIN_BEATS = 8
# Axis classes (degrees, inclusive): the range each axis statement covers.
AXIS_RANGES: dict[Finding, tuple[float, float]] = {
    Finding.AXIS_NORMAL: (-30.0, 90.0),
    Finding.AXIS_LEFTWARD: (-30.0, 30.0),
    Finding.AXIS_VERTICAL: (60.0, 90.0),
    Finding.AXIS_RIGHTWARD: (90.0, 120.0),
    Finding.AXIS_LEFT_DEVIATION: (-90.0, -30.0),
    Finding.AXIS_RIGHT_DEVIATION: (120.0, 180.0),
    Finding.AXIS_EXTREME: (-180.0, -90.0),
}
# The words a measured axis is stated in: a class and the range it covers (exclusive lower edge above -180).
AXIS_WORDS: tuple[tuple[float, float, str], ...] = (
    (-180.0, -90.0, "extreme axis deviation"),
    (-90.0, -30.0, "left axis deviation"),
    (-30.0, 90.0, "normal axis"),
    (90.0, 120.0, "rightward axis"),
    (120.0, 180.0, "right axis deviation"),
)
# Sinus rhythms out of the rate range: stated beside "otherwise normal ECG", never against it.
RATE_FINDINGS = frozenset({Finding.SINUS_BRADYCARDIA, Finding.SINUS_TACHYCARDIA})
_SINUS = frozenset({Rhythm.SINUS, Rhythm.SINUS_BRADYCARDIA, Rhythm.SINUS_TACHYCARDIA, Rhythm.SINUS_ARRHYTHMIA})


@dataclass(frozen=True)
class Verdict:
    """What the measurements say of one finding: contradicted or not, and the measurement that decided it."""

    contradicted: bool
    measurement: str  # a Measurements field, or "rhythm"
    value: float | None  # its value (None for the rhythm)
    reason: str  # in words, e.g. "measured QRS axis +79 degrees is normal (-30..+90)"


def axis_words(degrees: float) -> str:
    """The class of a measured QRS axis in the corpus's words (see the module docstring)."""
    for low, high, words in AXIS_WORDS:
        if low < degrees <= high or (low == -180.0 and degrees <= high):
            return words
    return "normal axis"


def sinus_with_p_waves(m: Measurements) -> bool:
    """A determined sinus rhythm: P waves present and the rhythm read as sinus (any rate)."""
    return m.rhythm in _SINUS and m.p_waves_present is True


def clinical_rhythm(m: Measurements) -> Finding | None:
    """The measured rhythm by the clinical definitions: sinus rhythm, sinus bradycardia (< 60 bpm), sinus
    tachycardia (> 100 bpm) for a sinus rhythm with P waves, atrial fibrillation, atrial flutter; None when
    undetermined (or another rhythm: regular without P waves)."""
    rate = m.heart_rate_bpm
    if m.rhythm is Rhythm.ATRIAL_FIBRILLATION:
        return Finding.ATRIAL_FIBRILLATION
    if m.rhythm is Rhythm.ATRIAL_FLUTTER:
        return Finding.ATRIAL_FLUTTER
    if not sinus_with_p_waves(m) or rate is None:
        return None
    if rate < BRADYCARDIA_BPM:
        return Finding.SINUS_BRADYCARDIA
    if rate > TACHYCARDIA_BPM:
        return Finding.SINUS_TACHYCARDIA
    return Finding.SINUS_RHYTHM


def check(finding: Finding, m: Measurements) -> Verdict | None:
    """Whether `m` contradicts `finding`; None when nothing measured bears on it (not measured, or no definition)."""
    rule = _RULES.get(finding)
    return None if rule is None else rule(finding, m)


def _rate(m: Measurements, low: float | None, high: float | None, words: str) -> Verdict | None:
    rate = m.heart_rate_bpm
    if rate is None:
        return None
    margin = MARGINS["rate"]
    wrong = (low is not None and rate < low - margin) or (high is not None and rate > high + margin)
    return Verdict(wrong, "heart_rate_bpm", rate,
                   f"measured rate {rate:.0f} bpm {'is not' if wrong else 'is within margin of'} {words}")


def _not_sinus(m: Measurements) -> Verdict | None:
    """A measured atrial fibrillation or flutter contradicts every sinus statement."""
    if m.rhythm is Rhythm.ATRIAL_FIBRILLATION:
        return Verdict(True, "rhythm", None, "measured rhythm is irregular without P waves (atrial fibrillation)")
    if m.rhythm is Rhythm.ATRIAL_FLUTTER:
        return Verdict(True, "rhythm", None, "measured rhythm is atrial flutter (atrial activity twice per QRS)")
    return None


def _sinus_rate(finding: Finding, m: Measurements) -> Verdict | None:
    """A sinus rhythm statement: contradicted by atrial fibrillation or flutter, or by a rate beyond its range."""
    not_sinus = _not_sinus(m)
    if not_sinus is not None and finding not in (Finding.BRADYCARDIA, Finding.TACHYCARDIA):
        return not_sinus
    bounds = {Finding.SINUS_RHYTHM: (BRADYCARDIA_BPM, TACHYCARDIA_BPM,
                                     f"{BRADYCARDIA_BPM:.0f}-{TACHYCARDIA_BPM:.0f} bpm"),
              Finding.SINUS_BRADYCARDIA: (None, BRADYCARDIA_BPM, f"below {BRADYCARDIA_BPM:.0f} bpm"),
              Finding.SINUS_TACHYCARDIA: (TACHYCARDIA_BPM, None, f"above {TACHYCARDIA_BPM:.0f} bpm"),
              Finding.BRADYCARDIA: (None, BRADYCARDIA_BPM, f"below {BRADYCARDIA_BPM:.0f} bpm"),
              Finding.TACHYCARDIA: (TACHYCARDIA_BPM, None, f"above {TACHYCARDIA_BPM:.0f} bpm")}
    low, high, words = bounds[finding]
    if finding in (Finding.BRADYCARDIA, Finding.TACHYCARDIA):
        return _rate(m, low, high, words)
    return _rate(m, low, high, f"{finding.value.replace('_', ' ')} ({words})")


def _sinus_arrhythmia(finding: Finding, m: Measurements) -> Verdict | None:
    not_sinus = _not_sinus(m)
    if not_sinus is not None:
        return not_sinus
    if m.rr_min_ms is None or m.rr_max_ms is None or not m.rr_interval_ms or m.premature_beats:
        return None  # premature beats make the RR range say nothing of the sinus node
    share = (m.rr_max_ms - m.rr_min_ms) / m.rr_interval_ms
    wrong = share < REGULAR_RR_RANGE and m.rr_irregular is False
    return Verdict(wrong, "rr_irregularity", m.rr_irregularity,
                   f"measured RR {m.rr_min_ms:.0f}-{m.rr_max_ms:.0f} ms "
                   f"({'regular' if wrong else 'varying'}: range {share:.0%} of the mean RR)")


def _atrial(finding: Finding, m: Measurements) -> Verdict | None:
    """Atrial fibrillation (or flutter, or a rhythm without P waves) is contradicted by P waves with a regular RR:
    a sinus rhythm."""
    if m.p_waves_present is True and m.rr_irregular is False and m.rhythm in _SINUS:
        return Verdict(True, "rhythm", None, "measured rhythm is regular with P waves (sinus rhythm)")
    if m.rhythm is Rhythm.UNDETERMINED:
        return None
    return Verdict(False, "rhythm", None, f"measured rhythm: {m.rhythm.value.replace('_', ' ')}")


def _axis(finding: Finding, m: Measurements) -> Verdict | None:
    axis = m.qrs_axis_deg
    if axis is None:
        return None
    low, high = AXIS_RANGES[finding]
    margin = MARGINS["axis"]
    if finding is Finding.AXIS_EXTREME:  # wraps around +-180
        wrong = -90.0 + margin < axis < 180.0 - margin
    elif finding is Finding.AXIS_RIGHT_DEVIATION:
        wrong = -90.0 + margin < axis < low - margin  # "right" axis deviation beyond 180 is the extreme one
    else:
        wrong = axis < low - margin or axis > high + margin
    words = f"{finding.value.removeprefix('axis_').replace('_', ' ')} ({low:+.0f}..{high:+.0f})"
    return Verdict(wrong, "qrs_axis_deg", axis,
                   f"measured QRS axis {axis:+.0f} degrees is {axis_words(axis)}"
                   + (f", not {words}" if wrong else f", within margin of {words}"))


def _fascicular(finding: Finding, m: Measurements) -> Verdict | None:
    axis = m.qrs_axis_deg
    if axis is None:
        return None
    margin = MARGINS["fascicular"]
    if finding is Finding.LAFB:
        wrong = axis > LAFB_AXIS_DEG + margin
        words = f"left anterior fascicular block needs {LAFB_AXIS_DEG:+.0f} degrees or beyond"
    else:
        wrong = axis < LPFB_AXIS_DEG - margin and axis > -90.0
        words = f"left posterior fascicular block needs {LPFB_AXIS_DEG:+.0f} degrees or beyond"
    return Verdict(wrong, "qrs_axis_deg", axis, f"measured QRS axis {axis:+.0f} degrees; {words}")


# Statements defined by one interval beyond a limit: (field, its name, limit, margin, whether the statement needs
# the value above the limit (else below), what the statement needs in words).
_LIMITS: dict[Finding, tuple[str, str, float, str, bool, str]] = {
    Finding.AV_BLOCK_1: ("pr_interval_ms", "PR", PR_LONG_MS, "pr", True, "first degree AV block: PR > 200 ms"),
    Finding.PR_NORMAL: ("pr_interval_ms", "PR", PR_LONG_MS, "pr", False, "a normal PR is at most 200 ms"),
    Finding.BBB_COMPLETE: ("qrs_duration_ms", "QRS", QRS_COMPLETE_MS, "qrs", True,
                           "a complete bundle branch block needs QRS >= 120 ms"),
    Finding.BBB_INCOMPLETE: ("qrs_duration_ms", "QRS", QRS_COMPLETE_MS, "qrs", False,
                             "an incomplete bundle branch block has QRS < 120 ms"),
    Finding.IVCD: ("qrs_duration_ms", "QRS", QRS_IVCD_MS, "qrs", True,
                   "an intraventricular conduction delay needs QRS > 110 ms"),
    Finding.QT_PROLONGED: ("qtc_bazett_ms", "QTc (Bazett)", QTC_LONG_MS, "qtc", True, "prolonged QT: QTc > 460 ms"),
}


def _limit(finding: Finding, m: Measurements) -> Verdict | None:
    """A statement that needs an interval above (or below) its limit: contradicted only on the wrong side of the
    limit by more than the margin."""
    field, name, limit, margin, above, needs = _LIMITS[finding]
    value = getattr(m, field)
    if value is None:
        return None
    wrong = value < limit - MARGINS[margin] if above else value > limit + MARGINS[margin]
    return Verdict(wrong, field, value, f"measured {name} {value:.0f} ms; {needs}")


def _ectopy(finding: Finding, m: Measurements) -> Verdict | None:
    if m.beat_count < ECTOPY_MIN_BEATS or m.rr_interval_ms is None:
        return None
    count = len(m.premature_beats)
    return Verdict(count == 0, "premature_beats", float(count),
                   f"{count} premature beat{'s' if count != 1 else ''} measured in {m.beat_count}")


def _normal(finding: Finding, m: Measurements) -> Verdict | None:
    """A "normal ECG" is contradicted by a measured finding well out of range: one the verified report would state.
    A sinus bradycardia or tachycardia alone is not one: carts print "sinus bradycardia, otherwise normal ECG"."""
    abnormal = [f for f in measured_findings(m) if f.clear and f.finding not in RATE_FINDINGS]
    if abnormal:
        return Verdict(True, abnormal[0].measurement, abnormal[0].value,
                       f"not a normal ECG: {abnormal[0].reason}")
    return Verdict(False, "rhythm", None, "no measured finding out of range")


_RULES = {
    Finding.SINUS_RHYTHM: _sinus_rate, Finding.SINUS_BRADYCARDIA: _sinus_rate,
    Finding.SINUS_TACHYCARDIA: _sinus_rate, Finding.BRADYCARDIA: _sinus_rate, Finding.TACHYCARDIA: _sinus_rate,
    Finding.SINUS_ARRHYTHMIA: _sinus_arrhythmia,
    Finding.ATRIAL_FIBRILLATION: _atrial, Finding.ATRIAL_FLUTTER: _atrial, Finding.WITHOUT_P_WAVES: _atrial,
    **{f: _axis for f in AXIS_RANGES},
    Finding.LAFB: _fascicular, Finding.LPFB: _fascicular,
    **{f: _limit for f in _LIMITS},
    Finding.PREMATURE_BEATS: _ectopy,
    Finding.NORMAL_ECG: _normal,
}


@dataclass(frozen=True)
class MeasuredFinding:
    """A finding the measurements themselves state: out of its normal range (`clear`: beyond it by the margin)."""

    finding: Finding
    sentence: str  # how a report states it, with the value: "sinus bradycardia (rate 52 bpm)"
    measurement: str
    value: float | None
    reason: str
    clear: bool


def measured_findings(m: Measurements) -> list[MeasuredFinding]:
    """The out-of-range findings of `m`, in the order a cart prints them: the rhythm (atrial fibrillation or
    flutter, sinus bradycardia or tachycardia), PR > 200 ms, QRS >= 120 ms, a deviated axis, QTc > 460 ms."""
    out: list[MeasuredFinding] = []
    rate, pr, qrs, qtc, axis = m.heart_rate_bpm, m.pr_interval_ms, m.qrs_duration_ms, m.qtc_bazett_ms, m.qrs_axis_deg
    rhythm = clinical_rhythm(m)
    if rhythm in (Finding.ATRIAL_FIBRILLATION, Finding.ATRIAL_FLUTTER):
        rate_words = f" (rate {rate:.0f} bpm)" if rate is not None else ""
        how = ("irregular without P waves" if rhythm is Finding.ATRIAL_FIBRILLATION
               else "regular with atrial activity twice per QRS")
        out.append(MeasuredFinding(rhythm, f"{rhythm.value.replace('_', ' ')}{rate_words}", "rhythm", None,
                                   f"measured rhythm is {how}", True))
    elif rhythm in (Finding.SINUS_BRADYCARDIA, Finding.SINUS_TACHYCARDIA) and rate is not None:
        words = rhythm.value.replace("_", " ")
        clear = rate < BRADYCARDIA_BPM - MARGINS["rate"] or rate > TACHYCARDIA_BPM + MARGINS["rate"]
        out.append(MeasuredFinding(rhythm, f"{words} (rate {rate:.0f} bpm)", "heart_rate_bpm", rate,
                                   f"measured rate {rate:.0f} bpm with P waves: {words}", clear))
    if pr is not None and pr > PR_LONG_MS:
        out.append(MeasuredFinding(Finding.AV_BLOCK_1, f"first degree av block (PR {pr:.0f} ms)", "pr_interval_ms", pr,
                                   f"measured PR {pr:.0f} ms is prolonged (> {PR_LONG_MS:.0f} ms)",
                                   pr > PR_LONG_MS + MARGINS["pr"]))
    if qrs is not None and qrs >= QRS_COMPLETE_MS:
        out.append(MeasuredFinding(Finding.IVCD, f"wide QRS (QRS {qrs:.0f} ms)", "qrs_duration_ms", qrs,
                                   f"measured QRS {qrs:.0f} ms is wide (>= {QRS_COMPLETE_MS:.0f} ms)",
                                   qrs >= QRS_COMPLETE_MS + MARGINS["qrs"]))
    if axis is not None and axis_words(axis) != "normal axis":
        words = axis_words(axis)
        low, high = (-30.0, 90.0)
        out.append(MeasuredFinding(_AXIS_FINDING[words], f"{words} ({axis:+.0f} degrees)", "qrs_axis_deg", axis,
                                   f"measured QRS axis {axis:+.0f} degrees is {words}",
                                   axis < low - MARGINS["axis"] or axis > high + MARGINS["axis"]))
    if qtc is not None and qtc > QTC_LONG_MS:
        out.append(MeasuredFinding(Finding.QT_PROLONGED, f"prolonged qt (QTc {qtc:.0f} ms)", "qtc_bazett_ms", qtc,
                                   f"measured QTc {qtc:.0f} ms (Bazett) is prolonged (> {QTC_LONG_MS:.0f} ms)",
                                   qtc > QTC_LONG_MS + MARGINS["qtc"]))
    return out


_AXIS_FINDING = {"extreme axis deviation": Finding.AXIS_EXTREME, "left axis deviation": Finding.AXIS_LEFT_DEVIATION,
                 "rightward axis": Finding.AXIS_RIGHTWARD, "right axis deviation": Finding.AXIS_RIGHT_DEVIATION,
                 "normal axis": Finding.AXIS_NORMAL}
