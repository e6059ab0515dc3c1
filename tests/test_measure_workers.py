"""Where the measurement stage runs and how it fails: a failing stage costs a call its measurements only, never the
call; real measurement worker processes measure as the calling thread does, and one that dies, hangs or never
becomes ready is replaced or given up; workers end with their server."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ecgregen.ecg import STANDARD_LEADS, Ecg
from ecgregen.measure.types import Measurements
from ecgregen.pipeline import RecordToInsert, RetrievalPipeline, open_pipeline
from ecgregen.records import EcgRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import measurements_to_proto
from tests.conftest import REPO

# ---- a failing measurement stage ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_pipeline(tmp_path_factory: pytest.TempPathFactory,
                   demo_queries: list[EcgRecord]) -> Iterator[RetrievalPipeline]:
    """An in-process pipeline over five demo records (its measurement stage can be made to fail)."""
    pipeline = open_pipeline(tmp_path_factory.mktemp("measure"), None, None)
    pipeline.insert([RecordToInsert(r.load_ecg(), r.ecg_id, r.patient_id, r.report, r.scp_codes, "test")
                     for r in demo_queries[5:10]])
    yield pipeline
    pipeline.store.close()


def test_a_failing_measurement_stage_costs_the_measurements_only(small_pipeline: RetrievalPipeline,
                                                                  demo_queries: list[EcgRecord],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A unary search and a stream window: results as usual, no measurements, a warning, the failure counted."""
    from ecgregen.measure import workers
    from ecgregen.metrics import REGISTRY
    from ecgregen.server.streaming import Window, WindowBatcher, WindowOutcome, parse_config

    def broken(ecg: Ecg) -> Measurements:
        raise FloatingPointError("a bug on an unusual signal")

    def failures() -> float:
        return REGISTRY.get_sample_value("ecgregen_measurement_failures_total") or 0.0

    monkeypatch.setattr(workers, "measure", broken)  # the pipeline measures in the calling thread (workers=0)
    ecg, before = demo_queries[0].load_ecg(), failures()
    retrieval = small_pipeline.search(ecg, 3)
    assert retrieval.hits and retrieval.diagnoses and retrieval.measurements is None
    assert workers.MEASUREMENT_FAILED in retrieval.warnings and retrieval.seconds["measure"] > 0

    async def one_window() -> WindowOutcome:
        settings = parse_config(pb.StreamConfig(sampling_rate_hz=ecg.sampling_rate_hz,
                                                lead_names=list(STANDARD_LEADS)), 100)
        return await WindowBatcher(small_pipeline).submit(Window(0, 0.0, ecg.signal, []), settings)

    outcome = asyncio.run(one_window())
    window = outcome.retrieval
    assert outcome.error is None and window is not None and window.hits and window.measurements is None
    assert outcome.report is not None and not outcome.report.edits  # nothing measured: nothing to edit against
    assert workers.MEASUREMENT_FAILED in window.warnings
    assert failures() == before + 2
    assert measurements_to_proto(None) is None  # the responses leave the field unset


def test_a_killed_measurement_worker_costs_one_call_its_measurements_and_is_replaced(
        small_pipeline: RetrievalPipeline, demo_queries: list[EcgRecord]) -> None:
    """With a real worker process: measured the same as in the calling thread; the worker killed while it measures
    a 5-minute ECG -> that call keeps its neighbours and gets the warning; the next call is measured by a new
    worker."""
    import multiprocessing

    from ecgregen.measure import workers
    from ecgregen.metrics import REGISTRY

    ecg = demo_queries[0].load_ecg()
    pool = workers.MeasureWorkers(1)
    inline, small_pipeline.measurer = small_pipeline.measurer, pool
    try:
        served = small_pipeline.search(ecg, 3)
        in_thread = inline.submit(ecg).result()[0]
        assert measurements_to_proto(served.measurements, True) == measurements_to_proto(in_thread, True)
        assert served.seconds["measure"] > 0
        first = multiprocessing.active_children()
        assert len(first) == 1
        before = REGISTRY.get_sample_value("ecgregen_measurement_failures_total") or 0.0
        long = Ecg(np.tile(ecg.signal, (1, 30)), ecg.sampling_rate_hz)
        pending = pool.submit(long)
        first[0].kill()
        measurements, notes = pending.result()
        assert measurements is None and notes == [workers.MEASUREMENT_FAILED]
        assert REGISTRY.get_sample_value("ecgregen_measurement_failures_total") == before + 1
        again = small_pipeline.search(ecg, 3)
        assert measurements_to_proto(again.measurements) == measurements_to_proto(in_thread)
        assert workers.MEASUREMENT_FAILED not in again.warnings
        assert [p.pid for p in multiprocessing.active_children()] != [first[0].pid]
    finally:
        small_pipeline.measurer = inline
        pool.close()


