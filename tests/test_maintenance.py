"""Corpus maintenance without stalling (issue 19): the embedded store's batch registry, optimize in a child process
with a crash-safe swap, snapshots from a copy, and a real server that keeps answering health checks during
OptimizeCorpus and CreateSnapshot, with its event-loop lag exported."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from ecgregen.bench.stall import STORE_SUBDIR, fill_store, probe_during, shipped_encoder
from ecgregen.records import load_ptbxl
from ecgregen.settings import DEMO_PTBXL
from ecgregen.store import EdgeStore, StoreError, restore_snapshot, shard_files
from ecgregen.store import edge as edge_module
from ecgregen.store.batches import BatchRegistry
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto
from tests.conftest import start_server
from tests.test_store import DIM, ENCODER, batch_record, random_vectors, record

# Big enough that the engine's optimize held the GIL for seconds (3-4 s) on the 2-core CI machine; small enough
# to optimize in a few seconds.
STALL_CORPUS = 4000
STALL_BOUND_MS = 500.0  # "does not freeze": generous for a loaded machine, far below the old stall


def in_thread(fn: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def registry_of(store: EdgeStore) -> list[tuple[str, int]]:
    return [(b.batch_id, b.points) for b in store.batches()]


def test_batch_registry_follows_writes_and_is_rebuilt_when_missing(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = random_vectors(9, seed=21)
    path = tmp_path / "edge"
    with EdgeStore(path) as store:
        store.ensure_collection(DIM, ENCODER)
        store.upsert([batch_record(v, str(i), "b-old", "2026-01-01T00:00:00+00:00") for i, v in enumerate(vectors[:5])])
        store.upsert([batch_record(v, str(i), "b-new", "2026-02-01T00:00:00+00:00")
                      for i, v in enumerate(vectors[5:], 5)])
        assert not (path / edge_module.BATCHES_FILE).exists()  # stale from the first write until the store closes
        store.upsert([batch_record(vectors[0], "0", "b-new", "2026-02-02T00:00:00+00:00")])  # moves to b-new
        store.delete([record(vectors[1], "1").point_id])
        with monkeypatch.context() as m:  # answered without reading a record
            m.setattr(store, "scroll", lambda **_: pytest.fail("batches() scanned the corpus"))
            assert registry_of(store) == [("b-old", 3), ("b-new", 5)]
            assert store.batches()[1].last_inserted_at == "2026-02-02T00:00:00+00:00"
        assert store.delete_batch("b-new") == 5 and registry_of(store) == [("b-old", 3)]
        archive, _ = store.snapshot(tmp_path / "snap.tar")
    assert (path / edge_module.BATCHES_FILE).exists()

    (path / edge_module.BATCHES_FILE).unlink()  # a store from before the registry
    with EdgeStore(path) as store:
        assert registry_of(store) == [("b-old", 3)]
        assert store.batches() == BatchRegistry.scan(store.scroll(with_vectors=False)).infos()
    assert (path / edge_module.BATCHES_FILE).exists()
    # An older ecgregen wrote to the store since: the registry no longer adds up to the shard's points.
    (path / edge_module.BATCHES_FILE).write_text('{"batches": {"b-gone": [7, "2026-03-01", "2026-03-01"]}}')
    with EdgeStore(path) as store:
        assert registry_of(store) == [("b-old", 3)]

    restore_snapshot(archive, tmp_path / "restored")  # archives carry no registry: rebuilt from the records
    with EdgeStore(tmp_path / "restored") as restored:
        assert registry_of(restored) == [("b-old", 3)]


def test_optimize_runs_in_a_child_and_swaps_the_shard(tmp_path: Path) -> None:
    vectors = random_vectors(400, seed=22)
    path = tmp_path / "edge"
    with EdgeStore(path) as store:
        store.ensure_collection(DIM, ENCODER)
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])
        store.optimize()
        stats = store.stats()
        assert (stats.points, stats.indexed_vectors, stats.status) == (400, 400, "green")
        assert store.search(vectors[7], k=1)[0].ecg_id == "7"
        assert list((path / shard_files.SCRATCH_DIR).iterdir()) == []
        assert not (path / shard_files.OLD_SHARD_DIR).exists()
        store.upsert([record(vectors[0], "after")])  # the swapped-in shard takes writes
        assert store.count() == 401


def test_a_failed_optimize_leaves_the_store_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = random_vectors(50, seed=23)
    with EdgeStore(tmp_path / "edge") as store:
        store.ensure_collection(DIM, ENCODER)
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])
        monkeypatch.setattr(edge_module.sys, "executable", "/bin/false")  # the child exits with 1
        with pytest.raises(StoreError, match="optimizer process failed"):
            store.optimize()
        assert store.count() == 50 and store.search(vectors[3], k=1)[0].ecg_id == "3"
        assert store.stats().indexed_vectors == 0


def test_reads_and_writes_go_on_while_a_snapshot_is_tarred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = random_vectors(60, seed=25)
    tarring, tarred = threading.Event(), threading.Event()
    real_open = tarfile.open

    def held_open(*args: Any, **kwargs: Any) -> tarfile.TarFile:
        tarring.set()
        tarred.wait(30)
        return real_open(*args, **kwargs)

    with EdgeStore(tmp_path / "edge") as store:
        store.ensure_collection(DIM, ENCODER)
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors[:50])])
        with monkeypatch.context() as m:
            m.setattr(edge_module.tarfile, "open", held_open)
            snapshot = in_thread(lambda: store.snapshot(tmp_path / "snap.tar"))
            assert tarring.wait(30)
            writer = in_thread(lambda: store.upsert([record(v, f"during-{i}") for i, v in enumerate(vectors[50:])]))
            writer.join(10)
            assert not writer.is_alive()  # the tar is made from a copy, outside the store's locks
            assert store.search(vectors[8], k=1)[0].ecg_id == "8"
            tarred.set()
            snapshot.join(30)
        assert store.count() == 60
    restore_snapshot(tmp_path / "snap.tar", tmp_path / "restored")
    with EdgeStore(tmp_path / "restored") as restored:
        assert restored.count() == 50  # as the store was when the copy was made


def test_reads_go_on_and_writes_wait_while_optimizing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = random_vectors(300, seed=26)
    optimizing, finish = threading.Event(), threading.Event()

    class HeldOptimizer(subprocess.Popen):
        def communicate(self, *args: Any, **kwargs: Any) -> Any:
            optimizing.set()
            finish.wait(30)
            return super().communicate(*args, **kwargs)

    monkeypatch.setattr(edge_module.subprocess, "Popen", HeldOptimizer)
    with EdgeStore(tmp_path / "edge") as store:
        store.ensure_collection(DIM, ENCODER)
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors[:299])])
        optimizer = in_thread(store.optimize)
        assert optimizing.wait(30)
        assert store.search(vectors[11], k=1)[0].ecg_id == "11" and store.count() == 299
        writer = in_thread(lambda: store.upsert([record(vectors[299], "299")]))
        writer.join(0.5)
        assert writer.is_alive()  # writes wait: the copy being optimized must stay the whole corpus
        finish.set()
        optimizer.join(60)
        writer.join(30)
        stats = store.stats()
        assert (stats.points, stats.indexed_vectors) == (300, 299)  # the late write landed in the new shard
        assert store.search(vectors[299], k=1)[0].ecg_id == "299"


@pytest.mark.parametrize("shard_left", [True, False], ids=["crash-after-swap", "crash-mid-swap"])
def test_open_recovers_from_a_crash_during_optimize(tmp_path: Path, shard_left: bool) -> None:
    """The shard before the job holds 30 records, the job's shard 5 more, so the one kept is told by its records:
    after the swap (the new shard in place, the old one not yet deleted) open keeps the new one; mid-swap (the live
    shard moved aside, the new one still in scratch) it puts the old one back and drops the unfinished copy."""
    vectors = random_vectors(35, seed=24)
    path = tmp_path / "edge"
    with EdgeStore(path) as store:
        store.ensure_collection(DIM, ENCODER)
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors[:30])])
    shard, old = path / shard_files.SHARD_DIR, path / shard_files.OLD_SHARD_DIR
    before = tmp_path / "shard-before-the-job"
    shutil.copytree(shard, before)
    with EdgeStore(path) as store:  # the job's shard: the same records and 5 more
        store.upsert([record(v, f"new-{i}") for i, v in enumerate(vectors[30:])])
    scratch_copy = path / shard_files.SCRATCH_DIR / "optimize-x" / "shard"
    scratch_copy.parent.mkdir(parents=True)
    if shard_left:  # the new shard is in place, the old one not yet deleted
        before.rename(old)
        expected = {str(i) for i in range(30)} | {f"new-{i}" for i in range(5)}
    else:  # the live shard moved aside, the job's copy not yet in place
        shard.rename(scratch_copy)
        before.rename(old)
        expected = {str(i) for i in range(30)}
    with EdgeStore(path) as store:
        assert {r.ecg_id for r in store.scroll(with_vectors=False)} == expected
        assert store.count() == len(expected) and store.search(vectors[5], k=1)[0].ecg_id == "5"
        assert registry_of(store) == [("", len(expected))]  # the registry follows the shard that was kept
    assert not old.exists() and not (path / shard_files.SCRATCH_DIR).exists()


def test_server_keeps_answering_during_optimize_and_snapshot(tmp_path: Path) -> None:
    """Health checks every 20 ms and back-to-back searches go on while the corpus is optimized and snapshotted.
    Before the change the event loop froze for the whole optimize (seconds here)."""
    store_dir = tmp_path / "var" / STORE_SUBDIR
    fill_store(store_dir, STALL_CORPUS, *shipped_encoder())
    (store_dir / edge_module.BATCHES_FILE).unlink()  # as an older server left it: rebuilt at start
    server = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-demo", "--no-llm")
    try:
        stub = server.stub()
        batches = stub.ListBatches(pb.ListBatchesRequest(), timeout=30).batches
        assert sum(b.points for b in batches) == STALL_CORPUS and batches[0].batch_id == "fill-0"
        search = pb.SearchRequest(ecg=ecg_to_proto(load_ptbxl(DEMO_PTBXL, [9])[0].load_ecg()), k=5)
        optimize = probe_during(server.address, lambda: stub.OptimizeCorpus(pb.OptimizeCorpusRequest(), timeout=300),
                                search)
        snapshot = probe_during(server.address, lambda: stub.CreateSnapshot(pb.CreateSnapshotRequest(), timeout=300),
                                search)
        for phase in (optimize, snapshot):  # p99: the swap's load of the new shard is one short pause
            assert phase["health"]["p99_ms"] < STALL_BOUND_MS, (optimize, snapshot)
            assert phase["search"]["count"] > 0 and phase["search"]["errors"] == 0, (optimize, snapshot)
        stats = stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=30)
        assert (stats.points, stats.indexed_vectors) == (STALL_CORPUS, STALL_CORPUS)
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            metrics = response.read().decode()
        assert "ecgregen_event_loop_lag_seconds_bucket" in metrics
        assert float(metrics.split("ecgregen_event_loop_lag_seconds_count ")[1].split()[0]) > 10
    except grpc.RpcError as exc:
        pytest.fail(f"{exc}\n{server.log()[-3000:]}")
    finally:
        server.stop()

