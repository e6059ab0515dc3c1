"""Encoder throughput and latency per batch size: torch eager, onnxruntime and Triton, against the machine's peak.

Why it is built this way:

* Inputs are real records, preprocessed exactly as the service does, cycled to fill each batch.
* Every backend is driven through the call the service makes (``InProcessEncoder.encode``,
  ``OnnxRuntimeEncoder.encode``, ``TritonEncoder.encode``), so per-call overheads are in the numbers. They are
  called from the main thread here; the service calls from worker threads, where eager PyTorch is slower (the
  service section shows what a server gets).
* FLOPs per ECG are counted by torch's own counter on the model (matmuls, convolutions, attention), so the
  utilisation figure needs no hand-made formula; the peak is a dense fp32 matmul measured on the same machine
  (what the cores reach in practice), beside a nominal peak from the CPU's vector width and clock.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgregen.bench.measure import Progress, latency_summary
from ecgregen.ecg import EcgInputError
from ecgregen.encoders.model import EncoderBundle
from ecgregen.encoders.pytorch import InProcessEncoder
from ecgregen.host import free_port
from ecgregen.encoders.onnxrt import OnnxRuntimeEncoder
from ecgregen.preprocess import preprocess
from ecgregen.records import EcgRecord

GEMM_SIZE = 2048  # large enough to run at the machine's matmul speed, small enough to time in ~0.1 s
MAX_INPUTS = 64  # distinct real ECGs cycled through the batches


def flops_per_ecg(bundle: EncoderBundle) -> int:
    """Floating-point operations of one forward pass on one ECG window (a multiply-add counts 2).

    Counted with gradients enabled: in inference mode torch runs the transformer through a fused kernel the
    counter does not see.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 12, bundle.preprocess.window_samples)
    counter = FlopCounterMode(display=False)
    with counter:
        bundle.model(x)
    return int(counter.get_total_flops())


def measured_peak_gflops(seconds_each: float = 0.5) -> dict[str, float]:
    """Best fp32 GFLOP/s of a square matmul with torch, numpy (OpenBLAS) and onnxruntime (MLAS), all threads.

    The best of the three is the attainable peak the encoder is compared with: libraries differ by up to 2x on
    the same cores, so one library alone would understate what the machine can do.
    """
    a = np.random.default_rng(0).standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    runs: dict[str, Callable[[], Any]] = {"torch": lambda: torch.mm(ta, ta), "numpy": lambda: a @ a}
    ta = torch.from_numpy(a)
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [GEMM_SIZE, GEMM_SIZE]) for n in "ABC"]
        graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm", io[:2], io[2:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(model)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        runs["onnxruntime"] = lambda: session.run(None, {"A": a, "B": a})
    except ImportError:
        pass
    best: dict[str, float] = {}
    for name, run in runs.items():
        run()
        best[name] = 0.0
        deadline = time.perf_counter() + seconds_each
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            run()
            best[name] = max(best[name], 2 * GEMM_SIZE**3 / (time.perf_counter() - start) / 1e9)
    return {name: round(value, 1) for name, value in best.items()}


def nominal_peak_gflops() -> dict[str, Any]:
    """cores x clock x fp32 FLOPs per cycle, assuming two FMA units per core (as on current x86 server cores).

    /proc/cpuinfo gives the clock the kernel saw (often the base clock; turbo runs above it) and no FMA count, so
    this is an estimate, not a bound: the measured matmul peak is the reference.
    """
    flags, mhz = set(), 0.0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":", 1)[1])
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * 2 * lanes if "fma" in flags or lanes == 16 else lanes  # 2 units x (mul + add) x lanes
    cores = torch.get_num_threads()
    return {"gflops": round(cores * mhz / 1000 * per_cycle, 1), "cores": cores, "mhz": mhz,
            "flops_per_cycle_per_core": per_cycle, "isa": {16: "avx512", 8: "avx2", 4: "sse"}[lanes]}


