"""Choosing the engine from a location string (the ``--qdrant-url`` flag).

Kept apart from the engines because it needs all of them, while each engine needs the base class: were this in
``base``, base and engines would import each other.
"""

from __future__ import annotations

from pathlib import Path

from ecgregen.store.base import VectorStore
from ecgregen.store.client import QdrantClientStore
from ecgregen.store.edge import EdgeStore
from ecgregen.store.local import QdrantLocalStore
from ecgregen.store.remote import QdrantRemoteStore


def open_store(data_dir: Path, qdrant_url: str | None = None, collection: str = "ecgregen") -> VectorStore:
    """The in-process engine unless a Qdrant location is given.

    qdrant_url None -> EdgeStore(data_dir / "qdrant-edge" / collection); else :func:`open_qdrant` (qdrant_url).
    """
    if qdrant_url is None:
        return EdgeStore(Path(data_dir) / "qdrant-edge" / collection)
    return open_qdrant(qdrant_url, collection)


def open_qdrant(location: str, collection: str = "ecgregen") -> QdrantClientStore:
    """A qdrant-client engine: ``http(s)://host:port`` a Qdrant server or cluster, ``":memory:"`` local mode in
    memory, ``"local:PATH"`` local mode persisted in PATH."""
    if location.startswith(("http://", "https://")):
        return QdrantRemoteStore(location, collection)
    if location == ":memory:":
        return QdrantLocalStore(None, collection)
    if location.startswith("local:"):
        return QdrantLocalStore(location.removeprefix("local:"), collection)
    raise ValueError(f"qdrant location must be http(s)://host:port, ':memory:' or 'local:PATH', got {location!r}")