def test_a_hung_measurement_worker_costs_one_call_its_measurements_and_is_replaced(
        demo_queries: list[EcgRecord]) -> None:
    """A real worker stopped mid-flight (SIGSTOP: it never answers): the call waiting on it gets the warning at the
    deadline, the stuck worker is killed, a new one measures the next call as the calling thread would, and the
    ECGs queued behind the stuck one are measured by the new worker."""
    import multiprocessing
    import os
    import signal
    import time

    from ecgregen.measure import workers

    ecg = demo_queries[0].load_ecg()
    pool = workers.MeasureWorkers(1, timeout_s=2.0)
    try:
        assert pool.submit(ecg).result()[1] == []  # started and warm
        stuck = [p for p in multiprocessing.active_children() if p.name == "ecgregen-measure"]
        assert len(stuck) == 1
        os.kill(stuck[0].pid, signal.SIGSTOP)
        hung, queued = pool.submit(ecg), pool.submit(ecg)
        start = time.monotonic()
        assert hung.result() == (None, [workers.MEASUREMENT_FAILED])
        assert 1.5 < time.monotonic() - start < 10
        measurements, notes = queued.result()
        assert notes == [] and measurements is not None
        assert measurements_to_proto(measurements, True) == measurements_to_proto(workers.measure(ecg), True)
        now = [p for p in multiprocessing.active_children() if p.name == "ecgregen-measure"]
        assert len(now) == 1 and now[0].pid != stuck[0].pid
        assert not stuck[0].is_alive()
    finally:
        pool.close()


def test_workers_that_die_before_they_are_ready_are_given_up_after_three(demo_queries: list[EcgRecord]) -> None:
    """Each worker killed while it still starts (as a broken installation would end it): two are replaced, the
    third gives the stage up - the start does not wait for it, and every call goes on at once without
    measurements instead of queueing behind workers that never come."""
    import multiprocessing
    import os
    import signal
    import time

    from ecgregen.measure import workers

    def next_worker(seen: set[int]) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fresh = [p.pid for p in multiprocessing.active_children()
                     if p.name == "ecgregen-measure" and p.pid not in seen]
            if fresh:
                return fresh[0]
            time.sleep(0.005)
        pytest.fail("no measurement worker started")

    pool = workers.MeasureWorkers(1)
    try:
        seen: set[int] = set()
        for _ in range(workers.MAX_FAILED_STARTS):
            pid = next_worker(seen)
            seen.add(pid)
            os.kill(pid, signal.SIGKILL)
        assert pool.wait_ready(30) is False
        start = time.monotonic()
        assert pool.submit(demo_queries[0].load_ecg()).result() == (None, [workers.MEASUREMENT_FAILED])
        assert time.monotonic() - start < 1
        assert not [p for p in multiprocessing.active_children() if p.name == "ecgregen-measure"]
    finally:
        pool.close()


def test_measurement_workers_end_when_their_server_is_killed(tmp_path: Path) -> None:
    """A process holding measurement workers is killed outright (SIGKILL: no shutdown runs); its worker process
    ends on its own instead of waiting forever on its task queue."""
    import os
    import signal
    import sys
    import time

    script = tmp_path / "holder.py"
    script.write_text(
        "import multiprocessing, sys, time\n"
        "import numpy as np\n"
        "from ecgregen.ecg import Ecg\n"
        "from ecgregen.measure.workers import MeasureWorkers\n"
        "if __name__ == '__main__':\n"
        "    workers = MeasureWorkers(1)\n"
        "    workers.submit(Ecg(np.zeros((12, 1000), np.float32), 500.0)).result()\n"
        "    print(*[p.pid for p in multiprocessing.active_children() if 'resource_tracker' not in p.name],\n"
        "          flush=True)\n"
        "    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        worker = int(holder.stdout.readline().split()[0])
        os.kill(worker, 0)  # alive while its server runs
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # ended; its new parent has not reaped it yet
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.2)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail(f"measurement worker {worker} outlived its killed server")
    finally:
        holder.kill()
