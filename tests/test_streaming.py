"""StreamECG on a real server: windows from live chunks, the rules for bad chunks, back-pressure, limits,
cancellation and shutdown, and the monitor simulator."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from ecgregen.ecg import STANDARD_LEADS
from ecgregen.messages import signal_to_proto
from ecgregen.preprocess import resample
from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.settings import DEMO_PTBXL
from ecgregen.simulate import simulate
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto
from tests.conftest import ServerProcess, real_ecg_of, start_server
from tests.test_security import keyed_pseudonym


def config(rate: float, leads: list[str] | None = None, **fields: object) -> pb.StreamEcgRequest:
    return pb.StreamEcgRequest(config=pb.StreamConfig(
        device_id="bed-7", sampling_rate_hz=rate, lead_names=leads or list(STANDARD_LEADS), **fields))


def chunk(sequence: int, samples: np.ndarray, leads_off: tuple[str, ...] = ()) -> pb.StreamEcgRequest:
    return pb.StreamEcgRequest(chunk=pb.StreamChunk(
        sequence=sequence, leads=[pb.StreamLead(samples=row) for row in samples], leads_off=list(leads_off)))


def uneven_chunks(signal: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(rng.integers(7, 123, size=signal.shape[1]))
    return np.split(signal, cuts[cuts < signal.shape[1]], axis=1)


def stream(server: ServerProcess, messages: list[pb.StreamEcgRequest]) -> list[pb.StreamEcgResponse]:
    return list(server.stub().StreamECG(iter(messages), timeout=120))


@pytest.mark.parametrize("seconds", [5, 20, 60])
def test_a_window_of_any_length_gets_the_unary_vector_of_the_same_seconds(edge_server: ServerProcess,
                                                                          seconds: int) -> None:
    """A 5/20/60 s window is encoded like GenerateReport encodes the same seconds (before, only its first 10 s
    were used while the result claimed the whole window): same neighbours with the same scores, same diagnoses."""
    ecg = real_ecg_of(seconds)
    responses = stream(edge_server, [config(100, window_s=seconds, k=5),
                                     *(chunk(i, p) for i, p in enumerate(uneven_chunks(ecg.signal)))])
    (result,) = [r.window_result for r in responses if r.HasField("window_result")]
    unary = edge_server.stub().GenerateReport(pb.GenerateReportRequest(ecg=ecg_to_proto(ecg), k=5), timeout=60)
    assert (result.start_s, result.end_s) == (0.0, float(seconds))
    assert [(n.ecg_id, round(n.score, 5)) for n in result.neighbours] == [
        (n.ecg_id, round(n.score, 5)) for n in unary.neighbours]
    assert [(d.code, d.probability) for d in result.diagnoses] == [(d.code, d.probability) for d in unary.diagnoses]
    assert result.report == unary.report and list(result.warnings) == list(unary.warnings)


def test_the_monitored_patients_own_records_are_not_neighbours(edge_server: ServerProcess,
                                                              demo_queries: list[EcgRecord]) -> None:
    """StreamConfig.patient_id (the real id) keeps that patient's records out of the window's neighbours, whose
    patient ids come back only as the server's keyed pseudonyms (a caller without the admin role)."""
    real = {r.ecg_id: r.patient_id for r in load_ptbxl(DEMO_PTBXL)}  # the demo corpus's real patient ids
    data_dir = edge_server.log_path.parent / "var"
    ecg = demo_queries[0].load_ecg()
    first = stream(edge_server, [config(100, k=5), chunk(0, ecg.signal)])
    (result,) = [r.window_result for r in first if r.HasField("window_result")]
    demo = [n for n in result.neighbours if n.source == "ptbxl"]
    assert demo and [n.patient_id for n in demo] == [keyed_pseudonym(data_dir, real[n.ecg_id]) for n in demo]
    patient = real[demo[0].ecg_id]
    again = stream(edge_server, [config(100, k=5, patient_id=patient), chunk(0, ecg.signal)])
    (excluded,) = [r.window_result for r in again if r.HasField("window_result")]
    assert excluded.neighbours and keyed_pseudonym(data_dir, patient) not in {n.patient_id for n in excluded.neighbours}
    opened = [line for line in edge_server.log().splitlines() if "stream opened" in line][-1]
    assert "device bed-7, patient " in opened and f"patient {patient}," not in opened  # a pseudonym only


