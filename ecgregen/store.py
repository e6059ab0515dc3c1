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
import dataclasses
import fcntl
import json
import logging
import os
import random
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import qdrant_edge as qe
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

log = logging.getLogger("ecgregen.store")

NAMESPACE = uuid.UUID("a1b1281c-8c3a-4e74-8a93-d507a8a944d1")

# Payload fields the search filters and rollbacks match on; indexed so the query planner can estimate filter
# cardinality (and so a filter does not fall back to a full scan).
KEYWORD_FIELDS = ("patient_id", "source", "scp_code_list", "ecg_id", "batch_id")
ENCODER_ID_KEY = "encoder_id"
CALIBRATION_KEY = "diagnosis_calibration"  # in a Qdrant collection's metadata
CALIBRATION_FILE = "calibration.json"  # beside store.json in an embedded store
INDEX_KEY = "index"
QUANTIZATIONS = ("none", "int8")
SCROLL_PAGE = 256


@dataclass(frozen=True)
class IndexSettings:
    """How a collection is indexed. Fixed when the collection is created and kept with it, so a store reopens
    with the settings it was built with (flags given later for an existing collection are ignored, with a log).

    ``full_scan_threshold_kb``: segments with fewer KB of vectors are searched by brute force even when indexed,
    which is faster there and exact (Qdrant's default 10 MB). ``on_disk``: vectors memory-mapped instead of in RAM.
    ``quantization="int8"``: scalar quantisation (4x smaller vectors in RAM); searches rescore the candidates with
    the original vectors.
    """

    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    full_scan_threshold_kb: int = 10_000
    on_disk: bool = False
    quantization: str = "none"
    shards: int = 1  # a Qdrant cluster: shards spread over the nodes (the embedded store has one)
    replicas: int = 1  # a Qdrant cluster: copies of each shard (2+ survives a node loss)

    def __post_init__(self) -> None:
        if self.hnsw_m < 2 or self.hnsw_ef_construct < 4 or self.full_scan_threshold_kb < 0:
            raise ValueError("HNSW m must be >= 2, ef_construct >= 4 and full_scan_threshold_kb >= 0")
        if self.shards < 1 or self.replicas < 1:
            raise ValueError("shards and replicas must be >= 1")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> IndexSettings:
        """Settings kept with a collection; a collection made before they were kept used the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


def point_id(source: str, ecg_id: str) -> str:
    """uuid5(NAMESPACE, f"{source}/{ecg_id}") as str; deterministic so re-inserting an ECG updates its point."""
    return str(uuid.uuid5(NAMESPACE, f"{source}/{ecg_id}"))


class StoreError(RuntimeError):
    """The engine or the disk failed, the store is closed, or it has no collection yet."""


class StoreUnsupported(StoreError):
    """The operation exists for another engine only (e.g. file snapshots of the embedded store)."""


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
    batch_id: str = ""  # the insert (InsertRecords stream or index run) that wrote it: what a rollback removes

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
    batch_id: str = ""


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
    status: str  # Qdrant's green (ready) / yellow (optimizing) / grey (optimization pending) / red (failed)
    optimizer: str  # what the optimizer is doing or needs, in words, for operators
    segments: int
    index: IndexSettings


@dataclass(frozen=True)
class _Collection:
    """What a store must know about its collection: kept with the collection so reopening needs no arguments."""

    dim: int
    encoder_id: str
    index: IndexSettings = IndexSettings()


@dataclass(frozen=True)
class BatchInfo:
    """One insert as the corpus remembers it: for operators to see what came when, and to roll it back."""

    batch_id: str
    points: int
    first_inserted_at: str
    last_inserted_at: str


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
    def _scroll(
        self, batch_id: str | None, with_vectors: bool, offset: Any, limit: int
    ) -> tuple[list[tuple[Any, list[float] | None, dict[str, Any]]], Any]:
        """One page of (point id, vector, payload) in id order, optionally of one batch; and the next offset."""

    @abc.abstractmethod
    def _count(self) -> int: ...

    @abc.abstractmethod
    def _stats(self, collection: _Collection) -> StoreStats: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    @abc.abstractmethod
    def _read_calibration(self) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def _write_calibration(self, data: dict[str, Any] | None) -> None:
        """Store (or, with None, remove) the diagnosis calibration; durable when this returns."""

    def _reads_need_lock(self) -> bool:
        """Whether reads must also hold the lock; only a remote server is safe (and faster) without it."""
        return True

    # ---- public API ----

    def ensure_collection(
        self, dim: int, encoder_id: str, *, recreate: bool = False, index: IndexSettings | None = None
    ) -> None:
        """Create the collection if absent (with ``index`` settings); refuse one built for another dimension or
        encoder. An existing collection keeps the index settings it was created with.

        ``recreate=True`` drops the existing collection (all its points) and creates an empty one instead.
        """
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if not encoder_id:
            raise ValueError("encoder_id must not be empty")
        wanted = _Collection(dim=dim, encoder_id=encoder_id, index=index or IndexSettings())
        with self._lock, self._engine_errors():
            self._check_open()
            current = self._read_collection()
            if current is not None and not recreate:
                if (current.dim, current.encoder_id) != (dim, encoder_id):
                    raise StoreMismatchError(
                        f"{self.engine}: the collection holds dim={current.dim} encoder_id={current.encoder_id!r}, "
                        f"but dim={dim} encoder_id={encoder_id!r} was asked for; re-index with recreate=True"
                    )
                if index is not None and index != current.index:
                    log.warning("%s: the collection keeps the index settings it was created with (%s); "
                                "recreate it to apply %s", self.engine, current.index, index)
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

    def scroll(self, *, batch_id: str | None = None, with_vectors: bool = True) -> Iterator[StoredRecord]:
        """Every stored record (optionally of one batch), page by page: for migration, backup and audits.
        With ``with_vectors=False`` only ids and payloads are read and the records' vectors are zeros."""
        offset = None
        while True:
            with self._operation(write=False) as collection, self._engine_errors():
                page, offset = self._scroll(batch_id, with_vectors, offset, SCROLL_PAGE)
            for _, vector, payload in page:
                yield _stored(payload, np.asarray(vector if vector is not None else np.zeros(collection.dim), np.float32))
            if offset is None or not page:
                return

    def batches(self) -> list[BatchInfo]:
        """The inserts the corpus holds, oldest first (records written before batches existed: batch_id "")."""
        seen: dict[str, list[Any]] = {}
        for record in self.scroll(with_vectors=False):
            entry = seen.setdefault(record.batch_id, [0, record.inserted_at, record.inserted_at])
            entry[0] += 1
            entry[1], entry[2] = min(entry[1], record.inserted_at), max(entry[2], record.inserted_at)
        return sorted((BatchInfo(b, n, first, last) for b, (n, first, last) in seen.items()),
                      key=lambda b: (b.first_inserted_at, b.batch_id))

    def delete_batch(self, batch_id: str) -> int:
        """Roll back one insert: delete every record it wrote (durable on return); returns how many."""
        if not batch_id:
            raise ValueError("batch_id must not be empty")
        ids = [r.point_id for r in self.scroll(batch_id=batch_id, with_vectors=False)]
        return self.delete(ids)

    def count(self) -> int:
        with self._operation(write=False), self._engine_errors():
            return self._count()

    def calibration(self) -> dict[str, Any] | None:
        """The diagnosis calibration kept with this corpus (see :mod:`ecgregen.diagnoses`), or None."""
        with self._operation(write=False):
            return self._read_calibration()

    def save_calibration(self, data: dict[str, Any] | None) -> None:
        """Keep `data` as this corpus's diagnosis calibration (None removes it). Dropping the collection drops it."""
        with self._operation(write=True):
            self._write_calibration(data)

    def stats(self) -> StoreStats:
        with self._operation(write=False) as collection, self._engine_errors():
            return self._stats(collection)

    def begin_bulk_load(self) -> None:
        """About to write many points: defer index building until :meth:`optimize` (where the engine allows)."""

    def optimize(self) -> None:
        """Build HNSW indexes and merge segments where the engine leaves that to the caller (Qdrant Edge)."""

    def snapshot(self, out: Path) -> tuple[Path, int]:
        """A backup of the collection as one file (the embedded engine; a Qdrant server has its own snapshots)."""
        raise StoreUnsupported(f"{self.engine}: snapshots of a Qdrant server are taken with its snapshot API "
                         "(POST /collections/NAME/snapshots); ecgregen snapshots the embedded store")

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
    only once the shard exists, so its presence means "the collection exists"), ``calibration.json`` (the
    diagnosis calibration of this corpus, when one was fitted) and ``store.lock``.

    Qdrant Edge holds the GIL for the whole of every call (searches and ``optimize`` included), so threads gain no
    parallelism from it and a lock around every call costs nothing; the lock also makes ``close`` safe against
    in-flight calls. The engine locks its WAL against a second opener but reports only "WouldBlock", so the
    directory is locked here as well (``flock`` on ``store.lock``), with a message naming the holder's pid.
    """

    engine = "qdrant-edge"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = Path(path)
        self._shard_dir = self._path / "shard"
        self._meta_file = self._path / "store.json"
        self._calibration_file = self._path / CALIBRATION_FILE
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
        collection = _Collection(
            dim=int(meta["dim"]), encoder_id=str(meta[ENCODER_ID_KEY]), index=IndexSettings.from_json(meta.get(INDEX_KEY))
        )
        # Passing the vector config makes the engine check it against the segments on disk.
        self._shard = qe.EdgeShard.load(str(self._shard_dir), qe.EdgeConfig(vectors=_edge_vectors(collection)))
        return collection

    def _read_collection(self) -> _Collection | None:
        # The directory lock makes this store the only writer, so what it loaded is what is on disk.
        return self._collection

    def _create(self, collection: _Collection) -> None:
        # A shard without store.json is left from an interrupted create and holds nothing committed.
        self._close_shard()
        shutil.rmtree(self._shard_dir, ignore_errors=True)
        index = collection.index
        config = qe.EdgeConfig(
            vectors=_edge_vectors(collection),
            hnsw_config=qe.HnswIndexConfig(
                m=index.hnsw_m, ef_construct=index.hnsw_ef_construct, full_scan_threshold=index.full_scan_threshold_kb
            ),
            # Qdrant Edge never optimizes on its own; a 1 KB threshold makes optimize() index every segment,
            # whatever the store's size, instead of only segments above Qdrant's default 10 MB.
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
        )
        self._shard = qe.EdgeShard.create(str(self._shard_dir), config)
        for field in KEYWORD_FIELDS:
            self._shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
        self._shard.flush()
        _write_json_atomic(
            self._meta_file,
            {"dim": collection.dim, ENCODER_ID_KEY: collection.encoder_id, INDEX_KEY: collection.index.to_json()},
        )

    def _drop(self) -> None:
        # store.json goes first: a crash part-way then leaves "no collection", never a half-deleted one.
        self._meta_file.unlink()
        self._calibration_file.unlink(missing_ok=True)
        _fsync_dir(self._path)
        self._close_shard()
        shutil.rmtree(self._shard_dir)

    def _read_calibration(self) -> dict[str, Any] | None:
        return json.loads(self._calibration_file.read_text()) if self._calibration_file.exists() else None

    def _write_calibration(self, data: dict[str, Any] | None) -> None:
        if data is None:
            self._calibration_file.unlink(missing_ok=True)
            _fsync_dir(self._path)
        else:
            _write_json_atomic(self._calibration_file, data)

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
        quantized = self._collection is not None and self._collection.index.quantization != "none"
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(vector),
            filter=_edge_filter(filt),
            params=qe.SearchParams(
                hnsw_ef=hnsw_ef, exact=exact,
                quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0) if quantized else None,
            ),
            with_payload=True,
        )
        return [(p.id, p.score, p.payload or {}) for p in self._live_shard().query(request)]

    def _scroll(
        self, batch_id: str | None, with_vectors: bool, offset: Any, limit: int
    ) -> tuple[list[tuple[Any, list[float] | None, dict[str, Any]]], Any]:
        where = qe.Filter(must=[qe.FieldCondition("batch_id", match=qe.MatchValue(batch_id))]) if batch_id else None
        records, next_offset = self._live_shard().scroll(
            qe.ScrollRequest(offset=offset, limit=limit, filter=where, with_payload=True, with_vector=with_vectors)
        )
        return [(r.id, _edge_vector(r.vector) if with_vectors else None, r.payload or {}) for r in records], next_offset

    def _count(self) -> int:
        return self._live_shard().count(qe.CountRequest(exact=True))

    def _stats(self, collection: _Collection) -> StoreStats:
        info = self._live_shard().info()
        pending = info.points_count - info.indexed_vectors_count
        # Qdrant Edge never optimizes by itself: points written since the last optimize() sit in plain segments
        # and are searched exhaustively (correct, slower as they grow) until `ecgregen optimize` or a bulk load.
        return StoreStats(
            engine=self.engine, points=info.points_count, indexed_vectors=info.indexed_vectors_count,
            dim=collection.dim, encoder_id=collection.encoder_id,
            status="green" if pending <= 0 else "grey",
            optimizer="ok" if pending <= 0 else (
                f"{pending} points not in the HNSW index yet (searched exhaustively); run OptimizeCorpus "
                "(`ecgregen client optimize`)"
            ),
            segments=info.segments_count, index=collection.index,
        )

    def snapshot(self, out: Path) -> tuple[Path, int]:
        """A consistent copy of the store as one tar file, taken online (writes wait while it is made); returns
        the file and the number of points it holds."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with self._operation(write=True), self._engine_errors():
            shard = self._live_shard()
            shard.flush()
            points = self._count()
            with tarfile.open(partial, "w") as tar:
                tar.add(self._meta_file, arcname="store.json")
                if self._calibration_file.exists():
                    tar.add(self._calibration_file, arcname=CALIBRATION_FILE)
                tar.add(self._shard_dir, arcname="shard")
        os.replace(partial, out)
        return out, points

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

    Remote: gRPC preferred (port 6334 beside the REST port), TLS with ``https://``, the API key from
    ``$QDRANT_API_KEY``, a timeout per request, and idempotent calls (upserts with fixed ids, deletes, reads)
    retried with backoff on connection errors and 5xx/UNAVAILABLE. Writes wait for the server (``wait=True``).
    The encoder id and index settings are kept in the collection's own metadata. Local mode always searches by
    brute force and has no HNSW; it is not thread-safe, so there every call holds the lock.
    """

    UPSERT_BATCH = 256  # points per request, well under the server's default 32 MB request limit
    DEFAULT_INDEXING_THRESHOLD_KB = 10_000  # Qdrant's default; set to 0 (no indexing) during a bulk load

    def __init__(
        self, location: str, collection: str = "ecgregen", *, timeout_s: float = 10.0, retries: int = 3,
        prefer_grpc: bool = True, api_key_env: str = "QDRANT_API_KEY",
    ) -> None:
        super().__init__()
        self._name = collection
        self._remote = location.startswith(("http://", "https://"))
        self._retries = retries if self._remote else 0
        if self._remote:
            self.engine = f"qdrant-client ({location})"
            client_args: dict[str, Any] = {
                "url": location, "prefer_grpc": prefer_grpc, "timeout": max(1, round(timeout_s)),
                "api_key": os.environ.get(api_key_env) or None, "https": location.startswith("https://"),
            }
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

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A client call, retried with jittered backoff when a remote server hiccups (calls here are idempotent)."""
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == self._retries or not _transient(exc):
                    raise
                delay = min(2.0, 0.1 * 2**attempt) * (0.5 + random.random())
                log.warning("%s: %s; retrying in %.2f s", self.engine, exc, delay)
                time.sleep(delay)
                attempt += 1

    def _reads_need_lock(self) -> bool:
        return not self._remote

    def _read_collection(self) -> _Collection | None:
        if not self._call(self._client.collection_exists, self._name):
            return None
        config = self._call(self._client.get_collection, self._name).config
        vectors = config.params.vectors
        if not isinstance(vectors, qm.VectorParams):
            raise StoreError(f"{self.engine}: collection {self._name!r} has named vectors; ecgregen did not make it")
        metadata = config.metadata or {}
        return _Collection(
            dim=vectors.size, encoder_id=str(metadata.get(ENCODER_ID_KEY, "")),
            index=IndexSettings.from_json(metadata.get(INDEX_KEY)),
        )

    def _create(self, collection: _Collection) -> None:
        index = collection.index
        quantization = (
            qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99, always_ram=True))
            if index.quantization == "int8" else None
        )
        self._client.create_collection(
            self._name,
            vectors_config=qm.VectorParams(size=collection.dim, distance=qm.Distance.COSINE, on_disk=index.on_disk),
            hnsw_config=qm.HnswConfigDiff(
                m=index.hnsw_m, ef_construct=index.hnsw_ef_construct, full_scan_threshold=index.full_scan_threshold_kb
            ),
            quantization_config=quantization,
            shard_number=index.shards if self._remote else None,
            replication_factor=index.replicas if self._remote else None,
            # A write is acknowledged once a majority of a shard's replicas has it.
            write_consistency_factor=index.replicas // 2 + 1 if self._remote else None,
            metadata={ENCODER_ID_KEY: collection.encoder_id, INDEX_KEY: index.to_json()},
        )
        if self._remote:  # local mode has no payload indexes and warns when asked for one
            for field in KEYWORD_FIELDS:
                self._call(self._client.create_payload_index, self._name, field, qm.PayloadSchemaType.KEYWORD, wait=True)

    def _drop(self) -> None:
        self._client.delete_collection(self._name)

    def _read_calibration(self) -> dict[str, Any] | None:
        metadata = self._call(self._client.get_collection, self._name).config.metadata or {}
        return metadata.get(CALIBRATION_KEY)

    def _write_calibration(self, data: dict[str, Any] | None) -> None:
        # Collection metadata is merged key by key, so this leaves the encoder id and index settings as they are.
        self._call(self._client.update_collection, self._name, metadata={CALIBRATION_KEY: data})

    def _retrieve_ids(self, ids: list[str]) -> set[str]:
        found = self._call(self._client.retrieve, self._name, ids, with_payload=False, with_vectors=False)
        return {str(r.id) for r in found}

    def _upsert(self, records: list[StoredRecord]) -> None:
        for start in range(0, len(records), self.UPSERT_BATCH):
            points = [
                qm.PointStruct(id=r.point_id, vector=np.asarray(r.vector, np.float32).tolist(), payload=_payload(r))
                for r in records[start : start + self.UPSERT_BATCH]
            ]
            self._call(self._client.upsert, self._name, points, wait=True)

    def _delete(self, ids: list[str]) -> None:
        self._call(self._client.delete, self._name, qm.PointIdsList(points=ids), wait=True)

    def _query(
        self, vector: list[float], k: int, filt: SearchFilter | None, exact: bool, hnsw_ef: int | None
    ) -> list[tuple[Any, float, dict[str, Any]]]:
        quantized = self._collection is not None and self._collection.index.quantization != "none"
        params = qm.SearchParams(
            hnsw_ef=hnsw_ef, exact=exact,
            quantization=qm.QuantizationSearchParams(rescore=True, oversampling=2.0) if quantized else None,
        )
        response = self._call(
            self._client.query_points,
            self._name,
            query=vector,
            limit=k,
            query_filter=_client_filter(filt),
            # Local mode is always exact and warns about search params, so they only go to a server.
            search_params=params if self._remote else None,
            with_payload=True,
        )
        return [(p.id, p.score, p.payload or {}) for p in response.points]

    def _scroll(
        self, batch_id: str | None, with_vectors: bool, offset: Any, limit: int
    ) -> tuple[list[tuple[Any, list[float] | None, dict[str, Any]]], Any]:
        where = (
            qm.Filter(must=[qm.FieldCondition(key="batch_id", match=qm.MatchValue(value=batch_id))]) if batch_id else None
        )
        records, next_offset = self._call(
            self._client.scroll, self._name, scroll_filter=where, limit=limit, offset=offset, with_payload=True,
            with_vectors=with_vectors,
        )
        return [(r.id, list(r.vector) if with_vectors else None, r.payload or {}) for r in records], next_offset

    def _count(self) -> int:
        return self._call(self._client.count, self._name, exact=True).count

    def _stats(self, collection: _Collection) -> StoreStats:
        info = self._call(self._client.get_collection, self._name)
        optimizer = info.optimizer_status
        return StoreStats(
            engine=self.engine,
            points=info.points_count or 0,
            indexed_vectors=info.indexed_vectors_count or 0,
            dim=collection.dim,
            encoder_id=collection.encoder_id,
            status=str(info.status.value),
            optimizer=optimizer if isinstance(optimizer, str) else f"error: {getattr(optimizer, 'error', optimizer)}",
            segments=info.segments_count or 0,
            index=collection.index,
        )

    def begin_bulk_load(self) -> None:
        """Qdrant's bulk-load recipe: no HNSW building while points stream in (``optimize`` turns it back on)."""
        if self._remote:
            with self._operation(write=True), self._engine_errors():
                self._call(self._client.update_collection, self._name,
                           optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=0))

    def optimize(self) -> None:
        """Re-enable indexing after a bulk load; the server then builds HNSW in the background (status yellow)."""
        if self._remote:
            with self._operation(write=True), self._engine_errors():
                self._call(self._client.update_collection, self._name, optimizers_config=qm.OptimizersConfigDiff(
                    indexing_threshold=self.DEFAULT_INDEXING_THRESHOLD_KB))

    def _close(self) -> None:
        self._client.close()


