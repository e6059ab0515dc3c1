"""The store's interface: one class that validates, counts, locks and translates errors for every engine.

Engines subclass :class:`VectorStore` and implement only its ``_``-prefixed primitives, so the rules callers rely
on (a refused encoder mismatch, inserted/updated counts, durable writes, ``StoreError`` for engine failures) are
written once.

A store knows the vector dimension and the id of the encoder that produced its vectors: vectors from a different
encoder live in a different space, so searching them with a new encoder's query would return nonsense silently.
``ensure_collection`` refuses such a mismatch unless asked to recreate the collection.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecgregen.errors import StoreError
from ecgregen.settings import IndexSettings
from ecgregen.store.batches import BatchRegistry
from ecgregen.store.payload import to_hit, to_record
from ecgregen.store.types import (
    BatchInfo,
    CollectionSpec,
    Hit,
    PayloadUpdate,
    SearchFilter,
    StoredRecord,
    StoreMismatchError,
    StoreStats,
    StoreUnsupported,
    UpsertResult,
)

log = logging.getLogger(__name__)

SCROLL_PAGE = 256
class VectorStore(abc.ABC):
    """The operations the service needs, implemented once on top of a few engine primitives.

    Subclasses implement the ``_``-prefixed primitives; this class does validation, de-duplication, insert/update
    counting, locking and turning engine exceptions into ``StoreError``.
    """

    engine: str

    def __init__(self) -> None:
        # Writes are serialised so that "which ids existed" and the write that follows are one step: concurrent
        # upserts of the same ids would otherwise both count them as inserted. Long jobs on the whole store
        # (optimize, snapshot) hold only this one, so that reads go on meanwhile.
        self._write_lock = threading.RLock()
        # Held for each engine call (by reads too where the engine needs it) and to close or swap the engine.
        # Always taken after _write_lock, never before it.
        self._lock = threading.RLock()
        self._collection: CollectionSpec | None = None
        # Engines that keep a batch registry set it when the collection opens; None: batches() scans.
        self._batches: BatchRegistry | None = None
        self._closed = False

    # ---- engine primitives ----

    @abc.abstractmethod
    def _read_collection(self) -> CollectionSpec | None:
        """The collection as it exists in the engine now, or None."""

    @abc.abstractmethod
    def _create(self, collection: CollectionSpec) -> None: ...

    @abc.abstractmethod
    def _drop(self) -> None: ...

    @abc.abstractmethod
    def _retrieve_batches(self, ids: list[str]) -> dict[str, str]:
        """The ids present, each with the batch its record was written by ("" before batches existed)."""

    @abc.abstractmethod
    def _upsert(self, records: list[StoredRecord]) -> None:
        """Write the points; they must be durable when this returns."""

    @abc.abstractmethod
    def _delete(self, ids: list[str], batch_id: str | None = None) -> None:
        """Delete the points - with `batch_id`, only those of them still written by that batch; the deletion must be
        durable when this returns."""

    @abc.abstractmethod
    def _update_payloads(self, updates: list[PayloadUpdate]) -> None:
        """Merge each update's fields into its point's payload where the payload holds its `where`; vectors stay as
        they are; durable when this returns."""

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
    def _stats(self, collection: CollectionSpec) -> StoreStats: ...

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
        wanted = CollectionSpec(dim=dim, encoder_id=encoder_id, index=index or IndexSettings())
        with self._write_lock, self._lock, self._engine_errors():
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
                existing = self._retrieve_batches(list(by_id))
                self._upsert(list(by_id.values()))
            if self._batches is not None:
                self._batches.written(by_id.values(), existing)
        return UpsertResult(inserted=len(by_id) - len(existing), updated=len(existing))

    def existing_ids(self, point_ids: Sequence[str]) -> set[str]:
        """The subset of ``point_ids`` present in the store."""
        with self._operation(write=False), self._engine_errors():
            return set(self._retrieve_batches(list(dict.fromkeys(point_ids)))) if point_ids else set()

    def delete(self, point_ids: Sequence[str]) -> int:
        """Remove the points; returns how many of them existed. Durable on return."""
        with self._operation(write=True), self._engine_errors():
            existing = self._retrieve_batches(list(dict.fromkeys(point_ids))) if point_ids else {}
            if existing:
                self._delete(list(existing))
                if self._batches is not None:
                    self._batches.deleted(existing)
        return len(existing)

    def update_payloads(self, updates: Sequence[PayloadUpdate]) -> None:
        """Set payload fields of existing points in place - no vector is read or written, the batch registry and
        the HNSW index stay valid - each only where the point still holds its update's `where` (a point written
        again meanwhile, or deleted, is left as it is). Durable on return."""
        with self._operation(write=True), self._engine_errors():
            if updates:
                self._update_payloads(list(updates))

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
        return [to_hit(str(pid), score, payload) for pid, score, payload in found]

    def scroll(self, *, batch_id: str | None = None, with_vectors: bool = True) -> Iterator[StoredRecord]:
        """Every stored record (optionally of one batch), page by page: for migration, backup and audits.
        With ``with_vectors=False`` only ids and payloads are read and the records' vectors are zeros."""
        offset = None
        while True:
            with self._operation(write=False) as collection, self._engine_errors():
                page, offset = self._scroll(batch_id, with_vectors, offset, SCROLL_PAGE)
            for _, vector, payload in page:
                values = vector if vector is not None else np.zeros(collection.dim)
                yield to_record(payload, np.asarray(values, np.float32))
            if offset is None or not page:
                return

    def batches(self) -> list[BatchInfo]:
        """The inserts the corpus holds, oldest first (records written before batches existed: batch_id "").

        From the engine's batch registry where it keeps one (no records read), else by a scan of the corpus.
        """
        with self._operation(write=False):
            if self._batches is not None:
                return self._batches.infos()
        return BatchRegistry.scan(self.scroll(with_vectors=False)).infos()

    def delete_batch(self, batch_id: str) -> int:
        """Roll back one insert: delete every record it wrote (durable on return); returns how many.

        The write lock is held from reading the batch's ids to deleting them, so a write acknowledged meanwhile - a
        record of the batch written again by a later insert - waits and survives. The engine deletes only points
        that still carry the batch id, so a record written again by another process sharing the engine (replicas
        on one Qdrant server) survives as well.
        """
        if not batch_id:
            raise ValueError("batch_id must not be empty")
        with self._write_lock:
            ids = [r.point_id for r in self.scroll(batch_id=batch_id, with_vectors=False)]
            if not ids:
                return 0
            with self._operation(write=True), self._engine_errors():
                self._delete(ids, batch_id)
                if self._batches is not None:
                    self._batches.deleted(dict.fromkeys(ids, batch_id))
        return len(ids)

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
    def _operation(self, *, write: bool) -> Iterator[CollectionSpec]:
        """Hold the locks the call needs and hand over the collection, or refuse if there is none."""
        writes = self._write_lock if write else contextlib.nullcontext()
        lock = self._lock if write or self._reads_need_lock() else contextlib.nullcontext()
        with writes, lock:
            yield self._open_collection()

    @contextlib.contextmanager
    def _writes_held(self) -> Iterator[CollectionSpec]:
        """Hold off every write, not reads, for a long job on the whole store; its engine calls take ``_lock``."""
        with self._write_lock:
            with self._lock:
                collection = self._open_collection()
            yield collection

    def _open_collection(self) -> CollectionSpec:
        self._check_open()
        if self._collection is None:
            raise StoreError(f"{self.engine}: no collection yet; call ensure_collection(dim, encoder_id) first")
        return self._collection


def _check_vector(vector: np.ndarray, dim: int) -> list[float]:
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise ValueError(f"expected a vector of shape ({dim},), got {array.shape}")
    return array.tolist()
