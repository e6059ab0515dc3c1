"""Does serving stall while the corpus is maintained? A real server on a large embedded store, probed while
OptimizeCorpus and CreateSnapshot run (issue 19).

Why it is built this way:

* The corpus is random unit vectors tagged with the shipped encoder's id, so the server opens it as its own. What
  is measured is what maintenance does to serving, not recall; random vectors are also the slowest case for the
  HNSW build, so the optimize lasts as long as it can for its size.
* Health is asked every 20 ms (``grpc.health.v1`` Check). The health servicer answers on the event loop without a
  worker thread, so its latency is the event loop's: a call that holds the GIL shows here as a gap.
* One caller searches back to back with a real ECG (decode, preprocess, encode, store search in a worker thread):
  whether searches keep being answered while the store is optimized or copied.
* The store is filled once per size and copied for every run, so each run optimizes the same unindexed corpus.

Run: ``python -m ecgregen.bench.stall --size 200000``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ecgregen.bench.measure import Progress, machine, table
from ecgregen.records import load_ptbxl
from ecgregen.settings import BENCH_DIR, DEMO_PTBXL
from ecgregen.store import EdgeStore, StoredRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import ecg_to_proto

HEALTH_EVERY_S = 0.02
CALL_TIMEOUT_S = 3600.0  # a stalled server answers late, not never: the latency is the measurement
FILL_BATCH = 4096
STORE_SUBDIR = Path("qdrant-edge") / "ecgregen"  # where `ecgregen serve --data-dir D` opens its store in D


def shipped_encoder() -> tuple[int, str]:
    """Dimension and id of the encoder a server started without --checkpoint serves: a store it opens as its own."""
    from ecgregen.encoders.checkpoint import load_encoder

    bundle = load_encoder(None)
    return bundle.model.config.dim, bundle.encoder_id


def fill_store(path: Path, size: int, dim: int, encoder_id: str, seed: int = 0) -> None:
    """``size`` random unit vectors in a new embedded store at ``path`` (written through the store API, unindexed),
    in batches ``fill-0``, ``fill-1``, ... of ``FILL_BATCH`` records."""
    rng = np.random.default_rng(seed)
    with EdgeStore(path) as store:
        store.ensure_collection(dim, encoder_id)
        for start in range(0, size, FILL_BATCH):
            vectors = rng.normal(size=(min(FILL_BATCH, size - start), dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.upsert([
                StoredRecord(vector=v, ecg_id=str(start + i), patient_id=f"p{(start + i) % 1000}", report="",
                             scp_codes={"NORM": 100.0}, source="bench", inserted_at=datetime.now(UTC).isoformat(),
                             batch_id=f"fill-{start // FILL_BATCH}")
                for i, v in enumerate(vectors)
            ])


class ServingProbe:
    """Health every 20 ms and, with ``search`` (a SearchRequest), one caller searching back to back, in threads,
    while the block runs; each latency is kept with the time it was asked."""

    def __init__(self, address: str, search: pb.SearchRequest | None = None) -> None:
        self.address = address
        self.search = search
        self.health_s: list[float] = []
        self.search_s: list[float] = []
        self.search_errors = 0
        self._stop = threading.Event()

    def _health(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            due = time.perf_counter()
            while not self._stop.is_set():
                start = time.perf_counter()
                check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
                self.health_s.append(time.perf_counter() - start)
                due += HEALTH_EVERY_S
                time.sleep(max(0.0, due - time.perf_counter()))

    def _searcher(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.EcgReGenStub(channel)
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    stub.Search(self.search, timeout=CALL_TIMEOUT_S)
                except grpc.RpcError:
                    self.search_errors += 1
                    continue
                self.search_s.append(time.perf_counter() - start)

    @contextmanager
    def running(self) -> Iterator[ServingProbe]:
        threads = [threading.Thread(target=self._health, daemon=True)]
        if self.search is not None:
            threads.append(threading.Thread(target=self._searcher, daemon=True))
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(120)

    def summary(self) -> dict[str, Any]:
        """Health p50/p99/max and search count/p50/p99/max, in ms."""
        return {"health": _ms(self.health_s), "search": {**_ms(self.search_s), "errors": self.search_errors}}


def _ms(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"count": 0}
    ms = np.asarray(seconds) * 1e3
    return {"count": len(seconds), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


def probe_during(address: str, call: Callable[[], Any], search: pb.SearchRequest | None = None) -> dict[str, Any]:
    """Run ``call`` while probing the server; its wall time and the probes' summary."""
    probe = ServingProbe(address, search)
    with probe.running():
        time.sleep(0.5)  # the probes are running before the call starts
        start = time.perf_counter()
        call()
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), **probe.summary()}


def run_stall_bench(size: int, work_dir: Path, idle_s: float = 5.0, progress: bool = True) -> dict[str, Any]:
    """Fill (once per size) a store of ``size`` random vectors, serve a copy, and probe the server idle, during
    OptimizeCorpus and during CreateSnapshot."""
    from ecgregen.bench.service import start_server

    say = Progress(progress, "stall")
    pristine = work_dir / f"stall-{size}" / "pristine"
    if not (pristine / STORE_SUBDIR / "store.json").exists():
        say(f"filling a store with {size} random vectors")
        shutil.rmtree(pristine, ignore_errors=True)
        start = time.perf_counter()
        fill_store(pristine / STORE_SUBDIR, size, *shipped_encoder())
        say(f"filled in {time.perf_counter() - start:.0f} s")
    served = work_dir / f"stall-{size}" / "served"
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(pristine, served)
    search = pb.SearchRequest(ecg=ecg_to_proto(load_ptbxl(DEMO_PTBXL, [9])[0].load_ecg()), k=10)
    server = start_server(served, served / "server.log")
    try:
        stub = pb_grpc.EcgReGenStub(grpc.insecure_channel(server.address))
        for _ in range(3):
            stub.Search(search, timeout=120)
        result: dict[str, Any] = {"size": size, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                                  "machine": machine()}
        say("idle")
        result["idle"] = probe_during(server.address, lambda: time.sleep(idle_s), search)
        say("OptimizeCorpus")
        result["optimize"] = probe_during(
            server.address, lambda: stub.OptimizeCorpus(pb.OptimizeCorpusRequest(), timeout=CALL_TIMEOUT_S), search)
        say("CreateSnapshot")
        result["snapshot"] = probe_during(
            server.address, lambda: stub.CreateSnapshot(pb.CreateSnapshotRequest(), timeout=CALL_TIMEOUT_S), search)
    finally:
        server.stop()
    shutil.rmtree(served, ignore_errors=True)
    return result


def format_stall(result: dict[str, Any]) -> str:
    rows = []
    for phase in ("idle", "optimize", "snapshot"):
        r = result[phase]
        health, search = r["health"], r["search"]
        rows.append([phase, r["seconds"], health["count"], health["p50_ms"], health["p99_ms"], health["max_ms"],
                     search["count"], search.get("p99_ms", "-"), search.get("max_ms", "-"), search["errors"]])
    header = ["phase", "s", "health calls", "health p50 ms", "p99 ms", "max ms", "searches", "search p99 ms",
              "max ms", "errors"]
    return "\n".join([f"{result['size']} random unit vectors, {result['date']}", "", *table(header, rows)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--work-dir", type=Path, default=BENCH_DIR)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, dest="json_out")
    args = parser.parse_args(argv)
    result = run_stall_bench(args.size, args.work_dir, args.idle_seconds)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2))
    print(format_stall(result))


if __name__ == "__main__":
    sys.exit(main())
