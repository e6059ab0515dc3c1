"""Every text the LLM sees, in one place: the paper's QA prompt, its per-type question prompts, and refinement.

The QA prompt follows ECG-ReGen (system prompt, "Question Specific Prompt", "Think step-by-step...", the
concatenated reports and diagnoses of the top-k neighbours, the question). Two additions, both for safety of the
contract rather than wording: the allowed options are listed on their own line, and the question is quoted as
data (newlines folded) so a question cannot start a new prompt section. The JSON schema sent beside the prompt
restricts the answer to the options where the endpoint supports constrained output. A third addition, when the
retrieval predicted diagnoses (:mod:`ecgregen.diagnoses`): a "Predicted diagnoses" line after the neighbours'
diagnoses, the most probable statements with their calibrated probabilities. A fourth, when the ECG was measured
(:mod:`ecgregen.measure`): a "Measurements" line with what its own samples show - the cart line (rate, PR, QRS,
QT/QTc, axes), rhythm, P waves, premature beats and flagged leads - evidence about this ECG rather than about its
neighbours. Refinement gets the same line. A fifth: the neighbours' reports are given in English (the corpus
glossary's translation stored with each record, :mod:`ecgregen.reports`), as the paper's evaluation used them -
most PTB-XL reports are German or Swedish cart text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from string import Template
from typing import Any

from ecgregen.api_values import QuestionType
from ecgregen.diagnoses import Diagnosis
from ecgregen.measure.types import Measurements, cart_line
from ecgregen.qa_conventions import is_verify
from ecgregen.store import Hit

QUESTION_TYPES = tuple(QuestionType)  # the order reports list them in

QA_SYSTEM_PROMPT = (
    "Given the closest ECG retrieved reports and diagnoses to the test ECG as discovered by a multimodal model. "
    "Your job is to analyze the report and only answer the question. "
    'Output should be JSON of the following structure: {"answer": [...]}, '
    "where the list holds only answers taken from the options."
)

QUESTION_PROMPTS = {
    "single-verify": "Answer should be only yes and no.",
    "single-choose": (
        "Choose correct answer from the options provided below. If none of the options is correct, answer will be "
        "'none'. If both conditions are present then provide both options as an answer."
    ),
    "single-query": (
        "Choose correct answers from the options provided below. More than one answer can be correct: give every "
        "option that applies. If none of the options applies, answer will be 'none'."
    ),
}

QA_USER_TEMPLATE = Template(
    "Question Specific Prompt: ${question_prompt}\n"
    "Think step-by-step to generate an answer without any explanation.\n"
    "ECG Reports: ${reports}\n"
    "Diagnoses: ${diagnoses}\n"
    "${predicted}"
    "${measured}"
    "Question: ${question}\n"
    "Options: ${options}"
)
PREDICTED_DIAGNOSES_SHOWN = 10  # the most probable predicted diagnoses in the prompt
MEASUREMENTS_LABEL = "Measurements of this ECG (from its samples)"

REFINE_SYSTEM_PROMPT = (
    "You are assisting a cardiologist. You get the report of the ECG most similar to a patient's ECG and the "
    "reports and diagnoses of the next most similar ECGs. Rewrite the first report as a concise ECG report for "
    "the patient's ECG, in English, keeping only findings the evidence supports and adding none it does not. "
    "Do not mention the retrieval or the other ECGs. When measurements of the patient's ECG are given, they come "
    "from its own samples: the report must not contradict them. Output only the report text."
)

REFINE_USER_TEMPLATE = Template(
    "Closest report: ${report}\n"
    "Closest diagnoses: ${diagnoses}\n"
    "Other retrieved reports: ${other_reports}\n"
    "Other diagnoses: ${other_diagnoses}"
    "${measured}"
)


def infer_question_type(question: str, options: Sequence[str]) -> str:
    """ECG-QA's type from the options and wording: yes/no options verify (:func:`~ecgregen.qa_conventions.is_verify`,
    the label answerer's rule); "X or Y" with options chooses; the rest query."""
    if is_verify(options):
        return "single-verify"
    if re.search(r"\bor\b", question, re.IGNORECASE) and any(o.strip() for o in options):
        return "single-choose"
    return "single-query"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe_labels(scp_codes: Mapping[str, float], descriptions: Mapping[str, str]) -> str:
    """'sinus rhythm (SR), normal ECG (NORM 100%)': the codes of one record, likeliest first, with their wording."""
    if not scp_codes:
        return "none"
    parts = []
    for code, likelihood in sorted(scp_codes.items(), key=lambda kv: (-kv[1], kv[0])):
        name = descriptions.get(code, code)
        parts.append(f"{name} ({code} {likelihood:g}%)" if likelihood else f"{name} ({code})")
    return ", ".join(parts)


