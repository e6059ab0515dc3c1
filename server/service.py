"""The ``ecgregen.v1.EcgReGen`` gRPC service on grpc.aio.

Handlers only translate: proto -> domain (validation: :mod:`ecgregen.server.requests`), the blocking pipeline in a worker thread (numpy, torch
and the store must not block the event loop), domain -> proto. Errors of the domain become gRPC status codes in
one place, :func:`rpc`, which also records the per-RPC metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ecgregen import __version__
from ecgregen.api_values import Answerer, FallbackReason, ReportLanguage, StreamErrorCode, StreamWarningCode
from ecgregen.ecg import STANDARD_LEADS, EcgInputError
from ecgregen.errors import EncoderUnavailable
from ecgregen.llm.answerer import QaResult
from ecgregen.llm.client import LlmUnavailable
from ecgregen.llm.stage import LlmStage
from ecgregen.metrics import (
    LLM_FALLBACKS,
    RECORDS_WRITTEN,
    RPC_IN_FLIGHT,
    RPC_LATENCY,
    RPC_REQUESTS,
    STREAM_PENDING,
    STREAM_WINDOWS,
    dependency_failed,
    dependency_ok,
    observe_corpus,
    stage_timer,
)
from ecgregen.pipeline import (
    MAX_K,
    EmptyCorpusError,
    GeneratedReport,
    RecordToInsert,
    Retrieval,
    RetrievalPipeline,
    new_batch_id,
)
from ecgregen.printout.served import PrintRequest, check_print, print_response
from ecgregen.reports.verify import contradictions
from ecgregen.server.requests import (
    check_batch_id,
    check_hnsw_ef,
    check_question,
    off_loop_if_file,
    parse_query,
    with_file,
)
from ecgregen.server.security import SEES_PATIENT_IDS, AuditLog, Pseudonyms
from ecgregen.server.streaming import (
    MAX_PENDING_WINDOWS,
    StreamLimiter,
    StreamSession,
    StreamSettings,
    WindowBatcher,
    WindowOutcome,
    parse_config,
)
from ecgregen.settings import DEMO_PTBXL
from ecgregen.store import Hit, StoreError, StoreStats, StoreUnsupported
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import (
    DEFAULT_SOURCE,
    ReceivedEcg,
    diagnosis_to_proto,
    measurements_to_proto,
    neighbour_to_proto,
    record_from_proto,
    report_edits_to_proto,
    statements_to_proto,
)

log = logging.getLogger("ecgregen.server")

INSERT_BATCH = 64

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


@contextlib.asynccontextmanager
async def _call_scope(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Time the call, count it by status code, and map domain errors to status codes.

    Bad input -> INVALID_ARGUMENT; empty corpus or an operation this store cannot do -> FAILED_PRECONDITION;
    store or encoder (Triton) failures -> UNAVAILABLE;
    anything else -> INTERNAL with the details logged here and not leaked to the caller.
    """
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    in_flight = RPC_IN_FLIGHT.labels(method)
    in_flight.inc()
    try:
        yield
    except EcgInputError as exc:
        code = grpc.StatusCode.INVALID_ARGUMENT
        await context.abort(code, str(exc))
    except EmptyCorpusError as exc:
        code = grpc.StatusCode.FAILED_PRECONDITION
        await context.abort(code, str(exc))
    except EncoderUnavailable as exc:
        code = grpc.StatusCode.UNAVAILABLE
        dependency_failed("triton")
        log.warning("%s: encoder unavailable: %s", method, exc)
        await context.abort(code, f"encoder unavailable: {exc}")
    except StoreUnsupported as exc:
        code = grpc.StatusCode.FAILED_PRECONDITION
        await context.abort(code, str(exc))
    except StoreError as exc:
        code = grpc.StatusCode.UNAVAILABLE
        dependency_failed("qdrant")
        log.warning("%s: vector store error: %s", method, exc)
        await context.abort(code, f"vector store unavailable: {exc}")
    except (asyncio.CancelledError, GeneratorExit):
        code = grpc.StatusCode.CANCELLED
        raise
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except Exception:
        code = grpc.StatusCode.INTERNAL
        log.exception("%s failed", method)
        await context.abort(code, "internal error; see the server log")
    finally:
        in_flight.dec()
        RPC_REQUESTS.labels(method, code.name).inc()
        RPC_LATENCY.labels(method).observe(time.perf_counter() - start)


