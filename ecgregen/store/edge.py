"""The embedded engine: a Qdrant Edge shard in a local directory, used inside this process (no server to run)."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from ecgregen.errors import StoreError
from ecgregen.settings import IndexSettings
from ecgregen.store import dialect
from ecgregen.store.base import VectorStore
from ecgregen.store.disk import fsync_dir, lock_directory, write_json_atomic
from ecgregen.store.payload import KEYWORD_FIELDS, to_payload
from ecgregen.store.types import ENCODER_ID_KEY, INDEX_KEY, CollectionSpec, SearchFilter, StoredRecord, StoreStats

# The directory layout, which snapshots copy as it is.
META_FILE = "store.json"
CALIBRATION_FILE = "calibration.json"
SHARD_DIR = "shard"
LOCK_FILE = "store.lock"

EDGE = dialect.Dialect(
    match_value=lambda key, value: qe.FieldCondition(key, match=qe.MatchValue(value)),
    match_any=lambda key, values: qe.FieldCondition(key, match=qe.MatchAny(values)),
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
        self._shard_dir = self._path / SHARD_DIR
        self._meta_file = self._path / META_FILE
        self._calibration_file = self._path / CALIBRATION_FILE
        self._shard: qe.EdgeShard | None = None
        self._path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(self._path / LOCK_FILE)
        try:
            with self._engine_errors():
                self._collection = self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _load(self) -> CollectionSpec | None:
        if not self._meta_file.exists():
            return None
        meta = json.loads(self._meta_file.read_text())
        collection = CollectionSpec(
            dim=int(meta["dim"]), encoder_id=str(meta[ENCODER_ID_KEY]),
            index=IndexSettings.from_json(meta.get(INDEX_KEY)),
        )
        # Passing the vector config makes the engine check it against the segments on disk.
        self._shard = qe.EdgeShard.load(str(self._shard_dir), qe.EdgeConfig(vectors=_edge_vectors(collection)))
        return collection

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

    def _drop(self) -> None:
        # store.json goes first: a crash part-way then leaves "no collection", never a half-deleted one.
        self._meta_file.unlink()
        self._calibration_file.unlink(missing_ok=True)
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

    def _retrieve_ids(self, ids: list[str]) -> set[str]:
        return {str(record.id) for record in self._live_shard().retrieve(ids, with_payload=False, with_vector=False)}

    def _upsert(self, records: list[StoredRecord]) -> None:
        points = [qe.Point(r.point_id, np.asarray(r.vector, np.float32).tolist(), to_payload(r)) for r in records]
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
                tar.add(self._meta_file, arcname=META_FILE)
                if self._calibration_file.exists():
                    tar.add(self._calibration_file, arcname=CALIBRATION_FILE)
                tar.add(self._shard_dir, arcname=SHARD_DIR)
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
