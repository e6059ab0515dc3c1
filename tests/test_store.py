"""The vector store against the real engines: Qdrant Edge and qdrant-client local mode (memory and on disk)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ecgregen.store import (
    EdgeStore,
    QdrantClientStore,
    SearchFilter,
    StoredRecord,
    StoreError,
    StoreMismatchError,
    UpsertResult,
    VectorStore,
    open_store,
    point_id,
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
    """EdgeStore for a plain path, QdrantClientStore for ':memory:' and 'local:PATH'."""
    return QdrantClientStore(location) if location.startswith(("local:", ":memory:")) else EdgeStore(Path(location))


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


def test_hnsw_after_optimize_agrees_with_exact_search(store: VectorStore) -> None:
    vectors = random_vectors(400, seed=3)
    store.upsert([record(v, str(i)) for i, v in enumerate(vectors)])
    if isinstance(store, EdgeStore):
        assert store.stats().indexed_vectors == 0
    store.optimize()
    if isinstance(store, EdgeStore):
        assert store.stats().indexed_vectors == 400

    queries = [unit(v + n) for v, n in zip(vectors[:30], random_vectors(30, seed=4) * 0.1)]
    for q in queries:
        exact = store.search(q, k=1, exact=True)[0]
        approx = store.search(q, k=1, hnsw_ef=64)[0]
        assert approx.point_id == exact.point_id
        assert approx.score == pytest.approx(exact.score, abs=1e-5)


def test_edge_optimize_builds_a_graph_that_search_uses(tmp_path: Path) -> None:
    # A 1 KB full-scan threshold makes the engine walk the HNSW graph even for this small store.
    with EdgeStore(tmp_path / "edge", full_scan_threshold_kb=1) as store:
        store.ensure_collection(DIM, ENCODER)
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
        from ecgregen.store import EdgeStore, QdrantClientStore, StoredRecord
        where = sys.argv[1]
        store = QdrantClientStore(where) if where.startswith("local:") else EdgeStore(where)
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
    with QdrantClientStore(f"local:{tmp_path}"):
        with pytest.raises(StoreError, match="already accessed"):
            QdrantClientStore(f"local:{tmp_path}")


def test_open_store_picks_the_engine(tmp_path: Path) -> None:
    with open_store(tmp_path) as edge:
        assert isinstance(edge, EdgeStore)
        assert (tmp_path / "qdrant-edge" / "ecgregen").is_dir()
    with open_store(tmp_path, qdrant_url=":memory:", collection="c") as client:
        assert isinstance(client, QdrantClientStore)
    with pytest.raises(ValueError, match="location"):
        QdrantClientStore("ftp://nowhere")
