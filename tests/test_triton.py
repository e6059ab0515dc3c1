"""The encoder exported to Triton and served by a real tritonserver (the one bundled in nvidia-pytriton, CPU,
Python backend running the exported ONNX with onnxruntime), with the gRPC service in front of it; and the production
repository (onnxruntime_onnx, pytorch_libtorch) loaded and served by that tritonserver through Python-based
stand-ins for the two backends its build lacks."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from ecgregen.encoder_export.export import FP16_SUFFIX, MODEL_NAME, TORCHSCRIPT_NAME, production_config
from ecgregen.encoder_export.local_triton import LocalTriton, bundled_backends, start_local_triton
from ecgregen.encoders.base import embed_prepared
from ecgregen.encoders.checkpoint import load_encoder
from ecgregen.encoders.onnxrt import OnnxRuntimeEncoder
from ecgregen.encoders.pytorch import InProcessEncoder
from ecgregen.encoders.triton import TritonEncoder
from ecgregen.preprocess import preprocess
from ecgregen.records import EcgRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto
from tests.conftest import LENGTHS_S, ServerProcess, free_port, real_ecg_of, start_server
from tests.test_cli import run


@pytest.fixture(scope="module")
def triton_server(triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("serve-triton")
    server = start_server(tmp, "--data-dir", str(tmp / "var"), "--no-llm", "--triton-url", triton.grpc_url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def production_triton(repositories: tuple[Path, Path, str],
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """The bundled tritonserver on the production repository as exported, but for its instance groups' kind (CPU:
    this machine has no GPU), with the stand-ins for the onnxruntime and pytorch backends."""
    repository = tmp_path_factory.mktemp("production") / "model_repository"
    shutil.copytree(repositories[0], repository)
    for config in repository.glob("*/config.pbtxt"):
        config.write_text(config.read_text().replace("kind: KIND_GPU", "kind: KIND_CPU"))
    server = start_local_triton(repository, tmp_path_factory.mktemp("triton-production"), grpc_port=free_port(),
                                http_port=free_port(), metrics_port=free_port(), stand_in_backends=True)
    yield server
    server.stop()


def test_export_writes_both_repositories_verified(repositories: tuple[Path, Path, str]) -> None:
    production, python_backend, printed = repositories
    onnx_diff = float(printed.split("max |ONNX - PyTorch| = ")[1].split(",")[0])
    script_diff = float(printed.split("max |TorchScript - PyTorch| = ")[1])
    assert "verified on 30 records" in printed and onnx_diff <= 1e-4 and script_diff <= 1e-4
    config = (production / "ecg_encoder" / "config.pbtxt").read_text()
    for part in ('platform: "onnxruntime_onnx"', "max_batch_size: 64", "dynamic_batching", "preferred_batch_size",
                 "instance_group", "model_warmup", 'dims: [ 12, 1000 ]', 'dims: [ 256 ]',
                 f'key: "encoder_id" value: {{ string_value: "{load_encoder(None).encoder_id}" }}'):
        assert part in config
    assert (production / "ecg_encoder" / "1" / "model.onnx").stat().st_size > 1_000_000
    assert 'platform: "pytorch_libtorch"' in (production / "ecg_encoder_torchscript" / "config.pbtxt").read_text()
    scripted = torch.jit.load(str(production / "ecg_encoder_torchscript" / "1" / "model.pt"))
    assert [a.name for a in scripted.forward.schema.arguments][1:] == ["ecg", "samples"]  # the config's inputs
    assert 'backend: "python"' in (python_backend / "ecg_encoder" / "config.pbtxt").read_text()


def test_triton_embeddings_equal_in_process(triton: LocalTriton, demo_queries: list[EcgRecord]) -> None:
    remote = TritonEncoder(triton.grpc_url)
    try:
        local = InProcessEncoder(load_encoder(None))
        assert remote.encoder_id == local.encoder_id and remote.dim == local.dim
        prepared = [preprocess(r.load_ecg(), remote.preprocess_config) for r in demo_queries]
        assert np.abs(embed_prepared(remote, prepared)[0] - embed_prepared(local, prepared)[0]).max() <= 1e-4
    finally:
        remote.close()


def test_an_ecg_of_any_length_embeds_through_triton_as_in_process(triton: LocalTriton) -> None:
    """The length policy holds for Triton too: real 5/10/20/60 s ECGs within 1e-4 of PyTorch and onnxruntime
    (before, Triton zero-padded a short ECG without a mask and embedded it differently)."""
    remote = TritonEncoder(triton.grpc_url)
    bundle = load_encoder(None)
    try:
        for seconds in LENGTHS_S:
            prepared = [preprocess(real_ecg_of(seconds), bundle.preprocess)]
            via_triton = embed_prepared(remote, prepared)[0]
            for local in (InProcessEncoder(bundle), OnnxRuntimeEncoder(bundle)):
                assert np.abs(via_triton - embed_prepared(local, prepared)[0]).max() <= 1e-4, (seconds, local)
    finally:
        remote.close()


def test_the_production_repository_loads_in_tritonserver_and_embeds_as_in_process(
    production_triton: LocalTriton
) -> None:
    """The bundled tritonserver has only the Python backend; through the Python-based stand-ins for onnxruntime and
    pytorch (which bind the config's inputs to the ONNX graph's and to the TorchScript forward's arguments by name,
    as the real backends do) it loads the production repository's two models - the ONNX on onnxruntime_onnx and the
    TorchScript on pytorch_libtorch, their configs (batching, the length input's reshape, warm-up) as exported - and
    each embeds real 5/10/20/60 s ECGs within 1e-4 of PyTorch in process."""
    assert bundled_backends() == ["python"]  # no onnxruntime, no pytorch: hence the stand-ins
    bundle = load_encoder(None)
    local = InProcessEncoder(bundle)
    for model in (MODEL_NAME, TORCHSCRIPT_NAME):
        remote = TritonEncoder(production_triton.grpc_url, model, startup_wait_s=30)
        try:
            assert (remote.encoder_id, remote.dim) == (local.encoder_id, local.dim)
            for seconds in LENGTHS_S:
                prepared = [preprocess(real_ecg_of(seconds), bundle.preprocess)]
                difference = np.abs(embed_prepared(remote, prepared)[0] - embed_prepared(local, prepared)[0]).max()
                assert difference <= 1e-4, (model, seconds, difference)
        finally:
            remote.close()


def test_each_precision_of_an_export_has_its_own_encoder_id() -> None:
    """TensorRT FP16 computes other vectors than FP32: its model config names another encoder id, so a service
    on it refuses an FP32 corpus and the FP32 in-process fallback instead of mixing the two."""
    bundle = load_encoder(None)
    fp32, fp16 = production_config(bundle), production_config(bundle, tensorrt_fp16=True)
    assert f'string_value: "{bundle.encoder_id}" ' in fp32
    assert f'string_value: "{bundle.encoder_id}{FP16_SUFFIX}" ' in fp16 and "FP16" in fp16


def test_service_encodes_through_triton(triton: LocalTriton, triton_server: ServerProcess,
                                        demo_queries: list[EcgRecord]) -> None:
    assert "(Triton 127.0.0.1:" in triton_server.log()
    requests = [pb.GenerateReportRequest(ecg=ecg_to_proto(r.load_ecg()), k=3, report_mode="top1")
                for r in demo_queries] * 2
    with ThreadPoolExecutor(16) as pool:  # a concurrent burst
        replies = list(pool.map(lambda req: triton_server.stub().GenerateReport(req, timeout=60), requests))
    assert all(len(r.neighbours) == 3 and r.report == r.neighbours[0].report_en for r in replies)
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        metrics = response.read().decode()

    def counter(name: str) -> float:
        (line,) = [x for x in metrics.splitlines() if x.startswith(name + "{") and 'model="ecg_encoder"' in x]
        return float(line.rsplit(" ", 1)[1])

    # Every ECG was inferred by Triton (inference_count counts batch items; request_success counts infer calls,
    # fewer when concurrent requests were gathered into one call).
    assert counter("nv_inference_count") >= len(requests) and counter("nv_inference_request_success") >= 1


def test_triton_outage_is_unavailable_then_recovers(triton: LocalTriton, triton_server: ServerProcess,
                                                    tmp_path: Path, demo_queries: list[EcgRecord]) -> None:
    request = pb.GenerateReportRequest(ecg=ecg_to_proto(demo_queries[0].load_ecg()), k=3)
    degrading = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm", "--triton-url",
                             triton.grpc_url, "--triton-fallback-local")
    try:
        triton.kill()  # SIGKILL to Triton and its backend processes: a crash
        triton.process.wait(10)
        with pytest.raises(grpc.RpcError) as error:
            triton_server.stub().GenerateReport(request, timeout=60)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error.value.details().startswith("encoder unavailable: Triton at 127.0.0.1:")
        degraded = degrading.stub().GenerateReport(request, timeout=60)  # configured to degrade: answers anyway
        assert degraded.report and any(w.startswith("encoded in-process: Triton unavailable") for w in degraded.warnings)
    finally:
        degrading.stop()

    triton.restart()  # same ports: the service's channel reconnects by itself (backoff at most 2 s)
    deadline = time.monotonic() + 15
    while True:
        try:
            reply = triton_server.stub().GenerateReport(request, timeout=60)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
            time.sleep(0.5)
    assert len(reply.neighbours) == 3


def test_serve_without_triton_exits_with_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    result = run("serve", "--port", str(free_port()), "--metrics-port", str(free_port()), "--no-llm", "--no-demo",
                 "--data-dir", str(tmp_path / "var"), "--triton-url", f"127.0.0.1:{port}", "--triton-wait", "1",
                 check=False)
    assert result.returncode == 1
    assert f"cannot start: Triton at 127.0.0.1:{port} not usable after 1 s" in result.stderr
