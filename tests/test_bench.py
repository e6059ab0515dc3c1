"""`ecgregen bench`: the relative regression checks that CI runs (seconds), and the whole command at toy sizes.

Absolute figures belong in docs/bench/ (written by the command, with date and machine), never in assertions:
only relations that hold on any machine are checked here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ecgregen.bench.encoder import run_encoder_bench
from ecgregen.encoders.checkpoint import load_encoder
from ecgregen.records import load_ptbxl
from ecgregen.settings import DEMO_PTBXL


def test_batched_encoding_is_cheaper_per_ecg_and_onnxruntime_beats_eager_torch(tmp_path: Path) -> None:
    result = run_encoder_bench(load_encoder(None), load_ptbxl(DEMO_PTBXL, [9]), batch_sizes=(1, 16),
                               min_seconds=0.5, work_dir=tmp_path, progress=False)
    per_ecg = {name: {r["batch"]: r["ms_per_ecg"] for r in rows} for name, rows in result["backends"].items()}
    for name in ("torch", "onnxruntime"):
        assert per_ecg[name][16] < per_ecg[name][1], f"{name}: batching should make each ECG cheaper: {per_ecg}"
    # The served runtime is onnxruntime because it is faster; if that stops being true, the default is wrong.
    assert per_ecg["onnxruntime"][1] < per_ecg["torch"][1], per_ecg
    assert 1e8 < result["flops_per_ecg"] < 1e10
    assert result["peak"]["measured_gemm_gflops"] > 0
    for rows in result["backends"].values():
        for r in rows:
            assert 0 < r["share_of_measured_peak"] < 1.5 and r["p99_ms"] >= r["p50_ms"] > 0


def test_bench_command_quick_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "ecgregen.cli", "bench", "--quick", "--work-dir", str(tmp_path / "work"),
         "--out", str(out)],
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
    assert [t["target"].split()[0] for t in result["targets"]] == ["GenerateReport", "gRPC"]  # no 20k/200k sizes

    markdown = md_path.read_text()
    for heading in ("## Targets", "## 1. Encoder", "## 2. Search", "## 3. End to end", "## 4. Streaming",
                    "## 5. Memory"):
        assert heading in markdown
    assert markdown in run.stdout  # the same report is printed
