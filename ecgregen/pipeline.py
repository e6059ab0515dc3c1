"""ECG in -> preprocess -> encode -> search -> answer: the retrieval pipeline, independent of transport.

The gRPC server, the indexer and the evaluation harness all call this class, so the numbers a reviewer
measures come from the same code path that serves clinicians. Methods are blocking; the asyncio server runs
them in worker threads.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ecgregen.answer import Answer, LabelVocabulary, LabelVoteAnswerer, default_scp_statements
from ecgregen.ecg import Ecg, EcgInputError
from ecgregen.encoder import Encoder, InProcessEncoder, load_encoder
from ecgregen.metrics import RECORDS_WRITTEN, observe_corpus, stage_timer
from ecgregen.preprocess import preprocess
from ecgregen.store import (
    Hit,
    IndexSettings,
    SearchFilter,
    StoredRecord,
    StoreMismatchError,
    VectorStore,
    open_store,
    point_id,
)

MAX_K = 100


class EmptyCorpusError(RuntimeError):
    """A search on a corpus with no records: the operator must index something first."""


@dataclass
class Retrieval:
    """Neighbours of one query, with what happened on the way."""

    hits: list[Hit]
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per stage


@dataclass(frozen=True)
class RecordToInsert:
    ecg: Ecg
    ecg_id: str
    patient_id: str
    report: str
    scp_codes: dict[str, float]
    source: str


@dataclass
class InsertOutcome:
    inserted: int = 0
    updated: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (position in the batch, reason)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RetrievalPipeline:
    def __init__(self, encoder: Encoder, store: VectorStore, answerer: LabelVoteAnswerer) -> None:
        self.encoder = encoder
        self.store = store
        self.answerer = answerer

    def embed(self, ecgs: Sequence[Ecg], seconds: dict[str, float] | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Unit-vector embeddings of `ecgs` and, per ECG, the preprocessing warnings."""
        with stage_timer("preprocess", seconds):
            prepared = [preprocess(e, self.encoder.preprocess_config) for e in ecgs]
        with stage_timer("encode", seconds):
            noting = getattr(self.encoder, "encode_noting", None)  # an encoder that may degrade says so
            vectors, note = noting([p.signal for p in prepared]) if noting else (
                self.encoder.encode([p.signal for p in prepared]), "")
        return vectors, [[*p.warnings, *([note] if note else [])] for p in prepared]

    def search(
        self, ecg: Ecg, k: int, filt: SearchFilter | None = None, *, exact: bool = False, hnsw_ef: int | None = None
    ) -> Retrieval:
        seconds: dict[str, float] = {}
        vectors, warnings = self.embed([ecg], seconds)
        with stage_timer("search", seconds):
            hits = self.store.search(vectors[0], k, filt, exact=exact, hnsw_ef=hnsw_ef)
        if not hits and self.store.count() == 0:
            raise EmptyCorpusError("the corpus is empty; index records first (ecgregen index ...)")
        return Retrieval(hits, warnings[0], seconds)

    def generate_report(self, ecg: Ecg, k: int, filt: SearchFilter | None = None) -> tuple[str, Retrieval]:
        """The paper's report generation: the closest record's report."""
        retrieval = self.search(ecg, k, filt)
        with stage_timer("answer", retrieval.seconds):
            report = retrieval.hits[0].report if retrieval.hits else ""
        if not retrieval.hits:
            retrieval.warnings.append("no record matches the filter; no report")
        return report, retrieval

    def answer(
        self, ecg: Ecg, question: str, options: Sequence[str], k: int, filt: SearchFilter | None = None
    ) -> tuple[Answer, Retrieval]:
        retrieval = self.search(ecg, k, filt)
        with stage_timer("answer", retrieval.seconds):
            answer = self.answerer.answer(question, options, retrieval.hits)
        return answer, retrieval

    def insert(self, records: Sequence[RecordToInsert], batch_id: str = "") -> InsertOutcome:
        """Encode and upsert; durable when it returns. Ids come from (source, ecg_id), so repeats update.

        A record whose signal cannot be encoded (e.g. every lead flat) is rejected by its position in
        `records` while the others are written. `batch_id` is kept with each record, for rollback.
        """
        outcome = InsertOutcome()
        usable: list[tuple[RecordToInsert, np.ndarray]] = []
        with stage_timer("preprocess"):
            for index, record in enumerate(records):
                try:
                    usable.append((record, preprocess(record.ecg, self.encoder.preprocess_config).signal))
                except EcgInputError as exc:
                    outcome.rejected.append((index, str(exc)))
        if usable:
            with stage_timer("encode"):
                vectors = self.encoder.encode([signal for _, signal in usable])
            now = utc_now()
            stored = [
                StoredRecord(
                    vector=vec, ecg_id=r.ecg_id, patient_id=r.patient_id, report=r.report,
                    scp_codes=dict(r.scp_codes), source=r.source, inserted_at=now, batch_id=batch_id,
                )
                for (r, _), vec in zip(usable, vectors)
            ]
            with stage_timer("upsert"):
                result = self.store.upsert(stored)
            outcome.inserted, outcome.updated = result.inserted, result.updated
        RECORDS_WRITTEN.labels("inserted").inc(outcome.inserted)
        RECORDS_WRITTEN.labels("updated").inc(outcome.updated)
        RECORDS_WRITTEN.labels("rejected").inc(len(outcome.rejected))
        observe_corpus(self.store.stats())
        return outcome

    def delete(self, keys: Sequence[tuple[str, str]] = (), batch_id: str = "") -> int:
        """Delete by (source, ecg_id), or every record of one insert (`batch_id`); returns how many existed."""
        if batch_id:
            deleted = self.store.delete_batch(batch_id)
        else:
            deleted = self.store.delete([point_id(source, ecg_id) for source, ecg_id in keys])
        RECORDS_WRITTEN.labels("deleted").inc(deleted)
        observe_corpus(self.store.stats())
        return deleted


