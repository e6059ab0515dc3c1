"""Measurements everywhere a result goes: every response of a real server on loopback carries what the ECG's own
samples measure (checked against an independent R-peak count on real demo records, synthetic ECGs of known rate and
a cart's own values), stream windows follow a rate change, the CLI prints the cart line first, and the LLM prompts
carry the measurements. Where the stage runs and how it fails: ``tests/test_measure_workers.py``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ecgregen.ecg import STANDARD_LEADS, Ecg
from ecgregen.llm.prompts import MEASUREMENTS_LABEL, qa_messages, refine_messages
from ecgregen.measure.types import (
    FIDUCIALS,
    VALUE_FIELDS,
    BeatOrigin,
    Measurements,
    PrematureBeat,
    QualityFlag,
    Rhythm,
    cart_line,
)
from ecgregen.messages import MEASURED_VALUES, measurements_to_dict, signal_to_proto
from ecgregen.records import EcgRecord
from ecgregen.store import Hit
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto, measurements_to_proto
from tests.conftest import ECGREGEN, REPO, ServerProcess
from tests.scripted_llm import ScriptedLlm, Step

FORMATS = REPO.parent / "shared" / "data" / "formats"
CART_LINE = re.compile(r"^Rate (\d+|-) bpm \| PR (\d+|-) ms \| QRS (\d+|-) ms \| QT/QTc (\d+|-)/(\d+|-) ms \| "
                       r"Axes P/QRS/T (-?\d+|-)/(-?\d+|-)/(-?\d+|-)$")

# ---- ECGs of known content -----------------------------------------------------------------------------------------

FRONTAL_ANGLE = {"I": 0, "II": 60, "III": 120, "aVR": -150, "aVL": -30, "aVF": 90}  # hexaxial, degrees
WAVE_AXIS = {"P": 50.0, "QRS": 60.0, "T": 45.0}
CHEST_GAIN = {"P": (0.5, 0.6, 0.7, 0.8, 0.8, 0.7), "QRS": (-0.6, -0.3, 0.3, 0.8, 1.0, 0.9),
              "T": (0.2, 0.5, 0.8, 0.9, 0.8, 0.6)}


def synthetic_ecg(beats_s: np.ndarray, seconds: float, rate_hz: float = 500.0) -> np.ndarray:
    """A 12-lead ECG (mV) with a beat - P, QRS, T as Gaussians projected on each lead from their frontal axes - at
    each of `beats_s` (the R peaks); the QT shortens with the RR as Bazett has it. Its rate is known exactly."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    waves = {name: np.zeros_like(t) for name in WAVE_AXIS}
    rr = np.diff(beats_s, prepend=2 * beats_s[0] - beats_s[1])

    def bump(centre_s: float, sd_s: float, mv: float) -> np.ndarray:
        return mv * np.exp(-0.5 * ((t - centre_s) / sd_s) ** 2)

    for r, interval in zip(beats_s, rr):
        waves["P"] += bump(r - 0.15, 0.018, 0.15)
        waves["QRS"] += bump(r - 0.02, 0.008, -0.1) + bump(r, 0.01, 1.2) + bump(r + 0.025, 0.008, -0.3)
        waves["T"] += bump(r + 0.3 * np.sqrt(interval), 0.045, 0.35)
    gains = {name: np.array([np.cos(np.radians(FRONTAL_ANGLE[lead] - axis)) if lead in FRONTAL_ANGLE
                             else CHEST_GAIN[name][int(lead[1]) - 1] for lead in STANDARD_LEADS])
             for name, axis in WAVE_AXIS.items()}
    signal = sum(gains[name][:, None] * waves[name][None, :] for name in WAVE_AXIS)
    return (signal + np.random.default_rng(0).normal(0, 0.01, signal.shape)).astype(np.float32)


def beats_at(bpm: float, start_s: float, end_s: float) -> np.ndarray:
    return np.arange(start_s, end_s, 60.0 / bpm)


