"""ECG in -> preprocess -> encode (+ measure) -> search -> answer: the retrieval pipeline, independent of transport.

The gRPC server, the indexer and the evaluation harness all call this class, so the numbers a reviewer
measures come from the same code path that serves clinicians. Methods are blocking; the asyncio server runs
them in worker threads. Beside the encoder, every query ECG is measured (:mod:`ecgregen.measure`) on the same
checked :class:`Ecg`; the measurements are evidence beside the retrieval, so a failure of that stage costs the
measurements only, never the call.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ecgregen.answer import Answer, LabelVocabulary, LabelVoteAnswerer, default_scp_statements
from ecgregen.api_values import ReportLanguage
from ecgregen.diagnoses import REPORT_MODES, Calibration, Diagnoser, Diagnosis, load_statements
from ecgregen.ecg import Ecg, EcgInputError
from ecgregen.encoders.base import Encoder, embed_prepared
from ecgregen.encoders.factory import open_encoder
from ecgregen.measure import Measurements
from ecgregen.measure.workers import MeasureWorkers
from ecgregen.metrics import (
    RECORDS_WRITTEN,
    REPORT_UNTRANSLATED_WORDS,
    observe_calibration,
    observe_corpus,
    observe_diagnoses,
    stage_timer,
)
from ecgregen.preprocess import Preprocessed, preprocess
from ecgregen.reports import translate
from ecgregen.reports.select import serve_report
from ecgregen.reports.statements import StatementReport
from ecgregen.reports.verify import ReportEdit
from ecgregen.settings import TRITON_MODEL, TRITON_WAIT_S
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

log = logging.getLogger("ecgregen.pipeline")


class EmptyCorpusError(RuntimeError):
    """A search on a corpus with no records: the operator must index something first."""


@dataclass
class Retrieval:
    """Neighbours of one query, the diagnoses they predict, and what happened on the way."""

    hits: list[Hit]  # the k neighbours asked for
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    pool: list[Hit] = field(default_factory=list)  # the neighbours searched: k, or more when the diagnoses need more
    diagnoses: list[Diagnosis] = field(default_factory=list)
    measurements: Measurements | None = None  # None when measuring failed (a warning says so)


@dataclass(frozen=True)
class Embedded:
    """One ECG's vector, the warnings of its way through preprocessing and encoding, and its flat leads."""

    vector: np.ndarray
    warnings: list[str]
    flat_leads: tuple[str, ...]


