"""Crash-safe files for the embedded store: an exclusive directory lock and atomic JSON writes.

Qdrant Edge keeps its own files durable; these cover what ecgregen writes beside them (``store.json``,
``calibration.json``) and who may open the directory at all.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from ecgregen.errors import StoreError


def lock_directory(lock_file: Path) -> int:
    """Take an exclusive flock on ``lock_file`` (recording our pid in it) and return its descriptor.

    flock conflicts between separate opens even inside one process, so a second store on the same directory is
    refused whether it is in this process or another.
    """
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        where = "already open in this process" if holder == str(os.getpid()) else "in use by another process"
        raise StoreError(f"{lock_file.parent} is {where} (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a crash leaves either the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the directory's entries durable: a rename or unlink is not, until its directory is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
