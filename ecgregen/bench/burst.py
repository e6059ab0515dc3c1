"""`ecgregen bench burst`: does a running server's event loop keep answering while heavy calls are in flight?

``clients`` callers each keep GenerateReport calls on long ECGs in flight (a 10 s record tiled to ``ecg_seconds``:
30 windows to preprocess, encode and measure at 300 s) for ``rounds`` calls each. Meanwhile gRPC health checks are
asked every 20 ms on their own channel: the server answers them on its event loop itself, with no worker thread, so
blocking work run on the loop (instead of in the request's worker thread) makes a check wait behind it. The slowest
check is the measurement; the target is under 1.5 s while the burst holds more than twice that much work (the same
calls one by one, timed first). Every burst call's report is compared with the one its ECG gets alone.

This is the speed claim of the functional test that runs the same burst (``tests/test_service.py``): the test
asserts what the burst must not change (each report, health SERVING throughout), the bench measures how fast.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ecgregen.records import EcgRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import ecg_to_proto

TARGET_MAX_HEALTH_S = 1.5
HEALTH_EVERY_S = 0.02
HEALTH_SERVICE = "ecgregen.v1.EcgReGen"


def long_request(record: EcgRecord, seconds: float, k: int = 3) -> pb.GenerateReportRequest:
    """GenerateReport on the record's ECG tiled to about `seconds`."""
    ecg = record.load_ecg()
    repeats = max(1, round(seconds / ecg.duration_s))
    return pb.GenerateReportRequest(
        ecg=ecg_to_proto(dataclasses.replace(ecg, signal=np.tile(ecg.signal, (1, repeats)))), k=k)


def run_burst(server: str, records: Sequence[EcgRecord], *, clients: int = 16, rounds: int = 2,
              ecg_seconds: float = 300.0, call_timeout_s: float = 120.0) -> dict[str, Any]:
    """The burst against `server`: the reports alone and under the burst, and the health checks asked meanwhile."""
    if not records:
        raise ValueError("no records to send")
    requests = [long_request(records[i % len(records)], ecg_seconds) for i in range(clients)]
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        alone, work_s = [], 0.0
        for request in requests:
            start = time.perf_counter()
            alone.append(stub.GenerateReport(request, timeout=call_timeout_s).report_ecg_id)
            work_s += time.perf_counter() - start

        checks: list[tuple[float, float, str]] = []  # (sent, answered, status) on the perf_counter clock
        failed: list[str] = []
        stop = threading.Event()

        def probe() -> None:
            with grpc.insecure_channel(server) as health_channel:
                health = health_pb2_grpc.HealthStub(health_channel)
                while not stop.is_set():
                    sent = time.perf_counter()
                    try:
                        reply = health.Check(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE),
                                             timeout=call_timeout_s)
                        checks.append((sent, time.perf_counter(),
                                       health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)))
                    except grpc.RpcError as exc:
                        failed.append(exc.code().name)
                    time.sleep(HEALTH_EVERY_S)

        def client(i: int) -> list[str]:
            return [stub.GenerateReport(requests[i], timeout=call_timeout_s).report_ecg_id for _ in range(rounds)]

        with ThreadPoolExecutor(1) as prober:
            probing = prober.submit(probe)
            time.sleep(0.2)  # the probe's channel is connected before the burst
            burst_start = time.perf_counter()
            try:
                with ThreadPoolExecutor(clients) as pool:
                    during = list(pool.map(client, range(clients)))
            finally:
                burst_end = time.perf_counter()
                stop.set()
            probing.result()
    mismatches = [{"client": i, "alone": alone[i], "burst": got} for i, got in enumerate(during)
                  if got != [alone[i]] * rounds]
    in_burst = [(sent, answered, status) for sent, answered, status in checks if burst_start <= sent < burst_end]
    latencies = np.array([answered - sent for sent, answered, _ in in_burst]) * 1e3
    slowest_s = float(latencies.max()) / 1e3 if latencies.size else None
    return {
        "server": server, "clients": clients, "rounds": rounds, "ecg_seconds": ecg_seconds,
        "calls": clients * rounds, "work_alone_s": round(work_s, 2), "burst_s": round(burst_end - burst_start, 2),
        "mismatches": mismatches,
        "health": {
            "checks": len(checks), "during_burst": len(in_burst),
            "not_serving": sum(status != "SERVING" for _, _, status in checks), "failed": failed,
            "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None,
            "max_ms": round(float(latencies.max()), 1) if latencies.size else None,
        },
        "target": {
            "target": f"health checks during the burst all answered within {TARGET_MAX_HEALTH_S:g} s, while the "
                      f"burst holds more than {2 * TARGET_MAX_HEALTH_S:g} s of work",
            "measured": (f"slowest {slowest_s:.2f} s of {len(in_burst)} checks; the burst's calls took "
                         f"{work_s:.2f} s one by one" if slowest_s is not None else "no check during the burst"),
            # Too little work to show anything: undetermined, not met.
            "met": None if work_s <= 2 * TARGET_MAX_HEALTH_S or slowest_s is None
            else slowest_s < TARGET_MAX_HEALTH_S,
        },
    }


def format_burst(result: dict[str, Any]) -> str:
    h = result["health"]
    met = {True: "yes", False: "**no**", None: "undetermined"}[result["target"]["met"]]
    return "\n".join([
        f"Burst on {result['server']}: {result['clients']} clients x {result['rounds']} GenerateReport calls on "
        f"{result['ecg_seconds']:g} s ECGs ({result['work_alone_s']} s of calls one by one; the burst took "
        f"{result['burst_s']} s)", "",
        "| health checks during the burst | p50 ms | p99 ms | max ms | not SERVING | failed | reports unlike alone |",
        "|---|---|---|---|---|---|---|",
        f"| {h['during_burst']} | {h['p50_ms']} | {h['p99_ms']} | {h['max_ms']} | {h['not_serving']} | "
        f"{len(h['failed'])} | {len(result['mismatches'])} |", "",
        f"Target: {result['target']['target']} - {result['target']['measured']}: {met}", "",
    ])
