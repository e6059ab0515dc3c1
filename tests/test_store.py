"""The vector store against the real engines: Qdrant Edge and qdrant-client local mode (memory and on disk)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tarfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ecgregen.indexer.migrate import migrate
from ecgregen.store import (
    EdgeStore,
    IndexSettings,
    QdrantLocalStore,
    SearchFilter,
    StoredRecord,
    StoreError,
    StoreMismatchError,
    UpsertResult,
    VectorStore,
    open_qdrant,
    open_store,
    point_id,
    restore_snapshot,
)

DIM = 32
ENCODER = "test-encoder-v1"
REPO = Path(__file__).resolve().parents[1]

def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def random_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def record(
    vector: np.ndarray,
    ecg_id: str,
    patient_id: str = "p0",
    source: str = "ptbxl",
    scp_codes: dict[str, float] | None = None,
    report: str = "sinus rhythm",
) -> StoredRecord:
    return StoredRecord(
        vector=vector,
        ecg_id=ecg_id,
        patient_id=patient_id,
        report=report,
        scp_codes={"NORM": 100.0} if scp_codes is None else scp_codes,
        source=source,
        inserted_at="2024-01-01T00:00:00+00:00",
    )


def location_for(engine: str, tmp_path: Path) -> str:
    locations = {"edge": str(tmp_path / "edge"), "client-memory": ":memory:", "client-local": f"local:{tmp_path}/local"}
    return locations[engine]


def open_location(location: str) -> VectorStore:
    """EdgeStore for a plain path, qdrant-client's local mode for ':memory:' and 'local:PATH'."""
    return open_qdrant(location) if location.startswith(("local:", ":memory:")) else EdgeStore(Path(location))


@pytest.fixture(params=["edge", "client-memory", "client-local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    with open_location(location_for(request.param, tmp_path)) as s:
        s.ensure_collection(DIM, ENCODER)
        yield s


@pytest.fixture(params=["edge", "client-local"])
def persistent_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return location_for(request.param, tmp_path)


def test_point_id_is_deterministic_per_source_and_ecg() -> None:
    assert point_id("ptbxl", "1") == point_id("ptbxl", "1")
    assert point_id("ptbxl", "1") != point_id("other", "1")
    assert point_id("ptbxl", "1") != point_id("ptbxl", "2")


def test_upsert_then_search_finds_record_first(store: VectorStore) -> None:
    vectors = random_vectors(20)
    codes = {"NORM": 100.0, "SR": 0.0}
    records = [record(v, str(i), patient_id=f"p{i}", scp_codes=codes) for i, v in enumerate(vectors)]

    assert store.upsert(records) == UpsertResult(inserted=20, updated=0)
    assert store.count() == 20

    hits = store.search(vectors[7], k=3)
    assert len(hits) == 3
    top = hits[0]
    assert top.point_id == records[7].point_id
    assert top.score == pytest.approx(1.0, abs=1e-4)
    assert hits[1].score <= top.score
    assert (top.ecg_id, top.patient_id, top.source) == ("7", "p7", "ptbxl")
    assert top.scp_codes == {"NORM": 100.0, "SR": 0.0}
    assert top.report == "sinus rhythm"
    assert top.inserted_at == "2024-01-01T00:00:00+00:00"


def test_reupsert_updates_in_place(store: VectorStore) -> None:
    vectors = random_vectors(5)
    store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])

    changed = record(vectors[2], "2", report="inferior myocardial infarction", scp_codes={"IMI": 80.0})
    assert store.upsert([changed]) == UpsertResult(inserted=0, updated=1)
    assert store.count() == 5
    top = store.search(vectors[2], k=1)[0]
    assert (top.report, top.scp_codes) == ("inferior myocardial infarction", {"IMI": 80.0})


def test_same_id_twice_in_one_batch_counts_once_and_last_wins(store: VectorStore) -> None:
    v = random_vectors(1)[0]
    result = store.upsert([record(v, "1", report="first"), record(v, "1", report="second")])
    assert result == UpsertResult(inserted=1, updated=0)
    assert store.count() == 1
    assert store.search(v, k=1)[0].report == "second"


def test_delete_and_existing_ids(store: VectorStore) -> None:
    vectors = random_vectors(4)
    records = [record(v, str(i)) for i, v in enumerate(vectors)]
    store.upsert(records)
    unknown = point_id("ptbxl", "does-not-exist")

    assert store.existing_ids([records[0].point_id, unknown]) == {records[0].point_id}
    assert store.delete([records[0].point_id, records[1].point_id, unknown]) == 2
    assert store.delete([records[0].point_id, unknown]) == 0
    assert store.count() == 2
    assert store.existing_ids([r.point_id for r in records]) == {records[2].point_id, records[3].point_id}
    assert records[0].point_id not in {h.point_id for h in store.search(vectors[0], k=4)}


