"""`ecgregen bench`: the encoder bench's rows and speed targets (seconds), the side-by-side comparison's arithmetic,
and the whole command at toy sizes.

Figures belong in docs/bench/ (written by the command, with date and machine), never in assertions: wall-clock
comparisons (batching is cheaper, onnxruntime beats eager torch) are the bench's targets (`check_targets`), which
say met or not; the tests check that the bench runs, writes every row with sane numbers and states its targets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ecgregen.bench.budget import STAGES, sampling_error_ms
from ecgregen.bench.encoder import run_encoder_bench
from ecgregen.bench.side_by_side import capacity_verdict, side_by_side_targets, summarise
from ecgregen.bench.suite import check_targets, cpu_gate
from ecgregen.encoders.checkpoint import load_encoder
from ecgregen.records import load_ptbxl
from ecgregen.settings import DEMO_PTBXL

ROOT = Path(__file__).resolve().parents[1]


def test_encoder_bench_measures_every_backend_and_batch_and_states_the_speed_targets(tmp_path: Path) -> None:
    """The encoder bench runs both in-process backends at each batch size and writes positive timings for each row,
    a FLOP count and a measured matmul peak; the speed claims (batching cheaper per ECG, onnxruntime faster than
    eager torch) are the bench's targets, computed from those rows: wall-clock comparisons are not asserted here
    (they flake on a shared CPU), only that each target is stated with what was measured."""
    result = run_encoder_bench(load_encoder(None), load_ptbxl(DEMO_PTBXL, [9]), batch_sizes=(1, 16),
                               min_seconds=0.5, work_dir=tmp_path, progress=False)
    assert set(result["backends"]) == {"torch", "onnxruntime"}
    for rows in result["backends"].values():
        assert [r["batch"] for r in rows] == [1, 16]
        for r in rows:
            assert r["ms_per_ecg"] > 0 and r["ecgs_per_s"] > 0 and r["calls"] >= 5
            assert r["share_of_measured_peak"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    assert 1e8 < result["flops_per_ecg"] < 1e10
    assert result["peak"]["measured_gemm_gflops"] > 0

    targets = check_targets({"encoder": result})
    assert [t["target"].split(":")[0] for t in targets] == ["Encoder", "Encoder"]
    per_ecg = {name: {r["batch"]: r["ms_per_ecg"] for r in rows} for name, rows in result["backends"].items()}
    batching, runtime = targets
    assert batching["met"] == all(per_ecg[n][16] < per_ecg[n][1] for n in per_ecg)
    assert runtime["met"] == (per_ecg["onnxruntime"][1] < per_ecg["torch"][1])
    assert f"{per_ecg['torch'][16]} ms at batch 16" in batching["measured"]
    assert f"onnxruntime {per_ecg['onnxruntime'][1]} ms" in runtime["measured"]


def test_side_by_side_summary_pairs_each_round_and_judges_the_capacity_only_where_the_levels_can_tell() -> None:
    """Throughput ratios are the median of each round's today/before pair, per ECG rate; a monitor level is held
    with windows, p99 under 1 s, nothing dropped and no errors; the capacity target is met or missed only when the
    levels bound both capacities tightly enough, else undetermined (made-up rows)."""
    def run(round_: int, code: str, rate: float, per_s: float, cpu_ms: float, concurrency: int = 8) -> dict:
        return {"round": round_, "code": code, "rate_hz": rate, "concurrency": concurrency, "ok_per_s": per_s,
                "p50_ms": 10.0, "p99_ms": 20.0, "server_cpu_ms_per_call": cpu_ms}

    def level(code: str, n: int, p99: float, cpu_ms: float, dropped: int = 0) -> dict:
        return {"code": code, "monitors": n, "windows": n, "dropped": dropped, "errors": 0, "latency_p99_ms": p99,
                "server_cpu_ms_per_window": cpu_ms}

    throughput = [run(1, "today", 100, 90, 11), run(1, "before", 100, 100, 10), run(2, "before", 100, 50, 10),
                  run(2, "today", 100, 40, 12), run(3, "today", 100, 95, 11), run(3, "before", 100, 100, 10),
                  run(1, "today", 500, 50, 20), run(1, "before", 500, 100, 10),
                  run(1, "today", 100, 10, 5, concurrency=1), run(1, "before", 100, 100, 5, concurrency=1)]
    streams = [level("today", 300, 80, 3), level("before", 300, 70, 2), level("before", 600, 900, 2),
               level("today", 600, 400, 3, dropped=1)]
    summary = summarise(throughput, streams)
    alone, at_100, at_500 = summary["calls"]  # by rate, then concurrency
    assert (alone["concurrency"], alone["throughput_ratio"]) == (1, 0.1)
    assert at_100["rate_hz"] == 100 and at_100["pairs"] == 3 and at_100["throughput_ratio"] == 0.9  # 0.9, 0.8, 0.95
    assert at_100["today"]["ok_per_s"] == 90 and at_100["server_cpu_per_call_ratio"] == 1.1
    assert at_500["throughput_ratio"] == 0.5 and at_500["server_cpu_per_call_ratio"] == 2.0
    assert [(r["today_held"], r["before_held"]) for r in summary["monitors"]] == [(True, True), (False, True)]
    assert [r["p99_ratio"] for r in summary["monitors"]] == [1.14, 0.44]
    assert [r["cpu_per_window_ratio"] for r in summary["monitors"]] == [1.5, 1.5]

    start = {"today": {"start_s": 9.0, "first_call_ms": {"100": 300.0, "500": 1200.0}},
             "before": {"start_s": 6.0, "first_call_ms": {"100": 200.0, "500": 250.0}}}
    targets = side_by_side_targets({"summary": summary, "codes": {"today": "abc", "before": "e4ad49e"},
                                    "start": start})
    # Issue 25's, concurrency 8 only: 0.9x, 0.5x; today holds 300 (< 600), before 600 (upper bound unknown): missed
    # only if 600 <= 0.85 x 600. Issue 33's: CPU 1.1x and 2.0x over 1.0x, throughput under 1.0x; no 500-monitor
    # level measured (left out); a first call of 1.2 s misses the second although the start is only 3 s slower.
    assert [t["met"] for t in targets] == [True, False, None, False, False, False, False, False]
    assert "100 Hz" in targets[0]["target"] and "0.90x" in targets[0]["measured"]
    assert targets[2]["measured"].startswith("today holds 300, not 600; before holds 600, every level: the levels")
    assert "1.10x (11 vs 10 ms" in targets[3]["measured"] and "(issue 33)" in targets[3]["target"]
    assert "first calls {'100': 300.0, '500': 1200.0} ms" in targets[7]["measured"]
    streams.append(level("today", 500, 900, 2))
    streams.append(level("before", 500, 990, 2))
    held_500 = side_by_side_targets({"summary": summarise(throughput, streams),
                                     "codes": {"today": "abc", "before": "e4ad49e"}})[-1]
    assert "500 live 100 Hz monitors" in held_500["target"] and held_500["met"] is True  # held, CPU 1.0x

    def levels(today_held: list[int], before_held: list[int], all_levels: list[int]) -> list[dict]:
        return [{"monitors": n, "today_held": n in today_held, "before_held": n in before_held} for n in all_levels]

    steps = [150, 200, 250, 300, 350, 400]
    assert capacity_verdict(levels([150, 200], [150, 200, 250, 300], steps))[0] is False  # < 250 vs >= 300
    assert capacity_verdict(levels([150, 200, 250], [150, 200, 250], steps))[0] is None  # both in [250, 300)
    assert capacity_verdict(levels(steps[:4], steps[:3], steps))[0] is True  # >= 300 vs < 300
    assert capacity_verdict(levels([], [], steps)) == (None, "today holds none of the levels, not 150; "
                                                             "before holds none of the levels, not 150")


def test_bench_command_quick_writes_every_section(tmp_path: Path) -> None:
    """Every section at toy sizes, the measure section with this checkout as the "before" code (so the side by
    side runs without a second checkout): each writes its rows; the targets are stated, not asserted."""
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "ecgregen.cli", "bench", "--quick", "--work-dir", str(tmp_path / "work"),
         "--out", str(out), "--before-tree", str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (json_path,) = out.glob("bench-*.json")
    (md_path,) = out.glob("bench-*.md")
    result = json.loads(json_path.read_text())
    assert result["config"]["sizes"] == [2000] and result["machine"]["cpu_count"] >= 1

    assert set(result["encoder"]["backends"]) == {"torch", "onnxruntime"}
    (search,) = result["search"]["runs"]
    assert search["faiss_flat"]["recall_at_10"] == 1.0 and search["exact"]["recall_at_10"] == 1.0
    assert search["hnsw"][0]["recall_at_10"] >= 0.99  # 2,000 points: HNSW loses nothing

    service = result["service"]
    assert service["corpus"]["points"] == 2000 and service["runtime"] == "onnxruntime"
    for rows in (*service["grpc"].values(), *service["in_process"].values(), service["compared_runtime"]["GenerateReport"]):
        assert [r["concurrency"] for r in rows] == [1, 8]
        for r in rows:
            assert r["ok"] > 0 and not r["errors"] and not r["shed"] and r["p99_ms"] >= r["p50_ms"] > 0
    assert {(o["call"], o["concurrency"]) for o in service["overhead"]} == {
        (c, n) for c in ("GenerateReport", "AnswerQuestion") for n in (1, 8)}
    (streams,) = service["streams"]["levels"]
    assert streams["monitors"] == 4 and streams["windows"] > 0 and not streams["errors"]
    memory = service["memory"]
    assert memory["idle_mb"] > 0 and memory["peak_mb"] >= memory["idle_mb"]

    stage = result["measure"]["stage"]
    ptbxl = [(r["source"].split(",")[0], r["rate_hz"]) for r in stage["rows"] if r["source"].startswith("PTB-XL")]
    assert ptbxl == [("PTB-XL", 100), ("PTB-XL", 500), ("PTB-XL", 1000)]
    for r in stage["rows"]:
        assert r["calls"] == r["ecgs"] >= 1 and r["cpu_p90_ms"] >= r["cpu_p50_ms"] > 0
        assert r["thread_cpu_p50_ms"] > 0 and r["wall_p50_ms"] > 0
    compared = result["measure"]["side_by_side"]
    assert compared["corpus"]["points"] == 2000 and compared["request_rates_hz"] == [100, 500]
    assert [(r["rate_hz"], r["code"]) for r in compared["throughput"]] == [
        (100, "today"), (100, "before"), (500, "today"), (500, "before")]
    for r in compared["throughput"]:
        assert r["ok"] > 0 and not r["errors"] and r["server_cpu_ms_per_call"] > 0
    assert [(r["monitors"], r["code"]) for r in compared["streams"]["levels"]] == [(4, "today"), (4, "before")]
    assert all(r["windows"] > 0 and not r["errors"] for r in compared["streams"]["levels"])
    assert [c["throughput_ratio"] > 0 for c in compared["summary"]["calls"]] == [True, True]
    printed = result["print"]
    assert {(r["printed"].split(":")[0], r["format"]) for r in printed["rows"]} == {
        ("12-lead page", "pdf"), ("12-lead page", "png"), ("12-lead page", "svg"), ("document", "pdf")}
    assert all(r["renders"] >= 1 and r["cpu_p50_ms"] > 0 for r in printed["rows"])
    # Encoder speed (2), end-to-end latency, gRPC overhead, the stage's cost, throughput beside the code before at
    # 100 and 500 Hz, monitors, issue 33's (CPU per call and throughput at each rate, the start; no 500-monitor level
    # here), the printed page; no search target: no 20k/200k sizes here.
    assert [t["target"].split()[0] for t in result["targets"]] == [
        "Encoder:", "Encoder:", "GenerateReport", "gRPC", "Measurement", "GenerateReport", "GenerateReport", "Live",
        *["(issue"] * 5, "Printing:"]
    assert "first GenerateReport" in result["targets"][-2]["target"]

    markdown = md_path.read_text()
    for heading in ("## Targets", "## 1. Encoder", "## 2. Search", "## 3. End to end", "## 4. Streaming",
                    "## 5. Memory", "## 6. Measurement stage", "### The service beside the code before",
                    "## 7. Printed page"):
        assert heading in markdown
    assert markdown in run.stdout  # the same report is printed


def test_cpu_gate_exits_over_the_threshold_and_the_budget_stages_add_up_to_the_measured_cpu(tmp_path: Path) -> None:
    """One short real run of the measure section (side by side, this checkout as the "before" code) and the budget
    section: a threshold every run exceeds (0.01x) makes the command exit 1 naming both rates, and a generous one
    (100x) passes on the same figures; each budget's stages add up to the server's measured CPU per call within
    their sampling error, py-spy followed the measurement workers (their samples are in), and it saw a real part
    of the CPU it split."""
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "ecgregen.cli", "bench", "--sections", "measure,budget", "--quick",
         "--work-dir", str(tmp_path / "work"), "--out", str(out), "--before-tree", str(ROOT),
         "--formats", str(tmp_path / "no-files"), "--compare-monitors", "none",
         "--max-cpu-ratio", "0.01"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 1, run.stderr[-3000:]
    gate_lines = [line for line in run.stdout.splitlines() if line.startswith("CPU gate:")]
    assert [("100 Hz" in line, "500 Hz" in line, "OVER 0.01x" in line) for line in gate_lines] == [
        (True, False, True), (False, True, True)]
    result = json.loads(next(out.glob("bench-*.json")).read_text())
    passed, lines = cpu_gate(result, 100.0)
    assert passed and all("within 100x" in line for line in lines)

    runs = result["budget"]["runs"]
    assert [(r["call"], r["code"]) for r in runs] == [
        ("GenerateReport 100 Hz", "today"), ("GenerateReport 100 Hz", "before"),
        ("GenerateReport 500 Hz", "before"), ("GenerateReport 500 Hz", "today"),
        ("stream window 100 Hz", "before"), ("stream window 100 Hz", "today")]
    for r in runs:
        assert r["calls"] > 0 and not r["errors"] and r["samples"] > 0 and r["cpu_ms_per_call"] > 0
        assert [s["stage"] for s in r["stages"]] == STAGES
        assert sum(s["samples"] for s in r["stages"]) == r["samples"]  # every sample is in one stage
        stage_sum = sum(s["ms"] for s in r["stages"])
        assert abs(stage_sum - r["cpu_ms_per_call"]) <= sampling_error_ms(r["stages"]) + 0.001 * len(STAGES)
        assert r["sampled_cpu_ratio"] > 0.3
        by_stage = {s["stage"]: s["samples"] for s in r["stages"]}
        assert by_stage["encode"] > 0
        assert by_stage["measure: worker measuring"] > 0 or r["code"] == "before"  # e4ad49e has no workers
    assert "## 8. CPU budget per call" in (md := next(out.glob("bench-*.md")).read_text()) and "± " in md