def r_peak_rate(ecg: Ecg) -> float:
    """The rate from an independent count: peaks of the leads' summed absolute slope (40 ms moving mean) over 40 %
    of its 99th percentile, at least 250 ms apart, tallest first."""
    slope = np.abs(np.diff(ecg.signal.astype(np.float64), axis=1)).sum(axis=0)
    width = max(1, int(0.04 * ecg.sampling_rate_hz))
    energy = np.convolve(slope, np.ones(width) / width, mode="same")
    threshold, refractory = 0.4 * np.percentile(energy, 99), int(0.25 * ecg.sampling_rate_hz)
    peaks: list[int] = []
    for i in np.argsort(energy)[::-1]:
        if energy[i] < threshold:
            break
        if all(abs(i - p) > refractory for p in peaks):
            peaks.append(int(i))
    return 60.0 / (float(np.mean(np.diff(sorted(peaks)))) / ecg.sampling_rate_hz)


def as_proto(signal: np.ndarray, rate_hz: float = 500.0) -> pb.Ecg:
    return signal_to_proto(signal, rate_hz, STANDARD_LEADS, ["mV"] * len(STANDARD_LEADS))


def check_measurements(m: pb.Measurements, expected_bpm: float, tolerance: float = 0.08) -> None:
    """A full set: the rate close to `expected_bpm`, every lead's quality, each unset value with its reason."""
    assert m.HasField("heart_rate_bpm") and m.heart_rate_bpm == pytest.approx(expected_bpm, rel=tolerance)
    assert m.beat_count >= 2 and m.rhythm in set(Rhythm) and m.measured_at_hz > 0
    assert [q.lead for q in m.lead_quality] == list(STANDARD_LEADS)
    assert all(flag in set(QualityFlag) for q in m.lead_quality for flag in q.flags)
    assert all(b.origin in set(BeatOrigin) and b.coupling_ms > 0 for b in m.premature_beats)
    for name in VALUE_FIELDS:
        assert m.HasField(name) or m.missing[name], name
    assert not m.HasField("median_beat")  # not asked for


# ---- over gRPC ------------------------------------------------------------------------------------------------------

def test_every_unary_response_carries_the_measurements_of_the_ecg(edge_server: ServerProcess,
                                                                  demo_queries: list[EcgRecord]) -> None:
    """GenerateReport, GenerateReportStream (first and last event), Search and AnswerQuestion on real fold-9 records:
    the rate is the one an independent R-peak count gives, the same ECG measures the same in every call, and the
    stage's time is in the latency."""
    stub = edge_server.stub()
    for record in demo_queries[:4]:
        ecg = record.load_ecg()
        message = ecg_to_proto(ecg)
        report = stub.GenerateReport(pb.GenerateReportRequest(ecg=message), timeout=60)
        events = list(stub.GenerateReportStream(pb.GenerateReportRequest(ecg=message), timeout=60))
        search = stub.Search(pb.SearchRequest(ecg=message, k=3), timeout=60)
        answer = stub.AnswerQuestion(pb.AnswerQuestionRequest(ecg=message, question="Does this ECG show sinus rhythm?",
                                                              options=["yes", "no"]), timeout=60)
        check_measurements(report.measurements, r_peak_rate(ecg))
        for response in (events[0].retrieval, events[-1].done, search, answer):
            assert response.measurements == report.measurements
        for response in (report, events[-1].done, search, answer):
            assert response.latency.measure_ms > 0
            assert not any("measurements not available" in w for w in response.warnings)


def test_a_synthetic_ecg_of_known_rate_and_axis(edge_server: ServerProcess) -> None:
    for bpm in (50, 72):
        signal = synthetic_ecg(beats_at(bpm, 0.4, 10.0), 10.0)
        m = edge_server.stub().GenerateReport(pb.GenerateReportRequest(ecg=as_proto(signal)), timeout=60).measurements
        check_measurements(m, bpm, tolerance=0.03)
        assert m.qrs_axis_deg == pytest.approx(WAVE_AXIS["QRS"], abs=15)
        assert m.p_waves_present and not m.rr_irregular and not m.premature_beats


