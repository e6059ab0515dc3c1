"""ECG-QA's single-ECG question templates (1-42): their wording, answer classes, and the attribute pools questions
draw from.

The built-in :data:`TEMPLATES` equal the published ``templates.csv`` (checked by the tests), so generation needs no
file; :func:`load_templates` reads the published one where a caller has it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ecgregen.evaluate.ecgqa.vocabulary import (
    CODE_NAMES,
    DIAGNOSTIC_CODES,
    FORM_CODES,
    FORM_IN_LEAD_CODES,
    LEADS,
    RHYTHM_CODES,
    STAGE_ANSWERS,
    STAGES,
    SUPERCLASSES,
)
from ecgregen.qa_conventions import (
    EXTRA_SYSTOLES,
    HEART_AXES,
    NO,
    NOISES,
    NONE,
    NOT_SURE,
    NUMERIC_FEATURES,
    RANGES,
    YES,
)


@dataclass(frozen=True)
class Template:
    """One ECG-QA question template, as a row of the published ``templates.csv``."""

    template_id: int
    question_type: str  # single-verify | single-choose | single-query
    attribute_type: str  # scp_code | heart_axis | stage_of_infarction | noise | extra_systole | numeric_feature
    wording: str  # with {attribute}, {attribute_a}/{attribute_b}, {lead}, ... placeholders
    answer_classes: tuple[str, ...]


_WORDING: dict[int, tuple[str, str, str]] = {
    1: ("single-verify", "scp_code", "Does this ECG show symptoms of {attribute}?"),
    2: ("single-verify", "scp_code", "Is this a normal ECG?"),
    3: ("single-choose", "scp_code", "Which symptom does this ECG show, {attribute_a} or {attribute_b}?"),
    4: ("single-choose", "scp_code",
        "Which diagnostic symptom does this ECG show, {attribute_a} or {attribute_b}, including uncertain symptoms?"),
    5: ("single-choose", "scp_code",
        "Which diagnostic symptom does this ECG show, {attribute_a} or {attribute_b}, excluding uncertain symptoms?"),
    6: ("single-choose", "scp_code", "Which form-related symptom does this ECG show, {attribute_a} or {attribute_b}?"),
    7: ("single-choose", "scp_code",
        "Which rhythm-related symptom does this ECG show, {attribute_a} or {attribute_b}?"),
    8: ("single-query", "scp_code", "What diagnostic symptoms does this ECG show, including uncertain symptoms?"),
    9: ("single-query", "scp_code", "What diagnostic symptoms does this ECG show, excluding uncertain symptoms?"),
    10: ("single-query", "scp_code", "What rhythm-related symptoms does this ECG show?"),
    11: ("single-query", "scp_code", "What form-related symptoms does this ECG show?"),
    12: ("single-verify", "scp_code", "Does this ECG show any kind of abnormal symptoms?"),
    13: ("single-verify", "scp_code", "Does this ECG show any diagnostic symptoms, including uncertain symptoms?"),
    14: ("single-verify", "scp_code", "Does this ECG show any diagnostic symptoms, excluding uncertain symptoms?"),
    15: ("single-verify", "scp_code", "Does this ECG show any form-related symptoms?"),
    16: ("single-verify", "scp_code", "Does this ECG show any rhythm-related symptoms?"),
    17: ("single-verify", "scp_code", "Does this ECG show symptoms of {attribute} in {lead}?"),
    18: ("single-query", "scp_code", "What form-related symptoms does this ECG show in {lead}?"),
    19: ("single-query", "scp_code", "What leads are showing symptoms of {attribute} in this ECG?"),
    20: ("single-verify", "heart_axis", "Does this ECG show {attribute}?"),
    21: ("single-choose", "heart_axis", "Which cardiac axis does this ECG show, {attribute_a} or {attribute_b}?"),
    22: ("single-query", "heart_axis", "What direction is this ECG deviated to?"),
    23: ("single-verify", "stage_of_infarction", "Does this ECG show {attribute}?"),
    24: ("single-choose", "stage_of_infarction",
         "Which stage of infarction is this ECG at, {attribute_a} or {attribute_b}?"),
    25: ("single-query", "stage_of_infarction", "What stage of infarction is this ECG at?"),
    26: ("single-verify", "noise", "Does this ECG show {attribute} in {lead}?"),
    27: ("single-verify", "noise", "Does this ECG show {attribute}?"),
    28: ("single-verify", "noise", "Does this ECG show any kind of noises in {lead}?"),
    29: ("single-verify", "noise", "Does this ECG show any kind of noises?"),
    30: ("single-choose", "noise", "Which noise does this ECG show, {attribute_a} or {attribute_b}?"),
    31: ("single-choose", "noise", "Which noise does this ECG show in {lead}, {attribute_a} or {attribute_b}?"),
    32: ("single-query", "noise", "What kind of noises does this ECG show?"),
    33: ("single-query", "noise", "What kind of noises does this ECG show in {lead}?"),
    34: ("single-query", "noise", "What leads are showing {attribute} in this ECG?"),
    35: ("single-verify", "extra_systole", "Does this ECG show any kind of extra systoles?"),
    36: ("single-verify", "extra_systole", "Does this ECG show {attribute}?"),
    37: ("single-choose", "extra_systole",
         "Which kind of extra systoles does this ECG show, {attribute_a} or {attribute_b}?"),
    38: ("single-query", "extra_systole", "What kind of extra systole does this ECG show?"),
    39: ("single-verify", "numeric_feature", "Does the {numeric_feature} of this ECG fall {range}?"),
    40: ("single-choose", "numeric_feature",
         "Which range does the {numeric_feature} of this ECG fall in, {range_a} or {range_b}?"),
    41: ("single-query", "numeric_feature", "What range does the {numeric_feature} of this ECG fall in?"),
    42: ("single-query", "numeric_feature", "What numeric features of this ECG fall {range}?"),
}

_LEAD_ANSWERS = tuple(f"lead {lead}" for lead in LEADS)
# Attribute pools: what a choose question picks its two attributes from, and the attribute list of a query question
# (published queries carry the whole pool, in this order). Verify templates pick one attribute from their pool.
POOLS: dict[int, tuple[str, ...]] = {
    1: (*dict.fromkeys(CODE_NAMES.values()), *SUPERCLASSES),
    3: tuple(SUPERCLASSES),
    **{t: tuple(DIAGNOSTIC_CODES.values()) for t in (4, 5, 8, 9)},
    **{t: tuple(FORM_CODES.values()) for t in (6, 11)},
    **{t: tuple(RHYTHM_CODES.values()) for t in (7, 10)},
    18: tuple(FORM_CODES[c] for c in FORM_IN_LEAD_CODES),
    21: HEART_AXES,
    22: HEART_AXES,
    23: STAGES,
    24: STAGES,
    25: STAGE_ANSWERS,
    **{t: NOISES for t in (26, 27, 30, 31, 32, 33, 34)},
    **{t: EXTRA_SYSTOLES for t in (36, 37, 38)},
}
# Verify templates with a fixed attribute (the published attribute list holds this one phrase).
FIXED_ATTRIBUTES: dict[int, str] = {
    2: "normal ecg",
    12: "any kind of abnormal symptoms",
    13: "any diagnostic symptoms",
    14: "any diagnostic symptoms",
    15: "any form-related symptoms",
    16: "any rhythm-related symptoms",
    28: "any kind of noises",
    29: "any kind of noises",
    35: "any kind of extra systoles",
}
_LEAD_TEMPLATES = frozenset({17, 18, 26, 28, 31, 33})


def _answer_classes(template_id: int, question_type: str) -> tuple[str, ...]:
    if template_id == 1:
        return (NO, NOT_SURE, YES)
    if question_type == "single-verify":
        return (NO, YES)
    pool = {19: _LEAD_ANSWERS, 34: _LEAD_ANSWERS, 40: RANGES, 41: RANGES, 42: NUMERIC_FEATURES}.get(
        template_id, POOLS.get(template_id, ()))
    if question_type == "single-query" and template_id in (22, 25, 41):  # these always have an answer
        return tuple(sorted(pool))
    return tuple(sorted({*pool, NONE}))


TEMPLATES: dict[int, Template] = {
    tid: Template(tid, qtype, atype, wording, _answer_classes(tid, qtype))
    for tid, (qtype, atype, wording) in _WORDING.items()
}


def load_templates(path: Path | None = None) -> dict[int, Template]:
    """The published ``templates.csv`` (template_id, question_type, attribute_type, template, answer_classes), or
    without a path the built-in :data:`TEMPLATES` (templates 1-42, equal to the published ones)."""
    if path is None:
        return dict(TEMPLATES)
    table = pd.read_csv(path)
    return {
        int(row.template_id): Template(int(row.template_id), row.question_type, row.attribute_type, row.template,
                                       tuple(json.loads(row.answer_classes)))
        for row in table.itertuples()
    }


def needs_lead(template_id: int) -> bool:
    """Whether the question names a lead (which the published attribute list does not carry)."""
    return template_id in _LEAD_TEMPLATES
