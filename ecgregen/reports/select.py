"""The report a mode serves, from one retrieval: the one place that turns (mode, neighbours, diagnoses,
measurements) into the served English text, for the server, the calibration's choice of mode and the evaluation.

``top1`` and ``consensus`` serve a neighbour's report as filed (:func:`ecgregen.diagnoses.select_report`);
``verified`` the best-agreeing neighbour report that the measurements do not contradict, edited where none
qualifies (:mod:`ecgregen.reports.verify`); ``statements`` the report written from the diagnoses and measurements
(:mod:`ecgregen.reports.statements`), checked the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ecgregen.diagnoses import Diagnosis, agreement, present_codes, select_report
from ecgregen.measure.types import Measurements
from ecgregen.reports.statements import StatementReport, statement_report
from ecgregen.reports.verify import ReportEdit, choose_verified, verify_text
from ecgregen.store import Hit


@dataclass(frozen=True)
class ServedReport:
    """A mode's report in English, whose it is (None: written from the diagnoses), and how it was made."""

    text_en: str
    hit: Hit | None
    statements: StatementReport | None = None
    edits: tuple[ReportEdit, ...] = ()


def serve_report(mode: str, pool: Sequence[Hit], diagnoses: Sequence[Diagnosis], measurements: Measurements | None,
                 k: int) -> ServedReport | None:
    """The report of `mode` among the first `k` of `pool` (the diagnosis neighbours); None when there is no
    neighbour to take it from (a filter left none)."""
    if mode == "statements":
        written = statement_report(diagnoses, measurements)
        checked = verify_text(written.text, measurements)
        return ServedReport(checked.text, None, written, checked.edits)
    if mode == "verified":
        candidates = list(pool[:k])
        if not candidates:
            return None
        present = present_codes(diagnoses)
        choice = choose_verified([h.english.text_en for h in candidates],
                                 lambda i: agreement(candidates[i], present), measurements)
        return ServedReport(choice.text, candidates[choice.index], edits=choice.edits)
    hit = select_report(pool, diagnoses, mode, k)
    return None if hit is None else ServedReport(hit.english.text_en, hit)
