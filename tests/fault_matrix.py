"""The fault matrix of issue 19, measured: a dependency fails while the service is under load; what do clients
see, does any call wait past its deadline, does the service recover by itself, is an acknowledged record lost?

Each measurement has three phases on one clock: a healthy baseline, the fault (``fault_s``), and the wait for
recovery after the dependency is back. Outcomes are counted for calls that overlapped the fault. Shared by
``scripts/fault_matrix.py`` (long, under the issue's load) and ``tests/test_faults.py`` (short, in CI).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from ecgregen.encoder_export.local_triton import LocalTriton
from ecgregen.host import free_port
from ecgregen.records import EcgRecord
from ecgregen.simulate import simulate
from ecgregen.store.remote import QdrantRemoteStore
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import ecg_to_proto
from tests.fault_peers import KillableLlm, QdrantFaultPeer
from tests.scripted_llm import Step

HEADER = ("| dependency | fault | calls during the fault | p50 / p99 ms | past deadline | recovered after | "
          "acknowledged / lost | note |\n|---|---|---|---|---|---|---|---|")


@dataclass
class Cell:
    """One row of the matrix."""

    dependency: str
    fault: str
    outcomes: Counter[str] = field(default_factory=Counter)
    p50_ms: float | None = None
    p99_ms: float | None = None
    past_deadline: int | None = None  # calls that ended DEADLINE_EXCEEDED at the client, or ran past it
    recovered_s: float | None = None  # from the dependency's return to the first clean answer; None: never
    acknowledged: int | None = None
    lost: int | None = None
    note: str = ""

    def row(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "-"
        latency = "-" if self.p50_ms is None else f"{self.p50_ms:.0f} / {self.p99_ms:.0f}"
        past = "-" if self.past_deadline is None else str(self.past_deadline)
        recovered = "-" if self.past_deadline is None else (
            "no" if self.recovered_s is None else f"{self.recovered_s:.1f} s")
        records = "-" if self.acknowledged is None else f"{self.acknowledged} / {self.lost}"
        return (f"| {self.dependency} | {self.fault} | {outcomes} | {latency} | {past} | {recovered} | {records} | "
                f"{self.note} |")


def not_produced(dependency: str, fault: str, why: str) -> Cell:
    return Cell(dependency, fault, note=f"not produced here: {why}")


@dataclass
class Phases:
    """How long each phase lasts and how hard the load is."""

    clients: int = 32
    streams: int = 20
    baseline_s: float = 3.0
    fault_s: float = 10.0
    recover_s: float = 30.0  # give up waiting for recovery after this long
    deadline_s: float = 30.0  # each client call's gRPC deadline


@dataclass
class _Calls:
    started: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)
    outcome: list[str] = field(default_factory=list)

    def add(self, start: float, outcome: str) -> None:
        self.started.append(start)
        self.ended.append(time.monotonic())
        self.outcome.append(outcome)

    def summarise(self, cell: Cell, fault_from: float, fault_to: float, deadline_s: float) -> None:
        during = [i for i, (s, e) in enumerate(zip(self.started, self.ended)) if s < fault_to and e > fault_from]
        cell.outcomes = Counter(self.outcome[i] for i in during)
        ms = np.array([(self.ended[i] - self.started[i]) * 1e3 for i in during])
        if ms.size:
            cell.p50_ms, cell.p99_ms = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        cell.past_deadline = sum(1 for i, o in enumerate(self.outcome) if o == "DEADLINE_EXCEEDED"
                                 or self.ended[i] - self.started[i] > deadline_s + 1.0)
        clean = [e for s, e, o in zip(self.started, self.ended, self.outcome) if s >= fault_to and o == "OK"]
        cell.recovered_s = min(clean) - fault_to if clean else None


def _outcome(reply: pb.GenerateReportResponse, refine: bool) -> str:
    if refine and reply.fallback_reason:
        return f"OK (fallback {reply.fallback_reason})"
    return "OK"


async def measure_service(
    cell: Cell, address: str, records: Sequence[EcgRecord], inject: Callable[[], None],
    restore: Callable[[], str | None], phases: Phases, *, refine: bool = False,
) -> Cell:
    """Load the server at `address` (GenerateReport clients, live streams, one writer inserting records), inject
    the fault after the baseline, restore it after ``fault_s``, and stop once a clean answer came back."""
    requests = [pb.GenerateReportRequest(ecg=ecg_to_proto(r.load_ecg()), k=3, refine=refine) for r in records]
    calls, stop = _Calls(), asyncio.Event()
    # Each insert is one record in a batch of its own, named here: what was acknowledged is known by id.
    acknowledged: list[str] = []
    run = uuid.uuid4().hex[:8]
    fault_from = fault_to = float("inf")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EcgReGenStub(channel)

        async def client(k: int) -> None:
            i = k
            while not stop.is_set():
                start = time.monotonic()
                try:
                    calls.add(start, _outcome(await stub.GenerateReport(requests[i % len(requests)],
                                                                        timeout=phases.deadline_s), refine))
                except grpc.aio.AioRpcError as exc:
                    calls.add(start, exc.code().name)
                    await asyncio.sleep(0.05)
                i += phases.clients

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                record = pb.Record(ecg_id=f"fault-{run}-{n}", patient_id="faults",
                                   report="fault matrix", source="faults", ecg=requests[n % len(requests)].ecg)
                batch = f"fault-{run}-{n}"
                try:
                    reply = await stub.InsertRecords(iter([pb.InsertRecordsRequest(record=record, batch_id=batch)]),
                                                     timeout=phases.deadline_s)
                    if reply.inserted == 1:
                        acknowledged.append(batch)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
                n += 1

        async def faults() -> None:
            nonlocal fault_from, fault_to
            await asyncio.sleep(phases.baseline_s)
            fault_from = time.monotonic()
            await asyncio.to_thread(inject)
            await asyncio.sleep(phases.fault_s)
            cell.note = await asyncio.to_thread(restore) or cell.note
            fault_to = time.monotonic()
            give_up = fault_to + phases.recover_s
            while time.monotonic() < give_up and not any(
                    s >= fault_to and o == "OK" for s, o in zip(calls.started, calls.outcome)):
                await asyncio.sleep(0.1)
            stop.set()

        total_s = phases.baseline_s + phases.fault_s + phases.recover_s
        streams = [simulate(records, monitors=phases.streams, server=address, speed=1.0, duration_s=max(10.0, total_s))
                   ] if phases.streams else []
        tasks = [asyncio.ensure_future(t) for t in (*[client(k) for k in range(phases.clients)], writer(), *streams)]
        await faults()
        await asyncio.gather(*tasks[: phases.clients + 1])
        for task in tasks[phases.clients + 1:]:
            task.cancel()  # the streams run for a fixed time; what they saw is not part of the row
        stored = await stored_batches(stub)
    calls.summarise(cell, fault_from, fault_to, phases.deadline_s)
    cell.acknowledged, cell.lost = len(acknowledged), lost_records(acknowledged, stored)
    return cell


async def stored_batches(stub: pb_grpc.EcgReGenStub) -> dict[str, int]:
    """batch id -> records the corpus holds of it, as the server lists them."""
    listed = await stub.ListBatches(pb.ListBatchesRequest(), timeout=30)
    return {b.batch_id: b.points for b in listed.batches}


def lost_records(acknowledged: Sequence[str], stored: dict[str, int]) -> int:
    """Acknowledged inserts (each the one record of its own batch) whose record the corpus lacks. By id, not by a
    difference of point counts: an insert that was written but whose reply a kill cut off adds a point nobody was
    told of, which would hide a lost acknowledged one."""
    return sum(1 for batch in acknowledged if stored.get(batch, 0) != 1)


def measure_qdrant_peer(fault: str, phases: Phases, timeout_s: float = 1.0, retries: int = 1) -> Cell:
    """Clients (threads) open the remote store (qdrant-client over REST, the service's retries and timeout)
    against :class:`QdrantFaultPeer` back to back; the fault is the peer's mode, or ``killed`` (socket closed)."""
    cell = Cell("Qdrant server (qdrant-client, REST)", fault)
    peer, calls, stop = QdrantFaultPeer(), _Calls(), threading.Event()
    deadline_s = timeout_s * (retries + 1) + 2.0 * retries  # every attempt times out, plus the longest backoff

    def client() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                QdrantRemoteStore(peer.url, prefer_grpc=False, timeout_s=timeout_s, retries=retries).close()
                calls.add(start, "OK")
            except Exception as exc:  # noqa: BLE001 - the matrix records what came out, whatever it is
                calls.add(start, type(exc).__name__)
                time.sleep(0.05)

    with ThreadPoolExecutor(phases.clients) as pool:
        workers = [pool.submit(client) for _ in range(phases.clients)]
        time.sleep(phases.baseline_s)
        fault_from = time.monotonic()
        peer.kill() if fault == "killed" else setattr(peer, "mode", fault)
        time.sleep(phases.fault_s)
        peer.revive() if fault == "killed" else setattr(peer, "mode", "ok")
        fault_to = time.monotonic()
        give_up = fault_to + max(phases.recover_s, deadline_s)
        while time.monotonic() < give_up and not any(
                s >= fault_to and o == "OK" for s, o in zip(calls.started, calls.outcome)):
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.result(timeout=deadline_s + 10)
    peer.close()
    calls.summarise(cell, fault_from, fault_to, deadline_s)
    cell.note = f"store-level: no Qdrant binary, the peer replaces the server; deadline {deadline_s:g} s"
    return cell


class RestartableServer:
    """`ecgregen serve` on fixed ports, so that clients reconnect to the same address after a SIGKILL."""

    process: subprocess.Popen

    def __init__(self, ecgregen: Sequence[str], work: Path, *args: str) -> None:
        self.command = [*ecgregen, "serve", "--port", str(free_port()), "--metrics-port", str(free_port()), *args]
        self.address = f"127.0.0.1:{self.command[3]}"
        self.work = work
        self.start()

    def start(self, timeout_s: float = 120.0) -> None:
        """Start and wait until it answers GetCorpusStats (the store is open)."""
        with (self.work / "server.log").open("a") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.EcgReGenStub(channel)
            while True:
                try:
                    stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=1)
                    return
                except grpc.RpcError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"server did not start: see {self.work / 'server.log'}") from None
                    time.sleep(0.2)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


