"""`ecgregen simulate-monitors`: WFDB records or hospital files (a Holter, an EDF) replayed as live bedside monitors
over StreamECG.

Each monitor streams one record (looped to the requested duration) in chunks at real time times ``speed``,
starting at a random offset within the first window so that monitors are not in lock-step. A window's latency is
the time from sending the chunk that completed it to receiving its result. The last line printed is stable:
``monitors N windows W dropped D latency_p50_ms X latency_p99_ms Y``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from ecgregen.ecg import STANDARD_LEADS
from ecgregen.preprocess import resample
from ecgregen.records import EcgRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc


@dataclass
class MonitorStats:
    windows: int = 0
    dropped: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class SimulationSummary:
    monitors: int
    windows: int
    dropped: int
    latency_p50_ms: float
    latency_p99_ms: float
    errors: list[str]
    wall_s: float

    def line(self) -> str:
        return (f"monitors {self.monitors} windows {self.windows} dropped {self.dropped} "
                f"latency_p50_ms {self.latency_p50_ms:.1f} latency_p99_ms {self.latency_p99_ms:.1f}")


def monitor_signal(record: EcgRecord, rate_hz: float | None, duration_s: float) -> tuple[np.ndarray, float]:
    """The record in mV at `rate_hz` (its own by default), looped to `duration_s` (a long file: its first
    `duration_s`)."""
    ecg = record.load_ecg(seconds=duration_s)
    rate = rate_hz or ecg.sampling_rate_hz
    signal = resample(ecg.signal.astype(np.float64), ecg.sampling_rate_hz, rate).astype(np.float32)
    repeats = int(np.ceil(duration_s * rate / signal.shape[1]))
    return np.tile(signal, (1, repeats))[:, : int(round(duration_s * rate))], rate


async def _monitor(stub: pb_grpc.EcgReGenStub, index: int, signal: np.ndarray, rate: float, *, speed: float,
                   chunk_s: float, window_s: float, start_delay_s: float, stats: MonitorStats) -> None:
    chunk = max(1, int(round(chunk_s * rate)))
    window = int(round(window_s * rate))
    sent_at: dict[int, float] = {}  # window index -> when its last chunk was sent

    async def requests() -> AsyncIterator[pb.StreamEcgRequest]:
        yield pb.StreamEcgRequest(config=pb.StreamConfig(
            device_id=f"monitor-{index}", sampling_rate_hz=rate, lead_names=list(STANDARD_LEADS), window_s=window_s,
        ))
        await asyncio.sleep(start_delay_s)
        start = time.perf_counter()
        for sequence, a in enumerate(range(0, signal.shape[1], chunk)):
            part = signal[:, a : a + chunk]
            due = start + (a + part.shape[1]) / rate / speed  # the device has these samples at this moment
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            end = a + part.shape[1]
            if end // window > a // window or end % window == 0:
                sent_at.setdefault(end // window - 1, time.perf_counter())
            yield pb.StreamEcgRequest(chunk=pb.StreamChunk(
                sequence=sequence, device_time_s=a / rate, leads=[pb.StreamLead(samples=row) for row in part],
            ))

    try:
        async for response in stub.StreamECG(requests()):
            kind = response.WhichOneof("event")
            if kind == "window_result":
                stats.windows += 1
                sent = sent_at.get(response.window_result.window_index)
                if sent is not None:
                    stats.latencies_s.append(time.perf_counter() - sent)
            elif kind == "warning" and response.warning.code in ("gap", "bad_chunk", "window_dropped"):
                stats.dropped += 1
            elif kind == "error":
                stats.errors.append(f"monitor {index}: {response.error.code}: {response.error.message}")
    except grpc.aio.AioRpcError as exc:
        stats.errors.append(f"monitor {index}: {exc.code().name}: {exc.details()}")


async def simulate(records: Sequence[EcgRecord], *, monitors: int, server: str, speed: float = 1.0,
                   duration_s: float = 60.0, rate_hz: float | None = None, chunk_s: float = 0.25,
                   window_s: float = 10.0, seed: int = 0) -> SimulationSummary:
    if not records or monitors < 1 or speed <= 0 or duration_s < window_s:
        raise ValueError("need records, monitors >= 1, speed > 0 and a duration of at least one window")
    rng = random.Random(seed)
    signals = [monitor_signal(records[i % len(records)], rate_hz, duration_s) for i in range(min(monitors, len(records)))]
    stats = [MonitorStats() for _ in range(monitors)]
    start = time.perf_counter()
    async with grpc.aio.insecure_channel(server, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        await asyncio.gather(*(
            _monitor(stub, i, *signals[i % len(signals)], speed=speed, chunk_s=chunk_s, window_s=window_s,
                     start_delay_s=rng.uniform(0, window_s / speed), stats=stats[i])
            for i in range(monitors)
        ))
    latencies = np.array([x for s in stats for x in s.latencies_s]) * 1e3
    return SimulationSummary(
        monitors=monitors, windows=sum(s.windows for s in stats), dropped=sum(s.dropped for s in stats),
        latency_p50_ms=float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        latency_p99_ms=float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        errors=[e for s in stats for e in s.errors], wall_s=time.perf_counter() - start,
    )