@dataclass(frozen=True)
class GeneratedReport:
    text: str
    mode: str  # top1 | consensus | statements
    source: Hit | None  # the neighbour whose report it is (None: none matched, or the statements report)
    statements: StatementReport | None = None  # the statements mode's sentences and their evidence
    language: str = "en"  # of `text`: en, or served as written, the neighbour's (de, sv, en, und)
    untranslated: tuple[str, ...] = ()  # served in English: the words of `text` the glossary does not know
    edits: tuple[ReportEdit, ...] = ()  # what was removed from / added to the chosen report, and why (verified)


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
    def __init__(self, encoder: Encoder, store: VectorStore, answerer: LabelVoteAnswerer,
                 diagnoser: Diagnoser | None = None, report_mode: str = "verified",
                 measurer: MeasureWorkers | None = None, report_language: str = ReportLanguage.EN) -> None:
        self.encoder = encoder
        self.measurer = measurer or MeasureWorkers(0)  # where query ECGs are measured (serving: worker processes)
        self.store = store
        self.answerer = answerer
        self.diagnoser = diagnoser or Diagnoser(load_statements())
        if report_mode not in ("auto", *REPORT_MODES):
            raise ValueError(f"unknown report mode {report_mode!r}; auto or one of {', '.join(REPORT_MODES)}")
        self.report_mode = report_mode
        if report_language not in tuple(ReportLanguage):
            raise ValueError(f"unknown report language {report_language!r}; one of {', '.join(ReportLanguage)}")
        self.report_language = ReportLanguage(report_language)
        self.calibration_note = ""  # why the diagnoses are uncalibrated or stale ("" when they are fine)
        self.refresh_calibration_note()

    def use_calibration(self, calibration: Calibration | None) -> None:
        """Serve diagnoses with `calibration` (checked to belong to this encoder); None serves raw votes."""
        if calibration is not None:
            calibration.check_encoder(self.encoder.encoder_id)
        self.diagnoser.calibration = calibration
        self.refresh_calibration_note()

    def refresh_calibration_note(self, points: int | None = None) -> None:
        """Re-check the calibration against the corpus size (`points`, else counted): stale when it grew or shrank
        a lot. Writes pass the size they already know."""
        calibration = self.diagnoser.calibration
        if calibration is None:
            self.calibration_note = ("diagnoses are not calibrated for this corpus (raw neighbour votes, threshold "
                                     "0.5): run `ecgregen calibrate`")
        else:
            self.calibration_note = calibration.stale_reason(self.store.count() if points is None else points)
        observe_calibration(calibrated=calibration is not None, stale=bool(calibration and self.calibration_note))

    def resolved_report_mode(self, requested: str = "") -> str:
        """The report mode of a call: the caller's, else the server's, where auto = the calibration's best."""
        mode = requested or self.report_mode
        if mode == "auto":
            return self.diagnoser.calibration.report_mode if self.diagnoser.calibration else "top1"
        if mode not in REPORT_MODES:
            raise EcgInputError(f"unknown report mode {mode!r}; one of auto, {', '.join(REPORT_MODES)}")
        return mode

    def resolved_report_language(self, requested: str = "") -> ReportLanguage:
        """The report language of a call: the caller's, else the server's."""
        language = requested or self.report_language
        if language not in tuple(ReportLanguage):
            raise EcgInputError(f"unknown report language {language!r}: report_language is one of "
                                f"{', '.join(ReportLanguage)} (empty: the server's default)")
        return ReportLanguage(language)

    def embed_each(
        self, ecgs: Sequence[Ecg], seconds: dict[str, float] | None = None
    ) -> list[Embedded | EcgInputError]:
        """Per ECG, its unit vector and warnings, or why it cannot be encoded (the others still are).

        The one way every caller - unary calls, stream windows, inserts - turns ECGs into vectors: the length
        policy of :mod:`ecgregen.preprocess`, one encoder call for all of them, the encoder's degradation note.
        """
        prepared: list[Preprocessed | EcgInputError] = []
        with stage_timer("preprocess", seconds):
            for ecg in ecgs:
                try:
                    prepared.append(preprocess(ecg, self.encoder.preprocess_config))
                except EcgInputError as exc:
                    prepared.append(exc)
        usable = [p for p in prepared if isinstance(p, Preprocessed)]
        with stage_timer("encode", seconds):
            vectors, note = embed_prepared(self.encoder, usable)
        found = iter(zip(usable, vectors))
        out: list[Embedded | EcgInputError] = []
        for p in prepared:
            if isinstance(p, EcgInputError):
                out.append(p)
                continue
            done, vector = next(found)
            out.append(Embedded(vector, [*done.warnings, *([note] if note else [])], done.flat_leads))
        return out

    def embed(self, ecgs: Sequence[Ecg], seconds: dict[str, float] | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Unit-vector embeddings of `ecgs` and, per ECG, the warnings; the first unusable ECG raises."""
        embedded = self.embed_each(ecgs, seconds)
        for e in embedded:
            if isinstance(e, EcgInputError):
                raise e
        return np.stack([e.vector for e in embedded]), [e.warnings for e in embedded]

    def search(
        self, ecg: Ecg, k: int, filt: SearchFilter | None = None, *, exact: bool = False, hnsw_ef: int | None = None
    ) -> Retrieval:
        """The k neighbours of `ecg`, its measurements, and the diagnoses of its (at least `diagnoser.k`) nearest
        neighbours and its measurements. With measurement workers the ECG is measured while it is encoded (a refused
        ECG's measuring is dropped)."""
        seconds: dict[str, float] = {}
        pending = self.measurer.submit(ecg)
        try:
            vectors, warnings = self.embed([ecg], seconds)
        except BaseException:
            pending.cancel()
            raise
        measurements, notes = pending.result(seconds)
        return self.retrieve(vectors[0], k, filt, [*warnings[0], *notes], seconds, exact=exact, hnsw_ef=hnsw_ef,
                             measurements=measurements)

    def retrieve(
        self, vector: np.ndarray, k: int, filt: SearchFilter | None, warnings: list[str], seconds: dict[str, float],
        *, exact: bool = False, hnsw_ef: int | None = None, measurements: Measurements | None = None,
    ) -> Retrieval:
        """Search and diagnose for an embedding made by :meth:`embed` (streams embed many windows at once); the
        ECG's `measurements` (:class:`MeasureWorkers`) are evidence of the diagnoses and carried along."""
        with stage_timer("search", seconds):
            pool = self.store.search(vector, max(k, self.diagnoser.k), filt, exact=exact, hnsw_ef=hnsw_ef)
        if not pool and self.store.count() == 0:
            raise EmptyCorpusError("the corpus is empty; index records first (ecgregen index ...)")
        with stage_timer("diagnose", seconds):
            diagnoses = self.diagnoser.diagnose(pool, measurements)
        observe_diagnoses(diagnoses)
        notes = [n for n in (self.calibration_note, self.diagnoser.measurement_note(measurements)) if n]
        return Retrieval(pool[:k], [*warnings, *notes], seconds, pool, diagnoses, measurements)

    def generate_report(
        self, ecg: Ecg, k: int, filt: SearchFilter | None = None, mode: str = "", language: str = ""
    ) -> tuple[GeneratedReport, Retrieval]:
        """The report of one neighbour - the closest (``top1``, the paper's) or the one whose labels agree best with
        the diagnoses (``consensus``) - or one written from the diagnoses and measurements (``statements``), in
        `language` (en or original); `mode` and `language` empty = the server's settings."""
        mode = self.resolved_report_mode(mode)
        language = self.resolved_report_language(language)
        retrieval = self.search(ecg, k, filt)
        return self.report_of(retrieval, mode, language), retrieval

    def report_of(self, retrieval: Retrieval, mode: str, language: str = "") -> GeneratedReport:
        """The report of a retrieval in `language` (empty: the server's). A neighbour's report in English is the
        translation stored with it; the words the glossary lacks are counted as served."""
        language = self.resolved_report_language(language)
        with stage_timer("answer", retrieval.seconds):
            served = serve_report(mode, retrieval.pool, retrieval.diagnoses, retrieval.measurements, self.diagnoser.k)
        if served is None:
            retrieval.warnings.append("no record matches the filter; no report")
            return GeneratedReport("", mode, None, language="en" if language == ReportLanguage.EN else "und")
        if served.hit is None:  # written from the diagnoses and measurements: English
            return GeneratedReport(served.text_en, mode, None, served.statements, edits=served.edits)
        english = served.hit.english
        if language == ReportLanguage.ORIGINAL:
            if not served.edits:
                return GeneratedReport(served.hit.report, mode, served.hit, language=english.language)
            retrieval.warnings.append("the report was edited against the measurements, in English: served in English "
                                      "(report_language original asked for)")
        REPORT_UNTRANSLATED_WORDS.labels("served").inc(len(english.untranslated))
        return GeneratedReport(served.text_en, mode, served.hit, language="en", untranslated=english.untranslated,
                               edits=served.edits)

    def answer(
        self, ecg: Ecg, question: str, options: Sequence[str], k: int, filt: SearchFilter | None = None
    ) -> tuple[Answer, Retrieval]:
        retrieval = self.search(ecg, k, filt)
        with stage_timer("answer", retrieval.seconds):
            answer = self.answerer.answer(question, options, retrieval.hits, diagnoses=retrieval.diagnoses,
                                          measurements=retrieval.measurements)
        return answer, retrieval

    def insert(self, records: Sequence[RecordToInsert], batch_id: str = "") -> InsertOutcome:
        """Encode and upsert; durable when it returns. Ids come from (source, ecg_id), so repeats update.

        A record whose signal cannot be encoded (e.g. every lead flat) is rejected by its position in
        `records` while the others are written. `batch_id` is kept with each record, for rollback.
        """
        outcome = InsertOutcome()
        usable: list[tuple[RecordToInsert, np.ndarray]] = []
        for index, (record, embedded) in enumerate(zip(records, self.embed_each([r.ecg for r in records]))):
            if isinstance(embedded, EcgInputError):
                outcome.rejected.append((index, str(embedded)))
            else:
                usable.append((record, embedded.vector))
        if usable:
            now = utc_now()
            stored = [
                StoredRecord(
                    vector=vec, ecg_id=r.ecg_id, patient_id=r.patient_id, report=r.report,
                    scp_codes=dict(r.scp_codes), source=r.source, inserted_at=now, batch_id=batch_id,
                    translation=translate(r.report),  # English beside the original, made once, when indexed
                )
                for r, vec in usable
            ]
            REPORT_UNTRANSLATED_WORDS.labels("indexed").inc(sum(len(s.english.untranslated) for s in stored))
            with stage_timer("upsert"):
                result = self.store.upsert(stored)
            outcome.inserted, outcome.updated = result.inserted, result.updated
        RECORDS_WRITTEN.labels("inserted").inc(outcome.inserted)
        RECORDS_WRITTEN.labels("updated").inc(outcome.updated)
        RECORDS_WRITTEN.labels("rejected").inc(len(outcome.rejected))
        self._after_write()
        return outcome

    def delete(self, keys: Sequence[tuple[str, str]] = (), batch_id: str = "") -> int:
        """Delete by (source, ecg_id), or every record of one insert (`batch_id`); returns how many existed."""
        if batch_id:
            deleted = self.store.delete_batch(batch_id)
        else:
            deleted = self.store.delete([point_id(source, ecg_id) for source, ecg_id in keys])
        RECORDS_WRITTEN.labels("deleted").inc(deleted)
        self._after_write()
        return deleted

    def _after_write(self) -> None:
        """Corpus gauges and the calibration's staleness, from one look at the store."""
        stats = self.store.stats()
        observe_corpus(stats)
        self.refresh_calibration_note(stats.points)


def new_batch_id() -> str:
    """Sortable by time, unique: 20261125T130501Z-1f3a9c2e."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def open_pipeline(
    data_dir: Path, qdrant_url: str | None, checkpoint: Path | None, *, collection: str = "ecgregen",
    recreate: bool = False, index: IndexSettings | None = None, triton_url: str | None = None,
    triton_model: str = TRITON_MODEL, triton_wait_s: float = TRITON_WAIT_S, triton_fallback_local: bool = False,
    encoder_runtime: str = "onnxruntime", report_mode: str = "verified", measure_workers: int = 0,
    load_calibration: bool = True, report_language: str = ReportLanguage.EN, encoder_threads: int = 0,
) -> RetrievalPipeline:
    """Encoder + store (checked to belong to this encoder) + label answerer: what serving and indexing share.

    The encoder runs in-process from `checkpoint` (default: the shipped one) with `encoder_runtime`
    (onnxruntime with `encoder_threads` per forward pass - 0: one per core - or eager PyTorch), or in Triton at
    `triton_url`.
    A store built with another encoder is refused (its vectors live in another space); `recreate` empties it.
    `index` applies when the collection is created (an existing one keeps its settings). The corpus's diagnosis
    calibration is loaded with it; one fitted for another encoder (or unreadable) is refused
    (:class:`CalibrationError`). `load_calibration` False leaves the stored one unread and serves raw votes: what
    `ecgregen calibrate`, the remedy for such a store, opens it with before it replaces the calibration.
    Query ECGs are measured in `measure_workers` processes (0: in the calling thread; see
    :mod:`ecgregen.measure.workers`). Reports are served in `report_language` unless a call asks otherwise.
    """
    encoder = open_encoder(checkpoint, encoder_runtime, triton_url=triton_url, triton_model=triton_model,
                           triton_wait_s=triton_wait_s, triton_fallback_local=triton_fallback_local,
                           threads=encoder_threads)
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
    try:
        stored = store.calibration() if load_calibration else None
        calibration = Calibration.from_json(stored) if stored else None
        if calibration is not None:
            calibration.check_encoder(encoder.encoder_id)
        return RetrievalPipeline(encoder, store, LabelVoteAnswerer(vocabulary), Diagnoser(load_statements(), calibration),
                                 report_mode=report_mode, measurer=MeasureWorkers(measure_workers),
                                 report_language=report_language)
    except BaseException:
        store.close()
        raise
