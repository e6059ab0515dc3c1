"""The ``ecgregen.v1.EcgReGen`` gRPC service on grpc.aio.

Handlers only translate: proto -> domain (validation), the blocking pipeline in a worker thread (numpy, torch
and the store must not block the event loop), domain -> proto. Errors of the domain become gRPC status codes in
one place, :func:`rpc`, which also records the per-RPC metrics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ecgregen.ecg import Ecg, EcgInputError
from ecgregen.metrics import RECORDS_WRITTEN, RPC_LATENCY, RPC_REQUESTS
from ecgregen.pipeline import MAX_K, EmptyCorpusError, RecordToInsert, Retrieval, RetrievalPipeline
from ecgregen.store import SearchFilter, StoreError
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import DEFAULT_SOURCE, ecg_from_proto, filter_from_proto, neighbour_to_proto, record_from_proto

log = logging.getLogger("ecgregen.server")

INSERT_BATCH = 64
ANSWERERS = ("labels",)

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def rpc(handler: Handler) -> Handler:
    """Time the call, count it by status code, and map domain errors to status codes.

    Bad input -> INVALID_ARGUMENT; empty corpus -> FAILED_PRECONDITION; store failures -> UNAVAILABLE;
    anything else -> INTERNAL with the details logged here and not leaked to the caller.
    """
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: EcgReGenService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await handler(self, request, context)
        except EcgInputError as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(exc))
        except EmptyCorpusError as exc:
            code = grpc.StatusCode.FAILED_PRECONDITION
            await context.abort(code, str(exc))
        except StoreError as exc:
            code = grpc.StatusCode.UNAVAILABLE
            log.warning("%s: vector store error: %s", method, exc)
            await context.abort(code, f"vector store unavailable: {exc}")
        except asyncio.CancelledError:
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
            RPC_REQUESTS.labels(method, code.name).inc()
            RPC_LATENCY.labels(method).observe(time.perf_counter() - start)

    return wrapper  # type: ignore[return-value]


def check_k(k: int, default: int) -> int:
    if k == 0:
        return default
    if k > MAX_K:
        raise EcgInputError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def latency_proto(retrieval: Retrieval, start: float) -> pb.StageLatency:
    s = retrieval.seconds
    return pb.StageLatency(
        preprocess_ms=s.get("preprocess", 0.0) * 1e3, encode_ms=s.get("encode", 0.0) * 1e3,
        search_ms=s.get("search", 0.0) * 1e3, answer_ms=s.get("answer", 0.0) * 1e3,
        total_ms=(time.perf_counter() - start) * 1e3,
    )


def parse_query(request: Any, default_k: int) -> tuple[Ecg, int, SearchFilter | None]:
    """The ECG, k and filter every query request carries, checked."""
    if not request.HasField("ecg"):
        raise EcgInputError("request has no ECG")
    return ecg_from_proto(request.ecg), check_k(request.k, default_k), filter_from_proto(request.filter)


class EcgReGenService(pb_grpc.EcgReGenServicer):
    def __init__(self, pipeline: RetrievalPipeline) -> None:
        self.pipeline = pipeline

    @rpc
    async def GenerateReport(self, request: pb.GenerateReportRequest, context: grpc.aio.ServicerContext) -> pb.GenerateReportResponse:
        start = time.perf_counter()
        ecg, k, filt = parse_query(request, default_k=3)
        report, retrieval = await asyncio.to_thread(self.pipeline.generate_report, ecg, k, filt)
        return pb.GenerateReportResponse(
            report=report, neighbours=[neighbour_to_proto(h) for h in retrieval.hits],
            latency=latency_proto(retrieval, start), warnings=retrieval.warnings,
            encoder_id=self.pipeline.encoder.encoder_id,
        )

    @rpc
    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        start = time.perf_counter()
        ecg, k, filt = parse_query(request, default_k=10)
        retrieval = await asyncio.to_thread(self.pipeline.search, ecg, k, filt, exact=request.exact)
        return pb.SearchResponse(
            neighbours=[neighbour_to_proto(h) for h in retrieval.hits], latency=latency_proto(retrieval, start),
            warnings=retrieval.warnings,
        )

    @rpc
    async def AnswerQuestion(self, request: pb.AnswerQuestionRequest, context: grpc.aio.ServicerContext) -> pb.AnswerQuestionResponse:
        start = time.perf_counter()
        ecg, k, filt = parse_query(request, default_k=3)
        if not request.question.strip():
            raise EcgInputError("question is empty")
        answerer = request.answerer or "labels"
        if answerer not in ANSWERERS:
            raise EcgInputError(f"unknown answerer {answerer!r}; available: {', '.join(ANSWERERS)}")
        answer, retrieval = await asyncio.to_thread(
            self.pipeline.answer, ecg, request.question, list(request.options), k, filt
        )
        return pb.AnswerQuestionResponse(
            answer=answer.answer, answerer=answerer, neighbours=[neighbour_to_proto(h) for h in retrieval.hits],
            rationale=answer.rationale, latency=latency_proto(retrieval, start), warnings=retrieval.warnings,
        )

    @rpc
    async def InsertRecords(self, request_iterator: AsyncIterator[pb.InsertRecordsRequest], context: grpc.aio.ServicerContext) -> pb.InsertRecordsResponse:
        response = pb.InsertRecordsResponse()
        batch: list[tuple[int, RecordToInsert]] = []
        rejections: list[pb.Rejection] = []
        seen = 0

        async def flush() -> None:
            outcome = await asyncio.to_thread(self.pipeline.insert, [record for _, record in batch])
            response.inserted += outcome.inserted
            response.updated += outcome.updated
            for position, reason in outcome.rejected:
                index, record = batch[position]
                rejections.append(pb.Rejection(index=index, ecg_id=record.ecg_id, reason=reason))
            batch.clear()

        async for message in request_iterator:
            index, seen = seen, seen + 1
            try:
                if not message.HasField("record"):
                    raise EcgInputError("message has no record")
                batch.append((index, record_from_proto(message.record)))
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
        keys = []
        for i, key in enumerate(request.keys):
            if not key.ecg_id.strip():
                raise EcgInputError(f"key {i} has no ecg_id")
            keys.append((key.source.strip() or DEFAULT_SOURCE, key.ecg_id.strip()))
        if not keys:
            raise EcgInputError("no keys to delete")
        deleted = await asyncio.to_thread(self.pipeline.delete, keys)
        return pb.DeleteRecordsResponse(deleted=deleted)

    @rpc
    async def GetCorpusStats(self, request: pb.GetCorpusStatsRequest, context: grpc.aio.ServicerContext) -> pb.CorpusStats:
        stats = await asyncio.to_thread(self.pipeline.store.stats)
        return pb.CorpusStats(
            points=stats.points, indexed_vectors=stats.indexed_vectors, dim=stats.dim, encoder_id=stats.encoder_id,
            engine=stats.engine, status=stats.status,
        )
