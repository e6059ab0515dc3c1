"""One record's payload: the same fields in both engines, so a corpus migrates between them unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np

from ecgregen.reports import Translation
from ecgregen.store.types import Hit, StoredRecord

# Payload fields the search filters and rollbacks match on; indexed so the query planner can estimate filter
# cardinality (and so a filter does not fall back to a full scan).
KEYWORD_FIELDS = ("patient_id", "source", "scp_code_list", "ecg_id", "batch_id")
# The report in English beside the original (issue 26): what `ecgregen corpus translate` sets on a corpus indexed
# before they were written. The glossary version tells a translation made with an older table.
TRANSLATION_FIELDS = ("report_en", "report_language", "report_untranslated", "report_words", "glossary_version")


def to_payload(record: StoredRecord) -> dict[str, Any]:
    return {
        "ecg_id": record.ecg_id,
        "patient_id": record.patient_id,
        "report": record.report,
        "scp_codes": {code: float(value) for code, value in record.scp_codes.items()},
        "scp_code_list": sorted(record.scp_codes),  # MatchAny needs a list; the object above keeps likelihoods
        "source": record.source,
        "inserted_at": record.inserted_at,
        "batch_id": record.batch_id,
        **translation_payload(record.english),
    }


def translation_payload(translation: Translation) -> dict[str, Any]:
    """The payload fields of a report's translation (:data:`TRANSLATION_FIELDS`)."""
    return {
        "report_en": translation.text_en,
        "report_language": translation.language,
        "report_untranslated": list(translation.untranslated),
        "report_words": translation.words,
        "glossary_version": translation.glossary_version,
    }


def to_record(payload: dict[str, Any], vector: np.ndarray) -> StoredRecord:
    return StoredRecord(vector=vector, **_fields(payload))


def to_hit(pid: str, score: float, payload: dict[str, Any]) -> Hit:
    return Hit(point_id=pid, score=float(score), **_fields(payload))


def _fields(payload: dict[str, Any]) -> dict[str, Any]:
    """What a record and a hit share; records written before batches existed have no batch_id, those written
    before translations were stored no translation."""
    return {
        "ecg_id": payload["ecg_id"],
        "patient_id": payload["patient_id"],
        "report": payload["report"],
        "scp_codes": {code: float(value) for code, value in payload["scp_codes"].items()},
        "source": payload["source"],
        "inserted_at": payload["inserted_at"],
        "batch_id": payload.get("batch_id", ""),
        "translation": _translation(payload),
    }


def _translation(payload: dict[str, Any]) -> Translation | None:
    if not all(name in payload for name in TRANSLATION_FIELDS):
        return None
    return Translation(text_en=payload["report_en"], language=payload["report_language"],
                       untranslated=tuple(payload["report_untranslated"]), words=int(payload["report_words"]),
                       glossary_version=payload["glossary_version"])
