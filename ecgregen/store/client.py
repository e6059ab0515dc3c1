"""What the qdrant-client engines share: one collection reached through a ``QdrantClient``.

qdrant-client runs against a Qdrant server (:mod:`ecgregen.store.remote`) or, in local mode, inside this process
(:mod:`ecgregen.store.local`). The calls are the same; the two differ in how a client is made, whether calls are
retried, whether reads need the lock and which collection and search options the engine supports. Those are the
hooks below; everything else is here once.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from ecgregen.errors import StoreError
from ecgregen.settings import IndexSettings
from ecgregen.store import dialect
from ecgregen.store.base import VectorStore
from ecgregen.store.payload import to_payload
from ecgregen.store.types import (
    ENCODER_ID_KEY,
    INDEX_KEY,
    CollectionSpec,
    PayloadUpdate,
    SearchFilter,
    StoredRecord,
    StoreStats,
)

CALIBRATION_KEY = "diagnosis_calibration"  # in the collection's metadata

CLIENT = dialect.Dialect(
    match_value=lambda key, value: qm.FieldCondition(key=key, match=qm.MatchValue(value=value)),
    match_any=lambda key, values: qm.FieldCondition(key=key, match=qm.MatchAny(any=values)),
    has_id=lambda ids: qm.HasIdCondition(has_id=ids),
    filter=qm.Filter,
    hnsw=qm.HnswConfigDiff,
    int8=lambda **kwargs: qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, **kwargs)),
    rescore=qm.QuantizationSearchParams,
    search_params=qm.SearchParams,
)


class QdrantClientStore(VectorStore):
    """A Qdrant collection through qdrant-client. The encoder id and index settings are kept in the collection's
    own metadata, so the collection describes itself when reopened. Writes wait for the engine (``wait=True``).

    ``batches()`` scans the collection here (no registry as the embedded store keeps): local mode holds small
    corpora, and a Qdrant server may have several writers (replicas of the service) that one process's registry
    would not see."""

    UPSERT_BATCH = 256  # points per request, well under the server's default 32 MB request limit

    def __init__(self, engine: str, collection: str, client_args: dict[str, Any]) -> None:
        super().__init__()
        self.engine = engine
        self._name = collection
        with self._engine_errors():
            # A second local-mode client on the same path raises RuntimeError here ("already accessed").
            self._client = QdrantClient(**client_args)
        try:
            with self._engine_errors():
                self._collection = self._read_collection()
        except BaseException:
            self._client.close()
            raise

    # ---- hooks for the local and the remote engine ----

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One client call; the remote engine retries it when the server hiccups."""
        return fn(*args, **kwargs)

    def _collection_args(self, collection: CollectionSpec) -> dict[str, Any]:
        """``create_collection`` arguments beyond the name; the remote engine adds its cluster layout."""
        return {
            "vectors_config": qm.VectorParams(
                size=collection.dim, distance=qm.Distance.COSINE, on_disk=collection.index.on_disk
            ),
            "hnsw_config": dialect.hnsw_config(CLIENT, collection.index),
            "quantization_config": dialect.quantization(CLIENT, collection.index),
            "metadata": collection.metadata(),
        }

    @abc.abstractmethod
    def _search_params(self, exact: bool, hnsw_ef: int | None) -> qm.SearchParams | None:
        """The search parameters the engine honours (None: it takes none)."""

    # ---- engine primitives ----

    def _read_collection(self) -> CollectionSpec | None:
        if not self._call(self._client.collection_exists, self._name):
            return None
        config = self._call(self._client.get_collection, self._name).config
        vectors = config.params.vectors
        if not isinstance(vectors, qm.VectorParams):
            raise StoreError(f"{self.engine}: collection {self._name!r} has named vectors; ecgregen did not make it")
        metadata = config.metadata or {}
        return CollectionSpec(
            dim=vectors.size, encoder_id=str(metadata.get(ENCODER_ID_KEY, "")),
            index=IndexSettings.from_json(metadata.get(INDEX_KEY)),
        )

    def _create(self, collection: CollectionSpec) -> None:
        self._client.create_collection(self._name, **self._collection_args(collection))

    def _drop(self) -> None:
        self._client.delete_collection(self._name)

    def _read_calibration(self) -> dict[str, Any] | None:
        metadata = self._call(self._client.get_collection, self._name).config.metadata or {}
        return metadata.get(CALIBRATION_KEY)

    def _write_calibration(self, data: dict[str, Any] | None) -> None:
        # Collection metadata is merged key by key, so this leaves the encoder id and index settings as they are.
        self._call(self._client.update_collection, self._name, metadata={CALIBRATION_KEY: data})

    def _retrieve_batches(self, ids: list[str]) -> dict[str, str]:
        found = self._call(self._client.retrieve, self._name, ids, with_payload=["batch_id"], with_vectors=False)
        return {str(r.id): (r.payload or {}).get("batch_id", "") for r in found}

    def _upsert(self, records: list[StoredRecord]) -> None:
        for start in range(0, len(records), self.UPSERT_BATCH):
            points = [
                qm.PointStruct(id=r.point_id, vector=np.asarray(r.vector, np.float32).tolist(), payload=to_payload(r))
                for r in records[start : start + self.UPSERT_BATCH]
            ]
            self._call(self._client.upsert, self._name, points, wait=True)

    def _delete(self, ids: list[str], batch_id: str | None = None) -> None:
        selector = (qm.PointIdsList(points=ids) if batch_id is None
                    else qm.FilterSelector(filter=dialect.batch_points_filter(CLIENT, ids, batch_id)))
        self._call(self._client.delete, self._name, selector, wait=True)

    def _update_payloads(self, updates: list[PayloadUpdate]) -> None:
        for start in range(0, len(updates), self.UPSERT_BATCH):  # one request per page of updates
            operations = [
                qm.SetPayloadOperation(set_payload=qm.SetPayload(
                    payload=u.fields, filter=dialect.point_where_filter(CLIENT, u.point_id, u.where)))
                for u in updates[start : start + self.UPSERT_BATCH]
            ]
            self._call(self._client.batch_update_points, self._name, operations, wait=True)

    def _query(
        self, vector: list[float], k: int, filt: SearchFilter | None, exact: bool, hnsw_ef: int | None
    ) -> list[tuple[Any, float, dict[str, Any]]]:
        response = self._call(
            self._client.query_points,
            self._name,
            query=vector,
            limit=k,
            query_filter=dialect.search_filter(CLIENT, filt),
            search_params=self._search_params(exact, hnsw_ef),
            with_payload=True,
        )
        return [(p.id, p.score, p.payload or {}) for p in response.points]

    def _scroll(
        self, batch_id: str | None, with_vectors: bool, offset: Any, limit: int
    ) -> tuple[list[tuple[Any, list[float] | None, dict[str, Any]]], Any]:
        records, next_offset = self._call(
            self._client.scroll, self._name, scroll_filter=dialect.batch_filter(CLIENT, batch_id), limit=limit,
            offset=offset, with_payload=True, with_vectors=with_vectors,
        )
        return [(r.id, list(r.vector) if with_vectors else None, r.payload or {}) for r in records], next_offset

    def _count(self) -> int:
        return self._call(self._client.count, self._name, exact=True).count

    def _stats(self, collection: CollectionSpec) -> StoreStats:
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

    def _close(self) -> None:
        self._client.close()