INTERNAL_STREAM_ERROR = pb.StreamError(code=StreamErrorCode.INTERNAL, message="internal error; see the server log")

def rpc(handler: Handler) -> Handler:
    """Run a unary or server-streaming handler inside :func:`_call_scope`."""
    method = handler.__name__
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(self: EcgReGenService, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _call_scope(method, context):
                async for item in handler(self, request, context):
                    yield item

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(handler)
    async def wrapper(self: EcgReGenService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _call_scope(method, context):
            return await handler(self, request, context)

    return wrapper  # type: ignore[return-value]


def latency_proto(retrieval: Retrieval, start: float) -> pb.StageLatency:
    s = retrieval.seconds
    return pb.StageLatency(
        preprocess_ms=s.get("preprocess", 0.0) * 1e3, encode_ms=s.get("encode", 0.0) * 1e3,
        search_ms=s.get("search", 0.0) * 1e3, answer_ms=s.get("answer", 0.0) * 1e3, llm_ms=s.get("llm", 0.0) * 1e3,
        diagnose_ms=s.get("diagnose", 0.0) * 1e3, measure_ms=s.get("measure", 0.0) * 1e3,
        total_ms=(time.perf_counter() - start) * 1e3,
    )


def ecg_fields(retrieval: Retrieval, received: ReceivedEcg, include_median_beat: bool = False) -> dict[str, Any]:
    """The response fields that describe the query ECG itself: what reading its file said (first among the
    warnings) and what its samples measure."""
    return {**with_file(retrieval, received),
            "measurements": measurements_to_proto(retrieval.measurements, include_median_beat)}


def calibration_proto(pipeline: RetrievalPipeline) -> pb.CalibrationInfo:
    calibration = pipeline.diagnoser.calibration
    if calibration is None:
        return pb.CalibrationInfo(calibrated=False, detail=pipeline.calibration_note, k=pipeline.diagnoser.k)
    fitted = calibration.fitted_on
    return pb.CalibrationInfo(
        calibrated=True, detail=pipeline.calibration_note, fitted_on=str(fitted.get("description", "")),
        cases=int(fitted.get("cases", 0)), created_at=str(fitted.get("created_at", "")),
        corpus_points=calibration.corpus_points, k=calibration.k, report_mode=calibration.report_mode,
    )


def stats_proto(stats: StoreStats) -> pb.CorpusStats:
    return pb.CorpusStats(
        points=stats.points, indexed_vectors=stats.indexed_vectors, dim=stats.dim, encoder_id=stats.encoder_id,
        engine=stats.engine, status=stats.status, optimizer=stats.optimizer, segments=stats.segments,
        index=pb.IndexSettings(**dataclasses.asdict(stats.index)),
    )


@dataclass
class Refinement:
    """Outcome of one refinement: the text received, or why the retrieved report stands."""

    parts: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def text(self) -> str:
        return "".join(self.parts).strip()

    def fail(self, reason: str, detail: str, retrieval: Retrieval) -> None:
        self.reason = reason
        LLM_FALLBACKS.labels(reason).inc()
        retrieval.warnings.append(f"report not refined ({detail}); the retrieved report is returned")


class EcgReGenService(pb_grpc.EcgReGenServicer):
    def __init__(self, pipeline: RetrievalPipeline, llm: LlmStage, snapshot_dir: Path | None = None,
                 max_streams: int = 64, audit: AuditLog | None = None, max_stream_s: float = 24 * 3600.0,
                 signal_dirs: Sequence[Path] = (DEMO_PTBXL,)) -> None:
        dependency_ok("qdrant")  # the store answered at start-up; a failure sets it to 0
        self.pipeline = pipeline
        self.llm = llm
        self.snapshot_dir = snapshot_dir
        self.streams = StreamLimiter(max_streams)
        self.batcher = WindowBatcher(pipeline)
        self.draining = asyncio.Event()  # set at shutdown: streams end with a final warning
        self.audit = audit
        # Neighbours' patient ids go out under the audit log's pseudonyms; without a log (a service made in code),
        # under a key of this process's own - never as they are.
        self.pseudonyms = audit.pseudonyms if audit else Pseudonyms(secrets.token_bytes(32))
        self.max_stream_s = max_stream_s  # a stream is ended (with a warning) after this long; monitors reconnect
        self.signal_dirs = tuple(signal_dirs)  # PTB-XL-layout folders where a printed page finds neighbours' signals

    def _neighbours(self, hits: list[Hit], sees_patient_ids: bool | None = None) -> list[pb.Neighbour]:
        """The neighbours for the response: other patients' ids as keyed pseudonyms unless the caller's token has
        the admin role (`sees_patient_ids`, by default this call's :data:`SEES_PATIENT_IDS`)."""
        reveal = SEES_PATIENT_IDS.get() if sees_patient_ids is None else sees_patient_ids
        return [neighbour_to_proto(h, h.patient_id if reveal else self.pseudonyms(h.patient_id)) for h in hits]

    def _report_response(self, served: GeneratedReport, retrieval: Retrieval, start: float,
                         **fields: Any) -> pb.GenerateReportResponse:
        """`fields` override the response's (a refined `report`, the LLM's name, why refinement failed)."""
        fields.setdefault("report", served.text)
        source = served.source
        return pb.GenerateReportResponse(
            neighbours=self._neighbours(retrieval.hits), latency=latency_proto(retrieval, start),
            warnings=retrieval.warnings, encoder_id=self.pipeline.encoder.encoder_id, retrieved_report=served.text,
            diagnoses=[diagnosis_to_proto(d) for d in retrieval.diagnoses], report_mode=served.mode,
            report_ecg_id=source.ecg_id if source else "", **statements_to_proto(served.statements),
            report_edits=report_edits_to_proto(served.edits),
            report_language=served.language, untranslated_words=served.untranslated,
            original_report=source.report if source else "",
            original_language=source.english.language if source else "",
            **fields,
        )

    async def _generate(self, request: pb.GenerateReportRequest
                        ) -> tuple[GeneratedReport, Retrieval, dict[str, Any], ReceivedEcg]:
        """The served report, its retrieval, the response fields that describe the ECG (:func:`ecg_fields`), and the
        ECG as received (for a printed page).

        A refined report is written in English (the LLM reads the neighbours' reports in English), so with
        `refine` the retrieved report is served in English too and a request for the original is told so."""
        received, k, filt = await parse_query(request, default_k=3)
        mode = self.pipeline.resolved_report_mode(request.report_mode.strip())
        language = self.pipeline.resolved_report_language(request.report_language.strip())
        report, retrieval = await asyncio.to_thread(self.pipeline.generate_report, received.ecg, k, filt, mode,
                                                    ReportLanguage.EN if request.refine else language)
        if request.refine and language == ReportLanguage.ORIGINAL:
            retrieval.warnings.append("a refined report is written in English (report_language original is not "
                                      "served); original_report holds the neighbour's report as written")
        return report, retrieval, ecg_fields(retrieval, received, request.include_median_beat), received

    async def _printed(self, response: pb.GenerateReportResponse, ask: PrintRequest | None,
                       request: pb.GenerateReportRequest, received: ReceivedEcg) -> pb.GenerateReportResponse:
        """`response` with the page the request asked to print (`ask`, checked before any work), rendered in a
        worker thread from the response itself."""
        if ask is not None:
            samples = request.ecg if request.HasField("ecg") else None
            response.printout.CopyFrom(await asyncio.to_thread(
                print_response, response, ask, received.ecg, samples, self._server_info(), self.signal_dirs))
        return response

    async def _refine(self, report: GeneratedReport, retrieval: Retrieval, outcome: Refinement) -> AsyncIterator[str]:
        """Deltas of the served report refined against the other neighbours, as they come; `outcome` ends with the
        text or why there is none."""
        if self.llm.answerer is None:
            outcome.fail(FallbackReason.LLM_DISABLED, f"LLM {self.llm.detail}", retrieval)
            return
        if not retrieval.hits:
            outcome.fail(FallbackReason.NO_NEIGHBOURS, "no neighbours to refine", retrieval)
            return
        try:
            with stage_timer("llm", retrieval.seconds):
                served = [report.source] if report.source else []
                neighbours = [*served, *(h for h in retrieval.hits if h not in served)]
                async for delta in self.llm.answerer.refine(neighbours, retrieval.measurements):
                    outcome.parts.append(delta)
                    yield delta
        except LlmUnavailable as exc:
            outcome.fail(exc.reason, str(exc), retrieval)
            return
        if not outcome.text:
            outcome.fail(FallbackReason.EMPTY, "the LLM returned no text", retrieval)
            return
        wrong = contradictions(outcome.text, retrieval.measurements)
        if wrong:  # checked as every served report is: one reading of the ECG
            stated = "; ".join(f"'{w.claim.phrase}' ({w.verdict.reason})" for w in wrong)
            outcome.fail(FallbackReason.CONTRADICTS_MEASUREMENTS,
                         f"the refined report contradicts the ECG's measurements: {stated}", retrieval)

    def _refined_fields(self, outcome: Refinement) -> dict[str, Any]:
        fields: dict[str, Any] = {"fallback_reason": outcome.reason, "llm_model": self.llm.model}
        if not outcome.reason:
            fields.update(report=outcome.text, refined=True)
        return fields

    @rpc
    async def GenerateReport(self, request: pb.GenerateReportRequest, context: grpc.aio.ServicerContext) -> pb.GenerateReportResponse:
        start = time.perf_counter()
        ask = check_print(request)
        report, retrieval, ecg_info, received = await self._generate(request)
        if not request.refine:
            return await self._printed(self._report_response(report, retrieval, start, **ecg_info), ask, request,
                                       received)
        outcome = Refinement()
        async for _ in self._refine(report, retrieval, outcome):
            pass
        response = self._report_response(report, retrieval, start, **ecg_info, **self._refined_fields(outcome))
        return await self._printed(response, ask, request, received)

    @rpc
    async def GenerateReportStream(self, request: pb.GenerateReportRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReportEvent]:
        start = time.perf_counter()
        ask = check_print(request)
        report, retrieval, ecg_info, received = await self._generate(request)
        yield pb.ReportEvent(retrieval=self._report_response(report, retrieval, start, **ecg_info))
        fields: dict[str, Any] = dict(ecg_info)
        try:
            if request.refine:
                outcome = Refinement()
                async for delta in self._refine(report, retrieval, outcome):
                    yield pb.ReportEvent(delta=delta)
                fields.update(self._refined_fields(outcome))
            done = await self._printed(self._report_response(report, retrieval, start, **fields), ask, request,
                                       received)
        except Exception:  # after events went out a status would discard them: the stream ends with an error event
            log.exception("GenerateReportStream failed after its first event")
            yield pb.ReportEvent(error=INTERNAL_STREAM_ERROR)
            return
        yield pb.ReportEvent(done=done)

    @rpc
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        start = time.perf_counter()
        received, k, filt = await parse_query(request, default_k=10)
        retrieval = await asyncio.to_thread(
            self.pipeline.search, received.ecg, k, filt, exact=request.exact, hnsw_ef=check_hnsw_ef(request.hnsw_ef)
        )
        ecg_info = ecg_fields(retrieval, received)
        return pb.SearchResponse(
            neighbours=self._neighbours(retrieval.hits), latency=latency_proto(retrieval, start),
            warnings=retrieval.warnings, diagnoses=[diagnosis_to_proto(d) for d in retrieval.diagnoses], **ecg_info,
        )

    @rpc
    async def AnswerQuestion(self, request: pb.AnswerQuestionRequest, context: grpc.aio.ServicerContext) -> pb.AnswerQuestionResponse:
        start = time.perf_counter()
        question, options, question_type = check_question(request)
        received, k, filt = await parse_query(request, default_k=3)
        ecg = received.ecg
        answerer = request.answerer or Answerer.LABELS
        if answerer not in list(Answerer):
            raise EcgInputError(f"unknown answerer {answerer!r}; available: {', '.join(Answerer)}")
        if answerer == Answerer.LABELS:
            answer, retrieval = await asyncio.to_thread(self.pipeline.answer, ecg, question, options, k, filt)
            result = QaResult(answer.answer, Answerer.LABELS, answer.rationale)
        elif self.llm.answerer is None:
            answer, retrieval = await asyncio.to_thread(self.pipeline.answer, ecg, question, options, k, filt)
            LLM_FALLBACKS.labels("llm_disabled").inc()
            result = QaResult(answer.answer, Answerer.LABELS, f"LLM {self.llm.detail}; label vote: {answer.rationale}",
                              fallback_reason=FallbackReason.LLM_DISABLED)
        else:
            retrieval = await asyncio.to_thread(self.pipeline.search, ecg, k, filt)
            result = await self.llm.answerer.answer(question, options, retrieval.hits, question_type, retrieval.seconds,
                                                    diagnoses=retrieval.diagnoses, measurements=retrieval.measurements)
        ecg_info = ecg_fields(retrieval, received)
        return pb.AnswerQuestionResponse(
            **ecg_info, answer=result.answer, answerer=result.answerer, neighbours=self._neighbours(retrieval.hits),
            rationale=result.rationale, latency=latency_proto(retrieval, start), warnings=retrieval.warnings,
            fallback_reason=result.fallback_reason, llm_model=result.model,
            diagnoses=[diagnosis_to_proto(d) for d in retrieval.diagnoses],
        )

    @rpc
    async def InsertRecords(self, request_iterator: AsyncIterator[pb.InsertRecordsRequest], context: grpc.aio.ServicerContext) -> pb.InsertRecordsResponse:
        response = pb.InsertRecordsResponse()
        batch: list[tuple[int, RecordToInsert]] = []
        rejections: list[pb.Rejection] = []
        seen = 0

        async def flush() -> None:
            outcome = await asyncio.to_thread(self.pipeline.insert, [record for _, record in batch], response.batch_id)
            if self.audit:
                rejected = {position for position, _ in outcome.rejected}
                written = [r for i, (_, r) in enumerate(batch) if i not in rejected]
                await self.audit.write("InsertRecords", batch_id=response.batch_id,
                                       records=[{"source": r.source, "ecg_id": r.ecg_id,
                                                 "patient": self.audit.pseudonym(r.patient_id)} for r in written])
            response.inserted += outcome.inserted
            response.updated += outcome.updated
            for position, reason in outcome.rejected:
                index, record = batch[position]
                rejections.append(pb.Rejection(index=index, ecg_id=record.ecg_id, reason=reason))
            batch.clear()

        async for message in request_iterator:
            index, seen = seen, seen + 1
            if index == 0:
                response.batch_id = check_batch_id(message.batch_id) if message.batch_id else new_batch_id()
            try:
                if not message.HasField("record"):
                    raise EcgInputError("message has no record")
                batch.append((index, await off_loop_if_file(record_from_proto, message.record)))
            except EcgInputError as exc:
                rejections.append(pb.Rejection(index=index, ecg_id=message.record.ecg_id, reason=str(exc)))
                RECORDS_WRITTEN.labels("rejected").inc()
                continue
            if len(batch) >= INSERT_BATCH:
                await flush()
        if batch:
            await flush()
        if seen == 0:
            raise EcgInputError("empty stream: no records to insert")
        rejections.sort(key=lambda r: r.index)
        if response.inserted + response.updated == 0:
            first = rejections[0]
            raise EcgInputError(
                f"no usable record in the stream ({len(rejections)} rejected); "
                f"record {first.index} (ecg_id {first.ecg_id!r}): {first.reason}"
            )
        response.rejected = len(rejections)
        response.rejections.extend(rejections)
        return response

    @rpc
    async def DeleteRecords(self, request: pb.DeleteRecordsRequest, context: grpc.aio.ServicerContext) -> pb.DeleteRecordsResponse:
        if request.batch_id:
            if request.keys:
                raise EcgInputError("give keys or a batch_id, not both")
            deleted = await asyncio.to_thread(self.pipeline.delete, (), check_batch_id(request.batch_id))
            log.info("rolled back batch %s: %d records deleted", request.batch_id, deleted)
            if self.audit:
                await self.audit.write("DeleteRecords", batch_id=request.batch_id, deleted=deleted)
            return pb.DeleteRecordsResponse(deleted=deleted)
        keys = []
        for i, key in enumerate(request.keys):
            if not key.ecg_id.strip():
                raise EcgInputError(f"key {i} has no ecg_id")
            keys.append((key.source.strip() or DEFAULT_SOURCE, key.ecg_id.strip()))
        if not keys:
            raise EcgInputError("no keys to delete")
        deleted = await asyncio.to_thread(self.pipeline.delete, keys)
        if self.audit:
            await self.audit.write("DeleteRecords", records=[{"source": s, "ecg_id": e} for s, e in keys],
                                   deleted=deleted)
        return pb.DeleteRecordsResponse(deleted=deleted)

    @rpc
    async def GetCorpusStats(self, request: pb.GetCorpusStatsRequest, context: grpc.aio.ServicerContext) -> pb.CorpusStats:
        stats = await asyncio.to_thread(self.pipeline.store.stats)
        observe_corpus(stats)
        return stats_proto(stats)

    @rpc
    async def OptimizeCorpus(self, request: pb.OptimizeCorpusRequest, context: grpc.aio.ServicerContext) -> pb.CorpusStats:
        start = time.perf_counter()
        await asyncio.to_thread(self.pipeline.store.optimize)
        stats = await asyncio.to_thread(self.pipeline.store.stats)
        observe_corpus(stats)
        log.info("corpus optimized in %.1f s: %d of %d points indexed", time.perf_counter() - start,
                 stats.indexed_vectors, stats.points)
        return stats_proto(stats)

    @rpc
    async def ListBatches(self, request: pb.ListBatchesRequest, context: grpc.aio.ServicerContext) -> pb.ListBatchesResponse:
        batches = await asyncio.to_thread(self.pipeline.store.batches)
        return pb.ListBatchesResponse(batches=[pb.Batch(**dataclasses.asdict(b)) for b in batches])

    @rpc
    async def CreateSnapshot(self, request: pb.CreateSnapshotRequest, context: grpc.aio.ServicerContext) -> pb.Snapshot:
        if self.snapshot_dir is None:
            raise StoreUnsupported("this server has no snapshot directory")
        # Sortable by time and unique: two calls in one second must not write (and tar into) the same file.
        out = self.snapshot_dir / f"ecgregen-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}.tar"
        path, points = await asyncio.to_thread(self.pipeline.store.snapshot, out)
        log.info("snapshot written: %s (%d points)", path, points)
        return pb.Snapshot(path=str(path), bytes=path.stat().st_size, points=points)

    @rpc
    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        return self._server_info()

    def _server_info(self) -> pb.ServerInfo:
        llm = self.llm
        return pb.ServerInfo(
            version=__version__, encoder_id=self.pipeline.encoder.encoder_id,
            llm=pb.LlmInfo(enabled=llm.answerer is not None, model=llm.model, endpoint=llm.endpoint,
                           circuit=llm.circuit(), detail=llm.detail),
            calibration=calibration_proto(self.pipeline), report_mode=self.pipeline.report_mode,
            report_language=self.pipeline.report_language,
        )

    @rpc
    async def StreamECG(self, request_iterator: AsyncIterator[pb.StreamEcgRequest], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamEcgResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "config":
            raise EcgInputError("the first message of a stream must be a StreamConfig (then StreamChunks only)")
        settings = parse_config(first.config, MAX_K)
        sees_patient_ids = SEES_PATIENT_IDS.get()  # the caller's, read once for every window of the stream
        if not self.streams.try_acquire():
            STREAM_WINDOWS.labels("refused_stream").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the server already serves {self.streams.limit} streams; retry later or elsewhere")
        patient = self.audit.pseudonym(settings.patient_id) if self.audit and settings.patient_id else "-"
        log.info("stream opened: device %s, patient %s, %g Hz, %d leads, %g s windows every %g s",
                 first.config.device_id.strip() or "-", patient, settings.rate_hz, len(settings.leads), settings.window_s,
                 settings.hop_s)
        out: asyncio.Queue[tuple | None] = asyncio.Queue()
        slots = asyncio.Semaphore(MAX_PENDING_WINDOWS)
        reader = asyncio.get_running_loop().create_task(self._read_stream(request_iterator, settings, out, slots))
        draining = asyncio.get_running_loop().create_task(self.draining.wait())
        expired = asyncio.get_running_loop().create_task(asyncio.sleep(self.max_stream_s))
        try:
            while True:
                getter = asyncio.ensure_future(out.get())
                done, _ = await asyncio.wait({getter, draining, expired}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    reader.cancel()
                    while not out.empty():  # windows already taken in are still answered
                        item = out.get_nowait()
                        if item is not None:
                            yield await self._stream_item(item, settings, slots, sees_patient_ids)
                    code, message = (
                        (StreamWarningCode.SHUTTING_DOWN, "the server is shutting down; reconnect to continue")
                        if draining in done else (StreamWarningCode.MAX_DURATION,
                                                  f"streams last at most {self.max_stream_s:g} s; reconnect to continue")
                    )
                    yield pb.StreamEcgResponse(warning=pb.StreamWarning(code=code, message=message))
                    return
                item = getter.result()
                if item is None:
                    return
                yield await self._stream_item(item, settings, slots, sees_patient_ids)
        finally:
            reader.cancel()
            draining.cancel()
            expired.cancel()
            self.streams.release()

    async def _read_stream(self, requests: AsyncIterator[pb.StreamEcgRequest], settings: StreamSettings,
                           out: asyncio.Queue, slots: asyncio.Semaphore) -> None:
        """Chunks -> windows (submitted to the batcher) and warnings, in order; stops reading while the stream
        has MAX_PENDING_WINDOWS windows in flight (back-pressure)."""
        session = StreamSession(settings)
        try:
            async for message in requests:
                if message.WhichOneof("message") != "chunk":
                    out.put_nowait(("warning", pb.StreamWarning(code=StreamWarningCode.BAD_CHUNK,
                                                                message="a second config; ignored")))
                    continue
                windows, warnings = session.feed(message.chunk)
                for warning in warnings:
                    out.put_nowait(("warning", warning))
                for window in windows:
                    await slots.acquire()
                    STREAM_PENDING.inc()
                    out.put_nowait(("window", window, self.batcher.submit(window, settings), time.perf_counter()))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must end the stream with an error, not leave the writer waiting
            log.exception("stream reader failed")
            out.put_nowait(("error", INTERNAL_STREAM_ERROR))
        out.put_nowait(None)

    async def _stream_item(self, item: tuple, settings: StreamSettings, slots: asyncio.Semaphore,
                           sees_patient_ids: bool) -> pb.StreamEcgResponse:
        if item[0] == "warning":
            return pb.StreamEcgResponse(warning=item[1])
        if item[0] == "error":
            return pb.StreamEcgResponse(error=item[1])
        _, window, future, completed_at = item
        try:
            outcome: WindowOutcome = await future
        finally:
            slots.release()
            STREAM_PENDING.dec()
        if outcome.error is not None or outcome.retrieval is None or outcome.report is None:
            STREAM_WINDOWS.labels("dropped_unusable").inc()
            return pb.StreamEcgResponse(warning=pb.StreamWarning(
                code=StreamWarningCode.WINDOW_DROPPED,
                message=f"window {window.index} at {window.start_s:.1f} s: {outcome.error}"))
        STREAM_WINDOWS.labels("answered").inc()
        retrieval, report, answer, flags = outcome.retrieval, outcome.report, outcome.answer, outcome.flags
        hits, seconds = retrieval.hits, retrieval.seconds
        used = [lead for lead in settings.leads if f"lead_off:{lead}" not in window.flags]
        return pb.StreamEcgResponse(window_result=pb.WindowResult(
            window_index=window.index, start_s=window.start_s, end_s=window.start_s + settings.window_s,
            report=report.text, report_language=report.language, neighbours=self._neighbours(hits, sees_patient_ids),
            latency=pb.StageLatency(
                preprocess_ms=seconds["preprocess"] * 1e3, encode_ms=seconds["encode"] * 1e3,
                search_ms=seconds["search"] * 1e3, diagnose_ms=seconds["diagnose"] * 1e3,
                measure_ms=seconds["measure"] * 1e3, total_ms=(time.perf_counter() - completed_at) * 1e3,
            ),
            leads_used=used, leads_missing=[lead for lead in STANDARD_LEADS if lead not in settings.leads],
            leads_derived=settings.derived,
            quality_flags=window.flags + flags, answer=answer,
            diagnoses=[diagnosis_to_proto(d) for d in retrieval.diagnoses], warnings=retrieval.warnings,
            measurements=measurements_to_proto(retrieval.measurements),
            report_edits=report_edits_to_proto(report.edits),
        ))
