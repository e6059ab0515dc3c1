"""ECG-QA (Oh et al., NeurIPS 2023) single-ECG questions: read the published files, answer them from PTB-XL metadata,
and generate more of them.

ECG-QA built its single-ECG questions (templates 1-42) from PTB-XL's metadata table, so for most templates the true
answer is a function of one ``ptbxl_database.csv`` row. Computing it lets us (1) score an answerer on questions for
any PTB-XL record whose signal we hold, not only the few ECG-QA happens to ask about, and (2) validate the generator
on real questions before trusting it.

One job a module, each importing only those above it in this list:

- :mod:`.vocabulary`: ECG-QA's fixed wording of the SCP statements, superclasses and other attributes it asks about;
- :mod:`.templates`: the 42 question templates, their answer classes and attribute pools;
- :mod:`.metadata`: PTB-XL metadata rows as ECG-QA read them, with the parsers of the free-text noise and extra-beat
  columns;
- :mod:`.rules`: ECG-QA's answer rules (:func:`answer_from_metadata`) and which templates the metadata can answer;
- :mod:`.check`: the published question files and the check of the rules against their answers;
- :mod:`.generate`: new questions in the published shape, answered by the rules.

What serving shares with these rules (how a label reads, the answer words, the lead a question names) lives in
:mod:`ecgregen.qa_conventions`, which serving imports without importing evaluation code.
"""

from ecgregen.evaluate.ecgqa.check import check_against_real, lead_question_share, load_questions
from ecgregen.evaluate.ecgqa.generate import generate_questions, write_generated
from ecgregen.evaluate.ecgqa.metadata import EcgMetadata, PtbxlMetadata, parse_extra_systoles, parse_noise_leads
from ecgregen.evaluate.ecgqa.rules import (
    UnsupportedTemplate,
    answer_from_metadata,
    answer_options,
    supported_templates,
)
from ecgregen.evaluate.ecgqa.templates import TEMPLATES, Template, load_templates, needs_lead
from ecgregen.evaluate.ecgqa.vocabulary import CODE_NAMES, LEADS, SUPERCLASSES

__all__ = [
    "CODE_NAMES",
    "LEADS",
    "SUPERCLASSES",
    "TEMPLATES",
    "EcgMetadata",
    "PtbxlMetadata",
    "Template",
    "UnsupportedTemplate",
    "answer_from_metadata",
    "answer_options",
    "check_against_real",
    "generate_questions",
    "lead_question_share",
    "load_questions",
    "load_templates",
    "needs_lead",
    "parse_extra_systoles",
    "parse_noise_leads",
    "supported_templates",
    "write_generated",
]
