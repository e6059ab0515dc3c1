"""ECG-QA's conventions that serving and evaluation both follow, kept below both so that each reads them from here.

- How ECG-QA reads a PTB-XL label (:func:`label_state`): the rule its ground truth was built with, which the label
  answerer (:mod:`ecgregen.answer`) votes by and the metadata rules (:mod:`ecgregen.evaluate.ecgqa`) answer by.
- Its answer words and how a verify (yes/no) question shows (:func:`is_verify`), which the label answerer and the LLM
  prompt (:mod:`ecgregen.llm.prompts`) must agree on, or the LLM and its fallback would treat one request differently.
- The lead a question names (:func:`question_lead`).

Serving code imports this module and evaluation code may; it imports neither, so serving never depends on evaluation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

YES, NO, NOT_SURE, NONE = "yes", "no", "not sure", "none"
VERIFY_OPTIONS = frozenset({YES, NO, NOT_SURE})

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
