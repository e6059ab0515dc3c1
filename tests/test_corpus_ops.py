"""Operating the corpus through the service: batches and rollback, HNSW settings and per-query ef, operator stats,
online snapshots, and durability - a server killed with SIGKILL mid-insert loses no acknowledged record."""

from __future__ import annotations

import signal
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.settings import DEMO_PTBXL
from ecgregen.store import EdgeStore, restore_snapshot
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto
from tests.conftest import ServerProcess, start_server

STREAM = 8  # records per InsertRecords call in the crash test


@pytest.fixture(scope="module")
def index_records() -> list[EcgRecord]:
    return load_ptbxl(DEMO_PTBXL, range(1, 9))[:64]


@pytest.fixture(scope="module")
def ecgs(index_records: list[EcgRecord]) -> list[pb.Ecg]:
    return [ecg_to_proto(r.load_ecg()) for r in index_records]


def insert(server: ServerProcess, records: list[pb.Record], batch_id: str = "") -> pb.InsertRecordsResponse:
    messages = [pb.InsertRecordsRequest(record=r, batch_id=batch_id if i == 0 else "") for i, r in enumerate(records)]
    return server.stub().InsertRecords(iter(messages), timeout=60)


def test_sigkill_mid_insert_loses_no_acknowledged_record(tmp_path: Path, ecgs: list[pb.Ecg]) -> None:
    server = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-demo", "--no-llm")
    acknowledged: list[int] = []
    failed = threading.Event()

    def writer() -> None:
        stub = server.stub()
        for n in range(10_000):
            records = [
                pb.Record(ecg_id=f"{n}-{j}", patient_id=f"p{n}", report=f"stream {n}", source=f"s{n}",
                          scp_codes={"NORM": 100.0}, ecg=ecgs[(n * STREAM + j) % len(ecgs)])
                for j in range(STREAM)
            ]
            try:
                reply = stub.InsertRecords(iter([pb.InsertRecordsRequest(record=r) for r in records]), timeout=30)
            except grpc.RpcError:
                failed.set()  # the server died under this stream: it was never acknowledged
                return
            assert reply.inserted == STREAM
            acknowledged.append(n)

    thread = threading.Thread(target=writer)
    thread.start()
    while len(acknowledged) < 12 and thread.is_alive():
        time.sleep(0.02)
    time.sleep(0.05)  # land inside the next stream
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    thread.join(60)
    assert failed.is_set() and len(acknowledged) >= 12

    restarted = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-demo", "--no-llm")
    try:
        stub = restarted.stub()
        assert stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10).points >= STREAM * len(acknowledged)
        for n in acknowledged:  # every acknowledged record is there and found by search
            reply = stub.Search(pb.SearchRequest(ecg=ecgs[(n * STREAM) % len(ecgs)], k=STREAM,
                                                 filter=pb.SearchFilter(source=f"s{n}")), timeout=30)
            assert sorted(h.ecg_id for h in reply.neighbours) == sorted(f"{n}-{j}" for j in range(STREAM))
    finally:
        restarted.stop()


