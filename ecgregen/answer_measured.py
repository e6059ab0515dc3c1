"""Answers about what an ECG cart measures - numeric features, heart axis, noise, extra systoles - from the ECG's own
measurements (:mod:`ecgregen.measure`), in ECG-QA's words and ranges (:mod:`ecgregen.qa_conventions`).

The neighbours' labels cannot answer these: ECG-QA took numeric features and the axis from the signal and noise and
extra beats from PTB-XL's annotations of that one recording, which a similar ECG does not share. The label answerer
(:mod:`ecgregen.answer`) asks here first, and answers as before where this module does not recognise the question
(None) or the measurement it needs is absent (:class:`Unmeasured`, whose reason goes into its rationale).

How a question is recognised (ECG-QA's templates 20-22 and 26-42, and the same words in a client's own question):

- numeric feature: "normal range" in the question or its options, and a feature named (RR interval, P duration, PR
  interval, QRS duration, QT interval, QT corrected / QTc). Verify: does the feature fall in the named range; choose:
  the offered ranges it falls in; query by feature: its range; query by range ("what numeric features fall above the
  normal range?"): the offered features in that range;
- heart axis: an axis class named, or "axis" / "deviated" in the question; the class of the QRS axis;
- noise: a kind named (baseline drift, static noise, burst noise, electrodes problems, any kind of noises), or
  interference / distortion / artefacts (ECG-QA's paraphrases); a lead named anywhere in the question; present in
  a lead when the lead carries the kind's quality flag, in the ECG when at least ``noise_min_leads`` leads do;
  "which leads" questions list the flagged leads. Leads the ECG does not record (``Measurements.not_recorded``: a
  monitor that sends only some) count for nothing - a lead never sent is no electrode problem; a yes/no question
  about one such lead is answered "not sure", any other is not answered from the measurements (:class:`Unmeasured`);
- extra systoles: "extrasystole", "extra systole", or extra / premature / ectopic beats; a kind (ventricular,
  supraventricular) is present when at least ``premature_min_beats`` premature beats of that origin were found.
  ECG-QA's plain "extrasystoles" (an annotation that does not name the kind) cannot be told apart on the signal: a
  verify question about it is answered for beats of any origin, and a choice offers it only for beats of no kind
  offered (ECG-QA keeps the kinds apart).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ecgregen.ecg import STANDARD_LEADS
from ecgregen.measure.types import BeatOrigin, Measurements, QualityFlag
from ecgregen.qa_conventions import (
    ANY_NOISE,
    AXIS_RANGES_DEG,
    EXTRASYSTOLES,
    HEART_AXES,
    NO,
    NOISES,
    NONE,
    NORMAL_RANGES_MS,
    NOT_SURE,
    NUMERIC_FEATURES,
    RANGES,
    SUPRAVENTRICULAR_EXTRASYSTOLES,
    VENTRICULAR_EXTRASYSTOLES,
    YES,
    axis_class,
    is_verify,
    normalise,
    numeric_range,
    question_lead,
)

NUMERIC_FEATURE, HEART_AXIS, NOISE, EXTRA_SYSTOLE = "numeric_feature", "heart_axis", "noise", "extra_systole"
# ECG-QA's attribute types that this module answers (the others are "scp_code" and "stage_of_infarction").
MEASURED_TYPES = (NUMERIC_FEATURE, HEART_AXIS, NOISE, EXTRA_SYSTOLE)

# The measurement behind each ECG-QA numeric feature (QTc: Bazett's, as ECG-QA corrected).
FEATURE_FIELDS = {
    "rr interval": "rr_interval_ms",
    "p duration": "p_duration_ms",
    "pr interval": "pr_interval_ms",
    "qrs duration": "qrs_duration_ms",
    "qt interval": "qt_interval_ms",
    "qt corrected": "qtc_bazett_ms",
}
# Other ways a client names a feature (normalised) -> ECG-QA's name.
_FEATURE_SYNONYMS = {"qtc": "qt corrected", "corrected qt": "qt corrected", "qtc interval": "qt corrected",
                     "rr": "rr interval", "pr": "pr interval", "qrs": "qrs duration", "p wave duration": "p duration"}
# The quality flags that show each ECG-QA noise kind. Electrode problems show as a lead off, flat or railed.
NOISE_FLAGS: dict[str, frozenset[QualityFlag]] = {
    "baseline drift": frozenset({QualityFlag.BASELINE_DRIFT}),
    "static noise": frozenset({QualityFlag.STATIC_NOISE}),
    "burst noise": frozenset({QualityFlag.BURST_NOISE}),
    "electrodes problems": frozenset({QualityFlag.LEAD_OFF, QualityFlag.FLAT, QualityFlag.SATURATED}),
}
_ANY_FLAG = frozenset().union(*NOISE_FLAGS.values())
_NOISE_SYNONYMS = {"electrode problems": "electrodes problems", "electrode problem": "electrodes problems"}
_ORIGINS = {VENTRICULAR_EXTRASYSTOLES: BeatOrigin.VENTRICULAR,
            SUPRAVENTRICULAR_EXTRASYSTOLES: BeatOrigin.SUPRAVENTRICULAR}
_LEAD_OPTION = re.compile(r"^lead (\w+)$")
# Noise in other words (ECG-QA's paraphrases say "interference or distortion", "signal distortions").
_NOISE_WORDS = re.compile(r"\bnoises?\b|\binterference\b|\bdistortions?\b|\bartifacts?\b|\bartefacts?\b")
# A lead named anywhere ("Is lead V1 on this ECG showing any interference?"), not only "in lead X".
_ANY_LEAD = re.compile(r"\blead (aVR|aVL|aVF|III|II|I|V[1-6])\b", re.IGNORECASE)
# Extra systoles, also as a client says it ("extra beats"); not "premature complex", an SCP statement (PVC, PAC).
_EXTRA = re.compile(r"\bextra ?systol|\b(extra|premature|ectopic) beats?\b")


@dataclass(frozen=True)
class Unmeasured:
    """A measured-attribute question whose measurement is absent: the answer falls back, saying why."""

    attribute_type: str
    reason: str


@dataclass(frozen=True)
class MeasuredAnswer:
    answer: list[str]
    rationale: str
    attribute_type: str


def _named(text: str, phrases: Sequence[str], synonyms: dict[str, str] | None = None) -> list[str]:
    """The phrases (or their synonyms, mapped) named in normalised `text`, each once, in the order of `phrases`."""
    padded = f" {text} "
    found = {p for p in phrases if f" {normalise(p)} " in padded}
    found |= {name for alias, name in (synonyms or {}).items() if f" {alias} " in padded}
    return [p for p in phrases if p in found]


def _option_map(options: Sequence[str]) -> dict[str, str]:
    """Normalised option -> the option as offered."""
    return {normalise(o): o for o in options}


def attribute_type(question: str, options: Sequence[str]) -> str | None:
    """The measured ECG-QA attribute type a question asks about (:data:`MEASURED_TYPES`), or None."""
    q = normalise(question)
    offered = " ".join(normalise(o) for o in options)
    if _named(f"{q} {offered}", HEART_AXES) or re.search(r"\baxis\b|\bdeviated\b", q):
        return HEART_AXIS
    if "normal range" in q or any(normalise(o) in {normalise(r) for r in RANGES} for o in options):
        if _named(q, NUMERIC_FEATURES, _FEATURE_SYNONYMS) or "numeric feature" in q:
            return NUMERIC_FEATURE
    if _named(f"{q} {offered}", (*NOISES, ANY_NOISE), _NOISE_SYNONYMS) or _NOISE_WORDS.search(q):
        return NOISE
    if _EXTRA.search(q) or _EXTRA.search(offered):
        return EXTRA_SYSTOLE
    return None


def answer_from_measurements(
    question: str, options: Sequence[str], m: Measurements, *, noise_min_leads: int = 1, premature_min_beats: int = 1,
) -> MeasuredAnswer | Unmeasured | None:
    """The answer to a measured-attribute question from `m`; Unmeasured (why) where its measurement is absent; None
    when the question is not about a measured attribute. Options are answered as offered (verify: yes/no)."""
    kind = attribute_type(question, options)
    options = [o.strip() for o in options if o.strip()]
    if kind == NUMERIC_FEATURE:
        return _numeric(question, options, m)
    if kind == HEART_AXIS:
        return _axis(question, options, m)
    if kind == NOISE:
        return _noise(question, options, m, noise_min_leads)
    if kind == EXTRA_SYSTOLE:
        return _extra_systoles(question, options, m, premature_min_beats)
    return None


def _verify(holds: bool, options: Sequence[str]) -> list[str]:
    offered = _option_map(options)
    word = YES if holds else NO
    return [offered.get(word, word)]


def _chosen(holding: Sequence[str], options: Sequence[str]) -> list[str]:
    """The offered options that hold (in the options' order), else "none" where offered, else nothing."""
    wanted = {normalise(h) for h in holding}
    chosen = [o for o in options if normalise(o) in wanted]
    if chosen:
        return chosen
    return [o for o in options if normalise(o) == NONE][:1]


# --- numeric features -----------------------------------------------------------------------------------------


def _feature_value(feature: str, m: Measurements) -> tuple[float | None, str]:
    """The feature's value in ms, or None and why not."""
    name = FEATURE_FIELDS[feature]
    value = m.value(name)
    return value, "" if value is not None else m.missing.get(name, "not measured")


def _range_text(feature: str) -> str:
    low, high = NORMAL_RANGES_MS[feature]
    return f"{low:.0f}-{high:.0f} ms" if low is not None else f"<= {high:.0f} ms"


def _numeric(question: str, options: list[str], m: Measurements) -> MeasuredAnswer | Unmeasured:
    q = normalise(question)
    offered_features = [o for o in options if normalise(o) in NUMERIC_FEATURES]
    asked_range = _named(q, RANGES)
    if offered_features or (not _named(q, NUMERIC_FEATURES, _FEATURE_SYNONYMS) and asked_range):
        # "What numeric features of this ECG fall above the normal range?": every offered feature in that range.
        features = [normalise(o) for o in offered_features] or list(NUMERIC_FEATURES)
        wanted = asked_range[0] if asked_range else RANGES[1]
        measured, unmeasured = {}, {}
        for feature in features:
            value, why = _feature_value(feature, m)
            if value is None:
                unmeasured[feature] = why
            else:
                measured[feature] = value
        if not measured:
            return Unmeasured(NUMERIC_FEATURE, "; ".join(f"{f} not measured: {why}" for f, why in unmeasured.items()))
        holding = [f for f, v in measured.items() if numeric_range(f, v) == wanted]
        answer = _chosen(holding, options) if options else holding
        shown = ", ".join(f"{f} {v:.0f} ms ({numeric_range(f, v).split()[0]} {_range_text(f)})"
                          for f, v in measured.items())
        absent = "".join(f"; {f} not measured ({why}), counted as not {wanted}" for f, why in unmeasured.items())
        return MeasuredAnswer(answer, f"measured {shown}; {wanted}: {', '.join(holding) or 'none'}{absent} "
                                      "(ECG-QA's normal ranges)", NUMERIC_FEATURE)
    feature = _named(q, NUMERIC_FEATURES, _FEATURE_SYNONYMS)[0]
    value, why = _feature_value(feature, m)
    if value is None:
        return Unmeasured(NUMERIC_FEATURE, f"{feature} not measured: {why}")
    found = numeric_range(feature, value)
    if is_verify(options):
        answer = _verify(bool(asked_range) and found == asked_range[0], options)
    else:
        answer = _chosen([found], options) if options else [found]
    return MeasuredAnswer(answer, f"{feature} measured {value:.0f} ms: {found} (ECG-QA's normal range "
                                  f"{_range_text(feature)})", NUMERIC_FEATURE)


# --- heart axis -------------------------------------------------------------------------------------------------


def _axis(question: str, options: list[str], m: Measurements) -> MeasuredAnswer | Unmeasured:
    if m.qrs_axis_deg is None:
        return Unmeasured(HEART_AXIS, f"QRS axis not measured: {m.missing.get('qrs_axis_deg', 'not measured')}")
    found = axis_class(m.qrs_axis_deg)
    if is_verify(options):
        asked = _named(normalise(question), HEART_AXES)
        answer = _verify(bool(asked) and asked[0] == found, options)
    else:
        answer = _chosen([found], options) if options else [found]
    low, high = AXIS_RANGES_DEG[found]
    return MeasuredAnswer(answer, f"QRS axis measured {m.qrs_axis_deg:.0f} deg: {found} (ECG-QA: {low:.0f} to "
                                  f"{high:.0f} deg)", HEART_AXIS)


# --- noise ------------------------------------------------------------------------------------------------------


def _flagged(kind: str, m: Measurements) -> list[str]:
    """The recorded leads carrying a quality flag of this noise kind (ANY_NOISE: any kind), in standard order."""
    flags = _ANY_FLAG if kind == ANY_NOISE else NOISE_FLAGS[kind]
    return [lead for lead in STANDARD_LEADS
            if lead not in m.not_recorded and flags & set(m.lead_quality.get(lead, ()))]


def _noise(question: str, options: list[str], m: Measurements, min_leads: int) -> MeasuredAnswer | Unmeasured:
    if not m.lead_quality:
        return Unmeasured(NOISE, "lead quality not measured")
    q = normalise(question)
    named = question_lead(question) or (m_.group(1) if (m_ := _ANY_LEAD.search(question)) else None)
    lead = next((name for name in STANDARD_LEADS if named and name.lower() == named.lower()), None)
    if lead in m.not_recorded:  # nothing to judge: "not sure" where offered, else the answer without measurements
        why = f"lead {lead} not recorded (the monitor does not send it)"
        if is_verify(options):
            return MeasuredAnswer([_option_map(options).get(NOT_SURE, NOT_SURE)], f"{why}: its noise cannot be judged",
                                  NOISE)
        return Unmeasured(NOISE, why)
    flagged = {kind: _flagged(kind, m) for kind in (*NOISES, ANY_NOISE)}
    shown = "; ".join(f"{kind} in {', '.join(leads)}" for kind, leads in flagged.items() if leads and kind in NOISES)
    unrecorded = f" (not recorded, not judged: {', '.join(m.not_recorded)})" if m.not_recorded else ""
    evidence = f"lead quality flags: {shown or 'none'}{unrecorded}"

    def present(kind: str) -> bool:
        return lead in flagged[kind] if lead else len(flagged[kind]) >= min_leads

    where = f" in lead {lead}" if lead else f" (present from {min_leads} lead{'s' if min_leads > 1 else ''})"
    lead_options = {o: m_.group(1) for o in options if (m_ := _LEAD_OPTION.match(normalise(o)))}
    if lead_options:  # "What leads are showing static noise in this ECG?"
        kind = (_named(q, NOISES, _NOISE_SYNONYMS) or [ANY_NOISE])[0]
        holding = [o for o, name in lead_options.items() if name in {x.lower() for x in flagged[kind]}]
        return MeasuredAnswer(holding or _chosen([], options), f"{evidence}; leads with {kind}", NOISE)
    if is_verify(options):
        asked = (_named(q, NOISES, _NOISE_SYNONYMS) or [ANY_NOISE])[0]
        return MeasuredAnswer(_verify(present(asked), options), f"{evidence}; {asked}{where}", NOISE)
    if not options:
        return MeasuredAnswer([kind for kind in NOISES if present(kind)], f"{evidence}; kinds{where}", NOISE)
    offered = [o for o in options if normalise(o) in NOISES or normalise(o) in _NOISE_SYNONYMS]
    holding = [o for o in offered if present(_NOISE_SYNONYMS.get(normalise(o), normalise(o)))]
    return MeasuredAnswer(_chosen(holding, options), f"{evidence}; offered kinds{where}", NOISE)


# --- extra systoles ---------------------------------------------------------------------------------------------


def _extra_systoles(question: str, options: list[str], m: Measurements, min_beats: int) -> MeasuredAnswer | Unmeasured:
    if m.rr_interval_ms is None:
        return Unmeasured(EXTRA_SYSTOLE, f"beats not measured: {m.missing.get('rr_interval_ms', 'too few beats')}")
    counts = m.premature_counts
    any_found = len(m.premature_beats) >= min_beats
    kinds = [kind for kind, origin in _ORIGINS.items() if counts[origin] >= min_beats]
    evidence = (f"premature beats among {m.beat_count}: {counts[BeatOrigin.VENTRICULAR]} ventricular, "
                f"{counts[BeatOrigin.SUPRAVENTRICULAR]} supraventricular (present from {min_beats})")
    if is_verify(options):
        # "ventricular extrasystoles" also contains "extrasystoles": the most specific kind named wins.
        asked = _named(normalise(question), (VENTRICULAR_EXTRASYSTOLES, SUPRAVENTRICULAR_EXTRASYSTOLES))
        holds = asked[0] in kinds if asked else any_found
        return MeasuredAnswer(_verify(holds, options), f"{evidence}; {asked[0] if asked else 'any kind'}",
                              EXTRA_SYSTOLE)
    if not options:
        return MeasuredAnswer(kinds, evidence, EXTRA_SYSTOLE)
    offered = {normalise(o) for o in options}
    holding = [k for k in kinds if k in offered]
    if not holding and any_found and EXTRASYSTOLES in offered:  # found, but of no kind offered
        holding = [EXTRASYSTOLES]
    return MeasuredAnswer(_chosen(holding, options), evidence, EXTRA_SYSTOLE)
