"""The service end to end: a real `ecgregen serve` on loopback, against the same pipeline called in-process.

Why it is built this way:

* The corpus is the store benchmark's: real fold embeddings scaled to the wanted size by noisy copies, each point
  carrying its source record's real report and labels, tagged with the shipped encoder's id so that the server
  opens it as its own. Queries are real held-out ECGs sent as raw signals, so the server preprocesses and encodes
  every call the way it would in production.
* The server runs as its own process (`python -m ecgregen.cli serve`), started and stopped here, so its memory
  is measured alone. The load generator shares the machine: on a small box its CPU use is part of the cost and
  is reported.
* The in-process baseline calls `RetrievalPipeline` from asyncio worker threads exactly as the gRPC handlers do,
  on the same store, after the server has stopped; the ratio of the two is the serving overhead.
* A profile (py-spy, when installed) is taken of the server during the GenerateReport level the latency target
  is set at, and summarised by pipeline stage.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ecgregen.bench.load import closed_loop
from ecgregen.bench.measure import Progress, cpu_seconds, dir_bytes, peak_rss_mb, rss_mb
from ecgregen.bench.store import CORPUS_STREAM, build_store, fold_embeddings, noise_sigma, noisy_copies
from ecgregen.encoders.checkpoint import load_encoder
from ecgregen.encoders.pytorch import InProcessEncoder
from ecgregen.host import free_port
from ecgregen.pipeline import open_pipeline
from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.simulate import simulate
from ecgregen.store import EdgeStore, IndexSettings
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import ecg_to_proto

QUESTION = "Does this ECG show atrial fibrillation?"  # an ECG-QA single-verify question
OPTIONS = ["yes", "no", "not sure"]
K = 3
# Where a profile sample lands, first match wins (innermost pipeline stage first).
STAGES = [
    ("encoder forward pass", ("._forward (",)),
    ("waiting for a forward pass", ("Condition.wait",)),
    ("preprocess", ("preprocess (",)),
    ("vector search", ("VectorStore.search", "EdgeStore.")),
    ("gRPC + asyncio event loop", ("run_forever", "_run_once")),
]


@dataclass
class Server:
    process: subprocess.Popen
    address: str
    log: Path
    start_s: float = 0.0  # from the command to the log's "serving" line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# `python -c` program that runs `ecgregen.cli` from another checkout of this repository (argv[1]): that tree first
# on the import path and also a root of the `ecgregen` package, where its top-level folders (server/, indexer/)
# are found as sub-packages - otherwise the editable install resolves `ecgregen.server` to today's tree.
_CLI_FROM_TREE = ("import runpy, sys; tree = sys.argv.pop(1); sys.path.insert(0, tree); import ecgregen; "
                  "ecgregen.__path__.append(tree); "
                  "runpy.run_module('ecgregen.cli', run_name='__main__', alter_sys=True)")


def start_server(data_dir: Path, log: Path, runtime: str = "onnxruntime", timeout_s: float = 180.0,
                 tree: Path | None = None) -> Server:
    """`ecgregen serve` on free loopback ports, retrieval only (no LLM), no demo seeding; waits until it serves.

    ``tree``: a checkout of another version of this repository (with its generated ``ecgregen/v1`` stubs) whose
    code serves instead of the installed one, to measure two versions side by side.
    """
    port = free_port()
    entry = ["-m", "ecgregen.cli"] if tree is None else ["-c", _CLI_FROM_TREE, str(tree.resolve())]
    command = [sys.executable, *entry, "serve", "--data-dir", str(data_dir.resolve()), "--no-llm", "--no-demo",
               "--port", str(port), "--metrics-port", str(free_port()), "--max-streams", "4096",
               "--max-inflight", "4096", "--encoder-runtime", runtime]
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree.resolve())}
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tree, env=env)
    server = Server(process, f"127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while "serving ecgregen.v1" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the server did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    server.start_s = round(time.monotonic() - started, 2)
    return server


class _RssSampler:
    """Highest resident set of a process, sampled every 100 ms while a block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))

    def __enter__(self) -> _RssSampler:
        self.peak_mb = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def build_corpus(data_dir: Path, size: int, *, ptbxl_dir: Path, index_folds: Sequence[int], work_dir: Path,
                 seed: int, index: IndexSettings, say: Progress) -> dict[str, Any]:
    """A serving store of ``size`` records at ``data_dir``: real embeddings scaled by noisy copies, HNSW built."""
    bundle = load_encoder(None)
    encoder = InProcessEncoder(bundle)
    base, records, _ = fold_embeddings(ptbxl_dir, index_folds, encoder, work_dir, say)
    corpus, sources = noisy_copies(base, size, noise_sigma(base.shape[1]), seed, CORPUS_STREAM)
    shutil.rmtree(data_dir, ignore_errors=True)
    path = data_dir / "qdrant-edge" / "ecgregen"
    path.parent.mkdir(parents=True)
    store = EdgeStore(path)
    try:
        built = build_store(store, path, corpus, sources, records, index, say, encoder_id=bundle.encoder_id)
    finally:
        store.close()
    disk = dir_bytes(data_dir)
    return {"size": size, "points": built["stats"]["points"], "real_records": len(base),
            "insert_s": built["insert"]["seconds"], "hnsw_build_s": built["build"]["seconds"], "disk": disk,
            "disk_per_record_bytes": round(disk["allocated"] / max(built["stats"]["points"], 1))}


