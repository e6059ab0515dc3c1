"""Fixtures: real `ecgregen serve` processes on free loopback ports, real stores, real PTB-XL records.

Servers are started as subprocesses through the console script, exactly as a user starts them, and are
called through the generated stubs. Each server fixture is session-scoped: starting one costs a few seconds
(torch import + demo index).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ecgregen.ecg import Ecg
from ecgregen.encoder_export.local_triton import LocalTriton, start_local_triton
from ecgregen.host import free_port
from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.settings import DEMO_PTBXL
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from tests.scripted_llm import ScriptedLlm

REPO = Path(__file__).resolve().parent.parent
SHARED_PTBXL = REPO.parent / "shared" / "data" / "ptbxl"
ECGREGEN = [str(Path(sys.executable).parent / "ecgregen")]  # the installed console script


@dataclass
class ServerProcess:
    """A running `ecgregen serve` and how to reach it."""

    process: subprocess.Popen
    address: str
    metrics_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stub(self) -> pb_grpc.EcgReGenStub:
        return pb_grpc.EcgReGenStub(grpc.insecure_channel(self.address))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def start_server(tmp: Path, *extra: str, timeout_s: float = 120.0, env: dict[str, str] | None = None) -> ServerProcess:
    """Start a server and wait until gRPC health says SERVING (fails with the server's log if it does not)."""
    port, metrics_port = free_port(), free_port()
    log_path = tmp / "server.log"
    process = subprocess.Popen(
        [*ECGREGEN, "serve", "--port", str(port), "--metrics-port", str(metrics_port), *extra],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, cwd=tmp,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    server = ServerProcess(process, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", log_path)
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return server
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"server not SERVING after {timeout_s} s:\n{server.log()}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def edge_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default configuration: embedded qdrant-edge store seeded with the demo corpus, and the local LLM."""
    tmp = tmp_path_factory.mktemp("edge")
    server = start_server(tmp, "--data-dir", str(tmp / "var"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Same service on qdrant-client (local mode runs the client code path used against a Qdrant server)."""
    tmp = tmp_path_factory.mktemp("qclient")
    server = start_server(tmp, "--qdrant-url", f"local:{tmp / 'qdrant'}", "--no-llm")
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["edge", "client"])
def demo_server(request: pytest.FixtureRequest) -> ServerProcess:
    """Both engines, for tests that must hold for each."""
    return request.getfixturevalue(f"{request.param}_server")


def shared_ptbxl() -> Path:
    if not (SHARED_PTBXL / "ptbxl_database.csv").exists():
        pytest.skip(f"shared PTB-XL not found at {SHARED_PTBXL}; the same tests run on the demo corpus")
    return SHARED_PTBXL


@pytest.fixture(scope="session")
def ptbxl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server over the shared PTB-XL folds 1-8, indexed with the real `ecgregen index` command first."""
    root = shared_ptbxl()
    tmp = tmp_path_factory.mktemp("ptbxl")
    data_dir = tmp / "var"
    subprocess.run(
        [*ECGREGEN, "index", "--ptbxl", str(root), "--folds", "1-8", "--data-dir", str(data_dir)],
        check=True, cwd=tmp, capture_output=True, text=True,
    )
    server = start_server(tmp, "--data-dir", str(data_dir), "--no-demo", "--no-llm")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def scripted_llm() -> Iterator[ScriptedLlm]:
    with ScriptedLlm() as llm:
        yield llm


# Failure handling made quick to observe: 1 s per attempt, 1 retry, breaker opens after 3 failures for 2 s.
SCRIPTED_LLM_FLAGS = ("--llm-timeout", "1", "--llm-retries", "1", "--llm-breaker-failures", "3",
                      "--llm-breaker-reset", "2")


@pytest.fixture(scope="session")
def scripted_llm_server(tmp_path_factory: pytest.TempPathFactory, scripted_llm: ScriptedLlm) -> Iterator[ServerProcess]:
    """A server whose LLM endpoint is the scripted one (its corpus: the demo corpus)."""
    tmp = tmp_path_factory.mktemp("scripted")
    server = start_server(
        tmp, "--data-dir", str(tmp / "var"), "--llm-base-url", scripted_llm.base_url, "--llm-model", "scripted",
        *SCRIPTED_LLM_FLAGS,
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_queries() -> list[EcgRecord]:
    """Fold-9 records of the demo corpus: never indexed by default."""
    return load_ptbxl(DEMO_PTBXL, [9])


@pytest.fixture(scope="session")
def ptbxl_queries() -> list[EcgRecord]:
    return load_ptbxl(shared_ptbxl(), [9])


LENGTHS_S = (5, 10, 20, 60)  # the encode contract's test lengths: short, one window, two, six


def real_ecg_of(seconds: int) -> Ecg:
    """A real 100 Hz ECG of `seconds`: consecutive demo fold-9 records joined (each is 10 s), then cut."""
    records = load_ptbxl(DEMO_PTBXL, [9])[: -(-seconds // 10)]
    signal = np.concatenate([r.load_ecg().signal for r in records], axis=1)[:, : seconds * 100]
    return Ecg(signal, 100.0)


# ---- Triton: the exported encoder on the real tritonserver bundled in nvidia-pytriton ----

@pytest.fixture(scope="session")
def repositories(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    out = tmp_path_factory.mktemp("export") / "model_repository"
    result = subprocess.run([*ECGREGEN, "export", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    return out, out.with_name("model_repository_python"), printed


@pytest.fixture(scope="session")
def triton(repositories: tuple[Path, Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    server = start_local_triton(repositories[1], tmp_path_factory.mktemp("triton"), grpc_port=free_port(),
                                http_port=free_port(), metrics_port=free_port())
    yield server
    server.stop()