def _inputs(records: Sequence[EcgRecord], bundle: EncoderBundle) -> np.ndarray:
    """Up to MAX_INPUTS real records' first windows, preprocessed as served: (n, 12, samples)."""
    out = []
    for record in records:
        try:
            out.append(preprocess(record.load_ecg(), bundle.preprocess).windows[0])
        except EcgInputError:
            continue
        if len(out) == MAX_INPUTS:
            break
    if not out:
        raise ValueError("no usable records to benchmark the encoder with")
    return np.stack(out)


def _time_batches(encode: Callable[[np.ndarray], Any], inputs: np.ndarray, batch: int, *, min_seconds: float,
                  min_calls: int) -> dict[str, Any]:
    """Call ``encode`` on batches of ``batch`` ECGs until both minimums are met; per-call latency and ECGs/s."""
    batches = [np.take(inputs, range(i, i + batch), axis=0, mode="wrap") for i in range(0, len(inputs), batch)]
    for warm in batches[:2]:
        encode(warm)
    seconds: list[float] = []
    started = time.perf_counter()
    while len(seconds) < min_calls or time.perf_counter() - started < min_seconds:
        x = batches[len(seconds) % len(batches)]
        start = time.perf_counter()
        encode(x)
        seconds.append(time.perf_counter() - start)
    total = float(np.sum(seconds))
    return {"batch": batch, "calls": len(seconds), **latency_summary(seconds),
            "ecgs_per_s": round(batch * len(seconds) / total, 1),
            "ms_per_ecg": round(total / (batch * len(seconds)) * 1000, 3)}


def _full(windows: np.ndarray) -> np.ndarray:
    """Lengths saying every window is real (the benchmark runs whole 10 s windows)."""
    return np.full(len(windows), windows.shape[-1], np.int64)


def _triton_encoder(triton: str, bundle: EncoderBundle, records: Sequence[EcgRecord], work_dir: Path,
                    stack: list[Callable[[], None]]) -> tuple[Any, str]:
    """A TritonEncoder on ``triton`` (HOST:PORT), or on the bundled tritonserver started here for "local"."""
    from ecgregen.encoders.triton import TritonEncoder

    where = triton
    if triton == "local":
        from ecgregen.encoder_export.export import export_repositories
        from ecgregen.encoder_export.local_triton import start_local_triton

        export_repositories(bundle, records[:8], work_dir / "model_repository", work_dir / "python_repository")

        server = start_local_triton(work_dir / "python_repository", work_dir / "triton", grpc_port=free_port(),
                                    http_port=free_port(), metrics_port=free_port())
        stack.append(server.stop)
        where = "local tritonserver (CPU, Python backend running onnxruntime)"
        triton = server.grpc_url
    encoder = TritonEncoder(triton, startup_wait_s=60)
    stack.append(encoder.close)
    return encoder, where


