"""ECG-QA's published questions: reading them, checking the metadata rules against their answers, and the one
number the answerer takes from them (how often a lead-level statement question is answered yes).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ecgregen.evaluate.ecgqa.metadata import PtbxlMetadata
from ecgregen.evaluate.ecgqa.rules import answer_from_metadata, codes_of, supported_templates
from ecgregen.qa_conventions import YES, question_lead


def load_questions(paths: Sequence[Path]) -> list[dict]:
    """ECG-QA question files as published (a JSON list of questions per file); a directory is searched recursively."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    questions: list[dict] = []
    for file in files:
        data = json.loads(file.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{file}: expected a JSON list of ECG-QA questions")  # noqa: TRY004 - bad file, not arg
        questions.extend(data)
    return questions


def _same(a: Sequence[str], b: Sequence[str]) -> bool:
    return sorted(a) == sorted(b)


def check_against_real(real_questions: Iterable[Mapping[str, Any]], metadata: PtbxlMetadata,
                       *, max_examples: int = 10) -> dict:
    """Agreement of :func:`answer_from_metadata` with published answers (order-free set equality).

    Only single-ECG questions whose ECG is in ``metadata`` count; those of unsupported templates are tallied apart.
    """
    per_template: dict[int, dict[str, int]] = {}
    unsupported: Counter[int] = Counter()
    skipped = Counter()
    disagreements: list[dict] = []
    for q in real_questions:
        template_id = int(q["template_id"])
        if not str(q.get("question_type", "")).startswith("single") or len(q["ecg_id"]) != 1:
            skipped["not single-ECG"] += 1
            continue
        ecg_id = int(q["ecg_id"][0])
        if ecg_id not in metadata:
            skipped["ECG not in metadata"] += 1
            continue
        if template_id not in supported_templates():
            unsupported[template_id] += 1
            continue
        predicted = answer_from_metadata(template_id, q["attribute"], metadata.row(ecg_id),
                                         lead=question_lead(q["question"]))
        tally = per_template.setdefault(template_id, {"n": 0, "agree": 0})
        tally["n"] += 1
        if _same(predicted, q["answer"]):
            tally["agree"] += 1
        elif len(disagreements) < max_examples:
            disagreements.append({"template_id": template_id, "ecg_id": ecg_id, "question": q["question"],
                                  "answer": list(q["answer"]), "predicted": predicted})
    n = sum(t["n"] for t in per_template.values())
    agree = sum(t["agree"] for t in per_template.values())
    return {
        "n": n,
        "agree": agree,
        "agreement": agree / n if n else float("nan"),
        "per_template": dict(sorted(per_template.items())),
        "unsupported": dict(sorted(unsupported.items())),
        "skipped": dict(skipped),
        "disagreements": disagreements,
    }


def lead_question_share(questions: Iterable[Mapping[str, Any]], metadata: PtbxlMetadata,
                        folds: Iterable[int]) -> tuple[float | None, int]:
    """Of ECG-QA's lead-level statement questions (template 17, "... in lead X?") about ECGs of `folds` whose ECG
    carries the statement, the share answered yes, and how many there were (share None when there were none).

    The SCP labels cannot place a statement in a lead (ECG-QA read the leads from the free-text report), so an
    answerer from labels can at best scale the statement's probability by this share."""
    folds = set(folds)
    present = yes = 0
    for q in questions:
        if int(q["template_id"]) != 17:
            continue
        ecg_id = q["ecg_id"][0]
        if ecg_id not in metadata or int(metadata.table.loc[int(ecg_id), "strat_fold"]) not in folds:
            continue
        codes = metadata.row(ecg_id).scp_codes
        if any(c in codes for c in codes_of(q["attribute"][0])):
            present += 1
            yes += list(q["answer"]) == [YES]
    return (yes / present if present else None), present
