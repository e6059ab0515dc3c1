"""Moving a corpus between stores (typically the embedded one to a Qdrant server) without re-embedding.

Vectors, payloads (inserted_at and batch ids included) and point ids are copied as they are, so the target
answers exactly like the source and a repeated or interrupted migration converges (upserts by id). The target
collection is created with the source's dimension, encoder id and index settings; a target that holds another
encoder's vectors is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tqdm import tqdm

from ecgregen.store import StoredRecord, StoreError, VectorStore

PAGE = 256


@dataclass
class MigrationReport:
    source: str
    target: str
    copied: int
    target_points: int
    seconds: float

    def summary(self) -> str:
        rate = self.copied / self.seconds if self.seconds > 0 else 0.0
        return (f"copied {self.copied} records from {self.source} to {self.target} in {self.seconds:.1f} s "
                f"({rate:.0f} records/s); the target now holds {self.target_points}")


def migrate(source: VectorStore, target: VectorStore, *, progress: bool = True) -> MigrationReport:
    """Copy every record of `source` into `target`; fails if the target ends up missing any of them."""
    start = time.perf_counter()
    stats = source.stats()
    target.ensure_collection(stats.dim, stats.encoder_id, index=stats.index)
    target.begin_bulk_load()
    try:  # an interrupted copy must not leave a Qdrant server with indexing off
        copied = 0
        page: list[StoredRecord] = []
        with tqdm(total=stats.points, desc="migrating", unit="rec", disable=not progress, dynamic_ncols=True) as bar:
            for record in source.scroll():
                page.append(record)
                if len(page) == PAGE:
                    target.upsert(page)
                    copied += len(page)
                    bar.update(len(page))
                    page = []
            if page:
                target.upsert(page)
                copied += len(page)
                bar.update(len(page))
    finally:
        target.optimize()
    missing = 0
    ids: list[str] = []
    for record in source.scroll(with_vectors=False):  # checked page by page: the corpus may not fit one request
        ids.append(record.point_id)
        if len(ids) == PAGE:
            missing += len(ids) - len(target.existing_ids(ids))
            ids = []
    missing += len(ids) - len(target.existing_ids(ids)) if ids else 0
    if missing:
        raise StoreError(f"migration incomplete: {missing} of {copied} records are not in {target.engine}")
    target.save_calibration(source.calibration())  # the same records, so their diagnosis calibration still fits
    return MigrationReport(source.engine, target.engine, copied, target.count(), time.perf_counter() - start)