def run_encoder_bench(
    bundle: EncoderBundle, records: Sequence[EcgRecord], *, batch_sizes: Sequence[int] = (1, 8, 32, 64),
    backends: Sequence[str] = ("torch", "onnxruntime"), triton: str | None = None, min_seconds: float = 2.0,
    min_calls: int = 5, work_dir: Path | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Throughput and latency per backend and batch size; JSON-able (see :func:`format_encoder_bench`).

    ``triton`` adds a Triton row: ``"local"`` starts the tritonserver bundled with nvidia-pytriton (CPU), any
    other value is a running Triton's gRPC HOST:PORT (e.g. the GPU deployment of deploy/triton).
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("batch sizes must be given and positive")
    unknown = set(backends) - {"torch", "onnxruntime"}
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; known: torch, onnxruntime (Triton: triton=...)")
    say = Progress(progress, "encoder-bench")
    inputs = _inputs(records, bundle)
    flops = flops_per_ecg(bundle)
    by_library = measured_peak_gflops()
    peak = max(by_library.values())
    result: dict[str, Any] = {
        "encoder_id": bundle.encoder_id, "input_shape": list(inputs.shape[1:]), "distinct_inputs": len(inputs),
        "flops_per_ecg": flops, "peak": {"measured_gemm_gflops": peak, "by_library": by_library,
                                         "gemm_size": GEMM_SIZE, "nominal": nominal_peak_gflops()},
        "torch_threads": torch.get_num_threads(), "backends": {},
    }
    say(f"{flops / 1e6:.1f} MFLOP per ECG; fp32 matmul peak {peak:.1f} GFLOP/s")
    cleanup: list[Callable[[], None]] = []
    with tempfile.TemporaryDirectory(prefix="encoder-bench-", dir=work_dir) as tmp:
        try:
            runners: dict[str, Callable[[np.ndarray], Any]] = {}
            if "torch" in backends:
                encoder = InProcessEncoder(bundle)
                runners["torch"] = lambda x: encoder.encode(x, _full(x))
            if "onnxruntime" in backends:
                onnx = OnnxRuntimeEncoder(bundle, cache_dir=Path(tmp))
                runners["onnxruntime"] = lambda x: onnx.encode(x, _full(x))
            if triton:
                try:
                    remote, where = _triton_encoder(triton, bundle, records, Path(tmp), cleanup)
                    runners["triton"] = lambda x: remote.encode(x, _full(x))
                    result["triton"] = where
                except Exception as exc:  # no tritonserver here, or the URL does not answer: say so, go on
                    result["triton"] = f"skipped: {exc}".splitlines()[0]
                    say(result["triton"])
            for name, run in runners.items():
                rows = []
                for batch in batch_sizes:
                    row = _time_batches(run, inputs, batch, min_seconds=min_seconds, min_calls=min_calls)
                    row["share_of_measured_peak"] = round(row["ecgs_per_s"] * flops / (peak * 1e9), 3)
                    rows.append(row)
                    say(f"{name} batch {batch}: {row['ecgs_per_s']} ECG/s, p50 {row['p50_ms']} ms")
                result["backends"][name] = rows
        finally:
            for stop in reversed(cleanup):
                stop()
    return result


def format_encoder_bench(result: dict[str, Any]) -> list[str]:
    """Markdown lines: one row per backend and batch size, with the share of the measured matmul peak."""
    from ecgregen.bench.measure import table

    peak, nominal = result["peak"], result["peak"]["nominal"]
    lines = [
        f"Encoder {result['encoder_id']}, input {result['input_shape']} (preprocessed), "
        f"{result['flops_per_ecg'] / 1e6:.1f} MFLOP per ECG (torch FLOP counter). Peak: fp32 {peak['gemm_size']}^3 "
        f"matmul, best of {', '.join(f'{k} {v}' for k, v in peak['by_library'].items())} GFLOP/s "
        f"= {peak['measured_gemm_gflops']} GFLOP/s on {result['torch_threads']} threads; nominal "
        f"{nominal['gflops']} GFLOP/s ({nominal['cores']} cores x {nominal['mhz']:.0f} MHz x "
        f"{nominal['flops_per_cycle_per_core']} FLOP/cycle, {nominal['isa']}, 2 FMA units assumed).",
    ]
    if "triton" in result:
        lines[0] += f" Triton: {result['triton']}."
    rows = [
        [name, r["batch"], r["ecgs_per_s"], r["ms_per_ecg"], r["p50_ms"], r["p99_ms"], r["calls"],
         round(r["ecgs_per_s"] * result["flops_per_ecg"] / 1e9, 1), f"{r['share_of_measured_peak']:.1%}"]
        for name, backend in result["backends"].items() for r in backend
    ]
    header = ["backend", "batch", "ECGs/s", "ms per ECG", "call p50 ms", "call p99 ms", "calls", "GFLOP/s", "of matmul peak"]
    return [*lines, "", *table(header, rows)]
