"""What this host gives the local helpers (the LLM, tritonserver, the ONNX encoder, test servers): a free loopback
port, "does this URL answer 200", and the per-user cache directory for files derived from the installed package."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/ecgregen (default ~/.cache/ecgregen): rebuilt when missing, so safe to delete."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ecgregen"
