"""Every dependency fault ends in a status, within a deadline (issue 19): faults made for real - a tritonserver
stopped with SIGSTOP, a batch that makes numpy raise inside the Triton dispatcher, a bulk load interrupted
midway. The measured matrix over all dependencies is `scripts/fault_matrix.py` (docs/faults.md)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from ecgregen.answer import LabelVocabulary, LabelVoteAnswerer, default_scp_statements
from ecgregen.encoder_export.local_triton import LocalTriton
from ecgregen.encoders.factory import open_encoder
from ecgregen.encoders.triton import TritonEncoder
from ecgregen.errors import EncoderUnavailable
from ecgregen.pipeline import RetrievalPipeline
from ecgregen.preprocess import preprocess
from ecgregen.records import EcgRecord
from ecgregen.store import StoreError
from ecgregen.store.local import QdrantLocalStore
from ecgregen.store.types import StoredRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import ecg_to_proto
from indexer.build import LocalSink, index_records
from tests.conftest import ECGREGEN, SCRIPTED_LLM_FLAGS, ServerProcess, real_ecg_of, start_server
from tests.fault_matrix import (Cell, Phases, RestartableServer, llm_faults, lost_records, measure_qdrant_peer,
                                 measure_service, stored_batches, triton_faults)
from tests.fault_peers import KillableLlm
from tests.test_triton import triton_server  # noqa: F401 - the fixture: a service encoding through Triton

DEADLINE_S = 2.0


@pytest.fixture
def encoder(triton: LocalTriton) -> Iterator[TritonEncoder]:
    remote = TritonEncoder(triton.grpc_url, timeout_s=DEADLINE_S)
    yield remote
    remote.close()


def _windows(encoder: TritonEncoder) -> tuple[np.ndarray, np.ndarray]:
    prepared = preprocess(real_ecg_of(10), encoder.preprocess_config)
    return prepared.windows, prepared.lengths


def _timed(call: Callable[[], object], limit_s: float = 30.0) -> tuple[float, BaseException | None]:
    """Run `call` in a daemon thread: (seconds it took, what it raised). A call still running after `limit_s`
    fails the test without hanging the session (the thread is left behind)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - the test inspects what came back
            outcome.append(exc)
        else:
            outcome.append(None)

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    if not outcome:
        pytest.fail(f"call still waiting after {limit_s} s: it hangs")
    return time.monotonic() - start, outcome[0]


