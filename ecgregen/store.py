"""Vector store for ECG embeddings: one interface, two Qdrant engines.

``EdgeStore`` runs Qdrant Edge inside this process on a local directory (no server to operate); ``QdrantClientStore``
talks to a Qdrant server or cluster, or runs qdrant-client's local mode. Both keep the same payload per point, the
same point ids and the same filter semantics, so the service behaves identically whichever one it is given.

A store knows the vector dimension and the id of the encoder that produced its vectors: vectors from a different
encoder live in a different space, so searching them with a new encoder's query would return nonsense silently.
``ensure_collection`` refuses such a mismatch unless asked to recreate the collection.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe
from qdrant_client import QdrantClient
from qdrant_client import models as qm

NAMESPACE = uuid.UUID("a1b1281c-8c3a-4e74-8a93-d507a8a944d1")

HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
# Payload fields the search filters match on; indexed so the query planner can estimate filter cardinality.
KEYWORD_FIELDS = ("patient_id", "source", "scp_code_list", "ecg_id")
ENCODER_ID_KEY = "encoder_id"


def point_id(source: str, ecg_id: str) -> str:
    """uuid5(NAMESPACE, f"{source}/{ecg_id}") as str; deterministic so re-inserting an ECG updates its point."""
    return str(uuid.uuid5(NAMESPACE, f"{source}/{ecg_id}"))


class StoreError(RuntimeError):
    """The engine or the disk failed, the store is closed, or it has no collection yet."""


class StoreMismatchError(StoreError):
    """The collection exists with another vector dimension or encoder id than the caller's."""


@dataclass(frozen=True)
class StoredRecord:
    vector: np.ndarray  # float32, 1-D, already L2-normalised by the caller
    ecg_id: str
    patient_id: str
    report: str
    scp_codes: dict[str, float]  # SCP code -> likelihood (0-100)
    source: str  # e.g. "ptbxl"
    inserted_at: str  # ISO-8601 UTC

    @property
    def point_id(self) -> str:
        return point_id(self.source, self.ecg_id)


@dataclass(frozen=True)
class SearchFilter:
    exclude_patient_id: str | None = None  # drop neighbours of this patient (they would leak the answer)
    source: str | None = None  # only this source
    scp_codes_any: tuple[str, ...] = ()  # only records carrying any of these SCP codes


@dataclass(frozen=True)
class Hit:
    point_id: str
    score: float  # cosine similarity (higher = closer)
    ecg_id: str
    patient_id: str
    report: str
    scp_codes: dict[str, float]
    source: str
    inserted_at: str


@dataclass(frozen=True)
class UpsertResult:
    inserted: int
    updated: int


@dataclass(frozen=True)
class StoreStats:
    engine: str  # "qdrant-edge" or "qdrant-client (<url or local ...>)"
    points: int
    indexed_vectors: int  # vectors covered by an HNSW index
    dim: int
    encoder_id: str
    status: str  # what the engine can tell: Qdrant's "green"/"yellow"/"grey"/"red", or "ok" for Qdrant Edge


@dataclass(frozen=True)
class _Collection:
    """What a store must know about its collection: kept with the collection so reopening needs no arguments."""

    dim: int
    encoder_id: str