def test_the_median_beat_and_its_fiducials_come_when_asked_for(edge_server: ServerProcess,
                                                               demo_queries: list[EcgRecord]) -> None:
    record = next(r for r in demo_queries if r.ecg_id == "343")  # NORM, sinus rhythm: every fiducial is found
    request = pb.GenerateReportRequest(ecg=ecg_to_proto(record.load_ecg()), include_median_beat=True)
    m = edge_server.stub().GenerateReport(request, timeout=60).measurements
    beat = m.median_beat
    assert [lead.name for lead in beat.leads] == list(STANDARD_LEADS)
    assert {len(lead.samples) for lead in beat.leads} == {len(beat.leads[0].samples)} and beat.rate_hz > 0
    assert 0 < beat.r_index < len(beat.leads[0].samples)
    f = beat.fiducials_ms
    assert set(f) == set(FIDUCIALS)
    assert f["p_onset"] < f["p_offset"] <= f["qrs_onset"] < 0 < f["qrs_offset"] < f["t_end"]
    assert f["qrs_offset"] - f["qrs_onset"] == pytest.approx(m.qrs_duration_ms, abs=1)
    assert f["qrs_onset"] - f["p_onset"] == pytest.approx(m.pr_interval_ms, abs=1)
    events = list(edge_server.stub().GenerateReportStream(request, timeout=60))
    assert events[0].retrieval.measurements.median_beat == beat == events[-1].done.measurements.median_beat


def test_an_ecg_with_one_lead_left_gets_a_report_and_the_reasons(edge_server: ServerProcess) -> None:
    """Eleven flat leads: the call succeeds; the rate comes from the lead left, the axes (which need the limb
    leads) are absent with their reason, and the flat leads are flagged."""
    signal = synthetic_ecg(beats_at(75, 0.4, 10.0), 10.0)
    signal[[i for i, lead in enumerate(STANDARD_LEADS) if lead != "II"]] = 0.0
    response = edge_server.stub().GenerateReport(pb.GenerateReportRequest(ecg=as_proto(signal)), timeout=60)
    assert response.neighbours and response.report
    m = response.measurements
    assert m.heart_rate_bpm == pytest.approx(75, rel=0.03)
    for axis in ("p_axis_deg", "qrs_axis_deg", "t_axis_deg"):
        assert not m.HasField(axis) and "limb lead" in m.missing[axis]
    flagged = {q.lead for q in m.lead_quality if QualityFlag.FLAT in q.flags}
    assert flagged == set(STANDARD_LEADS) - {"II"}


def test_a_cart_export_measures_as_its_cart_did(edge_server: ServerProcess) -> None:
    """A GE MUSE export sent as a file: our rate and QRS beside the cart's own (90 bpm, QRS 86 ms)."""
    path = FORMATS / "muse_egm-muse-sinus_mv360_500hz.xml"
    if not path.exists():
        pytest.skip(f"{path} not found")
    request = pb.GenerateReportRequest(ecg_file=pb.EcgFile(content=path.read_bytes(), name=path.name))
    response = edge_server.stub().GenerateReport(request, timeout=60)
    device = response.source_file.measurements
    assert response.measurements.heart_rate_bpm == pytest.approx(device["heart_rate"], rel=0.05)
    assert response.measurements.qrs_duration_ms == pytest.approx(device["qrs_duration"], abs=20)


def stream_config(**fields: object) -> pb.StreamEcgRequest:
    return pb.StreamEcgRequest(config=pb.StreamConfig(sampling_rate_hz=500, lead_names=list(STANDARD_LEADS), **fields))


def test_stream_windows_follow_a_rate_change(edge_server: ServerProcess) -> None:
    """60 bpm for 20 s, then 120 bpm: each 10 s window carries its own rate."""
    signal = synthetic_ecg(np.concatenate([beats_at(60, 0.5, 20.0), beats_at(120, 20.25, 40.0)]), 40.0)
    chunks = np.split(signal, 40, axis=1)  # 1 s each
    messages = [stream_config(), *(pb.StreamEcgRequest(chunk=pb.StreamChunk(
        sequence=i, leads=[pb.StreamLead(samples=row) for row in part])) for i, part in enumerate(chunks))]
    results = [r.window_result for r in edge_server.stub().StreamECG(iter(messages), timeout=120)
               if r.HasField("window_result")]
    assert [r.window_index for r in results] == [0, 1, 2, 3]
    rates = [r.measurements.heart_rate_bpm for r in results]
    assert rates == pytest.approx([60, 60, 120, 120], rel=0.03), rates
    assert all(r.latency.measure_ms > 0 and len(r.measurements.lead_quality) == 12 for r in results)


