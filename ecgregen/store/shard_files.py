"""The embedded store's shard directory during its long jobs: scratch copies, the swap of an optimized copy into
place, and the recovery at open that makes a crash at any step leave one whole shard.

A swap is two renames, ``shard`` -> ``shard.old`` then the optimized copy -> ``shard``; ``shard.old`` is deleted
once the new shard has loaded. At open, :func:`recover` deletes scratch copies, and puts ``shard.old`` back where
``shard`` is missing (the crash came between the renames) or deletes it (the crash came after them).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ecgregen.store.disk import fsync_dir

SHARD_DIR = "shard"
SCRATCH_DIR = "tmp"  # copies made by optimize and snapshot
OLD_SHARD_DIR = "shard.old"  # the live shard while an optimized copy takes its place


def recover(store_dir: Path) -> None:
    """Finish what a crash interrupted (the caller holds the store's directory lock)."""
    shutil.rmtree(store_dir / SCRATCH_DIR, ignore_errors=True)
    old = store_dir / OLD_SHARD_DIR
    if old.exists():
        if (store_dir / SHARD_DIR).exists():
            shutil.rmtree(old)
        else:
            old.rename(store_dir / SHARD_DIR)
            fsync_dir(store_dir)


@contextlib.contextmanager
def scratch(store_dir: Path, job: str) -> Iterator[Path]:
    """A directory for one job's copy, inside the store (the same disk, so a copy renames into place); removed when
    the job ends, or by the next :func:`recover` if the process dies first."""
    root = store_dir / SCRATCH_DIR
    root.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{job}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def swap_in(store_dir: Path, optimized: Path) -> None:
    """Put ``optimized`` in place of the (closed) live shard, which is kept as ``shard.old``."""
    (store_dir / SHARD_DIR).rename(store_dir / OLD_SHARD_DIR)
    optimized.rename(store_dir / SHARD_DIR)
    fsync_dir(store_dir)


def swap_back(store_dir: Path, optimized: Path) -> None:
    """Undo :func:`swap_in` (the new shard would not load)."""
    (store_dir / SHARD_DIR).rename(optimized)
    (store_dir / OLD_SHARD_DIR).rename(store_dir / SHARD_DIR)
    fsync_dir(store_dir)


def drop_old(store_dir: Path) -> None:
    """The swap is complete: the old shard goes."""
    shutil.rmtree(store_dir / OLD_SHARD_DIR)
