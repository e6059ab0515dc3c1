"""What the corpus holds per insert (batch), kept up to date on every write so listing batches reads no records.

Listing batches by scanning the corpus reads every payload: seconds at 200k records, for a call read-only callers
may make. The embedded store keeps this registry instead (beside ``store.json``); engines without one scan with
:meth:`BatchRegistry.scan`, which is also how a missing registry is rebuilt.

A batch's first/last insert times are those of the records written to it. Deleting some of its records lowers
its count but leaves the times (recomputing a minimum would need the remaining records); a batch whose last
record goes is forgotten. A rebuild by scan gives the times of the records that remain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ecgregen.store.types import BatchInfo, StoredRecord


class BatchRegistry:
    """batch id -> [records, first inserted_at, last inserted_at]; ISO-8601 UTC times compare as strings."""

    def __init__(self, entries: Mapping[str, list[Any]] | None = None) -> None:
        self._entries: dict[str, list[Any]] = {batch: list(entry) for batch, entry in (entries or {}).items()}

    @classmethod
    def scan(cls, records: Iterable[StoredRecord]) -> BatchRegistry:
        """The registry of the records given (a scan of the whole corpus)."""
        registry = cls()
        for record in records:
            registry.add(record.batch_id, record.inserted_at)
        return registry

    def add(self, batch_id: str, inserted_at: str) -> None:
        entry = self._entries.setdefault(batch_id, [0, inserted_at, inserted_at])
        entry[0] += 1
        entry[1], entry[2] = min(entry[1], inserted_at), max(entry[2], inserted_at)

    def remove(self, batch_id: str) -> None:
        entry = self._entries.get(batch_id)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            del self._entries[batch_id]

    def written(self, records: Iterable[StoredRecord], replaced: Mapping[str, str]) -> None:
        """``records`` were upserted; ``replaced`` maps the ids that existed before to the batch they were in."""
        for record in records:
            if record.point_id in replaced:
                self.remove(replaced[record.point_id])
            self.add(record.batch_id, record.inserted_at)

    def deleted(self, removed: Mapping[str, str]) -> None:
        """The points of ``removed`` (point id -> batch id) were deleted."""
        for batch_id in removed.values():
            self.remove(batch_id)

    def points(self) -> int:
        """Records in all batches together."""
        return sum(entry[0] for entry in self._entries.values())

    def infos(self) -> list[BatchInfo]:
        """Oldest first (records written before batches existed: batch_id "")."""
        return sorted((BatchInfo(batch, n, first, last) for batch, (n, first, last) in self._entries.items()),
                      key=lambda b: (b.first_inserted_at, b.batch_id))

    def to_json(self) -> dict[str, Any]:
        return {"batches": self._entries}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchRegistry:
        return cls(data["batches"])