Fault = tuple[Callable[[], None], Callable[[], str | None]]  # inject; restore, which may say what it had to do


def llm_faults(llm: KillableLlm) -> dict[str, Fault]:
    """The scripted endpoint's faults; `slow` stays under the service's LLM timeout (1 s in the tests)."""
    def answer(step: Step) -> Callable[[], None]:
        return lambda: setattr(llm, "default", step)

    healthy = answer(Step())
    return {
        "killed": (llm.kill, llm.revive),
        "hung": (answer(Step(delay_s=3600)), healthy),
        "slow": (answer(Step(delay_s=0.6)), healthy),
        "errors": (answer(Step("status", status=500)), healthy),
        "garbage": (answer(Step(kind="raw", content="<html>502 Bad Gateway</html>")), healthy),
    }


class _Stutter:
    """Slow Triton: stopped (SIGSTOP) `stopped_s` out of every `period_s`, as a host starved of CPU."""

    def __init__(self, triton: LocalTriton, stopped_s: float = 0.2, period_s: float = 1.0) -> None:
        self.triton, self.stopped_s, self.period_s = triton, stopped_s, period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.triton.kill(signal.SIGSTOP)
            time.sleep(self.stopped_s)
            self.triton.kill(signal.SIGCONT)
            self._stop.wait(self.period_s - self.stopped_s)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.triton.kill(signal.SIGCONT)


