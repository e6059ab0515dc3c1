"""`ecgregen bench`: the encoder bench's rows and speed targets (seconds), and the whole command at toy sizes.

Figures belong in docs/bench/ (written by the command, with date and machine), never in assertions: wall-clock
comparisons (batching is cheaper, onnxruntime beats eager torch) are the bench's targets (`check_targets`), which
say met or not; the tests check that the bench runs, writes every row with sane numbers and states its targets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ecgregen.bench.encoder import run_encoder_bench
from ecgregen.bench.suite import check_targets
from ecgregen.encoders.checkpoint import load_encoder
from ecgregen.records import load_ptbxl
from ecgregen.settings import DEMO_PTBXL


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
    # Encoder speed (2), end-to-end latency and gRPC overhead; no search target: no 20k/200k sizes here.
    assert [t["target"].split()[0] for t in result["targets"]] == ["Encoder:", "Encoder:", "GenerateReport", "gRPC"]

    markdown = md_path.read_text()
    for heading in ("## Targets", "## 1. Encoder", "## 2. Search", "## 3. End to end", "## 4. Streaming",
                    "## 5. Memory"):
        assert heading in markdown
    assert markdown in run.stdout  # the same report is printed
