"""Bulk indexing: read records, embed them, upsert them in batches - locally or through a running server.

Idempotent (point ids come from source + ecg_id, so a repeated run updates) and resumable (the local sink skips
records already in the store, so an interrupted run picks up where it stopped). A record that cannot be read or
used is reported and skipped; it never stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from tqdm import tqdm

from ecgregen.client import open_channel
from ecgregen.ecg import EcgInputError
from ecgregen.pipeline import InsertOutcome, RecordToInsert, RetrievalPipeline, new_batch_id
from ecgregen.records import EcgRecord
from ecgregen.store import point_id
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import ecg_to_proto


@dataclass
class IndexReport:
    batch_id: str = ""
    inserted: int = 0
    updated: int = 0
    skipped: int = 0  # already present (resume)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (ecg_id, reason)
    seconds: float = 0.0

    @property
    def records_per_second(self) -> float:
        done = self.inserted + self.updated
        return done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (
            f"inserted {self.inserted}, updated {self.updated}, skipped {self.skipped} already indexed, "
            f"rejected {len(self.rejected)} in {self.seconds:.1f} s ({self.records_per_second:.0f} records/s); "
            f"batch {self.batch_id}"
        )
        for ecg_id, reason in self.rejected[:10]:
            text += f"\n  rejected {ecg_id}: {reason}"
        if len(self.rejected) > 10:
            text += f"\n  ... and {len(self.rejected) - 10} more"
        return text


class Sink(Protocol):
    """Where embedded records go."""

    def existing(self, records: Sequence[EcgRecord]) -> set[str]:
        """Point ids of `records` that are already stored (empty if the sink cannot tell)."""

    def start(self) -> None:
        """Called once before the first batch."""

    def write(self, batch: Sequence[RecordToInsert], batch_id: str) -> InsertOutcome:
        """Upsert; rejected records are reported by their position in `batch`."""

    def finish(self) -> None:
        """Called once after the last batch."""


class LocalSink:
    """Encode in this process and write straight into a store (no server needed)."""

    def __init__(self, pipeline: RetrievalPipeline) -> None:
        self.pipeline = pipeline

    def existing(self, records: Sequence[EcgRecord]) -> set[str]:
        return self.pipeline.store.existing_ids([point_id(r.source, r.ecg_id) for r in records])

    def start(self) -> None:
        self.pipeline.store.begin_bulk_load()

    def write(self, batch: Sequence[RecordToInsert], batch_id: str) -> InsertOutcome:
        return self.pipeline.insert(batch, batch_id)

    def finish(self) -> None:
        # Build the HNSW graph once at the end of a bulk load rather than while inserting.
        self.pipeline.store.optimize()


class GrpcSink:
    """Send records to a running server through InsertRecords (the server encodes)."""

    def __init__(self, address: str, timeout_s: float = 300.0) -> None:
        self.channel = open_channel(address)  # TLS and token from the environment, as the client commands
        self.stub = pb_grpc.EcgReGenStub(self.channel)
        self.timeout_s = timeout_s

    def existing(self, records: Sequence[EcgRecord]) -> set[str]:
        return set()

    def start(self) -> None:
        pass

    def write(self, batch: Sequence[RecordToInsert], batch_id: str) -> InsertOutcome:
        messages = (
            pb.InsertRecordsRequest(
                record=pb.Record(
                    ecg_id=r.ecg_id, patient_id=r.patient_id, report=r.report, scp_codes=r.scp_codes,
                    source=r.source, ecg=ecg_to_proto(r.ecg),
                ),
                batch_id=batch_id,
            )
            for r in batch
        )
        try:
            response = self.stub.InsertRecords(messages, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # Every record of the batch was refused; the server says why for the first one.
            return InsertOutcome(rejected=[(i, exc.details()) for i in range(len(batch))])
        return InsertOutcome(
            response.inserted, response.updated, [(r.index, r.reason) for r in response.rejections]
        )

    def finish(self) -> None:
        self.channel.close()


def _batches(records: Sequence[EcgRecord], size: int) -> Iterator[Sequence[EcgRecord]]:
    for i in range(0, len(records), size):
        yield records[i : i + size]


def _load(chunk: Sequence[EcgRecord], present: set[str], report: IndexReport) -> list[RecordToInsert]:
    """Read the chunk's signals (skipping what is stored already); unreadable records are reported, not fatal."""
    batch: list[RecordToInsert] = []
    for record in chunk:
        if point_id(record.source, record.ecg_id) in present:
            report.skipped += 1
            continue
        try:
            ecg = record.load_ecg()
        except (EcgInputError, OSError, ValueError) as exc:
            report.rejected.append((record.ecg_id, str(exc)))
            continue
        batch.append(
            RecordToInsert(
                ecg=ecg, ecg_id=record.ecg_id, patient_id=record.patient_id, report=record.report,
                scp_codes=record.scp_codes, source=record.source,
            )
        )
    return batch


def index_records(
    records: Sequence[EcgRecord], sink: Sink, *, batch_size: int = 64, resume: bool = True, progress: bool = True,
    description: str = "indexing", batch_id: str | None = None,
) -> IndexReport:
    """Embed and upsert `records` in batches with a progress bar; returns counts and throughput.

    Reading the next chunk's signals overlaps with encoding and writing the current one (a one-deep pipeline:
    memory stays at two chunks). Everything written carries one batch id, so the whole run can be rolled back.
    """
    report = IndexReport(batch_id=batch_id or new_batch_id())
    start = time.perf_counter()
    sink.start()
    try:  # even when a batch fails or the run is interrupted, so that a Qdrant server gets its index back
        _write_all(records, sink, report, batch_size=batch_size, resume=resume, progress=progress,
                   description=description)
    finally:
        sink.finish()
    report.seconds = time.perf_counter() - start
    return report


def _write_all(records: Sequence[EcgRecord], sink: Sink, report: IndexReport, *, batch_size: int, resume: bool,
               progress: bool, description: str) -> None:
    """The body of :func:`index_records` between the sink's start and finish."""

    def account(outcome: InsertOutcome, batch: list[RecordToInsert]) -> None:
        report.inserted += outcome.inserted
        report.updated += outcome.updated
        report.rejected += [(batch[i].ecg_id, reason) for i, reason in outcome.rejected]

    with (
        tqdm(total=len(records), desc=description, unit="ecg", disable=not progress, dynamic_ncols=True) as bar,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-write") as writer,
    ):
        in_flight: tuple[Future[InsertOutcome], list[RecordToInsert], int] | None = None
        for chunk in _batches(records, batch_size):
            batch = _load(chunk, sink.existing(chunk) if resume else set(), report)
            if in_flight is not None:
                account(in_flight[0].result(), in_flight[1])
                bar.update(in_flight[2])
                in_flight = None
            if batch:
                in_flight = (writer.submit(sink.write, batch, report.batch_id), batch, len(chunk))
            else:
                bar.update(len(chunk))
        if in_flight is not None:
            account(in_flight[0].result(), in_flight[1])
            bar.update(in_flight[2])
