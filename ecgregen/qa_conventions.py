"""ECG-QA's conventions that serving and evaluation both follow, kept below both so that each reads them from here.

- How ECG-QA reads a PTB-XL label (:func:`label_state`): the rule its ground truth was built with, which the label
  answerer (:mod:`ecgregen.answer`) votes by and the metadata rules (:mod:`ecgregen.evaluate.ecgqa`) answer by.
- Its answer words and how a verify (yes/no) question shows (:func:`is_verify`), which the label answerer and the LLM
  prompt (:mod:`ecgregen.llm.prompts`) must agree on, or the LLM and its fallback would treat one request differently.
- The lead a question names (:func:`question_lead`).
- The words and ranges of its measured attributes - numeric features, heart axis, noise, extra systoles - which the
  measurement answerer (:mod:`ecgregen.answer_measured`) answers by and the metadata rules ask with.

Serving code imports this module and evaluation code may; it imports neither, so serving never depends on evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

YES, NO, NOT_SURE, NONE = "yes", "no", "not sure", "none"
VERIFY_OPTIONS = frozenset({YES, NO, NOT_SURE})

# --- ECG-QA's measured attributes ----------------------------------------------------------------------------------
# Source: the generator of ECG-QA's PTB-XL questions, fairseq-signals
# `fairseq_signals/data/ecg_text/preprocess/ptbxl_qa_pipelines/encode_ptbxl.py` (commit 1865c0c; the ECG-QA README
# points there), cross-checked on the published questions whose ECG has a signal here (tests/test_answer.py). It
# measured every beat of lead II of the 500 Hz record with neurokit2 (cleaning, R peaks, DWT delineation), left out
# RR intervals of 2 s or more, corrected QT per beat by Bazett with the RR before it, and gave no numeric feature
# where an annotator had marked noise or extra beats in lead II (no axis where in lead I or aVF).
NUMERIC_FEATURES = ("rr interval", "p duration", "pr interval", "qrs duration", "qt interval", "qt corrected")
BELOW, WITHIN, ABOVE = "below the normal range", "within the normal range", "above the normal range"
RANGES = (BELOW, WITHIN, ABOVE)
# Normal range per feature, ms, both edges inside (the source's seconds x 1000): RR 0.6-1.0 s; P duration has no lower
# edge (ECG-QA never answers "below" for it); PR 0.12-0.2; QRS 0.06-0.11; QT 0.33-0.43; QTc from 0.33 / sqrt(1.0)
# to 0.43 / sqrt(0.6) s, the QT range carried to RR 1.0 and 0.6 s.
NORMAL_RANGES_MS: dict[str, tuple[float | None, float]] = {
    "rr interval": (600.0, 1000.0),
    "p duration": (None, 120.0),
    "pr interval": (120.0, 200.0),
    "qrs duration": (60.0, 110.0),
    "qt interval": (330.0, 430.0),
    "qt corrected": (330.0, 430.0 / 0.6 ** 0.5),
}
NORMAL_AXIS, LEFT_AXIS = "normal heart axis", "left axis deviation"
RIGHT_AXIS, EXTREME_AXIS = "right axis deviation", "extreme axis deviation"
HEART_AXES = (LEFT_AXIS, RIGHT_AXIS, EXTREME_AXIS, NORMAL_AXIS)
# Frontal QRS axis per class, degrees, [low, high) (and 180 right): the source's normal -30 <= a < 90, left -90 <= a <
# -30, right 90 <= a <= 180, extreme -180 <= a <= -90 (it counts -90 as both left and extreme; here it is left).
AXIS_RANGES_DEG: dict[str, tuple[float, float]] = {
    NORMAL_AXIS: (-30.0, 90.0),
    LEFT_AXIS: (-90.0, -30.0),
    RIGHT_AXIS: (90.0, 180.0),
    EXTREME_AXIS: (-180.0, -90.0),
}
# Noise and extra systoles were not measured: they are PTB-XL's annotations (the noise columns' lead lists, the
# extra_beats column), read by :mod:`ecgregen.evaluate.ecgqa.metadata`.
NOISE_COLUMNS: dict[str, str] = {
    "baseline drift": "baseline_drift",
    "static noise": "static_noise",
    "burst noise": "burst_noise",
    "electrodes problems": "electrodes_problems",
}
NOISES = tuple(NOISE_COLUMNS)
ANY_NOISE = "any kind of noises"
EXTRASYSTOLES, VENTRICULAR_EXTRASYSTOLES = "extrasystoles", "ventricular extrasystoles"
SUPRAVENTRICULAR_EXTRASYSTOLES = "supraventricular extrasystoles"
EXTRA_SYSTOLES = (EXTRASYSTOLES, VENTRICULAR_EXTRASYSTOLES, SUPRAVENTRICULAR_EXTRASYSTOLES)
ANY_EXTRA_SYSTOLE = "any kind of extra systoles"


def numeric_range(feature: str, value_ms: float) -> str:
    """ECG-QA's range word for a numeric feature's value (:data:`NORMAL_RANGES_MS`)."""
    low, high = NORMAL_RANGES_MS[feature]
    if low is not None and value_ms < low:
        return BELOW
    return ABOVE if value_ms > high else WITHIN


def axis_class(qrs_axis_deg: float) -> str:
    """ECG-QA's heart axis class for a frontal QRS axis in degrees (:data:`AXIS_RANGES_DEG`)."""
    angle = 180.0 - (180.0 - qrs_axis_deg) % 360.0  # into (-180, 180]
    return next(name for name, (low, high) in AXIS_RANGES_DEG.items()
                if low <= angle < high or angle == high == 180.0)