def test_filters_exclude_what_they_should(store: VectorStore) -> None:
    base = random_vectors(1)[0]
    noise = random_vectors(5, seed=1) * 0.05
    records = [
        record(unit(base + noise[0]), "a", patient_id="p1", scp_codes={"NORM": 100.0}),
        record(unit(base + noise[1]), "b", patient_id="p1", scp_codes={"IMI": 50.0, "ASMI": 15.0}),
        record(unit(base + noise[2]), "c", patient_id="p2", scp_codes={"IMI": 100.0}),
        record(unit(base + noise[3]), "d", patient_id="p3", source="other", scp_codes={"NORM": 80.0}),
        record(unit(base + noise[4]), "e", patient_id="p3", source="other", scp_codes={"AFIB": 100.0}),
    ]
    store.upsert(records)

    def ids(filt: SearchFilter) -> set[str]:
        return {h.ecg_id for h in store.search(base, k=10, filt=filt)}

    assert ids(SearchFilter()) == {"a", "b", "c", "d", "e"}
    assert ids(SearchFilter(exclude_patient_id="p1")) == {"c", "d", "e"}
    assert ids(SearchFilter(source="ptbxl")) == {"a", "b", "c"}
    assert ids(SearchFilter(scp_codes_any=("IMI", "AFIB"))) == {"b", "c", "e"}
    assert ids(SearchFilter(exclude_patient_id="p2", source="ptbxl", scp_codes_any=("IMI",))) == {"b"}


def _recall_at_10(store: VectorStore, queries: np.ndarray, hnsw_ef: int) -> float:
    found = 0
    for q in queries:
        exact = {h.point_id for h in store.search(q, k=10, exact=True)}
        found += len(exact & {h.point_id for h in store.search(q, k=10, hnsw_ef=hnsw_ef)})
    return found / (10 * len(queries))


def test_hnsw_graph_search_after_optimize_agrees_with_exact_search(tmp_path: Path) -> None:
    """Qdrant Edge, 2,000 points, full-scan threshold 1 KB: after optimize every vector is in the HNSW graph and
    search walks it - at the smallest ef it misses true neighbours of random queries (recall@10 < 0.95; a scan
    never misses one) - while at ef 256 it finds what exact search finds (recall@10 >= 0.99, and the same top hit
    and score for near-duplicate queries at ef 64). Control: with the default 10 MB threshold the same 2,000
    vectors (256 KB) are scanned, so the smallest ef loses nothing. (qdrant-client's local mode has no HNSW at
    all: it always scans, so it is not a subject here.)"""
    vectors = random_vectors(2000, seed=3)
    random_queries = random_vectors(30, seed=9)
    with EdgeStore(tmp_path / "graph") as store:
        store.ensure_collection(DIM, ENCODER, index=IndexSettings(full_scan_threshold_kb=1))
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])
        assert store.stats().indexed_vectors == 0
        store.optimize()
        assert store.stats().indexed_vectors == 2000

        assert _recall_at_10(store, random_queries, hnsw_ef=1) < 0.95  # the graph walk, not a scan
        assert _recall_at_10(store, random_queries, hnsw_ef=256) >= 0.99
        near = [unit(v + n) for v, n in zip(vectors[:30], random_vectors(30, seed=4) * 0.1)]
        for q in near:
            exact = store.search(q, k=1, exact=True)[0]
            approx = store.search(q, k=1, hnsw_ef=64)[0]
            assert approx.point_id == exact.point_id
            assert approx.score == pytest.approx(exact.score, abs=1e-5)

    with EdgeStore(tmp_path / "scan") as store:
        store.ensure_collection(DIM, ENCODER)  # the default threshold: 10 MB
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])
        store.optimize()
        assert store.stats().indexed_vectors == 2000  # a graph is built, but below the threshold search scans
        assert _recall_at_10(store, random_queries, hnsw_ef=1) == 1.0


