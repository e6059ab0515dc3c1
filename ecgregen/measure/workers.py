"""The measurement stage of a serving process: in worker processes, at the same time as the encoder.

Why processes: the stage is about a hundred numpy calls per ECG, and in the server's request threads each call takes
and gives back the interpreter lock that the encoder, the store and the event loop need too. Measured in the
server (issue 25, ``ecgregen bench --sections measure``): the server spent twice the stage's own CPU per call and
GenerateReport throughput at concurrency 8 halved. A worker process measures with no lock to share, on another
core, while the request thread encodes and searches, and the request waits only for what is left of the measuring
when it needs the result.

Why not a ``ProcessPoolExecutor`` (used until issue 33): it pickles the samples and moves every call through two
threads of its own (queue management and a feeder), which compete for the interpreter lock with the event loop and
the encoder; the budget of a loaded server (``ecgregen bench --sections budget``) put 1.9-2.6 ms of server CPU per
call in sending and collecting. Here each worker has its own pipe and its own shared-memory buffer: the request
thread copies the samples into the buffer and sends a few bytes (the ECG's length, rate, units and unrecorded
leads); no pickle of the samples and no thread hop when a worker is free. One collector thread per worker waits for
its results (blocked in a read, without the lock), hands each to its caller and gives the worker the next queued
ECG. Alone, one call at a time, the server's CPU per call went from 0.56 / 1.04 ms to 0.45 / 0.58 ms (100 / 500 Hz
10 s ECGs, 2026-12-07); under load the saving is in the lock the two threads no longer take.

``workers=0`` measures in the calling thread instead, when the result is asked for (one-off commands, tests that
replace the stage): what a refused ECG costs is then nothing. A failure of the stage - an exception on an unusual
signal, a worker killed or out of memory, no result within the deadline - costs the call its measurements only: a
warning instead, logged and counted (``ecgregen_measurement_failures_total``). A worker that died, or that has not
answered by the deadline (it is then killed: a running measurement cannot be cancelled), is replaced at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from ecgregen.ecg import Ecg
from ecgregen.measure import Measurements, measure
from ecgregen.metrics import MEASUREMENT_FAILURES, observe_measurements, record_stage

log = logging.getLogger("ecgregen.measure")

MEASUREMENT_FAILED = ("measurements not available: measuring this ECG failed (the server log has the details); "
                      "the neighbours and diagnoses are unaffected")
# A result not back by then is given up: the stage takes milliseconds, so only a stuck or swamped worker is this slow.
RESULT_TIMEOUT_S = 30.0
# Workers that die before they are ready (a broken installation: an import or the filters' compilation fails) are
# replaced this many times in a row; then the stage is given up and every call goes on without measurements.
MAX_FAILED_STARTS = 3
# A worker's sample buffer starts at a 10 s 12-lead ECG at 500 Hz and grows in these steps when a longer one comes.
BUFFER_STEP_BYTES = 1 << 18


class WorkerLost(RuntimeError):
    """The worker measuring an ECG died or was killed before it answered."""


def _measure_timed(ecg: Ecg) -> tuple[Measurements, float]:
    """Run in a worker: the measurements and the stage's own wall time there (not the queueing before it)."""
    start = time.perf_counter()
    return measure(ecg), time.perf_counter() - start


def warm() -> None:
    """Import the stage, design its filters and compile them (numba: from its cache when there is one) before the
    first call needs them: a 2 s ECG at 500 Hz. The server calls it too, since preprocessing filters as well."""
    t = np.arange(1000) / 500.0
    measure(Ecg(np.tile(np.sin(2 * np.pi * 1.2 * t).astype(np.float32), (12, 1)), 500.0))


def _worker_loop(conn: Connection) -> None:
    """A worker's life: warm up, then measure each ECG announced on `conn` from the shared buffer it names, until
    the server says stop (None) or goes away (end of file: a server killed outright never says stop, and a worker
    must not outlive it)."""
    warm()
    conn.send(None)  # ready
    buffer: SharedMemory | None = None
    try:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return
            if job is None:
                return
            name, n_samples, rate_hz, not_recorded, units = job
            if buffer is None or buffer.name != name:
                if buffer is not None:
                    buffer.close()
                buffer = SharedMemory(name)
            # Measured where it lies (the stage's first step copies it to float64); no view outlives the call, so the
            # buffer can be closed when the server replaces it with a larger one.
            ecg = Ecg(np.ndarray((12, n_samples), np.float32, buffer=buffer.buf), rate_hz, not_recorded, units)
            try:
                reply: tuple[bool, object] = (True, _measure_timed(ecg))
            except Exception as exc:  # the caller logs it: the worker lives on
                reply = (False, exc)
            finally:
                del ecg
            conn.send(reply)
    finally:
        if buffer is not None:
            buffer.close()