_LEAD = re.compile(r"\bin lead (\w+)", re.IGNORECASE)


def normalise(text: str) -> str:
    """Lower case, punctuation as spaces (except the '/' of "st/t"), single spaces: the form phrases are matched in."""
    return re.sub(r"[^a-z0-9/]+", " ", text.lower()).strip()


def is_certain(likelihood: float) -> bool:
    """PTB-XL likelihood 100 = certain; 0 = "not given" (form and rhythm statements always are): ECG-QA says yes."""
    return likelihood == 100 or likelihood == 0


def label_state(scp_codes: Mapping[str, float], codes: Iterable[str]) -> str:
    """ECG-QA's yes / not sure / no for "does this ECG show X?" from the ECG's SCP labels, X standing for ``codes``
    (one statement, or the members of a superclass or group, which take their best state).

    Yes = some code listed with likelihood 100, or 0 as rhythm and form codes are listed; not sure = listed only with
    0 < likelihood < 100; no = not listed. Read off the published answers and exact on every template-1 question of
    the sample (tests/test_ecgqa.py).
    """
    present = [scp_codes[c] for c in codes if c in scp_codes]
    if any(is_certain(v) for v in present):
        return YES
    return NOT_SURE if present else NO


def is_verify(options: Sequence[str]) -> bool:
    """Whether a question offering these options is a verify question: some options, all of them yes / no / not sure.

    Options are compared after :func:`normalise`, so case and punctuation do not count ("Yes.", "not-sure"). ECG-QA's
    own options (a template's answer classes) are lower-case words without punctuation, on which this agrees with a
    plain lower-case comparison for every published question (tests/test_ecgqa.py); the rule matters for options a
    client types. It follows the label answerer, which matches every option after :func:`normalise` (as the LLM reply
    parser does); the prompt builder's copy compared lower-cased text only, so it sent "Yes."/"No." questions to the
    LLM as choose/query questions while its fallback answered them as verify questions.
    """
    named = {normalise(o) for o in options if o.strip()}
    return bool(named) and named <= VERIFY_OPTIONS


def question_lead(question: str) -> str | None:
    """The lead a question names ("... in lead aVF?" -> "aVF"), as written; None when it names none.

    Case-insensitive ("In lead V2"): a client's question is free text. ECG-QA's always say "in lead", so for them
    this is the case-sensitive match the metadata rules used before.
    """
    match = _LEAD.search(question)
    return match.group(1) if match else None
