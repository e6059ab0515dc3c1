"""Run the real ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel on this machine (CPU, Python backend).

For development and the integration tests, where there is neither Docker nor a GPU. That build has only the
Python backend, so it serves the python-backend repository ``ecgregen export`` writes (the same model name,
inputs and outputs as the production ONNX repository) - or, with ``stand_in_backends``, the production repository
itself, its ``onnxruntime_onnx`` and ``pytorch_libtorch`` models run by Python-based stand-ins for those backends
(:mod:`ecgregen.encoder_export.stand_in_backends`). Two conditions found by measurement: the backend stub
must find the running interpreter's libpython (``LD_LIBRARY_PATH``), and the environment the model runs in must
have numpy < 2 (with numpy 2 the server silently returns empty outputs) - the project's venv has.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from ecgregen.host import http_ok

PYTHON_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonNotAvailable(RuntimeError):
    """The bundled tritonserver is missing or did not become ready."""


def _pytriton_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # located, not imported: only its bundled binaries are used
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotAvailable("nvidia-pytriton is not installed (make venv installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_backends() -> list[str]:
    """The backends the bundled tritonserver comes with (nvidia-pytriton 0.7.0: only ``python``)."""
    return sorted(p.name for p in (_pytriton_root() / "tritonserver" / "backends").iterdir() if p.is_dir())


@dataclass
class LocalTriton:
    process: subprocess.Popen
    repository: Path
    work_dir: Path
    ports: dict[str, int]
    log_path: Path
    stand_in_backends: bool = False

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc_port']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http_port']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics_port']}/metrics"

    def restart(self) -> None:
        """Stop (if running) and start again with the same repository and ports."""
        self.stop()
        self.process = start_local_triton(self.repository, self.work_dir, **self.ports,
                                          stand_in_backends=self.stand_in_backends).process

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the server's process group (its Python backend stubs included), SIGKILL after a timeout."""
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stubs left behind by a crashed server

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole server (process group) - SIGKILL is a crash, as when its container dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


def start_local_triton(
    repository: Path, work_dir: Path, *, grpc_port: int, http_port: int, metrics_port: int, timeout_s: float = 120.0,
    stand_in_backends: bool = False,
) -> LocalTriton:
    """Start tritonserver on loopback ports with `repository` and wait until it reports ready (every model loaded).

    `stand_in_backends` adds the Python-based stand-ins for the onnxruntime and pytorch backends, so that a
    production repository loads in this build."""
    root = _pytriton_root()
    server = root / "tritonserver" / "bin" / "tritonserver"
    stub = root / "tritonserver" / "python_backend_stubs" / PYTHON_TAG / "triton_python_backend_stub"
    if not server.exists() or not stub.exists():
        raise TritonNotAvailable(f"no tritonserver / Python {PYTHON_TAG} backend stub under {root}")
    backends = work_dir / "backends" / "python"  # the backend plus the stub for this interpreter's version
    backends.mkdir(parents=True, exist_ok=True)
    for item in [*(root / "tritonserver" / "backends" / "python").iterdir(), stub]:
        if item.is_file() and not (backends / item.name).exists():
            shutil.copy2(item, backends / item.name)
    if stand_in_backends:
        from ecgregen.encoder_export.stand_in_backends import install

        install(backends.parent)
    site_packages = sysconfig.get_paths()["purelib"]
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent / "nvidia_pytriton.libs")]
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": os.pathsep.join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]),
        "ECGREGEN_PYTHONPATH": site_packages,
    }
    log_path = work_dir / "triton.log"
    command = [
        str(server), f"--model-repository={repository}", f"--backend-directory={work_dir / 'backends'}",
        f"--grpc-port={grpc_port}", f"--http-port={http_port}", f"--metrics-port={metrics_port}",
        "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
        "--exit-timeout-secs=5",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ports = {"grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port}
    triton = LocalTriton(process, repository, work_dir, ports, log_path, stand_in_backends)
    deadline = time.monotonic() + timeout_s
    while not http_ok(f"{triton.http_url}/v2/health/ready"):
        if process.poll() is not None or time.monotonic() > deadline:
            triton.stop()
            log = log_path.read_text(errors="replace")
            failures = "".join(f"{line}\n" for line in log.splitlines() if "failed to load '" in line)
            raise TritonNotAvailable(f"tritonserver did not become ready (exit {process.returncode}):\n"
                                     f"{failures}{log[-3000:]}")
        time.sleep(0.25)
    return triton
