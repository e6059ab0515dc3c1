"""ECG-QA's answer rules: the true answer to a single-ECG question, computed from the ECG's PTB-XL metadata.

ECG-QA built its single-ECG questions (templates 1-42) from PTB-XL's metadata table, so for most templates the true
answer is a function of one ``ptbxl_database.csv`` row. :func:`answer_from_metadata` is that function, with rules
read off the published questions and checked against them (:mod:`ecgregen.evaluate.ecgqa.check`; a rule's comment
says what the data showed). How a single label reads (yes / not sure / no) is shared with the serving answerer:
:func:`ecgregen.qa_conventions.label_state`.

Out of reach of the metadata, and so raising :class:`UnsupportedTemplate`:

- 17-19 (scp code *in a lead*): ECG-QA read the leads from the free-text report, not from any column;
- 20-22 (heart axis): the answers disagree with the ``heart_axis`` column (e.g. "right axis deviation: yes" for
  ``MID`` and for empty axes), so ECG-QA took the axis from elsewhere (the signal);
- 39-42 (numeric features such as QRS duration): measured on the signal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ecgregen.evaluate.ecgqa.metadata import EcgMetadata, parse_extra_systoles
from ecgregen.evaluate.ecgqa.templates import TEMPLATES, Template, needs_lead
from ecgregen.evaluate.ecgqa.vocabulary import (
    ALL_DIAGNOSTIC,
    ALL_FORM,
    ALL_RHYTHM,
    LEADS,
    NAME_CODES,
    NO_INFARCTION,
    STAGES,
    SUPERCLASSES,
    UNKNOWN_STAGE,
)
from ecgregen.qa_conventions import NO, NONE, NOT_SURE, YES, is_certain, label_state


class UnsupportedTemplate(ValueError):
    """The template's answer cannot be derived from PTB-XL metadata (see the module docstring for which and why)."""


def codes_of(attribute: str) -> tuple[str, ...]:
    """The SCP codes an ECG-QA scp_code attribute stands for: a superclass's members, or the one statement."""
    if attribute in SUPERCLASSES:
        return SUPERCLASSES[attribute]
    if attribute in NAME_CODES:
        return (NAME_CODES[attribute],)
    raise ValueError(f"unknown scp_code attribute {attribute!r}")


def _shown(codes: Mapping[str, float], names: Iterable[str], *, uncertain: bool) -> list[str]:
    """The named statements (or superclasses) the ECG shows, in the order given."""
    wanted = {YES, NOT_SURE} if uncertain else {YES}
    return [name for name in names if label_state(codes, codes_of(name)) in wanted]


def _stage(meta: EcgMetadata) -> str:
    """ECG-QA's infarction stage: the later assessment (stadium2) wins; a range "II-III" reads as its first stage.

    Seen: stadium1 "Stadium I" + stadium2 "Stadium III" -> old only; "Stadium II-III" -> middle, not old.
    """
    text = meta.infarction_stadium2 or meta.infarction_stadium1
    if text is None:
        return NO_INFARCTION
    match = re.match(r"stadium\s+(i{1,3})", text.lower())
    if match is None:
        return UNKNOWN_STAGE
    return STAGES[len(match.group(1)) - 1]


def _verify(flag: bool) -> list[str]:
    return [YES if flag else NO]


def _or_none(answers: list[str]) -> list[str]:
    return answers or [NONE]


def supported_templates() -> set[int]:
    """Templates :func:`answer_from_metadata` can answer."""
    return set(range(1, 17)) | set(range(23, 39))