def test_edge_optimize_builds_a_graph_that_search_uses(tmp_path: Path) -> None:
    # A 1 KB full-scan threshold makes the engine walk the HNSW graph even for this small store.
    with EdgeStore(tmp_path / "edge") as store:
        store.ensure_collection(DIM, ENCODER, index=IndexSettings(full_scan_threshold_kb=1))
        vectors = random_vectors(400, seed=5)
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])
        assert store.stats().indexed_vectors == 0
        store.optimize()
        stats = store.stats()
        assert (stats.points, stats.indexed_vectors) == (400, 400)

        for v in vectors[:30]:
            q = unit(v + 0.1 * random_vectors(1, seed=6)[0])
            assert store.search(q, k=1)[0].point_id == store.search(q, k=1, exact=True)[0].point_id

        # At a tiny ef the graph walk misses some true neighbours of random queries: a scan never would.
        found = exact_found = 0
        for q in random_vectors(30, seed=9):
            exact = {h.point_id for h in store.search(q, k=10, exact=True)}
            found += len(exact & {h.point_id for h in store.search(q, k=10, hnsw_ef=10)})
            exact_found += len(exact)
        assert found < exact_found


def test_reopen_keeps_points_and_encoder(persistent_location: str) -> None:
    vectors = random_vectors(10)
    with open_location(persistent_location) as store:
        store.ensure_collection(DIM, ENCODER)
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])
        store.optimize()

    with open_location(persistent_location) as store:
        stats = store.stats()  # works without ensure_collection: the collection describes itself
        assert (stats.points, stats.dim, stats.encoder_id) == (10, DIM, ENCODER)
        assert store.count() == 10
        assert store.search(vectors[4], k=1)[0].ecg_id == "4"
        store.ensure_collection(DIM, ENCODER)  # same encoder: keeps the data
        assert store.count() == 10


def test_writes_survive_a_process_that_never_closes(persistent_location: str) -> None:
    script = textwrap.dedent(
        """
        import os, sys
        import numpy as np
        from ecgregen.store import EdgeStore, StoredRecord, open_qdrant
        where = sys.argv[1]
        store = open_qdrant(where) if where.startswith("local:") else EdgeStore(where)
        store.ensure_collection(4, "enc")
        store.upsert([StoredRecord(np.array([1, 0, 0, 0], np.float32), "1", "p", "r", {}, "ptbxl", "t")])
        os._exit(0)  # no close(), no flush at exit
        """
    )
    subprocess.run([sys.executable, "-c", script, persistent_location], cwd=REPO, check=True, timeout=60)
    with open_location(persistent_location) as store:
        assert store.count() == 1
        assert store.stats().encoder_id == "enc"


def test_other_dim_or_encoder_is_refused_unless_recreated(store: VectorStore) -> None:
    store.upsert([record(random_vectors(1)[0], "1")])

    with pytest.raises(StoreMismatchError, match=rf"dim={DIM}.*dim={DIM + 1}"):
        store.ensure_collection(DIM + 1, ENCODER)
    with pytest.raises(StoreMismatchError, match=rf"{ENCODER}.*other-encoder"):
        store.ensure_collection(DIM, "other-encoder")
    assert store.count() == 1

    store.ensure_collection(DIM + 1, "other-encoder", recreate=True)
    stats = store.stats()
    assert (stats.points, stats.dim, stats.encoder_id) == (0, DIM + 1, "other-encoder")
    store.upsert([record(unit(np.ones(DIM + 1)), "1")])
    assert store.count() == 1


def test_methods_before_ensure_collection_raise(tmp_path: Path) -> None:
    for location in (location_for("edge", tmp_path), ":memory:"):
        with open_location(location) as store:
            with pytest.raises(StoreError, match="ensure_collection"):
                store.count()
            with pytest.raises(StoreError, match="ensure_collection"):
                store.stats()


def test_closed_store_raises(store: VectorStore) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count()
    store.close()


def test_wrong_vector_shape_is_a_value_error(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="shape"):
        store.upsert([record(np.ones(DIM + 1, np.float32), "1")])
    with pytest.raises(ValueError, match="shape"):
        store.search(np.ones(DIM - 1, np.float32), k=1)


def test_threads_can_share_a_store(store: VectorStore) -> None:
    vectors = random_vectors(200, seed=7)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(offset, 200, 4):
                store.upsert([record(vectors[i], str(i))])
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def reader() -> None:
        try:
            for v in vectors[:50]:
                store.search(v, k=5)
                store.count()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 200