def _transient(exc: Exception) -> bool:
    """Worth retrying: the server was unreachable, overloaded or restarting (not a bad request)."""
    if isinstance(exc, ResponseHandlingException):  # connection refused/reset, timeout
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (429, 502, 503, 504)
    code = getattr(exc, "code", None)  # grpc.RpcError
    if callable(code):
        return code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    return False


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
        "batch_id": record.batch_id,
    }


def _stored(payload: dict[str, Any], vector: np.ndarray) -> StoredRecord:
    return StoredRecord(
        vector=vector, ecg_id=payload["ecg_id"], patient_id=payload["patient_id"], report=payload["report"],
        scp_codes={code: float(value) for code, value in payload["scp_codes"].items()}, source=payload["source"],
        inserted_at=payload["inserted_at"], batch_id=payload.get("batch_id", ""),
    )


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
        batch_id=payload.get("batch_id", ""),
    )


def _edge_vectors(collection: _Collection) -> qe.EdgeVectorParams:
    index = collection.index
    quantization = (
        qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
        if index.quantization == "int8" else None
    )
    return qe.EdgeVectorParams(
        size=collection.dim, distance=qe.Distance.Cosine, on_disk=index.on_disk or None,
        quantization_config=quantization,
    )


def _edge_vector(vector: Any) -> list[float]:
    """A record's vector as Qdrant Edge returns it (the unnamed vector, possibly keyed by "")."""
    if isinstance(vector, dict):
        vector = next(iter(vector.values()))
    return list(vector)