def answer_from_metadata(
    template_id: int, attribute: Sequence[str], row: EcgMetadata | Mapping[str, Any], *, lead: str | None = None,
) -> list[str]:
    """The answer ECG-QA gives for this template and attribute list on an ECG with this metadata.

    ``row`` is a PTB-XL metadata row (a mapping such as a pandas Series) or an :class:`EcgMetadata`. Choose and
    query answers list what holds in the order of ``attribute``; "none" when nothing does. Lead-level templates
    (:func:`needs_lead`) need ``lead`` ("aVF"; see :func:`ecgregen.qa_conventions.question_lead`).
    """
    if template_id not in supported_templates():
        wording = TEMPLATES[template_id].wording if template_id in TEMPLATES else "?"
        raise UnsupportedTemplate(f"template {template_id} ({wording}) "
                                  "cannot be answered from PTB-XL metadata")
    meta = row if isinstance(row, EcgMetadata) else EcgMetadata.from_row(row)
    if needs_lead(template_id) and lead not in LEADS:
        raise ValueError(f"template {template_id} needs a lead (one of {', '.join(LEADS)}), got {lead!r}")
    codes = meta.scp_codes
    attribute = list(attribute)

    match template_id:
        # scp_code: likelihood 100 or 0 = yes, 0 < likelihood < 100 = not sure, absent = no (exact on template 1).
        case 1:
            return [label_state(codes, codes_of(attribute[0]))]
        # "normal ecg" is the NORM statement with the uncertainty collapsed (the template has no "not sure"): NORM at
        # any likelihood = yes, as template 12 treats {'NORM': 50, 'SR': 0} as not abnormal. The published sample
        # only has "no" answers (all without NORM), so the "yes" side is this reading, not an observation.
        case 2:
            return _verify("NORM" in codes)
        # Choose/query without "excluding uncertain" count uncertain statements: {'IMI': 15} shows "myocardial
        # infarction", {'DIG': 35} shows "digitalis effect" as a form-related symptom.
        case 3 | 4 | 6 | 7 | 8 | 10 | 11:
            return _or_none(_shown(codes, attribute, uncertain=True))
        case 5 | 9:
            return _or_none(_shown(codes, attribute, uncertain=False))
        # Abnormal = anything listed but NORM and SR: all 29 "no" ECGs are exactly NORM (50-100) + SR, though 23% of
        # PTB-XL's NORM ECGs list more (e.g. SARRH).
        case 12:
            return _verify(any(c not in ("NORM", "SR") for c in codes))
        # NORM is not a diagnostic symptom ({'NORM': 35, 'SR': 0} -> no).
        case 13:
            return _verify(any(c in ALL_DIAGNOSTIC for c in codes))
        case 14:
            return _verify(any(c in ALL_DIAGNOSTIC and is_certain(v) for c, v in codes.items()))
        case 15:
            return _verify(any(c in ALL_FORM for c in codes))
        # SR counts as rhythm-related: all 31 "no" ECGs list no rhythm statement at all, though 77% of PTB-XL lists SR
        # as its only one.
        case 16:
            return _verify(any(c in ALL_RHYTHM for c in codes))
        # Stage: see _stage. The sample's template-23 answers are all "no" and template 25 only shows "none of" and
        # "unknown stage of myocardial infarction" (stadium1 empty / "unknown"); template 24 pins the rest.
        case 23:
            return _verify(_stage(meta) == attribute[0])
        case 24:
            return _or_none([a for a in attribute if a == _stage(meta)])
        case 25:
            return [_stage(meta)]
        # Noise: a kind is present where its column names a lead (see parse_noise_leads; exact on 8,498 published
        # noise questions, 7,609 of them about one lead).
        case 26:
            return _verify(lead in meta.noise[attribute[0]])
        case 27:
            return _verify(bool(meta.noise[attribute[0]]))
        case 28:
            return _verify(any(lead in leads for leads in meta.noise.values()))
        case 29:
            return _verify(any(meta.noise.values()))
        case 30 | 32:
            return _or_none([a for a in attribute if meta.noise[a]])
        case 31 | 33:
            return _or_none([a for a in attribute if lead in meta.noise[a]])
        case 34:
            return _or_none([f"lead {lead}" for lead in LEADS if lead in meta.noise[attribute[0]]])
        # Extra systoles: any entry in extra_beats (all 18 sampled template-35 answers are "yes"; "1,V3" counts),
        # kinds as parse_extra_systoles (template 37 pins them; 36 and 38 were only sampled with "no"/"none").
        case 35:
            return _verify(meta.extra_beats is not None)
        case 36:
            return _verify(attribute[0] in parse_extra_systoles(meta.extra_beats))
        case 37 | 38:
            kinds = parse_extra_systoles(meta.extra_beats)
            return _or_none([a for a in attribute if a in kinds])
    raise AssertionError(f"template {template_id} is listed as supported but has no rule")


def answer_options(template_id: int, attribute: Sequence[str],
                   templates: Mapping[int, Template] | None = None) -> list[str]:
    """The answers an answerer should be offered: a choose question's two attributes and "none" (published
    answers may hold both attributes); otherwise the template's answer classes. A numeric feature's attribute names
    the feature too ("within the normal range of rr interval") while its answer is the range alone: the range is
    offered."""
    template = (templates or TEMPLATES)[template_id]
    if template.question_type == "single-choose":
        return [*(a.split(" of ")[0] if template.attribute_type == "numeric_feature" else a for a in attribute), NONE]
    return list(template.answer_classes)