def new_batch_id() -> str:
    """Sortable by time, unique: 20261125T130501Z-1f3a9c2e."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


ENCODER_RUNTIMES = ("onnxruntime", "torch")


def in_process_encoder(checkpoint: Path | None, runtime: str = "onnxruntime") -> Encoder:
    """The encoder of `checkpoint` (default: the shipped one) run in this process by `runtime`."""
    bundle = load_encoder(checkpoint)
    if runtime == "onnxruntime":
        from ecgregen.onnx_encoder import OnnxRuntimeEncoder

        return OnnxRuntimeEncoder(bundle)
    if runtime == "torch":
        return InProcessEncoder(bundle)
    raise ValueError(f"unknown encoder runtime {runtime!r}; one of {', '.join(ENCODER_RUNTIMES)}")


def open_pipeline(
    data_dir: Path, qdrant_url: str | None, checkpoint: Path | None, *, collection: str = "ecgregen",
    recreate: bool = False, index: IndexSettings | None = None, triton_url: str | None = None,
    triton_model: str = "ecg_encoder", triton_wait_s: float = 30.0, triton_fallback_local: bool = False,
    encoder_runtime: str = "onnxruntime",
) -> RetrievalPipeline:
    """Encoder + store (checked to belong to this encoder) + label answerer: what serving and indexing share.

    The encoder runs in-process from `checkpoint` (default: the shipped one) with `encoder_runtime`
    (onnxruntime, or eager PyTorch), or in Triton at `triton_url`.
    A store built with another encoder is refused (its vectors live in another space); `recreate` empties it.
    `index` applies when the collection is created (an existing one keeps its settings).
    """
    if triton_url:
        from ecgregen.triton_encoder import FallbackEncoder, TritonEncoder

        encoder: Encoder = TritonEncoder(triton_url, triton_model, startup_wait_s=triton_wait_s)
        if triton_fallback_local:
            encoder = FallbackEncoder(encoder, in_process_encoder(checkpoint, encoder_runtime))
    else:
        encoder = in_process_encoder(checkpoint, encoder_runtime)
    store = open_store(data_dir, qdrant_url, collection)
    try:
        store.ensure_collection(encoder.dim, encoder.encoder_id, recreate=recreate, index=index)
    except StoreMismatchError as exc:
        store.close()
        raise StoreMismatchError(
            f"{exc}. The corpus was embedded with another encoder: re-embed it with "
            "`ecgregen index ... --recreate` (same --data-dir/--qdrant-url), or point at another store."
        ) from None
    vocabulary = LabelVocabulary.from_scp_statements(default_scp_statements())
    return RetrievalPipeline(encoder, store, LabelVoteAnswerer(vocabulary))