class VectorStore(abc.ABC):
    """The operations the service needs, implemented once on top of a few engine primitives.

    Subclasses implement the ``_``-prefixed primitives; this class does validation, de-duplication, insert/update
    counting, locking and turning engine exceptions into ``StoreError``.
    """

    engine: str

    def __init__(self) -> None:
        # Writes are serialised so that "which ids existed" and the write that follows are one step: concurrent
        # upserts of the same ids would otherwise both count them as inserted.
        self._lock = threading.RLock()
        self._collection: _Collection | None = None
        self._closed = False

    # ---- engine primitives ----

    @abc.abstractmethod
    def _read_collection(self) -> _Collection | None:
        """The collection as it exists in the engine now, or None."""

    @abc.abstractmethod
    def _create(self, collection: _Collection) -> None: ...

    @abc.abstractmethod
    def _drop(self) -> None: ...

    @abc.abstractmethod
    def _retrieve_ids(self, ids: list[str]) -> set[str]: ...

    @abc.abstractmethod
    def _upsert(self, records: list[StoredRecord]) -> None:
        """Write the points; they must be durable when this returns."""

    @abc.abstractmethod
    def _delete(self, ids: list[str]) -> None:
        """Delete the points; the deletion must be durable when this returns."""

    @abc.abstractmethod
    def _query(
        self, vector: list[float], k: int, filt: SearchFilter | None, exact: bool, hnsw_ef: int | None
    ) -> list[tuple[Any, float, dict[str, Any]]]:
        """(point id, score, payload) of the k nearest points, best first."""

    @abc.abstractmethod
    def _count(self) -> int: ...

    @abc.abstractmethod
    def _stats(self, collection: _Collection) -> StoreStats: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def _reads_need_lock(self) -> bool:
        """Whether reads must also hold the lock; only a remote server is safe (and faster) without it."""
        return True

    # ---- public API ----

    def ensure_collection(self, dim: int, encoder_id: str, *, recreate: bool = False) -> None:
        """Create the collection if absent; refuse one built for another dimension or encoder.

        ``recreate=True`` drops the existing collection (all its points) and creates an empty one instead.
        """
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if not encoder_id:
            raise ValueError("encoder_id must not be empty")
        wanted = _Collection(dim=dim, encoder_id=encoder_id)
        with self._lock, self._engine_errors():
            self._check_open()
            current = self._read_collection()
            if current is not None and not recreate:
                if current != wanted:
                    raise StoreMismatchError(
                        f"{self.engine}: the collection holds dim={current.dim} encoder_id={current.encoder_id!r}, "
                        f"but dim={dim} encoder_id={encoder_id!r} was asked for; re-index with recreate=True"
                    )
                self._collection = current
                return
            if current is not None:
                self._collection = None
                self._drop()
            self._create(wanted)
            self._collection = wanted

    def upsert(self, records: Sequence[StoredRecord]) -> UpsertResult:
        """Insert or replace points; durable on return. A point id given twice counts once, the last one wins."""
        by_id = {record.point_id: record for record in records}
        with self._operation(write=True) as collection:
            for record in by_id.values():
                _check_vector(record.vector, collection.dim)
            if not by_id:
                return UpsertResult(inserted=0, updated=0)
            with self._engine_errors():
                existing = self._retrieve_ids(list(by_id))
                self._upsert(list(by_id.values()))
        return UpsertResult(inserted=len(by_id) - len(existing), updated=len(existing))

    def existing_ids(self, point_ids: Sequence[str]) -> set[str]:
        """The subset of ``point_ids`` present in the store."""
        with self._operation(write=False), self._engine_errors():
            return self._retrieve_ids(list(dict.fromkeys(point_ids))) if point_ids else set()

    def delete(self, point_ids: Sequence[str]) -> int:
        """Remove the points; returns how many of them existed. Durable on return."""
        with self._operation(write=True), self._engine_errors():
            existing = self._retrieve_ids(list(dict.fromkeys(point_ids))) if point_ids else set()
            if existing:
                self._delete(list(existing))
        return len(existing)

    def search(
        self,
        vector: np.ndarray,
        k: int,
        filt: SearchFilter | None = None,
        *,
        exact: bool = False,
        hnsw_ef: int | None = None,
    ) -> list[Hit]:
        """The k records most similar to ``vector`` (cosine), best first.

        ``exact`` bypasses the HNSW index (brute force); ``hnsw_ef`` widens or narrows the graph search.
        """
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if hnsw_ef is not None and hnsw_ef < 1:
            raise ValueError(f"hnsw_ef must be positive, got {hnsw_ef}")
        with self._operation(write=False) as collection:
            query = _check_vector(vector, collection.dim)
            with self._engine_errors():
                found = self._query(query, k, filt, exact, hnsw_ef)
        return [_hit(str(pid), score, payload) for pid, score, payload in found]

    def count(self) -> int:
        with self._operation(write=False), self._engine_errors():
            return self._count()

    def stats(self) -> StoreStats:
        with self._operation(write=False) as collection, self._engine_errors():
            return self._stats(collection)

    def optimize(self) -> None:
        """Build HNSW indexes and merge segments where the engine leaves that to the caller (Qdrant Edge)."""

    def close(self) -> None:
        """Release the engine (and, for local engines, the directory). Calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._collection = None
            with self._engine_errors():
                self._close()

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- helpers ----

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.engine}: the store is closed")

    @contextlib.contextmanager
    def _engine_errors(self) -> Iterator[None]:
        """Turn whatever the engine raises (Qdrant Edge raises bare ``Exception``) into ``StoreError``."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{self.engine}: {exc}") from exc

    @contextlib.contextmanager
    def _operation(self, *, write: bool) -> Iterator[_Collection]:
        """Hold the lock the call needs and hand over the collection, or refuse if there is none."""
        lock = self._lock if write or self._reads_need_lock() else contextlib.nullcontext()
        with lock:
            self._check_open()
            if self._collection is None:
                raise StoreError(f"{self.engine}: no collection yet; call ensure_collection(dim, encoder_id) first")
            yield self._collection