def describe_diagnoses(diagnoses: Sequence[Diagnosis], limit: int = PREDICTED_DIAGNOSES_SHOWN) -> str:
    """'sinus rhythm (SR) 93% present, normal ECG (NORM) 41%': the most probable predicted diagnoses, with their
    calibrated probability, "present" where it is at or over the statement's threshold."""
    shown = sorted(diagnoses, key=lambda d: (-d.probability, d.code))[:limit]
    return ", ".join(
        f"{_one_line(d.description) or d.code} ({d.code}) {100 * d.probability:.0f}%" + (" present" if d.present else "")
        for d in shown
    )


def describe_measurements(m: Measurements) -> str:
    """'Rate 72 bpm | PR 160 ms | ... | Axes P/QRS/T 50/30/40; rhythm: sinus rhythm; P waves: present; premature
    beats: 1 ventricular; flagged leads: V1 lead_off': what the ECG's samples measure, as a cart prints it (an
    unmeasured value is "-")."""
    premature = ", ".join(f"{n} {origin}" for origin, n in m.premature_counts.items() if n) or "none"
    flagged = "; ".join(f"{lead} {', '.join(flags)}" for lead, flags in m.flagged_leads.items()) or "none"
    p_waves = {True: "present", False: "absent", None: "not assessed"}[m.p_waves_present]
    parts = [cart_line(m), f"rhythm: {m.rhythm.replace('_', ' ')}", f"P waves: {p_waves}",
             f"premature beats: {premature}", f"flagged leads: {flagged}"]
    if m.limb_lead_reversal:
        parts.append("limb lead reversal suspected")
    return "; ".join(parts)


def _numbered(items: Sequence[str]) -> str:
    return " ".join(f"({i}) {_one_line(text) or '(empty)'}" for i, text in enumerate(items, 1))


def qa_messages(
    question: str, options: Sequence[str], question_type: str, neighbours: Sequence[Hit], descriptions: Mapping[str, str],
    diagnoses: Sequence[Diagnosis] = (), measurements: Measurements | None = None,
) -> list[dict[str, str]]:
    """The paper's prompt for one question over the top-k neighbours (closest first), with the predicted diagnoses
    (calibrated probabilities) and the ECG's measurements each on a line of their own when there are any."""
    user = QA_USER_TEMPLATE.substitute(
        question_prompt=QUESTION_PROMPTS[question_type],
        reports=_numbered([h.english.text_en for h in neighbours]),
        diagnoses=_numbered([describe_labels(h.scp_codes, descriptions) for h in neighbours]),
        predicted=f"Predicted diagnoses (calibrated probability): {describe_diagnoses(diagnoses)}\n" if diagnoses else "",
        measured=f"{MEASUREMENTS_LABEL}: {describe_measurements(measurements)}\n" if measurements is not None else "",
        question=json.dumps(_one_line(question), ensure_ascii=False),
        options=", ".join(json.dumps(o, ensure_ascii=False) for o in options) if options else "(any)",
    )
    return [{"role": "system", "content": QA_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def qa_answer_schema(options: Sequence[str], question_type: str) -> dict[str, Any]:
    """JSON schema of the reply: {"answer": [option, ...]} with the items restricted to the options."""
    items: dict[str, Any] = {"type": "string"}
    if options:
        items["enum"] = list(options)
    answer: dict[str, Any] = {"type": "array", "items": items, "minItems": 1}
    if question_type == "single-verify":
        answer["maxItems"] = 1
    return {"type": "object", "properties": {"answer": answer}, "required": ["answer"], "additionalProperties": False}


def refine_messages(neighbours: Sequence[Hit], descriptions: Mapping[str, str],
                    measurements: Measurements | None = None) -> list[dict[str, str]]:
    """Refinement of the top-1 report against the other neighbours' evidence and the ECG's own measurements.
    The reports go in English, as the QA prompt's do: the rewrite is English whatever the carts wrote."""
    top, others = neighbours[0], neighbours[1:]
    user = REFINE_USER_TEMPLATE.substitute(
        report=_one_line(top.english.text_en) or "(empty)",
        diagnoses=describe_labels(top.scp_codes, descriptions),
        other_reports=_numbered([h.english.text_en for h in others]) or "(none)",
        other_diagnoses=_numbered([describe_labels(h.scp_codes, descriptions) for h in others]) or "(none)",
        measured=f"\n{MEASUREMENTS_LABEL}: {describe_measurements(measurements)}" if measurements is not None else "",
    )
    return [{"role": "system", "content": REFINE_SYSTEM_PROMPT}, {"role": "user", "content": user}]
