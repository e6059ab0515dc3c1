"""Ops files against the real thing: Prometheus (Debian's) scrapes a running service and Triton after real traffic,
and every PromQL expression of the dashboard and the alert rules must parse and name only metrics that exist;
promtool checks the shipped files; compose and k8s files agree with the code's defaults; a real measurement moves
the measurement metrics on a /metrics endpoint."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from ecgregen.cli import build_parser
from ecgregen.ecg_files import read_ecg_bytes
from ecgregen.encoder_export.local_triton import LocalTriton
from ecgregen.host import http_ok
from ecgregen.measure import measure
from ecgregen.metrics import HEART_RATE_BUCKETS, REGISTRY, observe_measurements, stage_timer
from ecgregen.records import EcgRecord
from ecgregen.settings import ServeSettings
from ecgregen.simulate import simulate
from ecgregen.encoders.triton import TritonEncoder
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto
from tests.conftest import REPO, ServerProcess, free_port
from tests.scripted_llm import ScriptedLlm, Step

DEPLOY = REPO / "deploy"
# Fast atrial fibrillation with the chest electrodes off: a rate, quality flags and values with no P waves missing.
AF_LEADS_OFF = REPO.parent / "shared" / "data" / "formats" / "edf_contec-ecg90a_0000050_12sig_800hz.edf"
PROMQL_WORDS = {
    "sum", "rate", "by", "without", "histogram_quantile", "clamp_min", "le", "on", "ignoring", "group_left", "bool",
    "and", "or", "unless", "max", "min", "avg", "count", "increase", "irate", "humanizePercentage", "humanizeDuration",
}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "ecgregen.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are metric names (not functions, keywords, labels or strings)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"e\d*", n)}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, scripted_llm_server: ServerProcess,
               triton: LocalTriton) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus is not installed (make test installs it with apt-get where it can)")
    work = tmp_path_factory.mktemp("prometheus")
    targets = {
        "ecgregen": scripted_llm_server.metrics_url.removeprefix("http://").removesuffix("/metrics"),
        "triton": triton.metrics_url.removeprefix("http://").removesuffix("/metrics"),
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(work / "prometheus.log").open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not http_ok(f"{url}/-/ready"):
            assert process.poll() is None and time.monotonic() < deadline, (work / "prometheus.log").read_text()
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _api(url: str, path: str, **params: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as response:
        return json.loads(response.read())


def _traffic(server: ServerProcess, llm: ScriptedLlm, triton: LocalTriton, queries: list[EcgRecord]) -> None:
    """Calls that make every metric family the dashboard and alerts use appear with real values."""
    stub = server.stub()
    ecg = ecg_to_proto(queries[0].load_ecg())
    stub.GenerateReport(pb.GenerateReportRequest(ecg=ecg, k=3), timeout=60)
    llm.script(Step(content='{"answer": ["yes"]}'), Step(content='{"answer": ["perhaps"]}'),
               Step("status", status=500), Step("status", status=500))
    for _ in range(3):  # an answer, an out-of-options fallback, an endpoint failure
        stub.AnswerQuestion(pb.AnswerQuestionRequest(ecg=ecg, question="Does this ECG show normal ecg?",
                                                     options=["yes", "no"], answerer="llm"), timeout=60)
    records = [pb.Record(ecg_id="ops-1", report="r", source="ops", ecg=ecg),
               pb.Record(ecg_id="ops-2", source="ops", ecg=pb.Ecg(sampling_rate_hz=100))]
    stub.InsertRecords(iter([pb.InsertRecordsRequest(record=r) for r in records]), timeout=60)
    summary = asyncio.run(simulate(queries, monitors=2, server=server.address, speed=20.0, duration_s=20))
    assert summary.windows == 4
    signal = queries[1].load_ecg().signal
    gap = [pb.StreamEcgRequest(config=pb.StreamConfig(sampling_rate_hz=100, lead_names=[
        "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]))]
    gap += [pb.StreamEcgRequest(chunk=pb.StreamChunk(sequence=s, leads=[pb.StreamLead(samples=row) for row in part]))
            for s, part in zip((0, 2), np.split(signal, 2, axis=1))]
    list(stub.StreamECG(iter(gap), timeout=60))
    encoder = TritonEncoder(triton.grpc_url)
    try:
        encoder.encode(np.zeros((4, 12, 1000), np.float32), np.full(4, 1000))
    finally:
        encoder.close()


def test_dashboard_and_alerts_evaluate_on_real_metrics(prometheus: str, scripted_llm_server: ServerProcess,
                                                       scripted_llm: ScriptedLlm, triton: LocalTriton,
                                                       demo_queries: list[EcgRecord]) -> None:
    _traffic(scripted_llm_server, scripted_llm, triton, demo_queries)
    deadline = time.monotonic() + 60
    while len(_api(prometheus, "/api/v1/query", query="up == 1")["data"]["result"]) < 2:
        assert time.monotonic() < deadline, "Prometheus did not scrape both targets"
        time.sleep(0.5)
    time.sleep(3)  # a few 1 s scrapes after the traffic
    names = set(_api(prometheus, "/api/v1/label/__name__/values")["data"])
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) > 25
    for expr in exprs:
        reply = _api(prometheus, "/api/v1/query", query=expr)
        assert reply["status"] == "success", (expr, reply)
        for name in metric_names(expr):
            assert name in names or f"{name}_bucket" in names, f"{name} (in {expr!r}) is not scraped"
    # The numbers behind a few panels are real, not just present.
    value = _api(prometheus, "/api/v1/query", query='sum(ecgregen_llm_fallbacks_total{reason="out_of_options"})')
    assert float(value["data"]["result"][0]["value"][1]) >= 1
    batch = _api(prometheus, "/api/v1/query", query='sum(nv_inference_count{model="ecg_encoder"})')
    assert float(batch["data"]["result"][0]["value"][1]) >= 4
    rules = _api(prometheus, "/api/v1/rules")["data"]["groups"][0]["rules"]
    assert len(rules) == len(alert_exprs()) and all(r["health"] == "ok" for r in rules), rules


def test_promtool_accepts_the_shipped_files() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        result = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_and_k8s_agree_with_the_code() -> None:
    defaults = ServeSettings()
    parser = build_parser()
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())["services"]
    k8s = list(yaml.safe_load_all((DEPLOY / "k8s" / "ecgregen.yaml").read_text()))
    deployment = next(d for d in k8s if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for command in (compose["ecgregen"]["command"], container["args"]):
        args = parser.parse_args(command)  # every flag is a real flag of `ecgregen serve`
        assert (args.command, args.port, args.metrics_port) == ("serve", defaults.port, defaults.metrics_port)
        assert args.host == args.metrics_host == "0.0.0.0"
    assert compose["ecgregen"]["image"] == container["image"] == "ecgregen:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": defaults.port, "metrics": defaults.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == defaults.port  # grpc.health.v1, served by the app
    hpa = next(d for d in k8s if d["kind"] == "HorizontalPodAutoscaler")
    metric_names_used = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert metric_names_used <= {"ecgregen_rpc_in_flight", "ecgregen_streams_active"}
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert {"ecgregen:9464", "triton:8002", "qdrant:6333"} == {t for s in scrape for c in s["static_configs"]
                                                                 for t in c["targets"]}
    triton = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "triton.yaml").read_text()) if d["kind"] == "Deployment")
    triton_ports = {p["name"]: p["containerPort"] for p in triton["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert triton_ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert "--triton-url=triton:8001" in container["args"] and "--triton-url=triton:8001" in compose["ecgregen"]["command"]
    assert Path(REPO / "Dockerfile").read_text().count("EXPOSE 50051 9464") == 1


def _scrape(url: str) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_measurement_series_are_exposed_after_real_measurements() -> None:
    """A real measurement observed as the pipeline does (timed as the "measure" stage, then observe_measurements)
    moves the rate histogram, the flag, missing-field and rhythm counters on a /metrics endpoint; the series of
    the closed label sets that did not happen read 0; every metric the dashboard and alerts use for the
    measurement stage is exposed."""
    if not AF_LEADS_OFF.exists():
        pytest.skip(f"format samples not found at {AF_LEADS_OFF.parent}")
    ecg = read_ecg_bytes(AF_LEADS_OFF.read_bytes(), name=AF_LEADS_OFF.name).ecg
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        before = _scrape(url)
        with stage_timer("measure"):
            m = measure(ecg)
        observe_measurements(m)
        after = _scrape(url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in after, f"{name}{labels} is not exposed"
        return after[key] - before.get(key, 0.0)

    assert m.heart_rate_bpm is not None and m.missing and m.flagged_leads  # what this recording is chosen for
    bucket = next(b for b in HEART_RATE_BUCKETS if m.heart_rate_bpm <= b)
    assert delta("ecgregen_measured_heart_rate_bpm_count") == 1
    assert delta("ecgregen_measured_heart_rate_bpm_bucket", le=f"{float(bucket)}") == 1
    assert delta("ecgregen_measured_heart_rate_bpm_bucket", le=f"{float(HEART_RATE_BUCKETS[0])}") == 0
    for lead, flags in m.lead_quality.items():
        for flag in ("flat", "saturated", "lead_off", "baseline_drift", "static_noise", "burst_noise"):
            assert delta("ecgregen_lead_quality_flags_total", lead=lead, flag=flag) == (flag in flags)
    for field in ("pr_interval_ms", "qrs_duration_ms", "qt_interval_ms", "p_axis_deg"):
        assert delta("ecgregen_measurement_missing_total", field=field) == (field in m.missing)
    other_rhythm = next(r for r in ("undetermined", "sinus_rhythm") if r != m.rhythm)
    assert delta("ecgregen_measured_rhythm_total", rhythm=m.rhythm) == 1
    assert delta("ecgregen_measured_rhythm_total", rhythm=other_rhythm) == 0
    assert delta("ecgregen_measurement_failures_total") == 0
    assert delta("ecgregen_stage_duration_seconds_count", stage="measure") == 1
    exposed = {name for name, _ in after}
    used = {n for e in dashboard_exprs() + alert_exprs() if "measure" in e for n in metric_names(e)}
    assert {"ecgregen_measured_heart_rate_bpm_bucket", "ecgregen_lead_quality_flags_total",
            "ecgregen_measurement_missing_total", "ecgregen_measurement_failures_total",
            "ecgregen_measured_rhythm_total", "ecgregen_stage_duration_seconds_count"} <= used
    assert used <= exposed, used - exposed