def triton_faults(triton: LocalTriton) -> dict[str, Fault]:
    """The real tritonserver: SIGKILL then a restart on the same ports, SIGSTOP until SIGCONT, or stuttering."""
    def crash() -> None:
        triton.kill()
        triton.process.wait(10)

    def resume() -> str:
        """SIGCONT, then a restart as an orchestrator's failed liveness probe would: the bundled Python-backend
        build does not survive a stop of several seconds (it aborts on its stub IPC, boost lock_exception, at the
        next inference), so without the restart this row would measure that crash, not the service."""
        triton.kill(signal.SIGCONT)
        triton.restart()
        return "Triton resumed, then restarted (the Python-backend build aborts after a long stop)"

    stutter = _Stutter(triton)
    return {
        "killed": (crash, triton.restart),
        "hung": (lambda: triton.kill(signal.SIGSTOP), resume),
        "slow": (stutter.start, stutter.stop),
    }


TRITON_NOT_PRODUCED = {
    "errors": "the bundled build cannot be told to fail inferences (no explicit model control to unload the "
              "model); tests/test_faults.py makes the dispatcher raise with a malformed batch instead",
    "garbage": "needs a fake Triton gRPC peer answering wrong shapes; not written (the encoder now checks the "
               "answer's shape and fails the batch with EncoderUnavailable)",
}
EMBEDDED_NOT_PRODUCED = {
    "hung": "in-process engine: there is no connection to hang",
    "slow": "in-process engine: no way to slow its disk here without root-only tools (fault-injecting FUSE/dm)",
    "errors": "a full or read-only disk needs a size-limited mount (root); chmod does not stop root",
    "garbage": "in-process engine: no wire to corrupt",
}


def table(cells: Sequence[Cell]) -> str:
    return "\n".join([HEADER, *(c.row() for c in cells)])