class EdgeStore(VectorStore):
    """Qdrant Edge shard in a directory, used in-process.

    Layout of ``path``: ``shard/`` (the engine's files), ``store.json`` (dim and encoder id, written atomically and
    only once the shard exists, so its presence means "the collection exists") and ``store.lock``.

    Qdrant Edge holds the GIL for the whole of every call (searches and ``optimize`` included), so threads gain no
    parallelism from it and a lock around every call costs nothing; the lock also makes ``close`` safe against
    in-flight calls. The engine locks its WAL against a second opener but reports only "WouldBlock", so the
    directory is locked here as well (``flock`` on ``store.lock``), with a message naming the holder's pid.
    """

    engine = "qdrant-edge"

    def __init__(self, path: Path, *, full_scan_threshold_kb: int = 10_000) -> None:
        """``full_scan_threshold_kb``: segments with fewer KB of vectors are searched by brute force even when
        indexed, which is faster and exact (Qdrant's default). Applies to shards created by this store.
        """
        super().__init__()
        self._path = Path(path)
        self._shard_dir = self._path / "shard"
        self._meta_file = self._path / "store.json"
        self._full_scan_threshold_kb = full_scan_threshold_kb
        self._shard: qe.EdgeShard | None = None
        self._path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(self._path / "store.lock")
        try:
            with self._engine_errors():
                self._collection = self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _load(self) -> _Collection | None:
        if not self._meta_file.exists():
            return None
        meta = json.loads(self._meta_file.read_text())
        collection = _Collection(dim=int(meta["dim"]), encoder_id=str(meta[ENCODER_ID_KEY]))
        # Passing the vector config makes the engine check it against the segments on disk.
        self._shard = qe.EdgeShard.load(str(self._shard_dir), qe.EdgeConfig(vectors=_edge_vectors(collection.dim)))
        return collection

    def _read_collection(self) -> _Collection | None:
        # The directory lock makes this store the only writer, so what it loaded is what is on disk.
        return self._collection

    def _create(self, collection: _Collection) -> None:
        # A shard without store.json is left from an interrupted create and holds nothing committed.
        self._close_shard()
        shutil.rmtree(self._shard_dir, ignore_errors=True)
        config = qe.EdgeConfig(
            vectors=_edge_vectors(collection.dim),
            hnsw_config=qe.HnswIndexConfig(
                m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=self._full_scan_threshold_kb
            ),
            # Qdrant Edge never optimizes on its own; a 1 KB threshold makes optimize() index every segment,
            # whatever the store's size, instead of only segments above Qdrant's default 10 MB.
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
        )
        self._shard = qe.EdgeShard.create(str(self._shard_dir), config)
        for field in KEYWORD_FIELDS:
            self._shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
        self._shard.flush()
        _write_json_atomic(self._meta_file, {"dim": collection.dim, ENCODER_ID_KEY: collection.encoder_id})

    def _drop(self) -> None:
        # store.json goes first: a crash part-way then leaves "no collection", never a half-deleted one.
        self._meta_file.unlink()
        _fsync_dir(self._path)
        self._close_shard()
        shutil.rmtree(self._shard_dir)

    def _retrieve_ids(self, ids: list[str]) -> set[str]:
        return {str(record.id) for record in self._live_shard().retrieve(ids, with_payload=False, with_vector=False)}

    def _upsert(self, records: list[StoredRecord]) -> None:
        points = [qe.Point(r.point_id, np.asarray(r.vector, np.float32).tolist(), _payload(r)) for r in records]
        shard = self._live_shard()
        shard.update(qe.UpdateOperation.upsert_points(points))
        shard.flush()

    def _delete(self, ids: list[str]) -> None:
        shard = self._live_shard()
        shard.update(qe.UpdateOperation.delete_points(ids))
        shard.flush()

    def _query(
        self, vector: list[float], k: int, filt: SearchFilter | None, exact: bool, hnsw_ef: int | None
    ) -> list[tuple[Any, float, dict[str, Any]]]:
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(vector),
            filter=_edge_filter(filt),
            params=qe.SearchParams(hnsw_ef=hnsw_ef, exact=exact),
            with_payload=True,
        )
        return [(p.id, p.score, p.payload or {}) for p in self._live_shard().query(request)]

    def _count(self) -> int:
        return self._live_shard().count(qe.CountRequest(exact=True))

    def _stats(self, collection: _Collection) -> StoreStats:
        info = self._live_shard().info()
        return StoreStats(
            engine=self.engine,
            points=info.points_count,
            indexed_vectors=info.indexed_vectors_count,
            dim=collection.dim,
            encoder_id=collection.encoder_id,
            status="ok",  # Qdrant Edge has no status; indexed_vectors < points means optimize() has work to do
        )

    def optimize(self) -> None:
        """Build HNSW over everything written so far and merge segments; blocks (and holds the GIL) until done."""
        with self._operation(write=True), self._engine_errors():
            self._live_shard().optimize()

    def _close(self) -> None:
        try:
            self._close_shard()
        finally:
            os.close(self._lock_fd)

    def _close_shard(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            shard.flush()
            shard.close()

    def _live_shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise StoreError(f"{self.engine}: the shard at {self._shard_dir} is not open")
        return self._shard


class QdrantClientStore(VectorStore):
    """A collection on a Qdrant server/cluster (``http(s)://host:port``), or qdrant-client's local mode
    (``":memory:"``, or ``"local:PATH"`` persisted in PATH).

    The encoder id is kept in the collection's own metadata (Qdrant's collection ``metadata``, which local mode
    persists too), so nothing else needs excluding from counts or searches. Local mode always searches by brute
    force and has no HNSW; it is not thread-safe, so there every call holds the lock.
    """

    UPSERT_BATCH = 256  # points per request, well under the server's default 32 MB request limit

    def __init__(self, location: str, collection: str = "ecgregen") -> None:
        super().__init__()
        self._name = collection
        self._remote = location.startswith(("http://", "https://"))
        if self._remote:
            self.engine = f"qdrant-client ({location})"
            client_args: dict[str, Any] = {"url": location}
        elif location == ":memory:":
            self.engine = "qdrant-client (local :memory:)"
            client_args = {"location": ":memory:"}
        elif location.startswith("local:"):
            path = location.removeprefix("local:")
            self.engine = f"qdrant-client (local {path})"
            # The service calls the store from worker threads; the lock below keeps those calls one at a time.
            client_args = {"path": path, "force_disable_check_same_thread": True}
        else:
            raise ValueError(
                f"qdrant location must be http(s)://host:port, ':memory:' or 'local:PATH', got {location!r}"
            )
        with self._engine_errors():
            # A second local-mode client on the same path raises RuntimeError here ("already accessed").
            self._client = QdrantClient(**client_args)
        try:
            with self._engine_errors():
                self._collection = self._read_collection()
        except BaseException:
            self._client.close()
            raise

    def _reads_need_lock(self) -> bool:
        return not self._remote

    def _read_collection(self) -> _Collection | None:
        if not self._client.collection_exists(self._name):
            return None
        config = self._client.get_collection(self._name).config
        vectors = config.params.vectors
        if not isinstance(vectors, qm.VectorParams):
            raise StoreError(f"{self.engine}: collection {self._name!r} has named vectors; ecgregen did not make it")
        return _Collection(dim=vectors.size, encoder_id=str((config.metadata or {}).get(ENCODER_ID_KEY, "")))

    def _create(self, collection: _Collection) -> None:
        self._client.create_collection(
            self._name,
            vectors_config=qm.VectorParams(size=collection.dim, distance=qm.Distance.COSINE),
            hnsw_config=qm.HnswConfigDiff(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT),
            metadata={ENCODER_ID_KEY: collection.encoder_id},
        )
        if self._remote:  # local mode has no payload indexes and warns when asked for one
            for field in KEYWORD_FIELDS:
                self._client.create_payload_index(self._name, field, qm.PayloadSchemaType.KEYWORD, wait=True)

    def _drop(self) -> None:
        self._client.delete_collection(self._name)

    def _retrieve_ids(self, ids: list[str]) -> set[str]:
        return {str(r.id) for r in self._client.retrieve(self._name, ids, with_payload=False, with_vectors=False)}

    def _upsert(self, records: list[StoredRecord]) -> None:
        for start in range(0, len(records), self.UPSERT_BATCH):
            points = [
                qm.PointStruct(id=r.point_id, vector=np.asarray(r.vector, np.float32).tolist(), payload=_payload(r))
                for r in records[start : start + self.UPSERT_BATCH]
            ]
            self._client.upsert(self._name, points, wait=True)

    def _delete(self, ids: list[str]) -> None:
        self._client.delete(self._name, qm.PointIdsList(points=ids), wait=True)

    def _query(
        self, vector: list[float], k: int, filt: SearchFilter | None, exact: bool, hnsw_ef: int | None
    ) -> list[tuple[Any, float, dict[str, Any]]]:
        response = self._client.query_points(
            self._name,
            query=vector,
            limit=k,
            query_filter=_client_filter(filt),
            # Local mode is always exact and warns about search params, so they only go to a server.
            search_params=qm.SearchParams(hnsw_ef=hnsw_ef, exact=exact) if self._remote else None,
            with_payload=True,
        )
        return [(p.id, p.score, p.payload or {}) for p in response.points]

    def _count(self) -> int:
        return self._client.count(self._name, exact=True).count

    def _stats(self, collection: _Collection) -> StoreStats:
        info = self._client.get_collection(self._name)
        return StoreStats(
            engine=self.engine,
            points=info.points_count or 0,
            indexed_vectors=info.indexed_vectors_count or 0,
            dim=collection.dim,
            encoder_id=collection.encoder_id,
            status=str(info.status.value),
        )

    def _close(self) -> None:
        self._client.close()


def open_store(data_dir: Path, qdrant_url: str | None = None, collection: str = "ecgregen") -> VectorStore:
    """The in-process engine unless a Qdrant location is given.

    qdrant_url None -> EdgeStore(data_dir / "qdrant-edge" / collection); else QdrantClientStore(qdrant_url, collection).
    """
    if qdrant_url is None:
        return EdgeStore(Path(data_dir) / "qdrant-edge" / collection)
    return QdrantClientStore(qdrant_url, collection)


# ---- shared helpers ----


def _check_vector(vector: np.ndarray, dim: int) -> list[float]:
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise ValueError(f"expected a vector of shape ({dim},), got {array.shape}")
    return array.tolist()


def _payload(record: StoredRecord) -> dict[str, Any]:
    return {
        "ecg_id": record.ecg_id,
        "patient_id": record.patient_id,
        "report": record.report,
        "scp_codes": {code: float(value) for code, value in record.scp_codes.items()},
        "scp_code_list": sorted(record.scp_codes),  # MatchAny needs a list; the object above keeps likelihoods
        "source": record.source,
        "inserted_at": record.inserted_at,
    }


def _hit(pid: str, score: float, payload: dict[str, Any]) -> Hit:
    return Hit(
        point_id=pid,
        score=float(score),
        ecg_id=payload["ecg_id"],
        patient_id=payload["patient_id"],
        report=payload["report"],
        scp_codes={code: float(value) for code, value in payload["scp_codes"].items()},
        source=payload["source"],
        inserted_at=payload["inserted_at"],
    )


def _edge_vectors(dim: int) -> qe.EdgeVectorParams:
    return qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)


