"""Vector store for ECG embeddings: one interface, three Qdrant engines.

``EdgeStore`` runs Qdrant Edge inside this process on a local directory (no server to operate);
``QdrantRemoteStore`` talks to a Qdrant server or cluster; ``QdrantLocalStore`` runs qdrant-client's local mode.
All keep the same payload per point, the same point ids and the same filter semantics, so the service behaves
identically whichever one it is given. ``open_store`` picks one from the ``--qdrant-url`` flag.

Where things are:

- ``types``: the values callers pass and get back (records, hits, filters, stats, errors); the index settings are
  :class:`ecgregen.settings.IndexSettings` and the base error :class:`ecgregen.errors.StoreError`, stdlib only.
- ``base``: ``VectorStore``, the interface with its validation, counting, locking and error translation.
- ``payload``: a record's payload, the same in every engine.
- ``dialect``: filters, HNSW and int8 settings and search parameters, decided once for both Qdrant APIs.
- ``edge``: ``EdgeStore``, the embedded Qdrant Edge engine; ``disk``: its directory lock and atomic JSON writes;
  ``snapshot``: ``restore_snapshot`` for its archives.
- ``client``: ``QdrantClientStore``, what the qdrant-client engines share; ``local`` and ``remote``: local mode,
  and a Qdrant server with retries and cluster layout.
- ``factory``: ``open_store`` and ``open_qdrant``, which choose the engine.
"""

from ecgregen.errors import StoreError
from ecgregen.settings import IndexSettings
from ecgregen.store.base import VectorStore
from ecgregen.store.client import QdrantClientStore
from ecgregen.store.edge import EdgeStore
from ecgregen.store.factory import open_qdrant, open_store
from ecgregen.store.local import QdrantLocalStore
from ecgregen.store.remote import QdrantRemoteStore
from ecgregen.store.snapshot import restore_snapshot
from ecgregen.store.types import (
    BatchInfo,
    Hit,
    PayloadUpdate,
    SearchFilter,
    StoredRecord,
    StoreMismatchError,
    StoreStats,
    StoreUnsupported,
    UpsertResult,
    point_id,
)

__all__ = [
    "BatchInfo",
    "EdgeStore",
    "Hit",
    "IndexSettings",
    "PayloadUpdate",
    "QdrantClientStore",
    "QdrantLocalStore",
    "QdrantRemoteStore",
    "SearchFilter",
    "StoreError",
    "StoreMismatchError",
    "StoreStats",
    "StoreUnsupported",
    "StoredRecord",
    "UpsertResult",
    "VectorStore",
    "open_qdrant",
    "open_store",
    "point_id",
    "restore_snapshot",
]