def test_second_edge_store_on_same_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edge"
    with EdgeStore(path) as store:
        store.ensure_collection(DIM, ENCODER)
        with pytest.raises(StoreError, match="already open in this process"):
            EdgeStore(path)

        script = "import sys; from ecgregen.store import EdgeStore; EdgeStore(sys.argv[1])"
        other = subprocess.run(
            [sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert other.returncode != 0
        assert "in use by another process" in other.stderr

    with EdgeStore(path) as reopened:  # the lock goes with close()
        assert reopened.count() == 0


def test_second_local_client_on_same_path_is_refused(tmp_path: Path) -> None:
    with QdrantLocalStore(tmp_path):
        with pytest.raises(StoreError, match="already accessed"):
            QdrantLocalStore(tmp_path)


def test_open_store_picks_the_engine(tmp_path: Path) -> None:
    with open_store(tmp_path) as edge:
        assert isinstance(edge, EdgeStore)
        assert (tmp_path / "qdrant-edge" / "ecgregen").is_dir()
    with open_store(tmp_path, qdrant_url=":memory:", collection="c") as client:
        assert isinstance(client, QdrantLocalStore)
    with pytest.raises(ValueError, match="location"):
        open_qdrant("ftp://nowhere")


def batch_record(vector: np.ndarray, ecg_id: str, batch_id: str, inserted_at: str) -> StoredRecord:
    return dataclasses.replace(record(vector, ecg_id), batch_id=batch_id, inserted_at=inserted_at)


def test_batches_list_and_roll_back(store: VectorStore) -> None:
    vectors = random_vectors(9, seed=11)
    store.upsert([batch_record(v, str(i), "b-old", "2026-01-01T00:00:00+00:00") for i, v in enumerate(vectors[:5])])
    store.upsert([batch_record(v, str(i), "b-new", "2026-02-01T00:00:00+00:00") for i, v in enumerate(vectors[5:], 5)])
    assert [(b.batch_id, b.points) for b in store.batches()] == [("b-old", 5), ("b-new", 4)]
    assert store.search(vectors[6], k=1)[0].batch_id == "b-new"

    assert store.delete_batch("b-new") == 4
    assert store.count() == 5 and [b.batch_id for b in store.batches()] == ["b-old"]
    assert store.delete_batch("b-new") == 0  # a repeated rollback changes nothing
    assert {r.ecg_id for r in store.scroll()} == {"0", "1", "2", "3", "4"}


def test_a_record_written_again_during_its_batchs_rollback_is_kept(store: VectorStore,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback reads its batch's ids, then deletes them. An insert acknowledged in between that wrote one of
    those records again (now of another batch) must survive: the rollback is paused right after reading the ids
    (the real scroll, then a wait) while another thread re-inserts the record."""
    vectors = random_vectors(6, seed=31)
    store.upsert([batch_record(v, str(i), "b-old", "2026-01-01T00:00:00+00:00") for i, v in enumerate(vectors[:5])])
    ids_read, resume = threading.Event(), threading.Event()
    real_scroll = store.scroll

    def scroll_then_pause(**kwargs: object) -> Iterator[StoredRecord]:
        yield from real_scroll(**kwargs)  # type: ignore[arg-type]
        if kwargs.get("batch_id") == "b-old":
            ids_read.set()
            resume.wait(30)

    monkeypatch.setattr(store, "scroll", scroll_then_pause)
    rolled_back: list[int] = []
    rollback = threading.Thread(target=lambda: rolled_back.append(store.delete_batch("b-old")))
    rollback.start()
    assert ids_read.wait(30)
    again = batch_record(vectors[5], "2", "b-new", "2026-02-01T00:00:00+00:00")
    rewrite = threading.Thread(target=lambda: store.upsert([again]))
    rewrite.start()
    rewrite.join(1.0)  # a write the rollback does not hold off is acknowledged by now
    resume.set()
    rollback.join(30)
    rewrite.join(30)
    assert not rollback.is_alive() and not rewrite.is_alive() and rolled_back == [5]
    kept = {r.ecg_id: r for r in real_scroll()}
    assert set(kept) == {"2"} and kept["2"].batch_id == "b-new"
    assert np.allclose(kept["2"].vector, vectors[5], atol=1e-6)
    assert [(b.batch_id, b.points) for b in store.batches()] == [("b-new", 1)]


def test_a_batch_delete_spares_points_another_writer_moved_to_another_batch(store: VectorStore) -> None:
    """The engine's part of a rollback: of the ids read, it deletes only those still carrying the batch id, so a
    record another process (a replica on the same Qdrant server, outside this store's lock) wrote again survives."""
    vectors = random_vectors(3, seed=32)
    old = [batch_record(v, str(i), "b-old", "2026-01-01T00:00:00+00:00") for i, v in enumerate(vectors)]
    store.upsert(old)
    store.upsert([batch_record(vectors[1], "1", "b-other", "2026-02-01T00:00:00+00:00")])  # after the ids were read
    with store._operation(write=True):
        store._delete([r.point_id for r in old], "b-old")
    assert {(r.ecg_id, r.batch_id) for r in store.scroll()} == {("1", "b-other")}


def test_scroll_returns_vectors_and_payloads_as_stored(store: VectorStore) -> None:
    vectors = random_vectors(600, seed=12)  # more than one scroll page
    store.upsert([batch_record(v, str(i), "b", "2026-03-01T00:00:00+00:00") for i, v in enumerate(vectors)])
    got = {r.ecg_id: r for r in store.scroll()}
    assert len(got) == 600
    assert np.allclose(got["123"].vector, vectors[123], atol=1e-6)
    assert (got["5"].batch_id, got["5"].inserted_at, got["5"].scp_codes) == ("b", "2026-03-01T00:00:00+00:00", {"NORM": 100.0})


def test_index_settings_are_kept_with_the_collection(persistent_location: str) -> None:
    settings = IndexSettings(hnsw_m=32, hnsw_ef_construct=200, full_scan_threshold_kb=1, quantization="int8")
    vectors = random_vectors(300, seed=13)
    with open_location(persistent_location) as store:
        store.ensure_collection(DIM, ENCODER, index=settings)
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])
        store.optimize()
    with open_location(persistent_location) as store:
        store.ensure_collection(DIM, ENCODER, index=IndexSettings())  # another wish does not change a built collection
        stats = store.stats()
        assert stats.index == settings and stats.points == 300
        assert store.search(vectors[42], k=1)[0].ecg_id == "42"  # quantised search rescores: the exact match wins


def test_edge_stats_tell_operators_what_is_not_indexed(tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "edge") as store:
        store.ensure_collection(DIM, ENCODER)
        store.upsert([record(v, str(i)) for i, v in enumerate(random_vectors(50))])
        pending = store.stats()
        assert (pending.status, pending.optimizer) == ("grey", "50 points not in the HNSW index yet (searched "
                                                       "exhaustively); run OptimizeCorpus (`ecgregen client optimize`)")
        store.optimize()
        done = store.stats()
        assert (done.status, done.optimizer, done.indexed_vectors) == ("green", "ok", 50)


def test_edge_snapshot_round_trip(tmp_path: Path) -> None:
    vectors = random_vectors(40, seed=14)
    with EdgeStore(tmp_path / "live") as store:
        store.ensure_collection(DIM, ENCODER, index=IndexSettings(hnsw_m=8))
        store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])
        archive, points = store.snapshot(tmp_path / "backups" / "snap.tar")  # taken while the store is open
        assert points == 40
        store.upsert([record(v, f"later-{i}") for i, v in enumerate(random_vectors(5, seed=15))])

    restore_snapshot(archive, tmp_path / "restored")
    with EdgeStore(tmp_path / "restored") as restored:
        assert restored.count() == 40 and restored.stats().index.hnsw_m == 8
        assert restored.search(vectors[17], k=1)[0].ecg_id == "17"

    with pytest.raises(StoreError, match="already holds a store"):
        restore_snapshot(archive, tmp_path / "restored")
    bogus = tmp_path / "bogus.tar"
    with tarfile.open(bogus, "w") as tar:
        tar.add(__file__, arcname="notes.txt")
    with pytest.raises(StoreError, match="not an ecgregen store snapshot"):
        restore_snapshot(bogus, tmp_path / "restored", force=True)
    with EdgeStore(tmp_path / "restored") as restored:  # a refused restore leaves the store as it was
        assert restored.count() == 40


def test_migrate_copies_everything_without_re_embedding(tmp_path: Path) -> None:
    vectors = random_vectors(700, seed=16)
    with EdgeStore(tmp_path / "edge") as source, QdrantLocalStore(tmp_path / "target") as target:
        source.ensure_collection(DIM, ENCODER, index=IndexSettings(hnsw_m=24))
        source.upsert([batch_record(v, str(i), "b1", "2026-04-01T00:00:00+00:00") for i, v in enumerate(vectors)])
        report = migrate(source, target, progress=False)
        assert (report.copied, report.target_points) == (700, 700)
        stats = target.stats()
        assert (stats.encoder_id, stats.dim, stats.index.hnsw_m) == (ENCODER, DIM, 24)
        for i in (0, 350, 699):
            a, b = source.search(vectors[i], k=5, exact=True), target.search(vectors[i], k=5)
            assert [h.point_id for h in a] == [h.point_id for h in b] and b[0].batch_id == "b1"
        assert migrate(source, target, progress=False).target_points == 700  # repeated: converges, no duplicates
