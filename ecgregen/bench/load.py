"""`ecgregen bench load`: a running server under many concurrent GenerateReport calls for a bounded time.

Per concurrency level: throughput of accepted calls, their p50/p99, and how many were shed (RESOURCE_EXHAUSTED)
or failed otherwise. Above the server's ``--max-inflight`` the excess should be shed at once while the latency of
accepted calls stays bounded - the shape of a service that degrades instead of collapsing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np

from ecgregen.records import EcgRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import ecg_to_proto


async def closed_loop(call: Callable[[int], Awaitable[Any]], concurrency: int, duration_s: float) -> dict[str, Any]:
    """``concurrency`` workers each call ``call(i)`` back to back for ``duration_s``; latency of successful calls.

    Outcomes are counted by gRPC status name (``OK`` for success, the exception's type for anything not gRPC);
    a worker that is shed (RESOURCE_EXHAUSTED) backs off 10 ms, as the message asks.
    """
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    stop_at = time.perf_counter() + duration_s

    async def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                await call(i)
                latencies.append(time.perf_counter() - start)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(0.01)
            except Exception as exc:  # in-process calls: counted by kind, the run goes on
                codes[type(exc).__name__] += 1
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {
        "concurrency": concurrency, "seconds": round(wall, 1), "ok": codes["OK"],
        "ok_per_s": round(codes["OK"] / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms.size else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms.size else None,
        "shed": codes["RESOURCE_EXHAUSTED"], "errors": {k: v for k, v in codes.items() if k not in ("OK", "RESOURCE_EXHAUSTED")},
    }


async def run_load(server: str, records: Sequence[EcgRecord], *, concurrency: Sequence[int] = (1, 8, 32, 128),
                   duration_s: float = 10.0) -> list[dict[str, Any]]:
    requests = [pb.GenerateReportRequest(ecg=ecg_to_proto(r.load_ecg()), k=3) for r in records]
    if not requests:
        raise ValueError("no records to send")
    async with grpc.aio.insecure_channel(server) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        await stub.GenerateReport(requests[0], timeout=60)  # warm-up (and: is it there?)
        return [await closed_loop(lambda i: stub.GenerateReport(requests[i % len(requests)], timeout=30), c, duration_s)
                for c in concurrency]


def format_load(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| concurrency | accepted/s | p50 ms | p99 ms | shed (RESOURCE_EXHAUSTED) | other errors |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['ok_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['shed']} | "
                     f"{r['errors'] or 0} |")
    return "\n".join(lines) + "\n"
