"""Restoring the embedded store from a snapshot archive (``EdgeStore.snapshot`` makes them)."""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path

from ecgregen.errors import StoreError
from ecgregen.store.disk import lock_directory
from ecgregen.store.edge import LOCK_FILE, META_FILE, SHARD_DIR, EdgeStore


def restore_snapshot(archive: Path, path: Path, *, force: bool = False) -> None:
    """Unpack a snapshot made by :meth:`EdgeStore.snapshot` into ``path`` (a store directory, not in use).

    The archive is unpacked beside the target and checked (its store.json, the shard loads) before it replaces
    anything, so a bad archive leaves the current store as it was.
    """
    path = Path(path)
    if (path / META_FILE).exists() and not force:
        raise StoreError(f"{path} already holds a store; restore into an empty directory or pass force")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.restore-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive, "r") as tar:
            names = tar.getnames()
            if META_FILE not in names or not any(n == SHARD_DIR or n.startswith(f"{SHARD_DIR}/") for n in names):
                raise StoreError(f"{archive} is not an ecgregen store snapshot (no store.json and shard/)")
            tar.extractall(staging, filter="data")
        EdgeStore(staging).close()  # loads the shard against store.json: fails here, not after the swap
        if path.exists():
            lock = lock_directory(path / LOCK_FILE) if path.is_dir() else None  # refuse a store in use
            try:
                old = path.with_name(f"{path.name}.old-{int(time.time())}")
                path.rename(old)
            finally:
                if lock is not None:
                    os.close(lock)
            staging.rename(path)
            shutil.rmtree(old)
        else:
            staging.rename(path)
    except (tarfile.TarError, OSError) as exc:
        raise StoreError(f"cannot restore {archive}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)

