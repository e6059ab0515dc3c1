"""What every benchmark section measures the same way: latency percentiles, process memory, the machine, tables.

Kept in one place so the encoder, store and service sections report numbers that mean the same thing.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean of a list of durations, in milliseconds."""
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def proc_status_kb(field: str, pid: int | str = "self") -> int:
    """A ``/proc/PID/status`` memory field (VmRSS = resident now, VmHWM = the high-water mark), in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def rss_mb(pid: int | str = "self") -> float:
    return proc_status_kb("VmRSS", pid) / 1024


def peak_rss_mb(pid: int | str = "self") -> float:
    """High-water mark of the resident set, in MB: catches peaks between snapshots."""
    return proc_status_kb("VmHWM", pid) / 1024


def available_memory_gb() -> float:
    """MemAvailable of /proc/meminfo: what can be allocated without swapping, in GB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (``/proc/PID/stat``), in seconds: living ones by
    their own fields, exited ones that were waited for by their parent's cutime/cstime.

    The descendants count because a server measures in worker processes (``--measure-workers``): its cost is the
    whole tree's.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue  # exited meanwhile
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat(current)
        except OSError:
            if current == pid:
                raise
            continue
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        todo.extend(children.get(current, []))
    return total


def dir_bytes(path: Path) -> dict[str, int]:
    """Bytes of all files under ``path``: allocated on disk, and apparent (what a tar or a copy carries).

    They differ because Qdrant preallocates its WAL and mmap files sparsely.
    """
    sizes = [os.stat(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names]
    return {"allocated": sum(s.st_blocks * 512 for s in sizes), "apparent": sum(s.st_size for s in sizes)}


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures across machines."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "memory_gb": round(memory_gb, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table, one string per line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


class Progress:
    """Stage messages on stderr with the time since the run started, so a long run shows where it is."""

    def __init__(self, enabled: bool, name: str = "bench") -> None:
        self.enabled = enabled
        self.name = name
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{self.name} {time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)