def _requests(queries: Sequence[EcgRecord]) -> dict[str, list[Any]]:
    ecgs = [ecg_to_proto(q.load_ecg()) for q in queries]
    return {
        "GenerateReport": [pb.GenerateReportRequest(ecg=e, k=K) for e in ecgs],
        "AnswerQuestion": [pb.AnswerQuestionRequest(ecg=e, k=K, question=QUESTION, options=OPTIONS,
                                                    answerer="labels") for e in ecgs],
    }


def _profile_start(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        return None
    return subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "200",
                             "--nonblocking", "--format", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(raw: Path, top: int = 12) -> dict[str, Any]:
    """py-spy's collapsed stacks -> share of samples per pipeline stage, and the top frames by inclusive share."""
    stages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        stage = next((name for name, marks in STAGES if any(m in f for f in frames for m in marks)), "other")
        stages[stage] += n
        for frame in {f.split(" (")[0] + " (" + f.split("/")[-1] if "/" in f else f for f in frames}:
            inclusive[frame] += n
    return {
        "samples": total,
        "stages": {name: round(n / total, 3) for name, n in stages.most_common()} if total else {},
        "top_frames": [[frame, round(n / total, 3)] for frame, n in inclusive.most_common(top)] if total else [],
    }


async def _grpc_levels(server: Server, queries: Sequence[EcgRecord], concurrency: Sequence[int], duration_s: float,
                       profile_at: int | None, work_dir: Path, say: Progress,
                       calls: Sequence[str] = ("GenerateReport", "AnswerQuestion")) -> dict[str, Any]:
    requests = {name: batch for name, batch in _requests(queries).items() if name in calls}
    pid = server.process.pid
    out: dict[str, Any] = {"levels": {}, "profile": None}
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        for name, batch in requests.items():
            method = getattr(stub, name)

            def call(i: int, method: Any = method, batch: list[Any] = batch) -> Any:
                return method(batch[i % len(batch)], timeout=60)

            for r in batch[:5]:  # warm-up: first calls load lazily built parts
                await method(r, timeout=60)
            rows = []
            for c in concurrency:
                cpu0, client0, wall0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
                with _RssSampler(pid) as memory:
                    row = await closed_loop(call, c, duration_s)
                wall = time.perf_counter() - wall0
                row["server_cores"] = round((cpu_seconds(pid) - cpu0) / wall, 2)
                row["client_cores"] = round((time.process_time() - client0) / wall, 2)
                row["server_rss_peak_mb"] = round(memory.peak_mb, 1)
                rows.append(row)
                say(f"gRPC {name} c={c}: {row['ok_per_s']}/s p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms")
                if name == "GenerateReport" and c == profile_at:
                    # Once more under the profiler: sampling costs CPU, so the measured level runs without it.
                    spy = _profile_start(pid, duration_s, work_dir / "profile.raw")
                    if spy is not None:
                        await closed_loop(call, c, duration_s)
                        spy.wait(duration_s + 30)
                        if (work_dir / "profile.raw").exists():
                            out["profile"] = {"call": name, "concurrency": c,
                                              **summarise_profile(work_dir / "profile.raw")}
            out["levels"][name] = rows
    return out


async def _inprocess_levels(data_dir: Path, queries: Sequence[EcgRecord], concurrency: Sequence[int],
                            duration_s: float, runtime: str, say: Progress) -> dict[str, list[dict[str, Any]]]:
    """The gRPC handlers' work without gRPC: the pipeline from asyncio worker threads, on the same store."""
    pipeline = open_pipeline(data_dir, None, None, encoder_runtime=runtime)
    ecgs = [q.load_ecg() for q in queries]
    calls = {
        "GenerateReport": lambda i: asyncio.to_thread(pipeline.generate_report, ecgs[i % len(ecgs)], K),
        "AnswerQuestion": lambda i: asyncio.to_thread(pipeline.answer, ecgs[i % len(ecgs)], QUESTION, OPTIONS, K),
    }
    levels: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, call in calls.items():
            for i in range(5):
                await call(i)
            levels[name] = []
            for c in concurrency:
                levels[name].append(await closed_loop(call, c, duration_s))
                row = levels[name][-1]
                say(f"in-process {name} c={c}: {row['ok_per_s']}/s p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms")
    finally:
        pipeline.store.close()
    return levels


async def stream_levels(server: Server, records: Sequence[EcgRecord], monitors: Sequence[int], *, seconds: float,
                        speed: float, rate_hz: float, say: Progress) -> list[dict[str, Any]]:
    """Each level of ``monitors`` live monitors (`simulate-monitors`, in this process) for ``seconds``: windows,
    drops, errors, window latency, the server's cores and its CPU per window (what a window costs, whatever else
    runs on the machine) - the row a capacity is read from."""
    rows = []
    pid = server.process.pid
    for n in monitors:
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        summary = await simulate(records, monitors=n, server=server.address, speed=speed, duration_s=seconds,
                                 rate_hz=rate_hz)
        cpu = cpu_seconds(pid) - cpu0
        rows.append({"monitors": n, "windows": summary.windows, "dropped": summary.dropped,
                     "errors": len(summary.errors), "latency_p50_ms": round(summary.latency_p50_ms, 1),
                     "latency_p99_ms": round(summary.latency_p99_ms, 1),
                     "server_cores": round(cpu / (time.perf_counter() - wall0), 2),
                     "server_cpu_ms_per_window": round(cpu * 1000 / summary.windows, 2) if summary.windows else None,
                     "server_rss_mb": round(rss_mb(pid), 1)})
        say(f"streams: {summary.line()}")
    return rows


def _overhead(grpc_levels: dict[str, list[dict]], local: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """gRPC over in-process, per call and concurrency: latency ratios (1.2 = 20% overhead) and throughput ratio."""
    rows = []
    for name, levels in grpc_levels.items():
        for remote, here in zip(levels, local[name]):
            if remote["p50_ms"] and here["p50_ms"]:
                rows.append({"call": name, "concurrency": remote["concurrency"],
                             "p50_ratio": round(remote["p50_ms"] / here["p50_ms"], 2),
                             "p99_ratio": round(remote["p99_ms"] / here["p99_ms"], 2),
                             "throughput_ratio": round(remote["ok_per_s"] / here["ok_per_s"], 2)})
    return rows


def run_service_bench(
    *, ptbxl_dir: Path, index_folds: Sequence[int], query_folds: Sequence[int], corpus_size: int, work_dir: Path,
    concurrency: Sequence[int] = (1, 8, 32, 128), duration_s: float = 10.0, monitors: Sequence[int] = (300, 600, 900),
    stream_seconds: float = 40.0, stream_speed: float = 1.0, stream_rate_hz: float = 100.0, profile_at: int | None = 8,
    runtime: str = "onnxruntime", compare_runtime: str | None = "torch", seed: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """End to end, memory and streaming figures of one server process; JSON-able.

    ``runtime`` is the server's encoder runtime; ``compare_runtime`` (if given) gets a second server that is
    measured on GenerateReport only, to show what the runtime choice is worth end to end.
    """
    say = Progress(progress, "service-bench")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    queries = load_ptbxl(ptbxl_dir, query_folds)
    if not queries:
        raise ValueError(f"no records of folds {list(query_folds)} under {ptbxl_dir}")
    data_dir = work_dir / "service-corpus"
    say(f"building a {corpus_size}-record corpus")
    corpus = build_corpus(data_dir, corpus_size, ptbxl_dir=ptbxl_dir, index_folds=index_folds, work_dir=work_dir,
                          seed=seed, index=IndexSettings(), say=say)

    empty_dir = work_dir / "service-empty"
    shutil.rmtree(empty_dir, ignore_errors=True)
    server = start_server(empty_dir, work_dir / "serve-empty.log", runtime)
    try:
        time.sleep(1.0)
        idle_empty_mb = rss_mb(server.process.pid)
    finally:
        server.stop()

    server = start_server(data_dir, work_dir / "serve.log", runtime)
    try:
        time.sleep(1.0)
        pid = server.process.pid
        memory: dict[str, Any] = {"idle_empty_corpus_mb": round(idle_empty_mb, 1),
                                  "idle_mb": round(rss_mb(pid), 1)}
        memory["per_record_kb"] = round((memory["idle_mb"] - idle_empty_mb) * 1024 / corpus_size, 2)
        remote = asyncio.run(_grpc_levels(server, queries, concurrency, duration_s, profile_at, work_dir, say))
        streams = asyncio.run(stream_levels(server, queries, monitors, seconds=stream_seconds, speed=stream_speed,
                                       rate_hz=stream_rate_hz, say=say)) if monitors else []
        memory["peak_mb"] = round(peak_rss_mb(pid), 1)
        memory["after_load_mb"] = round(rss_mb(pid), 1)
    finally:
        server.stop()
    compared = None
    if compare_runtime:
        server = start_server(data_dir, work_dir / f"serve-{compare_runtime}.log", compare_runtime)
        try:
            say(f"the same server with --encoder-runtime {compare_runtime}")
            compared = {"runtime": compare_runtime, "GenerateReport": asyncio.run(_grpc_levels(
                server, queries, concurrency, duration_s, None, work_dir, say, calls=("GenerateReport",),
            ))["levels"]["GenerateReport"]}
        finally:
            server.stop()
    local = asyncio.run(_inprocess_levels(data_dir, queries, concurrency, duration_s, runtime, say))
    return {
        "runtime": runtime, "compared_runtime": compared,
        "corpus": corpus,
        "queries": len(queries), "k": K, "question": QUESTION, "duration_s": duration_s,
        "grpc": remote["levels"], "in_process": local, "overhead": _overhead(remote["levels"], local),
        "profile": remote["profile"], "memory": memory,
        "streams": {"rate_hz": stream_rate_hz, "seconds": stream_seconds, "speed": stream_speed,
                    "window_s": 10.0, "levels": streams},
        "load_generator": "this machine, one asyncio process (grpc.aio client)",
    }