def test_batch_id_from_the_client_and_rollback(demo_server: ServerProcess, ecgs: list[pb.Ecg]) -> None:
    records = [pb.Record(ecg_id=f"rb-{i}", report="rollback me", source="rollback-test", ecg=ecgs[i]) for i in range(3)]
    assert insert(demo_server, records, batch_id="site-a:2026-11-25.1").batch_id == "site-a:2026-11-25.1"
    batches = {b.batch_id: b for b in demo_server.stub().ListBatches(pb.ListBatchesRequest(), timeout=30).batches}
    assert batches["site-a:2026-11-25.1"].points == 3
    stub = demo_server.stub()
    assert stub.DeleteRecords(pb.DeleteRecordsRequest(batch_id="site-a:2026-11-25.1"), timeout=30).deleted == 3
    listed = stub.ListBatches(pb.ListBatchesRequest(), timeout=30).batches
    assert "site-a:2026-11-25.1" not in {b.batch_id for b in listed}
    hits = stub.Search(pb.SearchRequest(ecg=ecgs[0], k=5, filter=pb.SearchFilter(source="rollback-test")), timeout=30)
    assert len(hits.neighbours) == 0


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (lambda ecg: insert_request(ecg, batch_id="no spaces allowed"), "batch_id 'no spaces allowed' must be 1-64"),
        (lambda ecg: pb.DeleteRecordsRequest(batch_id="x", keys=[pb.RecordKey(ecg_id="1")]), "keys or a batch_id"),
        (lambda ecg: pb.SearchRequest(ecg=ecg, k=3, hnsw_ef=5000), "hnsw_ef must be at most 4096"),
    ],
)
def test_corpus_requests_are_checked(edge_server: ServerProcess, ecgs: list[pb.Ecg], request_, message: str) -> None:  # noqa: ANN001
    request = request_(ecgs[0])
    stub = edge_server.stub()
    method = {pb.DeleteRecordsRequest: stub.DeleteRecords, pb.SearchRequest: stub.Search}.get(type(request))
    with pytest.raises(grpc.RpcError) as error:
        if method is None:
            stub.InsertRecords(iter(request), timeout=30)
        else:
            method(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.details()


def insert_request(ecg: pb.Ecg, batch_id: str) -> list[pb.InsertRecordsRequest]:
    return [pb.InsertRecordsRequest(record=pb.Record(ecg_id="b1", ecg=ecg), batch_id=batch_id)]


def test_stats_settings_and_hnsw_ef(tmp_path: Path, ecgs: list[pb.Ecg]) -> None:
    server = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm", "--hnsw-m", "32",
                          "--hnsw-ef-construct", "200", "--quantization", "int8")
    try:
        stub = server.stub()
        stats = stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10)
        assert (stats.points, stats.indexed_vectors, stats.status, stats.optimizer) == (270, 270, "green", "ok")
        assert (stats.index.hnsw_m, stats.index.hnsw_ef_construct, stats.index.quantization) == (32, 200, "int8")
        for ef in (0, 16, 512):
            reply = stub.Search(pb.SearchRequest(ecg=ecgs[3], k=5, hnsw_ef=ef), timeout=30)
            assert reply.neighbours[0].score == pytest.approx(1.0, abs=1e-3)  # the record itself is in the corpus
        insert(server, [pb.Record(ecg_id="new-1", report="late", source="late", ecg=ecgs[0])])
        stats = stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10)
        assert stats.points == 271 and stats.status == "grey" and "1 points not in the HNSW index" in stats.optimizer
        stats = stub.OptimizeCorpus(pb.OptimizeCorpusRequest(), timeout=120)
        assert (stats.points, stats.indexed_vectors, stats.status) == (271, 271, "green")
    finally:
        server.stop()


def test_online_snapshot_restores_elsewhere(edge_server: ServerProcess, tmp_path: Path) -> None:
    snapshot = edge_server.stub().CreateSnapshot(pb.CreateSnapshotRequest(), timeout=120)
    assert snapshot.bytes > 0 and snapshot.points >= 270 and Path(snapshot.path).name.startswith("ecgregen-")
    restore_snapshot(Path(snapshot.path), tmp_path / "copy")
    with EdgeStore(tmp_path / "copy") as copy:
        assert copy.count() == snapshot.points


def test_two_snapshots_at_once_are_two_whole_archives(edge_server: ServerProcess, tmp_path: Path) -> None:
    """Two CreateSnapshot calls made at the same moment give two archives, each whole: each opens, holds the store
    and restores with every point (before, both were named to the second and tarred into one partial file)."""
    stub = edge_server.stub()
    together = threading.Barrier(2)

    def snapshot(_: int) -> pb.Snapshot:
        together.wait(30)
        return stub.CreateSnapshot(pb.CreateSnapshotRequest(), timeout=120)

    with ThreadPoolExecutor(2) as pool:
        snapshots = list(pool.map(snapshot, range(2)))
    assert snapshots[0].path != snapshots[1].path
    for i, made in enumerate(snapshots):
        archive = Path(made.path)
        assert archive.name.startswith("ecgregen-") and archive.stat().st_size == made.bytes
        with tarfile.open(archive) as tar:
            assert {"store.json", "shard"} <= set(tar.getnames())
        restore_snapshot(archive, tmp_path / f"copy-{i}")
        with EdgeStore(tmp_path / f"copy-{i}") as copy:
            assert copy.count() == made.points >= 270


def test_snapshot_of_a_client_store_is_refused_clearly(client_server: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as error:
        client_server.stub().CreateSnapshot(pb.CreateSnapshotRequest(), timeout=30)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "snapshots of a Qdrant server are taken with its snapshot API" in error.value.details()
