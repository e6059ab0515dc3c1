"""The values that cross the store's interface: what goes in, what comes out, and what is kept with a collection.

Nothing here talks to an engine; these are what the pipeline, the wire format and the prompts pass around. The index
settings and the base :class:`StoreError` live in :mod:`ecgregen.settings` and :mod:`ecgregen.errors`, where the
command line reads and catches them without loading an engine.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ecgregen.errors import StoreError
from ecgregen.reports import Translation, translate
from ecgregen.settings import IndexSettings

NAMESPACE = uuid.UUID("a1b1281c-8c3a-4e74-8a93-d507a8a944d1")
# Keys of what is kept with a collection (a Qdrant collection's metadata, or the embedded store's store.json).
ENCODER_ID_KEY = "encoder_id"
INDEX_KEY = "index"


def point_id(source: str, ecg_id: str) -> str:
    """uuid5(NAMESPACE, f"{source}/{ecg_id}") as str; deterministic so re-inserting an ECG updates its point."""
    return str(uuid.uuid5(NAMESPACE, f"{source}/{ecg_id}"))


class StoreUnsupported(StoreError):
    """The operation exists for another engine only (e.g. file snapshots of the embedded store)."""


class StoreMismatchError(StoreError):
    """The collection exists with another vector dimension or encoder id than the caller's."""


@dataclass(frozen=True)
class StoredRecord:
    vector: np.ndarray  # float32, 1-D, already L2-normalised by the caller
    ecg_id: str
    patient_id: str
    report: str
    scp_codes: dict[str, float]  # SCP code -> likelihood (0-100)
    source: str  # e.g. "ptbxl"
    inserted_at: str  # ISO-8601 UTC
    batch_id: str = ""  # the insert (InsertRecords stream or index run) that wrote it: what a rollback removes
    # The report in English as stored with it; None: not stored (a record an older version wrote, or one made
    # without it - it is translated when written).
    translation: Translation | None = None

    @property
    def point_id(self) -> str:
        return point_id(self.source, self.ecg_id)

    @cached_property  # read several times per response (report, neighbours, prompts): translated once
    def english(self) -> Translation:
        """The translation written with the record: the one it carries, else one made now."""
        return self.translation or translate(self.report)


@dataclass(frozen=True)
class SearchFilter:
    exclude_patient_id: str | None = None  # drop neighbours of this patient (they would leak the answer)
    source: str | None = None  # only this source
    scp_codes_any: tuple[str, ...] = ()  # only records carrying any of these SCP codes


@dataclass(frozen=True)
class Hit:
    point_id: str
    score: float  # cosine similarity (higher = closer)
    ecg_id: str
    patient_id: str
    report: str
    scp_codes: dict[str, float]
    source: str
    inserted_at: str
    batch_id: str = ""
    # The report in English as stored with the record; None where the corpus was indexed before translations were
    # stored (until `ecgregen corpus translate` adds them).
    translation: Translation | None = None

    @cached_property  # read several times per response (report, neighbours, prompts): translated once
    def english(self) -> Translation:
        """The report in English: as stored, else translated now, so a corpus not yet updated still serves it."""
        return self.translation or translate(self.report)


@dataclass(frozen=True)
class PayloadUpdate:
    """Fields to merge into one point's payload (its vector untouched), only where the payload still holds `where`
    (field -> value): the values the fields were computed from, so a record written again meanwhile keeps what
    that write gave it."""

    point_id: str
    where: dict[str, str]
    fields: dict[str, Any]


@dataclass(frozen=True)
class UpsertResult:
    inserted: int
    updated: int


@dataclass(frozen=True)
class StoreStats:
    engine: str  # "qdrant-edge" or "qdrant-client (<url or local ...>)"
    points: int
    indexed_vectors: int  # vectors covered by an HNSW index
    dim: int
    encoder_id: str
    status: str  # Qdrant's green (ready) / yellow (optimizing) / grey (optimization pending) / red (failed)
    optimizer: str  # what the optimizer is doing or needs, in words, for operators
    segments: int
    index: IndexSettings


@dataclass(frozen=True)
class CollectionSpec:
    """What a store must know about its collection: kept with the collection so reopening needs no arguments."""

    dim: int
    encoder_id: str
    index: IndexSettings = IndexSettings()

    def metadata(self) -> dict[str, Any]:
        """The encoder id and index settings as both engines keep them (the dimension is the engine's own)."""
        return {ENCODER_ID_KEY: self.encoder_id, INDEX_KEY: self.index.to_json()}


@dataclass(frozen=True)
class BatchInfo:
    """One insert as the corpus remembers it: for operators to see what came when, and to roll it back."""

    batch_id: str
    points: int
    first_inserted_at: str
    last_inserted_at: str
