"""qdrant-client's local mode: a collection in memory or in a directory, inside this process (tests, small
corpora, a migration target without a server)."""

from __future__ import annotations

from pathlib import Path

from qdrant_client import models as qm

from ecgregen.store.client import QdrantClientStore


class QdrantLocalStore(QdrantClientStore):
    """qdrant-client without a server: in memory (``path=None``) or persisted in ``path``.

    Local mode always searches by brute force and has no HNSW, payload indexes or cluster layout; it is not
    thread-safe, so every call holds the lock (the default of :class:`VectorStore`).
    """

    def __init__(self, path: str | Path | None = None, collection: str = "ecgregen") -> None:
        if path is None:
            super().__init__("qdrant-client (local :memory:)", collection, {"location": ":memory:"})
        else:
            # The service calls the store from worker threads; the lock keeps those calls one at a time.
            client_args = {"path": str(path), "force_disable_check_same_thread": True}
            super().__init__(f"qdrant-client (local {path})", collection, client_args)

    def _search_params(self, exact: bool, hnsw_ef: int | None) -> qm.SearchParams | None:
        # Local mode is always exact and warns about search params.
        return None