def test_a_monitor_sending_limb_leads_only_has_the_chest_leads_not_recorded_never_flagged(
        edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    """A monitor sending the six limb leads: the chest leads it does not send (and that nothing derives) are not
    recorded - listed as such, with no quality entry, so never flagged flat or off; the window is still measured
    from the leads it has."""
    ecg = demo_queries[4].load_ecg()
    sent = ["I", "II", "III", "aVR", "aVL", "aVF"]
    rows = ecg.signal[[STANDARD_LEADS.index(lead) for lead in sent]]
    messages = [pb.StreamEcgRequest(config=pb.StreamConfig(sampling_rate_hz=ecg.sampling_rate_hz, lead_names=sent)),
                pb.StreamEcgRequest(chunk=pb.StreamChunk(sequence=0, leads=[pb.StreamLead(samples=r) for r in rows]))]
    (result,) = [r.window_result for r in edge_server.stub().StreamECG(iter(messages), timeout=120)
                 if r.HasField("window_result")]
    m = result.measurements
    assert m.heart_rate_bpm == pytest.approx(r_peak_rate(ecg), rel=0.08)
    assert not [q.lead for q in m.lead_quality if q.lead.startswith("V")]
    assert list(m.not_recorded_leads) == ["V1", "V2", "V3", "V4", "V5", "V6"]
    assert {q.lead for q in m.lead_quality} == set(sent)


# ---- the command line -----------------------------------------------------------------------------------------------

def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*ECGREGEN, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_client_report_prints_the_cart_line_first(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    record = str(demo_queries[0].path)
    lines = run("client", "report", record, "--server", edge_server.address).stdout.splitlines()
    assert CART_LINE.match(lines[0]), lines[0]
    assert lines[1].startswith("Rhythm: ") and " beats, " in lines[1] and "premature beats: " in lines[1]
    assert any(line.startswith("Quality: ") for line in lines[2:4])
    assert any(line.startswith("Report (en): ") for line in lines)
    assert "'measure': " in next(line for line in lines if line.startswith("Latency (ms): "))
    result = json.loads(run("client", "report", record, "--server", edge_server.address, "--json").stdout)
    m = result["measurements"]
    assert set(m) >= {*VALUE_FIELDS, "beat_count", "rr_irregular", "p_waves_present", "rhythm", "premature_beats",
                      "lead_quality", "limb_lead_reversal", "missing", "measured_at_hz"}
    assert "median_beat" not in m and result["latency_ms"]["measure"] > 0
    assert lines[0] == cart_line(Measurements(**{name: m[name] for name in VALUE_FIELDS}))
    assert [q["lead"] for q in m["lead_quality"]] == list(STANDARD_LEADS)


def test_client_report_plot_asks_for_the_median_beat(edge_server: ServerProcess, demo_queries: list[EcgRecord],
                                                     tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    result = json.loads(run("client", "report", str(demo_queries[4].path), "--server", edge_server.address,
                            "--plot", str(png), "--json").stdout)
    beat = result["measurements"]["median_beat"]
    assert [lead["name"] for lead in beat["leads"]] == list(STANDARD_LEADS)
    assert set(beat["fiducials_ms"]) <= set(FIDUCIALS)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_client_report_of_a_cart_export_prints_the_carts_values_beside_ours(edge_server: ServerProcess) -> None:
    path = FORMATS / "muse_egm-muse-sinus_mv360_500hz.xml"
    if not path.exists():
        pytest.skip(f"{path} not found")
    lines = run("client", "report", str(path), "--server", edge_server.address).stdout.splitlines()
    assert CART_LINE.match(lines[0]), lines[0]
    assert lines[1] == "Device: Rate 90 bpm | PR 144 ms | QRS 86 ms | QT/QTc 402/- ms | Axes P/QRS/T 48/0/111"


# ---- the LLM sees them --------------------------------------------------------------------------------------------

def test_the_llm_prompts_carry_the_measurements(scripted_llm_server: ServerProcess, scripted_llm: ScriptedLlm,
                                                demo_queries: list[EcgRecord]) -> None:
    message = ecg_to_proto(demo_queries[2].load_ecg())
    scripted_llm.script(Step(content='{"answer": ["yes"]}'))
    reply = scripted_llm_server.stub().AnswerQuestion(pb.AnswerQuestionRequest(
        ecg=message, question="Does this ECG show sinus rhythm?", options=["yes", "no"], answerer="llm"), timeout=60)
    assert reply.answerer == "llm"
    qa_prompt = scripted_llm.requests[-1]["messages"][1]["content"]
    scripted_llm.script(Step(kind="stream", deltas=["Sinus rhythm."]))
    refined = scripted_llm_server.stub().GenerateReport(
        pb.GenerateReportRequest(ecg=message, refine=True), timeout=60)
    assert refined.refined
    refine_prompt = scripted_llm.requests[-1]["messages"][1]["content"]
    m = refined.measurements
    for prompt in (qa_prompt, refine_prompt):
        line = next(line for line in prompt.splitlines() if line.startswith(MEASUREMENTS_LABEL))
        assert line.startswith(f"{MEASUREMENTS_LABEL}: Rate {m.heart_rate_bpm:.0f} bpm | PR ")
        assert f"rhythm: {m.rhythm.replace('_', ' ')}; P waves: " in line


HITS = [Hit("p1", 0.93, "101", "7", "sinus rhythm. normal ecg", {"NORM": 100.0}, "ptbxl", "2026-11-25")]
MEASURED = Measurements(
    heart_rate_bpm=72.2, pr_interval_ms=160, qrs_duration_ms=96, qt_interval_ms=400, qtc_bazett_ms=425.4,
    p_axis_deg=50, qrs_axis_deg=30, t_axis_deg=40, beat_count=12, rr_irregular=False, p_waves_present=True,
    rhythm=Rhythm.SINUS, premature_beats=(PrematureBeat(4.2, BeatOrigin.VENTRICULAR, 520.0),),
    lead_quality={lead: (QualityFlag.LEAD_OFF, QualityFlag.FLAT) if lead.startswith("V") else
                  (QualityFlag.BASELINE_DRIFT,) if lead == "II" else () for lead in STANDARD_LEADS},
    missing={"p_duration_ms": "P wave edges not found"}, measured_at_hz=500.0,
)
MEASURED_LINE = (f"{MEASUREMENTS_LABEL}: Rate 72 bpm | PR 160 ms | QRS 96 ms | QT/QTc 400/425 ms | "
                 "Axes P/QRS/T 50/30/40; rhythm: sinus rhythm; P waves: present; premature beats: 1 ventricular; "
                 "flagged leads: II baseline_drift; V1 lead_off, flat; V2 lead_off, flat; V3 lead_off, flat; "
                 "V4 lead_off, flat; V5 lead_off, flat; V6 lead_off, flat")


def test_prompt_text_of_the_measurements() -> None:
    """The QA prompt's measurements line comes after the diagnoses, before the question; refinement's last."""
    qa = qa_messages("Is this a normal ECG?", ["yes", "no"], "single-verify", HITS, {}, measurements=MEASURED)
    lines = qa[1]["content"].splitlines()
    assert lines[4] == MEASURED_LINE and lines[5].startswith("Question: ") and len(lines) == 7
    assert refine_messages(HITS, {}, MEASURED)[1]["content"].splitlines()[-1] == MEASURED_LINE
    assert MEASUREMENTS_LABEL not in qa_messages("Q?", ["yes", "no"], "single-verify", HITS, {})[1]["content"]


def test_client_formatting_from_the_message() -> None:
    """The text the CLI prints, from the wire message alone: cart line, rhythm, reasons, quality by lead."""
    from ecgregen.client import format_measurements

    assert MEASURED_VALUES == VALUE_FIELDS  # the wire's optional doubles are the stage's values, in order
    as_dict = measurements_to_dict(measurements_to_proto(MEASURED))
    assert json.loads(json.dumps(as_dict)) == as_dict and as_dict["rr_interval_ms"] is None
    assert format_measurements(as_dict, {"heart_rate": 90, "pr_interval": 144, "qrs_count": 12}) == (
        "Rate 72 bpm | PR 160 ms | QRS 96 ms | QT/QTc 400/425 ms | Axes P/QRS/T 50/30/40\n"
        "Device: Rate 90 bpm | PR 144 ms | QRS - ms | QT/QTc -/- ms | Axes P/QRS/T -/-/-\n"
        "Rhythm: sinus rhythm, 12 beats, P waves present, RR regular, premature beats: 1 ventricular (at 4.2 s)\n"
        "Not measured: P duration (P wave edges not found)\n"
        "Quality: II baseline_drift; V1-V6 lead_off, flat\n\n"  # a blank line before what follows
    )
    assert format_measurements(None).startswith("Measurements: not available")
    ok = measurements_to_dict(measurements_to_proto(Measurements(lead_quality={lead: () for lead in STANDARD_LEADS})))
    assert format_measurements(ok).rstrip().splitlines()[-1] == "Quality: all leads ok"
