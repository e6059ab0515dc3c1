"""The embedded engine: a Qdrant Edge shard in a local directory, used inside this process (no server to run)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from ecgregen.errors import StoreError
from ecgregen.settings import IndexSettings
from ecgregen.store import dialect, shard_files
from ecgregen.store.base import VectorStore
from ecgregen.store.batches import BatchRegistry
from ecgregen.store.disk import fsync_dir, lock_directory, write_json_atomic
from ecgregen.store.payload import KEYWORD_FIELDS, to_payload
from ecgregen.store.shard_files import SHARD_DIR
from ecgregen.store.types import (
    ENCODER_ID_KEY,
    INDEX_KEY,
    CollectionSpec,
    PayloadUpdate,
    SearchFilter,
    StoredRecord,
    StoreStats,
)

# The directory layout (and shard_files' names for the shard); snapshots hold store.json, calibration.json and
# shard/ as they are.
META_FILE = "store.json"
CALIBRATION_FILE = "calibration.json"
LOCK_FILE = "store.lock"
BATCHES_FILE = "batches.json"

EDGE = dialect.Dialect(
    match_value=lambda key, value: qe.FieldCondition(key, match=qe.MatchValue(value)),
    match_any=lambda key, values: qe.FieldCondition(key, match=qe.MatchAny(values)),
    has_id=lambda ids: qe.HasIdCondition(set(ids)),
    filter=qe.Filter,
    hnsw=qe.HnswIndexConfig,
    int8=lambda **kwargs: qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, **kwargs),
    rescore=qe.QuantizationSearchParams,
    search_params=qe.SearchParams,
)


class EdgeStore(VectorStore):
    """Qdrant Edge shard in a directory, used in-process.

    Layout of ``path``: ``shard/`` (the engine's files), ``store.json`` (dim and encoder id, written atomically and
    only once the shard exists, so its presence means "the collection exists"), ``calibration.json`` (the
    diagnosis calibration of this corpus, when one was fitted), ``batches.json`` (the batch registry, see
    :meth:`_load_batches`), ``store.lock``, and while a job runs ``tmp/`` and ``shard.old/``.

    Qdrant Edge holds the GIL for the whole of every call (searches and ``optimize`` included), so threads gain no
    parallelism from it and a lock around every call costs nothing; the lock also makes ``close`` safe against
    in-flight calls. Because of the GIL, the long jobs (optimize, snapshot) work on a copy of the shard: copying
    files releases the GIL, and the optimize itself runs in a child process. The engine locks its WAL against a
    second opener but reports only "WouldBlock", so the directory is locked here as well (``flock`` on
    ``store.lock``), with a message naming the holder's pid; the child opens only its copy, which nobody else
    opens.
    """

    engine = "qdrant-edge"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = Path(path)
        self._shard_dir = self._path / SHARD_DIR
        self._meta_file = self._path / META_FILE
        self._calibration_file = self._path / CALIBRATION_FILE
        self._batches_file = self._path / BATCHES_FILE
        self._batches_saved = False  # whether batches.json holds what the registry in memory holds
        self._shard: qe.EdgeShard | None = None
        self._optimizer: subprocess.Popen | None = None
        self._path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(self._path / LOCK_FILE)
        try:
            shard_files.recover(self._path)
            with self._engine_errors():
                self._collection = self._load()
                if self._collection is not None:
                    self._batches = self._load_batches()
        except BaseException:
            self._close()
            raise

    def _load(self) -> CollectionSpec | None:
        if not self._meta_file.exists():
            return None
        meta = json.loads(self._meta_file.read_text())
        collection = CollectionSpec(
            dim=int(meta["dim"]), encoder_id=str(meta[ENCODER_ID_KEY]),
            index=IndexSettings.from_json(meta.get(INDEX_KEY)),
        )
        self._shard = _open_shard(self._shard_dir, collection)
        return collection

    def _load_batches(self) -> BatchRegistry:
        """The batch registry as saved, or rebuilt by a scan when there is none: a store from before the registry,
        a restored snapshot (archives leave it out), or a process that died after a write.

        The file is saved when the store closes and deleted before the first write after that (see
        :meth:`_registry_file_stale`), so it matches the shard - unless an ecgregen from before the registry
        wrote to the store since, which the point count catches in all but contrived cases.
        """
        if self._batches_file.exists():
            registry = BatchRegistry.from_json(json.loads(self._batches_file.read_text()))
            if registry.points() == self._count():
                self._batches_saved = True
                return registry
        registry = BatchRegistry.scan(self.scroll(with_vectors=False))
        self._save_batches(registry)
        return registry

    def _save_batches(self, registry: BatchRegistry) -> None:
        write_json_atomic(self._batches_file, registry.to_json())
        self._batches_saved = True

    def _registry_file_stale(self) -> None:
        """A write is about to change the shard: batches.json goes first (once until the next save), so that a
        crash after the write leaves no registry that misses it, and the next open rebuilds one."""
        if self._batches_saved:
            self._batches_file.unlink(missing_ok=True)
            fsync_dir(self._path)
            self._batches_saved = False

    def _read_collection(self) -> CollectionSpec | None:
        # The directory lock makes this store the only writer, so what it loaded is what is on disk.
        return self._collection

    def _create(self, collection: CollectionSpec) -> None:
        # A shard without store.json is left from an interrupted create and holds nothing committed.
        self._close_shard()
        shutil.rmtree(self._shard_dir, ignore_errors=True)
        config = qe.EdgeConfig(
            vectors=_edge_vectors(collection),
            hnsw_config=dialect.hnsw_config(EDGE, collection.index),
            # Qdrant Edge never optimizes on its own; a 1 KB threshold makes optimize() index every segment,
            # whatever the store's size, instead of only segments above Qdrant's default 10 MB.
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
        )
        self._shard = qe.EdgeShard.create(str(self._shard_dir), config)
        for field in KEYWORD_FIELDS:
            self._shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
        self._shard.flush()
        write_json_atomic(self._meta_file, {"dim": collection.dim, **collection.metadata()})
        self._batches = BatchRegistry()
        self._save_batches(self._batches)

    def _drop(self) -> None:
        # store.json goes first: a crash part-way then leaves "no collection", never a half-deleted one.
        self._meta_file.unlink()
        self._calibration_file.unlink(missing_ok=True)
        self._batches_file.unlink(missing_ok=True)
        self._batches, self._batches_saved = None, False
        fsync_dir(self._path)
        self._close_shard()
        shutil.rmtree(self._shard_dir)

    def _read_calibration(self) -> dict[str, Any] | None:
        return json.loads(self._calibration_file.read_text()) if self._calibration_file.exists() else None

    def _write_calibration(self, data: dict[str, Any] | None) -> None:
        if data is None:
            self._calibration_file.unlink(missing_ok=True)
            fsync_dir(self._path)
        else:
            write_json_atomic(self._calibration_file, data)

    def _retrieve_batches(self, ids: list[str]) -> dict[str, str]:
        found = self._live_shard().retrieve(ids, with_payload=qe.PayloadSelector.Include(["batch_id"]),
                                            with_vector=False)
        return {str(record.id): (record.payload or {}).get("batch_id", "") for record in found}

    def _upsert(self, records: list[StoredRecord]) -> None:
        points = [qe.Point(r.point_id, np.asarray(r.vector, np.float32).tolist(), to_payload(r)) for r in records]
        shard = self._live_shard()
        self._registry_file_stale()
        shard.update(qe.UpdateOperation.upsert_points(points))
        shard.flush()

    def _delete(self, ids: list[str], batch_id: str | None = None) -> None:
        shard = self._live_shard()
        self._registry_file_stale()
        if batch_id is None:
            shard.update(qe.UpdateOperation.delete_points(ids))
        else:
            shard.update(qe.UpdateOperation.delete_points_by_filter(dialect.batch_points_filter(EDGE, ids, batch_id)))
        shard.flush()

    def _update_payloads(self, updates: list[PayloadUpdate]) -> None:
        # No batch id or point count changes, so batches.json stays true: no _registry_file_stale() here.
        shard = self._live_shard()
        for update in updates:
            shard.update(qe.UpdateOperation.set_payload_by_filter(
                dialect.point_where_filter(EDGE, update.point_id, update.where), update.fields))
        shard.flush()

    def _query(
        self, vector: list[float], k: int, filt: SearchFilter | None, exact: bool, hnsw_ef: int | None
    ) -> list[tuple[Any, float, dict[str, Any]]]:
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(vector),
            filter=dialect.search_filter(EDGE, filt),
            params=dialect.search_params(EDGE, self._collection, exact, hnsw_ef),
            with_payload=True,
        )
        return [(p.id, p.score, p.payload or {}) for p in self._live_shard().query(request)]

    def _scroll(
        self, batch_id: str | None, with_vectors: bool, offset: Any, limit: int
    ) -> tuple[list[tuple[Any, list[float] | None, dict[str, Any]]], Any]:
        where = dialect.batch_filter(EDGE, batch_id)
        records, next_offset = self._live_shard().scroll(
            qe.ScrollRequest(offset=offset, limit=limit, filter=where, with_payload=True, with_vector=with_vectors)
        )
        return [(r.id, _edge_vector(r.vector) if with_vectors else None, r.payload or {}) for r in records], next_offset

    def _count(self) -> int:
        return self._live_shard().count(qe.CountRequest(exact=True))

    def _stats(self, collection: CollectionSpec) -> StoreStats:
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
        """A consistent copy of the store as one tar file, taken online; returns the file and the number of points
        it holds.

        Writes wait only while the shard's files are copied (file copies run without the GIL; reads go on). The
        copy is tarred afterwards, outside every lock, in this thread: tarfile works in blocks and lets the
        server's event loop run between them. Needs free disk for the copy as well as the archive.
        """
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # This call's own partial file: a second snapshot to the same `out` meanwhile tars into another one, and
        # the archive left at `out` is one of the two, whole.
        partial = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
        try:
            with shard_files.scratch(self._path, "snapshot") as copy, self._engine_errors():
                with self._writes_held():
                    with self._lock:
                        self._live_shard().flush()
                        points = self._count()
                    shutil.copytree(self._shard_dir, copy / SHARD_DIR)
                    for name in (META_FILE, CALIBRATION_FILE):
                        if (self._path / name).exists():
                            shutil.copyfile(self._path / name, copy / name)
                with tarfile.open(partial, "w") as tar:
                    for name in (META_FILE, CALIBRATION_FILE, SHARD_DIR):
                        if (copy / name).exists():
                            tar.add(copy / name, arcname=name)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)  # a snapshot that failed leaves no partial file behind
        return out, points

    def optimize(self) -> None:
        """Build HNSW over everything written so far and merge segments, without holding this process's GIL.

        The engine's optimize runs in a child process (:mod:`ecgregen.shard_optimizer`) on a copy of the shard.
        Writes wait from the copy to the swap; reads go on against the live shard and pause only for the swap
        (close the live shard, two renames, load the optimized one). A crash at any point leaves either shard
        whole (see :mod:`ecgregen.store.shard_files`). Needs free disk for a second copy of the shard.
        """
        with shard_files.scratch(self._path, "optimize") as work, self._writes_held(), self._engine_errors():
            with self._lock:
                self._live_shard().flush()
            copy = work / SHARD_DIR
            shutil.copytree(self._shard_dir, copy)
            if self._run_optimizer(copy):
                self._swap_in(copy)

    def _run_optimizer(self, shard_dir: Path) -> bool:
        """Optimize the shard at ``shard_dir`` in a child process; whether it changed anything."""
        command = [sys.executable, "-m", "ecgregen.shard_optimizer", str(os.getpid()), str(shard_dir)]
        with self._lock:  # close() kills the child, so it must not start after close
            self._check_open()
            process = self._optimizer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                         text=True)
        try:
            out, err = process.communicate()
        finally:
            self._optimizer = None
        self._check_open()
        if process.returncode != 0:
            raise StoreError(f"{self.engine}: the optimizer process failed (exit {process.returncode}): "
                             f"{err.strip()[-800:]}")
        return bool(json.loads(out)["optimized"])

    def _swap_in(self, optimized: Path) -> None:
        """Serve the optimized copy instead of the live shard (reads pause meanwhile); the old one is deleted."""
        with self._lock:
            collection = self._open_collection()
            self._close_shard()
            shard_files.swap_in(self._path, optimized)
            try:
                self._shard = _open_shard(self._shard_dir, collection)
            except BaseException:
                shard_files.swap_back(self._path, optimized)
                self._shard = _open_shard(self._shard_dir, collection)
                raise
        shard_files.drop_old(self._path)

    def _close(self) -> None:
        try:
            optimizer = self._optimizer
            if optimizer is not None:  # the optimize in flight fails; its copy goes with its scratch directory
                optimizer.kill()
            if self._batches is not None and not self._batches_saved:
                self._save_batches(self._batches)
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


def _open_shard(shard_dir: Path, collection: CollectionSpec) -> qe.EdgeShard:
    # Passing the vector config makes the engine check it against the segments on disk.
    return qe.EdgeShard.load(str(shard_dir), qe.EdgeConfig(vectors=_edge_vectors(collection)))


def _edge_vectors(collection: CollectionSpec) -> qe.EdgeVectorParams:
    return qe.EdgeVectorParams(
        size=collection.dim, distance=qe.Distance.Cosine, on_disk=collection.index.on_disk or None,
        quantization_config=dialect.quantization(EDGE, collection.index),
    )


def _edge_vector(vector: Any) -> list[float]:
    """A record's vector as Qdrant Edge returns it (the unnamed vector, possibly keyed by "")."""
    if isinstance(vector, dict):
        vector = next(iter(vector.values()))
    return list(vector)