class _Job:
    """One ECG to measure and where its result goes."""

    def __init__(self, ecg: Ecg) -> None:
        self.ecg, self.future = ecg, Future()


class _Worker:
    """One measurement process: its pipe, its sample buffer, the job it is measuring and its collector thread."""

    def __init__(self, owner: MeasureWorkers) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the server's threads must not be forked mid-flight
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_loop, args=(child,), name="ecgregen-measure", daemon=True)
        self.process.start()
        child.close()  # the worker holds the only other end: it reads end-of-file when this process is gone
        self.buffer: SharedMemory | None = None
        self.job: _Job | None = None
        self.ready = threading.Event()  # warmed up: its first message
        self.collector = threading.Thread(target=owner._collect, args=(self,), name="measure-collector", daemon=True)
        self.collector.start()

    def send(self, job: _Job) -> None:
        """Copy the job's samples into the buffer (grown if they do not fit) and tell the worker to measure them."""
        signal = job.ecg.signal
        size = 12 * signal.shape[1] * 4
        if self.buffer is None or self.buffer.size < size:
            self.free_buffer()
            self.buffer = SharedMemory(create=True, size=-(-size // BUFFER_STEP_BYTES) * BUFFER_STEP_BYTES)
        np.ndarray(signal.shape, np.float32, buffer=self.buffer.buf)[...] = signal
        self.job = job
        self.conn.send((self.buffer.name, signal.shape[1], job.ecg.sampling_rate_hz, job.ecg.not_recorded,
                        job.ecg.units))

    def stop(self, wait_s: float) -> None:
        """Ask the worker to end, kill it if it has not within `wait_s`, and free its buffer."""
        try:
            self.conn.send(None)
        except OSError:
            pass  # already gone
        self.process.join(wait_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(wait_s)
        self.free_buffer()

    def free_buffer(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
            self.buffer.unlink()
            self.buffer = None


class PendingMeasurement:
    """One ECG being measured; :meth:`result` waits for it."""

    def __init__(self, workers: MeasureWorkers, ecg: Ecg, job: _Job | None = None) -> None:
        self._workers, self._ecg, self._job = workers, ecg, job

    def cancel(self) -> None:
        """Not needed after all (the ECG was refused): drop it if no worker has started on it."""
        if self._job is not None:
            self._job.future.cancel()

    def result(self, seconds: dict[str, float] | None = None) -> tuple[Measurements | None, list[str]]:
        """The measurements, or None and the warning to return instead; the stage's time goes to `seconds`."""
        ecg = self._ecg
        start = time.perf_counter()
        try:
            if self._job is None:
                measurements = measure(ecg)
                elapsed = time.perf_counter() - start
            else:
                measurements, elapsed = self._job.future.result(timeout=self._workers.timeout_s)
        except WorkerLost as exc:
            log.error("measuring a %.1f s ECG at %g Hz: %s", ecg.duration_s, ecg.sampling_rate_hz, exc)
            return self._failed(start, seconds)
        except (FutureTimeout, CancelledError):
            log.error("no measurements of a %.1f s ECG at %g Hz within %.0f s (workers swamped or stuck)",
                      ecg.duration_s, ecg.sampling_rate_hz, self._workers.timeout_s)
            self._workers.give_up(self._job)
            return self._failed(start, seconds)
        except Exception:
            log.exception("measuring a %.1f s ECG at %g Hz failed", ecg.duration_s, ecg.sampling_rate_hz)
            return self._failed(start, seconds)
        record_stage("measure", elapsed, seconds)
        observe_measurements(measurements)
        return measurements, []

    @staticmethod
    def _failed(start: float, seconds: dict[str, float] | None) -> tuple[None, list[str]]:
        MEASUREMENT_FAILURES.inc()
        record_stage("measure", time.perf_counter() - start, seconds)
        return None, [MEASUREMENT_FAILED]


class MeasureWorkers:
    """Where a pipeline measures its ECGs: `workers` processes (0: the calling thread)."""

    def __init__(self, workers: int = 0, timeout_s: float = RESULT_TIMEOUT_S) -> None:
        if workers < 0:
            raise ValueError(f"measurement workers must be 0 or more, got {workers}")
        self.workers, self.timeout_s = workers, timeout_s
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()  # waiting for a free worker
        self._idle: list[_Worker] = []
        self._closed = False
        self._failed_starts = 0
        self._broken = ""  # why the workers were given up, once they were
        if workers:
            # The buffers' tracker runs before the workers start, so they share it: a worker attaching a buffer then
            # registers it with the server's tracker, not with one of its own that would unlink it when it exits.
            resource_tracker.ensure_running()
        self._all = [_Worker(self) for _ in range(workers)]
        self._idle.extend(self._all)

    def submit(self, ecg: Ecg) -> PendingMeasurement:
        """Start measuring `ecg` (in the calling thread: deferred until :meth:`PendingMeasurement.result`)."""
        if self.workers == 0:
            return PendingMeasurement(self, ecg)
        job = _Job(ecg)
        with self._lock:
            if self._closed:
                raise RuntimeError("the measurement workers are closed")
            if self._broken:
                job.future.set_exception(WorkerLost(self._broken))
                return PendingMeasurement(self, ecg, job)
            if not self._idle:
                self._queue.append(job)
                return PendingMeasurement(self, ecg, job)
            worker = self._idle.pop()
            job.future.set_running_or_notify_cancel()
            self._dispatch(worker, job)
        return PendingMeasurement(self, ecg, job)

    def _dispatch(self, worker: _Worker, job: _Job) -> None:
        """Send `job` to `worker` (under the lock: a worker is given one job at a time, and never after close)."""
        try:
            worker.send(job)
        except (OSError, ValueError) as exc:  # the worker is gone; its collector replaces it
            worker.job = None
            job.future.set_exception(WorkerLost(f"could not reach its measurement worker ({exc})"))

    def _collect(self, worker: _Worker) -> None:
        """A worker's collector thread: each result to its caller, then the next queued job to the worker; when the
        worker dies or is killed, its job fails and a new worker takes its place."""
        while True:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._replace(worker)
                return
            if message is None:
                worker.ready.set()
                with self._lock:
                    self._failed_starts = 0
                continue
            ok, value = message
            with self._lock:
                job, worker.job = worker.job, None
                if job is not None and not job.future.done():
                    if ok:
                        job.future.set_result(value)
                    else:
                        job.future.set_exception(value)
                self._next(worker)

    def _next(self, worker: _Worker) -> None:
        """Give `worker` the oldest queued job that was not cancelled, else mark it idle (under the lock)."""
        if self._closed:
            return
        while self._queue:
            job = self._queue.popleft()
            if job.future.set_running_or_notify_cancel():
                self._dispatch(worker, job)
                return
        self._idle.append(worker)

    def _fail_queued(self, why: str) -> None:
        """Every ECG still waiting for a worker fails with `why` (under the lock: closing, or the workers given up)."""
        queued, self._queue = self._queue, deque()
        for job in queued:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(WorkerLost(why))

    def _replace(self, worker: _Worker) -> None:
        """`worker` is gone: fail its job, free its buffer, and start another in its place (unless closing, or
        unless :data:`MAX_FAILED_STARTS` workers in a row died before they were ready: then the stage is given up)."""
        worker.process.join(1.0)  # ended: its exit code, for the log
        with self._lock:
            job, worker.job = worker.job, None
            if job is not None and not job.future.done():
                job.future.set_exception(WorkerLost(f"its measurement worker (pid {worker.process.pid}) died, "
                                                    f"exit code {worker.process.exitcode}"))
            if worker in self._idle:
                self._idle.remove(worker)
            if self._closed or worker not in self._all:
                return
            self._all.remove(worker)
            self._failed_starts += 0 if worker.ready.is_set() else 1
            if self._failed_starts >= MAX_FAILED_STARTS:
                self._broken = (f"the measurement workers cannot start ({self._failed_starts} died before they were "
                                "ready; the server log has their errors)")
                self._fail_queued(self._broken)
        worker.free_buffer()
        if self._broken:
            log.error("%s: serving without measurements", self._broken)
            return
        log.error("measurement worker %s ended (exit code %s); starting a new one", worker.process.pid,
                  worker.process.exitcode)
        replacement = _Worker(self)
        with self._lock:
            closing = self._closed
            if not closing:
                self._all.append(replacement)
                self._next(replacement)
        if closing:
            replacement.stop(1.0)

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every worker has warmed up (imported the stage, compiled its filters), at most `timeout_s`:
        a server that answered before would make its first callers wait for that. False: not all of them did in
        time, or the workers were given up (:data:`MAX_FAILED_STARTS`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if self._broken:
                    return False
                ready = len(self._all) == self.workers and all(w.ready.is_set() for w in self._all)
            if ready or time.monotonic() >= deadline:
                return ready
            time.sleep(0.02)

    def give_up(self, job: _Job | None) -> None:
        """`job` had no result by the deadline: if a worker is still measuring it, that worker is stuck (a running
        measurement cannot be cancelled) and is killed; its collector then starts a new one."""
        if job is None:
            return
        with self._lock:
            if job in self._queue:
                self._queue.remove(job)
                return
            stuck = [w for w in self._all if w.job is job]
        for worker in stuck:
            log.error("killing measurement worker %s: no result within %.0f s", worker.process.pid, self.timeout_s)
            worker.process.kill()

    def close(self) -> None:
        """Stop the workers; queued ECGs fail (their calls go on without measurements)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._all, self._idle = list(self._all), [], []
            self._fail_queued("the measurement workers were closed")
        for worker in workers:
            worker.stop(5.0)
            worker.collector.join(5.0)

