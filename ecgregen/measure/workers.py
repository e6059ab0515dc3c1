"""The measurement stage of a serving process: in worker processes, at the same time as the encoder.

Why processes: the stage is about a hundred numpy calls per ECG, and in the server's request threads each call takes
and gives back the interpreter lock that the encoder, the store and the event loop need too. Measured in the
server (issue 25, ``ecgregen bench --sections measure``): the server spent twice the stage's own CPU per call and
GenerateReport throughput at concurrency 8 halved. A worker process measures with no lock to share, on another
core, while the request thread encodes and searches; the request pays for sending the samples (a few hundred kB
at 500 Hz, well under a millisecond) and waits only for what is left of the measuring when it needs the result.

``workers=0`` measures in the calling thread instead, when the result is asked for (one-off commands, tests that
replace the stage): what a refused ECG costs is then nothing. A failure of the stage - an exception on an unusual
signal, a worker killed or out of memory, no result within the deadline - costs the call its measurements only:
a warning instead, logged and counted (``ecgregen_measurement_failures_total``); a dead worker is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from ecgregen.ecg import Ecg
from ecgregen.measure import Measurements, measure
from ecgregen.metrics import MEASUREMENT_FAILURES, observe_measurements, record_stage

log = logging.getLogger("ecgregen.measure")

MEASUREMENT_FAILED = ("measurements not available: measuring this ECG failed (the server log has the details); "
                      "the neighbours and diagnoses are unaffected")
# A result not back by then is given up: the stage takes milliseconds, so only a stuck or swamped worker is this slow.
RESULT_TIMEOUT_S = 30.0
PARENT_CHECK_S = 0.5  # how often a worker checks that its server still runs


def _measure_timed(ecg: Ecg) -> tuple[Measurements, float]:
    """Run in a worker: the measurements and the stage's own wall time there (not the queueing before it)."""
    start = time.perf_counter()
    return measure(ecg), time.perf_counter() - start


def _exit_with(parent: int) -> None:
    """Worker start-up: end this process when the server that started it is gone. A server killed outright (OOM
    killer, SIGKILL) never shuts its pool down, and a worker blocked on its task queue would wait forever (it
    holds that pipe's write end too, so it never reads end-of-file)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _warm() -> None:
    """Import the stage and design its filters before the first call needs them (a 2 s ECG at 500 Hz)."""
    t = np.arange(1000) / 500.0
    measure(Ecg(np.tile(np.sin(2 * np.pi * 1.2 * t).astype(np.float32), (12, 1)), 500.0))


def _failed_future(exc: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(exc)
    return future


class PendingMeasurement:
    """One ECG being measured; :meth:`result` waits for it."""

    def __init__(self, workers: MeasureWorkers, ecg: Ecg, future: Future | None = None,
                 executor: ProcessPoolExecutor | None = None) -> None:
        self._workers, self._ecg, self._future, self._executor = workers, ecg, future, executor

    def cancel(self) -> None:
        """Not needed after all (the ECG was refused): drop it if no worker has started on it."""
        if self._future is not None:
            self._future.cancel()

    def result(self, seconds: dict[str, float] | None = None) -> tuple[Measurements | None, list[str]]:
        """The measurements, or None and the warning to return instead; the stage's time goes to `seconds`."""
        ecg = self._ecg
        start = time.perf_counter()
        try:
            if self._future is None:
                measurements = measure(ecg)
                elapsed = time.perf_counter() - start
            else:
                measurements, elapsed = self._future.result(timeout=self._workers.timeout_s)
        except BrokenProcessPool:
            log.error("a measurement worker died while measuring a %.1f s ECG at %g Hz; starting a new one",
                      ecg.duration_s, ecg.sampling_rate_hz)
            self._workers.replace_broken(self._executor)
            return self._failed(start, seconds)
        except (FutureTimeout, CancelledError):
            self._future.cancel()
            log.error("no measurements of a %.1f s ECG at %g Hz within %.0f s (workers swamped or stuck)",
                      ecg.duration_s, ecg.sampling_rate_hz, self._workers.timeout_s)
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
        self._executor = self._start() if workers else None

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: the server's gRPC and store threads must not be forked mid-flight.
        executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_exit_with, initargs=(os.getpid(),))
        for _ in range(self.workers):
            executor.submit(_warm)  # in the background: start-up does not wait for it
        return executor

    def submit(self, ecg: Ecg) -> PendingMeasurement:
        """Start measuring `ecg` (in the calling thread: deferred until :meth:`PendingMeasurement.result`)."""
        if self.workers == 0:
            return PendingMeasurement(self, ecg)
        for _ in range(2):
            with self._lock:
                executor = self._executor
            if executor is None:
                raise RuntimeError("the measurement workers are closed")
            try:
                return PendingMeasurement(self, ecg, executor.submit(_measure_timed, ecg), executor)
            except BrokenProcessPool:
                self.replace_broken(executor)
        return PendingMeasurement(self, ecg, _failed_future(BrokenProcessPool("the measurement workers keep dying")))

    def replace_broken(self, broken: ProcessPoolExecutor | None) -> None:
        """Replace the pool `broken` after one of its workers died (once, however many calls saw it die)."""
        with self._lock:
            if broken is None or broken is not self._executor:
                return
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._start()

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
