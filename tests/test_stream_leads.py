"""StreamECG monitors that send a subset of the 12 leads (issue 32), on a real server with real demo records: the
limb leads that follow from the sent ones are derived as for 8-lead hospital files, the others are not recorded -
and neither kind is flagged flat or lead off, counted in the quality metric or read as an electrode problem."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ecgregen.ecg import STANDARD_LEADS, derive_limb_leads
from ecgregen.records import EcgRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto
from server.streaming import StreamSession, parse_config
from tests.conftest import ServerProcess, start_server
from tests.test_streaming import chunk, config, stream

EIGHT = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
DERIVED = ["III", "aVR", "aVL", "aVF"]
TWO = ["II", "V5"]
VERIFY = ["yes", "no", "not sure"]
ELECTRODES = "Does this ECG have electrode problems?"
CLEAN = 7  # demo fold-9 record 383: measured as 12 leads, no lead carries a quality flag (checked below)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own (default measurement workers: the window's ECG crosses to a worker process), so the
    quality metric counts these tests' windows only."""
    tmp: Path = tmp_path_factory.mktemp("stream-leads")
    server = start_server(tmp, "--data-dir", str(tmp / "var"), "--no-llm")
    yield server
    server.stop()


def quality_counts(server: ServerProcess) -> dict[tuple[str, str], float]:
    """``ecgregen_lead_quality_flags_total`` by (lead, flag), as scraped."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    counts = {}
    for line in lines:
        if line.startswith("ecgregen_lead_quality_flags_total{"):
            labels, value = line[line.index("{") + 1: line.index("}")], float(line.split()[-1])
            fields = dict(part.split("=", 1) for part in labels.split(","))
            counts[(fields["lead"].strip('"'), fields["flag"].strip('"'))] = value
    return counts


def one_window(server: ServerProcess, record: EcgRecord, leads: list[str], question: str = "") -> pb.WindowResult:
    signal = record.load_ecg().signal[[STANDARD_LEADS.index(lead) for lead in leads]]
    sent = [config(100, leads, question=question, options=VERIFY if question else []),
            *(chunk(i, piece) for i, piece in enumerate(np.split(signal, 4, axis=1)))]
    (result,) = [r.window_result for r in stream(server, sent) if r.HasField("window_result")]
    return result


def test_the_shared_derivation_is_einthoven_and_goldberger() -> None:
    """One function completes files and streams: from I and II, or from II and III; never over a lead given."""
    i, ii = np.array([1.0, -0.5]), np.array([2.0, 0.5])
    derived = derive_limb_leads({"I": i, "II": ii})
    assert list(derived) == DERIVED
    np.testing.assert_allclose(derived["III"], ii - i)
    np.testing.assert_allclose(derived["aVR"], -(i + ii) / 2)
    np.testing.assert_allclose(derived["aVL"], i - ii / 2)
    np.testing.assert_allclose(derived["aVF"], ii - i / 2)
    from_ii_iii = derive_limb_leads({"II": ii, "III": ii - i, "aVR": np.zeros(2)})
    assert list(from_ii_iii) == ["I", "aVL", "aVF"]
    np.testing.assert_allclose(from_ii_iii["I"], i)
    assert derive_limb_leads({"II": ii, "V5": i}) == {}


def test_an_8_lead_monitor_gets_its_limb_leads_derived_and_measured_like_the_12_lead_ecg(
        server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    record = demo_queries[CLEAN]
    before = quality_counts(server)
    result = one_window(server, record, EIGHT, ELECTRODES)
    unary = server.stub().GenerateReport(pb.GenerateReportRequest(ecg=ecg_to_proto(record.load_ecg()), k=3),
                                         timeout=60)
    m, full = result.measurements, unary.measurements
    assert not [q for q in full.lead_quality if q.flags]  # the record is clean as 12 leads
    assert list(result.leads_derived) == DERIVED and list(result.leads_missing) == DERIVED
    assert list(result.leads_used) == EIGHT  # derived leads are not "used": the monitor did not send them
    assert "lead(s) III, aVR, aVL, aVF derived from the limb leads the monitor sends (it sends 8 leads)" in \
        result.warnings
    assert not [f for f in result.quality_flags if f.split(":")[1] in DERIVED]
    assert [q.lead for q in m.lead_quality] == list(STANDARD_LEADS) and not [q for q in m.lead_quality if q.flags]
    assert not m.not_recorded_leads
    for axis in ("p_axis_deg", "qrs_axis_deg", "t_axis_deg"):  # from the derived limb leads, as from the stored
        assert m.HasField(axis) and getattr(m, axis) == pytest.approx(getattr(full, axis), abs=1.0)
    assert [n.ecg_id for n in result.neighbours] == [n.ecg_id for n in unary.neighbours]  # embedded as 12 leads
    assert list(result.answer) == ["no"]
    after = quality_counts(server)
    assert {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)} == {}


def test_a_noise_question_about_a_derived_lead_reads_the_derived_signal(
        server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    result = one_window(server, demo_queries[CLEAN], EIGHT, "Does lead aVL of this ECG show any kind of noises?")
    assert list(result.answer) == ["no"]


def test_a_2_lead_monitor_leaves_the_other_leads_not_recorded_and_unflagged(
        server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    before = quality_counts(server)
    result = one_window(server, demo_queries[CLEAN], TWO, ELECTRODES)
    m = result.measurements
    others = [lead for lead in STANDARD_LEADS if lead not in TWO]
    assert list(result.leads_missing) == others and not result.leads_derived
    assert list(m.not_recorded_leads) == others and [q.lead for q in m.lead_quality] == TWO
    assert not [f for f in result.quality_flags if f.split(":")[1] in others]
    assert m.HasField("heart_rate_bpm") and m.beat_count > 0  # II and V5 still carry the rhythm
    assert not m.HasField("qrs_axis_deg")  # an axis needs I, which no one sent
    assert list(result.answer) == ["no"]
    after = quality_counts(server)
    assert not [key for key in after if key[0] in others and after[key] != before.get(key, 0.0)]


def test_a_noise_question_about_a_lead_not_recorded_is_not_sure(
        server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    result = one_window(server, demo_queries[CLEAN], TWO, "Does lead aVL of this ECG show any kind of noises?")
    assert list(result.answer) == ["not sure"]


def test_a_limb_lead_off_spoils_the_leads_derived_from_it_only_while_it_is_off(
        demo_queries: list[EcgRecord]) -> None:
    """I off for the second of four chunks: the derived leads are zero there (never II passed off as III), as the
    stored ones elsewhere."""
    full = demo_queries[CLEAN].load_ecg().signal
    signal = full[[STANDARD_LEADS.index(lead) for lead in EIGHT]]
    session = StreamSession(parse_config(config(100, EIGHT).config, max_k=10))
    windows = []
    for i, piece in enumerate(np.split(signal, 4, axis=1)):
        windows += session.feed(chunk(i, piece, ("I",) if i == 1 else ()).chunk)[0]
    (window,) = windows
    assert "lead_off:I" in window.flags
    rows = [STANDARD_LEADS.index(lead) for lead in DERIVED]
    assert not window.signal[rows, 250:500].any()
    kept = np.r_[0:250, 500:1000]
    np.testing.assert_allclose(window.signal[rows][:, kept], full[rows][:, kept], atol=2e-3)  # PTB-XL rounds to 1 uV