def restore_snapshot(archive: Path, path: Path, *, force: bool = False) -> None:
    """Unpack a snapshot made by :meth:`EdgeStore.snapshot` into ``path`` (a store directory, not in use).

    The archive is unpacked beside the target and checked (its store.json, the shard loads) before it replaces
    anything, so a bad archive leaves the current store as it was.
    """
    path = Path(path)
    if (path / "store.json").exists() and not force:
        raise StoreError(f"{path} already holds a store; restore into an empty directory or pass force")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.restore-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive, "r") as tar:
            names = tar.getnames()
            if "store.json" not in names or not any(n == "shard" or n.startswith("shard/") for n in names):
                raise StoreError(f"{archive} is not an ecgregen store snapshot (no store.json and shard/)")
            tar.extractall(staging, filter="data")
        EdgeStore(staging).close()  # loads the shard against store.json: fails here, not after the swap
        if path.exists():
            lock = _lock_directory(path / "store.lock") if path.is_dir() else None  # refuse a store in use
            try:
                old = path.with_name(f"{path.name}.old-{int(time.time())}")
                path.rename(old)
            finally:
                if lock is not None:
                    os.close(lock)
            staging.rename(path)
            shutil.rmtree(old)
        else:
            staging.rename(path)
    except (tarfile.TarError, OSError) as exc:
        raise StoreError(f"cannot restore {archive}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