def test_hung_triton_fails_every_encode_within_its_deadline(triton: LocalTriton, encoder: TritonEncoder) -> None:
    """Triton stopped (SIGSTOP: it accepts connections, never answers). Calls arriving while a batch hangs used
    to wait for that batch's timeout and then their own: each call is bounded by its own deadline now."""
    windows, lengths = _windows(encoder)
    encoder.encode(windows, lengths)  # warm
    triton.kill(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(3) as pool:
            results = []
            for _ in range(3):
                results.append(pool.submit(_timed, lambda: encoder.encode(windows, lengths)))
                time.sleep(0.6)  # staggered: each one queues behind the hung batch of the one before
            outcomes = [r.result(timeout=30) for r in results]
    finally:
        triton.kill(signal.SIGCONT)
    for elapsed, error in outcomes:
        assert isinstance(error, EncoderUnavailable) and elapsed <= DEADLINE_S + 0.5, (elapsed, error)
    assert "Triton at 127.0.0.1:" in str(outcomes[0][1])
    deadline = time.monotonic() + 15  # Triton resumed: the same encoder answers again by itself
    while True:
        elapsed, error = _timed(lambda: encoder.encode(windows, lengths))
        if error is None:
            break
        assert isinstance(error, EncoderUnavailable) and time.monotonic() < deadline
        time.sleep(0.2)


def test_an_exception_in_the_dispatcher_fails_that_call_only(encoder: TritonEncoder) -> None:
    """Windows of two lengths in one batch make numpy raise ValueError inside the dispatcher thread: before, that
    killed the thread and every later encode waited forever; now that call fails and the next one is answered."""
    windows, lengths = _windows(encoder)
    bad = [windows[0], windows[0][:, :500]]
    elapsed, error = _timed(lambda: encoder.encode(bad, np.array([1000, 500])))  # type: ignore[arg-type]
    assert isinstance(error, EncoderUnavailable) and "ValueError" in str(error), error
    elapsed, error = _timed(lambda: encoder.encode(windows, lengths))
    assert error is None and elapsed <= DEADLINE_S, (elapsed, error)


class RecordingStore(QdrantLocalStore):
    """The real local-mode store, counting bulk-load starts and ends, whose disk fills up on the second write."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[str] = []

    def begin_bulk_load(self) -> None:
        self.calls.append("begin")
        super().begin_bulk_load()

    def optimize(self) -> None:
        self.calls.append("optimize")
        super().optimize()

    def _upsert(self, records: list[StoredRecord]) -> None:
        self.calls.append("upsert")
        if self.calls.count("upsert") == 2:
            raise StoreError("No space left on device")
        super()._upsert(records)


def test_an_interrupted_bulk_load_still_ends_it(tmp_path: Path, demo_queries: list[EcgRecord]) -> None:
    """A write failing midway used to skip `optimize`, leaving a Qdrant server with indexing turned off."""
    encoder = open_encoder(None)
    store = RecordingStore(tmp_path / "qdrant")
    store.ensure_collection(encoder.dim, encoder.encoder_id)
    pipeline = RetrievalPipeline(encoder, store, LabelVoteAnswerer(LabelVocabulary.from_scp_statements(
        default_scp_statements())))
    try:
        with pytest.raises(StoreError, match="No space left"):
            index_records(demo_queries, LocalSink(pipeline), batch_size=4, progress=False)
    finally:
        store.close()
    assert store.calls[0] == "begin" and store.calls[-1] == "optimize" and store.calls.count("upsert") == 2


# ---- the fault matrix (scripts/fault_matrix.py measures it under the load; here short and light) ----

CI = Phases(clients=4, streams=0, baseline_s=1.0, fault_s=2.0, recover_s=20.0, deadline_s=15.0)


@pytest.fixture(scope="module")
def killable_llm() -> Iterator[KillableLlm]:
    with KillableLlm() as llm:
        yield llm


@pytest.fixture(scope="module")
def llm_server(killable_llm: KillableLlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("faults-llm")
    server = start_server(tmp, "--data-dir", str(tmp / "var"), "--llm-base-url", killable_llm.base_url,
                          "--llm-model", "scripted", *SCRIPTED_LLM_FLAGS)
    yield server
    server.stop()


def _healthy_row(cell: Cell, *, writes: bool = True) -> None:
    """What every row must show: nothing waited past its deadline and the service recovered; and where a writer ran,
    that it had inserts acknowledged and that every one of them is in the corpus (counted by id)."""
    assert cell.past_deadline == 0 and cell.recovered_s is not None, cell
    if writes:
        assert cell.acknowledged and cell.lost == 0, cell
    else:
        assert cell.acknowledged is None and cell.lost is None, cell  # a row that measures no writes says so


def test_lost_records_are_counted_by_acknowledged_id(llm_server: ServerProcess,
                                                     demo_queries: list[EcgRecord]) -> None:
    """The matrix's count of lost records, against a real server: of two acknowledged inserts one is gone (rolled
    back here) while an insert whose reply never came landed; the point count says nothing was lost, the count by
    acknowledged id says one."""
    run = uuid.uuid4().hex[:8]
    ecg = ecg_to_proto(demo_queries[0].load_ecg())

    async def scenario() -> tuple[int, dict[str, int]]:
        async with grpc.aio.insecure_channel(llm_server.address) as channel:
            stub = pb_grpc.EcgReGenStub(channel)
            before = (await stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=30)).points
            for name in ("gone", "kept", "unacknowledged"):
                record = pb.Record(ecg_id=f"{run}-{name}", report="r", source="faults", ecg=ecg)
                await stub.InsertRecords(iter([pb.InsertRecordsRequest(record=record, batch_id=f"{run}-{name}")]),
                                         timeout=60)
            await stub.DeleteRecords(pb.DeleteRecordsRequest(batch_id=f"{run}-gone"), timeout=60)
            after = (await stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=30)).points
            stored = await stored_batches(stub)
            for name in ("kept", "unacknowledged"):
                await stub.DeleteRecords(pb.DeleteRecordsRequest(batch_id=f"{run}-{name}"), timeout=60)
            return after - before, stored

    acknowledged = [f"{run}-gone", f"{run}-kept"]
    added, stored = asyncio.run(scenario())
    assert max(0, len(acknowledged) - added) == 0  # what the count of points said
    assert lost_records(acknowledged, stored) == 1


@pytest.mark.parametrize("fault", ["killed", "hung", "slow", "errors", "garbage"])
def test_llm_fault_degrades_to_the_retrieved_report(fault: str, killable_llm: KillableLlm,
                                                    llm_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    inject, restore = llm_faults(killable_llm)[fault]
    cell = asyncio.run(measure_service(Cell("LLM", fault), llm_server.address, demo_queries[:4], inject, restore,
                                       CI, refine=True))
    _healthy_row(cell)
    assert cell.outcomes and all(o.startswith("OK") for o in cell.outcomes), cell  # refinement falls back, no error
    if fault != "slow":
        assert any("fallback" in o for o in cell.outcomes), cell


@pytest.mark.parametrize("fault", ["killed", "hung", "slow"])
def test_triton_fault_is_unavailable_then_recovers(fault: str, triton: LocalTriton, triton_server: ServerProcess,
                                                   demo_queries: list[EcgRecord]) -> None:
    inject, restore = triton_faults(triton)[fault]
    phases = replace(CI, fault_s=12.0) if fault == "hung" else CI  # past the service's 10 s Triton timeout
    cell = asyncio.run(measure_service(Cell("Triton", fault), triton_server.address, demo_queries[:4], inject,
                                       restore, phases))
    _healthy_row(cell)
    assert set(cell.outcomes) <= {"OK", "UNAVAILABLE"}, cell
    assert ("UNAVAILABLE" in cell.outcomes) == (fault != "slow"), cell


@pytest.mark.parametrize("fault", ["killed", "hung", "slow", "errors", "garbage"])
def test_qdrant_server_fault_is_a_store_error_within_the_deadline(fault: str) -> None:
    cell = measure_qdrant_peer(fault, replace(CI, clients=8))
    _healthy_row(cell, writes=False)
    assert set(cell.outcomes) <= {"OK", "StoreError"}, cell
    assert ("StoreError" in cell.outcomes) == (fault != "slow"), cell


def test_embedded_store_server_killed_under_load_loses_no_acknowledged_record(
        tmp_path: Path, demo_queries: list[EcgRecord]) -> None:
    server = RestartableServer(ECGREGEN, tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm")
    try:
        cell = asyncio.run(measure_service(Cell("embedded store", "killed"), server.address, demo_queries[:4],
                                           server.kill, server.start, CI))
    finally:
        server.stop()
    _healthy_row(cell)
    assert cell.acknowledged and set(cell.outcomes) <= {"OK", "UNAVAILABLE"}, cell