def test_uneven_chunks_give_the_unary_report(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    ecg = demo_queries[0].load_ecg()  # 10 s at 100 Hz: exactly one window
    pieces = uneven_chunks(ecg.signal)
    responses = stream(edge_server, [config(ecg.sampling_rate_hz), *(chunk(i, p) for i, p in enumerate(pieces))])
    (result,) = [r.window_result for r in responses if r.HasField("window_result")]
    unary = edge_server.stub().GenerateReport(pb.GenerateReportRequest(ecg=ecg_to_proto(ecg), k=3), timeout=60)
    assert len(pieces) > 10 and result.report == unary.report
    assert result.diagnoses and [(d.code, d.probability, d.present) for d in result.diagnoses] == [
        (d.code, d.probability, d.present) for d in unary.diagnoses]
    assert [n.ecg_id for n in result.neighbours] == [n.ecg_id for n in unary.neighbours]
    assert (result.window_index, result.start_s, result.end_s) == (0, 0.0, 10.0)
    assert list(result.leads_used) == list(STANDARD_LEADS) and not result.leads_missing and not result.quality_flags
    assert result.latency.total_ms > 0 and result.latency.encode_ms > 0


def test_500_hz_input_is_resampled(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    ecg = demo_queries[1].load_ecg()
    fast = resample(ecg.signal.astype(np.float64), 100, 500).astype(np.float32)
    responses = stream(edge_server, [config(500), *(chunk(i, p) for i, p in enumerate(np.array_split(fast, 20, 1)))])
    (result,) = [r.window_result for r in responses if r.HasField("window_result")]
    unary = edge_server.stub().GenerateReport(pb.GenerateReportRequest(
        ecg=signal_to_proto(fast, 500, list(STANDARD_LEADS), ["mV"] * 12), k=3), timeout=60)
    assert [n.ecg_id for n in result.neighbours] == [n.ecg_id for n in unary.neighbours]


def test_bad_chunks_are_warned_about_and_the_stream_goes_on(edge_server: ServerProcess,
                                                             demo_queries: list[EcgRecord]) -> None:
    signal = np.tile(demo_queries[2].load_ecg().signal, (1, 6))  # 60 s at 100 Hz
    seconds = np.split(signal, 60, axis=1)  # 1 s chunks
    nan = seconds[22].copy()
    nan[1, 10:15] = np.nan
    sent = [config(100, hop_s=10.0)]
    sent += [chunk(i, seconds[i]) for i in range(10)]  # window 0
    sent += [chunk(9, seconds[9])]  # duplicate
    sent += [chunk(10, seconds[10]), chunk(11, seconds[11])]
    sent += [chunk(14, seconds[14])]  # gap: 12-13 missing, window under way dropped; a new one starts here
    sent += [chunk(i, seconds[i]) for i in range(15, 22)]
    sent += [chunk(22, nan)] + [chunk(i, seconds[i], leads_off=("V1",) if i == 25 else ()) for i in range(23, 30)]
    sent += [pb.StreamEcgRequest(chunk=pb.StreamChunk(sequence=30, leads=[pb.StreamLead(samples=[0.0])] * 3))]
    sent += [chunk(i, seconds[i]) for i in range(31, 41)]
    responses = stream(edge_server, sent)
    warnings = [r.warning.code for r in responses if r.HasField("warning")]
    results = [r.window_result for r in responses if r.HasField("window_result")]
    assert warnings == ["duplicate_or_late", "gap", "bad_chunk"]
    assert len(results) == 3  # 0-9, 14-23 (sample-counted 10-20 s), 31-40 after the bad chunk
    assert "nan_interpolated:II" in results[1].quality_flags
    assert "lead_off:V1" not in results[1].quality_flags and not results[2].quality_flags
    lead_off = [r for r in results if "lead_off:V1" in r.quality_flags]
    assert not lead_off  # the window holding chunk 25 ended at the bad chunk 30 and was dropped


def test_lead_off_and_missing_leads_are_reported(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    leads = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    signal = demo_queries[3].load_ecg().signal[[STANDARD_LEADS.index(lead) for lead in leads]]
    pieces = np.split(signal, 10, axis=1)
    responses = stream(edge_server, [config(100, leads), *(chunk(i, p, ("V1",) if i == 4 else ())
                                                           for i, p in enumerate(pieces))])
    (result,) = [r.window_result for r in responses if r.HasField("window_result")]
    assert list(result.leads_missing) == ["III", "aVR", "aVL", "aVF"]
    assert not [f for f in result.quality_flags if f.startswith("flat:")]  # missing/off leads are not also "flat"
    assert "lead_off:V1" in result.quality_flags and "V1" not in result.leads_used
    assert result.report


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (config(30), "sampling_rate_hz must be 50-1000 Hz, got 30"),
        (config(100, ["I", "X9"]), "unknown lead name 'X9'"),
        (config(100, window_s=90), "window_s must be 2-60 s"),
        (chunk(0, np.zeros((12, 10), np.float32)), "the first message of a stream must be a StreamConfig"),
    ],
)
def test_bad_config_is_invalid_argument(edge_server: ServerProcess, first: pb.StreamEcgRequest, message: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stream(edge_server, [first])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.value.details()


def test_many_monitors_at_once_via_the_simulator(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    summary = asyncio.run(simulate(demo_queries, monitors=8, server=edge_server.address, speed=20.0, duration_s=30))
    assert summary.errors == [] and (summary.windows, summary.dropped) == (24, 0)
    assert summary.line().startswith("monitors 8 windows 24 dropped 0 latency_p50_ms ")


def test_fast_sender_is_throttled_by_flow_control(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    window = demo_queries[4].load_ecg().signal  # one 10 s window per chunk
    total, sent = 400, [0]

    def requests() -> Iterator[pb.StreamEcgRequest]:
        # 100 neighbours per window: results of ~25 kB, so that the responses the slow reader leaves unread fill
        # gRPC's flow-control window and hold the server's writer however fast the server encodes
        yield config(100, k=100)
        for i in range(total):
            sent[0] += 1
            yield chunk(i, window)

    responses = edge_server.stub().StreamECG(requests(), timeout=300)
    for _ in range(5):
        next(responses)
        time.sleep(0.4)  # a slow reader: the server may hold only a few windows for it
    assert sent[0] < total  # the sender was held back instead of the server buffering all 400 windows
    assert sum(1 for r in responses if r.HasField("window_result")) + 5 == total


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm", "--max-streams", "2")
    yield server
    if server.process.poll() is None:
        server.stop()


def _metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        line = next(x for x in response.read().decode().splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def test_stream_cap_cancellation_and_shutdown(small_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    window = demo_queries[0].load_ecg().signal
    stop = threading.Event()

    def endless() -> Iterator[pb.StreamEcgRequest]:
        yield config(100)
        for i in range(10_000):
            if stop.is_set():
                return
            time.sleep(0.05)
            yield chunk(i, window)

    first = small_server.stub().StreamECG(endless(), timeout=120)
    second = small_server.stub().StreamECG(endless(), timeout=120)
    assert next(first).HasField("window_result") and next(second).HasField("window_result")
    with pytest.raises(grpc.RpcError) as error:
        stream(small_server, [config(100), chunk(0, window)])
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "already serves 2 streams" in error.value.details()

    second.cancel()  # a client that goes away releases its slot
    deadline = time.monotonic() + 10
    while _metric(small_server, "ecgregen_streams_active") != 1.0:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    small_server.process.terminate()  # SIGTERM: the open stream ends with a goodbye, not a reset
    rest = list(first)
    stop.set()
    assert rest[-1].HasField("warning") and rest[-1].warning.code == "shutting_down"
    assert small_server.process.wait(30) == 0


def test_streams_end_after_the_maximum_duration(tmp_path: Path, demo_queries: list[EcgRecord]) -> None:
    server = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm", "--max-stream-s", "2")
    try:
        window = demo_queries[0].load_ecg().signal

        def slow() -> Iterator[pb.StreamEcgRequest]:
            yield config(100)
            for i in range(100):
                time.sleep(0.1)
                yield chunk(i, window[:, :100])

        responses = list(server.stub().StreamECG(slow(), timeout=60))
        assert responses[-1].warning.code == "max_duration" and "at most 2 s" in responses[-1].warning.message
    finally:
        server.stop()
