"""ECG-QA-style questions generated on any PTB-XL record, answered by ECG-QA's own rules.

The published questions cover few of the ECGs whose signal we hold; generating more (in the published JSON shape)
lets an answerer be scored and fitted on any folds. The answers come from
:func:`~ecgregen.evaluate.ecgqa.rules.answer_from_metadata`, which the tests check against the published answers.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ecgregen.evaluate.ecgqa.metadata import EcgMetadata, PtbxlMetadata
from ecgregen.evaluate.ecgqa.rules import UnsupportedTemplate, answer_from_metadata, supported_templates
from ecgregen.evaluate.ecgqa.templates import FIXED_ATTRIBUTES, POOLS, TEMPLATES, needs_lead
from ecgregen.evaluate.ecgqa.vocabulary import LEADS
from ecgregen.qa_conventions import NO, NONE

_VERIFY_SHOWN, _CHOOSE_SHOWN = 0.5, 0.75


def _holds(template_id: int, attribute: str, meta: EcgMetadata, lead: str | None) -> bool:
    """Whether the ECG shows ``attribute`` in the sense of this template (for picking informative attributes)."""
    answer = answer_from_metadata(template_id, [attribute], meta, lead=lead)
    return answer not in ([NO], [NONE])


def _pick_lead(meta: EcgMetadata, rng: random.Random) -> str:
    """Half the time a lead where some noise is (so that lead questions are not almost always "no")."""
    noisy = sorted({lead for leads in meta.noise.values() for lead in leads}, key=LEADS.index)
    return rng.choice(noisy) if noisy and rng.random() < 0.5 else rng.choice(LEADS)


def _pick_attributes(template_id: int, question_type: str, meta: EcgMetadata, lead: str | None,
                     rng: random.Random) -> list[str]:
    if template_id in FIXED_ATTRIBUTES:
        return [FIXED_ATTRIBUTES[template_id]]
    pool = POOLS[template_id]
    if question_type == "single-query" and template_id != 34:
        return list(pool)
    shown = [a for a in pool if _holds(template_id, a, meta, lead)]
    # Mimic ECG-QA's answer balance (published sample): verify questions ask about something the ECG shows about
    # half the time (template 1: 107 yes + 14 not sure of 256), choose questions more often (about 30% "none"); the
    # rest draw from the whole pool.
    p_shown = _CHOOSE_SHOWN if question_type == "single-choose" else _VERIFY_SHOWN
    first = rng.choice(shown) if shown and rng.random() < p_shown else rng.choice(pool)
    if question_type != "single-choose":
        return [first]
    second = rng.choice([a for a in pool if a != first])
    return rng.sample([first, second], 2)


def _fill(wording: str, attribute: Sequence[str], lead: str | None) -> str:
    values = {"lead": f"lead {lead}" if lead else ""}
    if len(attribute) == 1:
        values["attribute"] = attribute[0]
    elif len(attribute) == 2:
        values["attribute_a"], values["attribute_b"] = attribute
    return wording.format(**values)


def generate_questions(
    metadata: PtbxlMetadata, ecg_ids: Iterable[int], *, templates: Iterable[int] | None = None, seed: int = 0,
    per_template: int | None = None,
) -> list[dict]:
    """ECG-QA-style questions on these ECGs, in the published JSON shape plus ``"generated": true``.

    Every requested template (default: all supported) is asked once per ECG, or of ``per_template`` ECGs drawn at
    random. Answers come from :func:`answer_from_metadata`. Deterministic for a seed. The wording is the template's
    with the attributes in question order; ECG-QA's own slip of printing "suprasupraventricular extrasystoles" for
    "ventricular extrasystoles" when that comes second (template 37) is not reproduced.
    """
    template_ids = sorted(supported_templates() if templates is None else set(templates))
    unsupported = [t for t in template_ids if t not in supported_templates()]
    if unsupported:
        raise UnsupportedTemplate(f"cannot generate templates {unsupported}: not derivable from PTB-XL metadata")
    ecg_ids = list(ecg_ids)
    rng = random.Random(seed)
    questions: list[dict] = []
    for template_id in template_ids:
        template = TEMPLATES[template_id]
        chosen = ecg_ids if per_template is None or per_template >= len(ecg_ids) else sorted(
            rng.sample(ecg_ids, per_template))
        for ecg_id in chosen:
            meta = metadata.row(ecg_id)
            lead = _pick_lead(meta, rng) if needs_lead(template_id) else None
            attribute = _pick_attributes(template_id, template.question_type, meta, lead, rng)
            questions.append({
                "template_id": template_id,
                "question_id": len(questions),
                "sample_id": len(questions),
                "question_type": template.question_type,
                "attribute_type": template.attribute_type,
                "question": _fill(template.wording, attribute, lead) + meta.patient_suffix(),
                "answer": answer_from_metadata(template_id, attribute, meta, lead=lead),
                "ecg_id": [ecg_id],
                "attribute": attribute,
                "generated": True,
            })
    return questions


def write_generated(ptbxl_dir: Path, out: Path, *, folds: Sequence[int] | None = None, seed: int = 0,
                    per_template: int | None = None) -> dict:
    """Generate questions on the records of ``ptbxl_dir/ptbxl_database.csv`` (optionally only these folds), write
    them to ``out`` as a JSON list, and return a summary {n, by_type, templates, ...}."""
    metadata = PtbxlMetadata.from_ptbxl(Path(ptbxl_dir))
    ecg_ids = metadata.ecg_ids(folds)
    questions = generate_questions(metadata, ecg_ids, seed=seed, per_template=per_template)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(questions))
    return {
        "out": str(out),
        "n": len(questions),
        "ecgs": len(ecg_ids),
        "folds": sorted(folds) if folds is not None else None,
        "seed": seed,
        "by_type": dict(sorted(Counter(q["question_type"] for q in questions).items())),
        "templates": {str(t): n for t, n in sorted(Counter(q["template_id"] for q in questions).items())},
    }