def _edge_filter(filt: SearchFilter | None) -> qe.Filter | None:
    if filt is None:
        return None
    must: list[qe.FieldCondition] = []
    must_not: list[qe.FieldCondition] = []
    if filt.exclude_patient_id is not None:
        must_not.append(qe.FieldCondition("patient_id", match=qe.MatchValue(filt.exclude_patient_id)))
    if filt.source is not None:
        must.append(qe.FieldCondition("source", match=qe.MatchValue(filt.source)))
    if filt.scp_codes_any:
        must.append(qe.FieldCondition("scp_code_list", match=qe.MatchAny(list(filt.scp_codes_any))))
    return qe.Filter(must=must or None, must_not=must_not or None)


def _client_filter(filt: SearchFilter | None) -> qm.Filter | None:
    if filt is None:
        return None
    must: list[qm.Condition] = []
    must_not: list[qm.Condition] = []
    if filt.exclude_patient_id is not None:
        must_not.append(qm.FieldCondition(key="patient_id", match=qm.MatchValue(value=filt.exclude_patient_id)))
    if filt.source is not None:
        must.append(qm.FieldCondition(key="source", match=qm.MatchValue(value=filt.source)))
    if filt.scp_codes_any:
        must.append(qm.FieldCondition(key="scp_code_list", match=qm.MatchAny(any=list(filt.scp_codes_any))))
    return qm.Filter(must=must or None, must_not=must_not or None)


def _lock_directory(lock_file: Path) -> int:
    """Take an exclusive flock on ``lock_file`` (recording our pid in it) and return its descriptor.

    flock conflicts between separate opens even inside one process, so a second store on the same directory is
    refused whether it is in this process or another.
    """
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        where = "already open in this process" if holder == str(os.getpid()) else "in use by another process"
        raise StoreError(f"{lock_file.parent} is {where} (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a crash leaves either the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
