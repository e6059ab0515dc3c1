"""A collection on a Qdrant server or cluster, reached over the network: retries, cluster layout, bulk loads."""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import grpc
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ecgregen.store import dialect
from ecgregen.store.client import CLIENT, QdrantClientStore
from ecgregen.store.payload import KEYWORD_FIELDS
from ecgregen.store.types import CollectionSpec

log = logging.getLogger(__name__)


class QdrantRemoteStore(QdrantClientStore):
    """A collection on a Qdrant server/cluster at ``url`` (``http(s)://host:port``).

    gRPC preferred (port 6334 beside the REST port), TLS with ``https://``, the API key from ``$QDRANT_API_KEY``,
    a timeout per request, and idempotent calls (upserts with fixed ids, deletes, reads) retried with backoff on
    connection errors and 5xx/UNAVAILABLE. The server handles concurrent requests itself, so reads take no lock.
    """

    DEFAULT_INDEXING_THRESHOLD_KB = 10_000  # Qdrant's default; set to 0 (no indexing) during a bulk load

    def __init__(
        self, url: str, collection: str = "ecgregen", *, timeout_s: float = 10.0, retries: int = 3,
        prefer_grpc: bool = True, api_key_env: str = "QDRANT_API_KEY",
    ) -> None:
        self._retries = retries
        client_args = {
            "url": url, "prefer_grpc": prefer_grpc, "timeout": max(1, round(timeout_s)),
            "api_key": os.environ.get(api_key_env) or None, "https": url.startswith("https://"),
        }
        super().__init__(f"qdrant-client ({url})", collection, client_args)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A client call, retried with jittered backoff when the server hiccups (calls here are idempotent)."""
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
        return False

    def _collection_args(self, collection: CollectionSpec) -> dict[str, Any]:
        index = collection.index
        return {
            **super()._collection_args(collection),
            "shard_number": index.shards,
            "replication_factor": index.replicas,
            # A write is acknowledged once a majority of a shard's replicas has it.
            "write_consistency_factor": index.replicas // 2 + 1,
        }

    def _create(self, collection: CollectionSpec) -> None:
        super()._create(collection)
        for field in KEYWORD_FIELDS:
            self._call(self._client.create_payload_index, self._name, field, qm.PayloadSchemaType.KEYWORD, wait=True)

    def _search_params(self, exact: bool, hnsw_ef: int | None) -> qm.SearchParams | None:
        return dialect.search_params(CLIENT, self._collection, exact, hnsw_ef)

    def begin_bulk_load(self) -> None:
        """Qdrant's bulk-load recipe: no HNSW building while points stream in (``optimize`` turns it back on)."""
        self._set_indexing_threshold(0)

    def optimize(self) -> None:
        """Re-enable indexing after a bulk load; the server then builds HNSW in the background (status yellow)."""
        self._set_indexing_threshold(self.DEFAULT_INDEXING_THRESHOLD_KB)

    def _set_indexing_threshold(self, kb: int) -> None:
        with self._operation(write=True), self._engine_errors():
            self._call(self._client.update_collection, self._name,
                       optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=kb))


def _transient(exc: Exception) -> bool:
    """Worth retrying: the server was unreachable, overloaded or restarting (not a bad request)."""
    if isinstance(exc, ResponseHandlingException):  # connection refused/reset, timeout
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (429, 502, 503, 504)
    code = getattr(exc, "code", None)  # grpc.RpcError
    if callable(code):
        return code() in (
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    return False
