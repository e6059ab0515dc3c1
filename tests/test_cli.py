"""The `ecgregen` command as a person uses it: client calls against a real server, indexing, error output."""

from __future__ import annotations

import json
import re
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgregen.client import format_report, report_dict
from ecgregen.ecg import STANDARD_LEADS
from ecgregen.encoders.checkpoint import save_checkpoint
from ecgregen.encoders.model import random_encoder
from ecgregen.records import EcgRecord, load_ptbxl, read_wfdb
from ecgregen.v1 import ecgregen_pb2 as pb
from tests.conftest import DEMO_PTBXL, ECGREGEN, ServerProcess, free_port
from tests.test_fhir import verified_result


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*ECGREGEN, *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        pytest.fail(f"ecgregen {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def write_record(directory: Path, name: str, leads: list[str], seconds: float = 10, rate: int = 500) -> Path:
    signal = np.random.default_rng(zlib.crc32(name.encode())).normal(size=(int(seconds * rate), len(leads))) * 0.3
    wfdb.wrsamp(name, fs=rate, units=["mV"] * len(leads), sig_name=leads, p_signal=signal, fmt=["16"] * len(leads),
                write_dir=str(directory), comments=["report: synthetic test record"])
    return directory / name


def test_client_report_json(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    """The report in the server's default language, English: in the paper's mode the closest neighbour's report_en,
    with its original and the words the glossary lacks beside it, and every neighbour in both; `--language original`
    serves it as the cart wrote it; another language is refused."""
    command = ("client", "report", str(demo_queries[0].path), "--server", edge_server.address, "--k", "3", "--json",
               "--report-mode", "top1")
    result = json.loads(run(*command).stdout)
    assert set(result) >= {"report", "neighbours", "latency_ms", "untranslated_words"}
    first = result["neighbours"][0]
    assert len(result["neighbours"]) == 3 and result["report"] == first["report_en"]
    assert result["report_language"] == "en" and result["untranslated_words"] == []
    assert (result["original_report"], result["original_language"]) == (first["report"], first["language"])
    assert set(first) >= {"ecg_id", "patient_id", "score", "report", "report_en", "language", "scp_codes"}
    assert isinstance(first["score"], float) and isinstance(first["scp_codes"], dict)
    assert result["latency_ms"]["total"] > 0
    original = json.loads(run(*command, "--language", "original").stdout)
    assert (original["report"], original["report_language"]) == (first["report"], first["language"])
    refused = run(*command, "--language", "deutsch", check=False)
    assert refused.returncode == 2 and "invalid choice: 'deutsch'" in refused.stderr


def test_client_report_text_and_plot(edge_server: ServerProcess, demo_queries: list[EcgRecord], tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    out = run("client", "report", str(demo_queries[1].path), "--server", edge_server.address, "--plot", str(png))
    assert out.stdout.startswith("Rate ") and "\nReport (en): " in out.stdout  # the measurements' cart line first
    assert "Neighbours:" in out.stdout and f"plot written to {png}" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000


def test_client_report_text_prints_each_edit_under_the_report_and_marks_a_measurement_decided_diagnosis() -> None:
    """`client report` without --json: one 'edited:' line per edit of a verified report, right under the report
    line, with the sentence and the measured reason; a diagnosis a measurement decided says so on its line."""
    result = verified_result(report_dict(pb.GenerateReportResponse(report_ecg_id="2", report_language="en")),
                             read_wfdb(load_ptbxl(DEMO_PTBXL, [9])[0].path))
    lines = format_report(result).splitlines()
    at = lines.index(f"Report (en): {result['report']}")
    edits = result["report_edits"]
    assert lines[at + 1:at + 1 + len(edits)] == [f'  edited: {e["action"]} "{e["sentence"]}" - {e["reason"]}'
                                                 for e in edits]
    assert lines[at + 1].startswith('  edited: removed "right axis deviation." - measured QRS axis ')
    [decided] = [d for d in result["diagnoses"] if d["decided_by"]]
    [line] = [line for line in lines if f" {decided['code']} " in line]
    assert line.startswith("    AFIB ") and line.endswith(f"(by measurement: {decided['decided_by']})")


def test_client_ask_prints_the_servers_answer_which_follows_the_normal_ecg_diagnosis(
    edge_server: ServerProcess, demo_queries: list[EcgRecord]
) -> None:
    """`client ask` on a real fold-9 ECG (PTB-XL 134, labelled NDT and sinus rhythm, not NORM), "Is this a normal
    ECG?" with options yes/no: it prints the answer, answerer and neighbours the AnswerQuestion RPC gives the same
    ECG and question; the answer follows the NORM diagnosis's calibrated probability against the binary band
    (yes at or over it, the rationale says so), and it is "no", as the record's labels say."""
    from ecgregen.answer import DEFAULT_SETTINGS
    from ecgregen.v1 import ecgregen_pb2 as pb
    from ecgregen.wire import ecg_to_proto

    record, question = demo_queries[2], "Is this a normal ECG?"
    assert record.ecg_id == "134" and "NORM" not in record.scp_codes
    out = run("client", "ask", str(record.path), question, "--server", edge_server.address, "--options", "yes,no",
              "--json")
    result = json.loads(out.stdout)
    rpc = edge_server.stub().AnswerQuestion(
        pb.AnswerQuestionRequest(ecg=ecg_to_proto(record.load_ecg()), question=question, options=["yes", "no"]),
        timeout=30)
    assert (result["answerer"], result["answer"]) == (rpc.answerer, list(rpc.answer)) == ("labels", ["no"])
    assert [n["ecg_id"] for n in result["neighbours"]] == [n.ecg_id for n in rpc.neighbours] and len(rpc.neighbours) == 3
    norm = next((d.probability for d in rpc.diagnoses if d.code == "NORM"), 0.0)
    band = DEFAULT_SETTINGS.verify_binary
    assert result["answer"] == (["yes"] if norm >= band else ["no"]), (norm, result["rationale"])
    assert "normal ecg" in result["rationale"] and f"band {band}" in result["rationale"], result["rationale"]


def test_client_insert_then_report_then_delete(edge_server: ServerProcess, tmp_path: Path) -> None:
    record = write_record(tmp_path, "synthetic1", list(STANDARD_LEADS))
    out = run("client", "insert", str(record), "--server", edge_server.address, "--report", "synthetic report",
              "--scp-codes", '{"NORM": 100}', "--ecg-id", "cli-1", "--patient-id", "p-cli", "--source", "cli", "--json")
    inserted = json.loads(out.stdout)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", inserted.pop("batch_id"))
    assert inserted == {"inserted": 1, "updated": 0, "rejected": 0, "rejections": []}
    result = json.loads(run("client", "report", str(record), "--server", edge_server.address, "--json").stdout)
    assert result["report"] == "synthetic report" and result["neighbours"][0]["ecg_id"] == "cli-1"
    out = run("client", "delete", "cli-1", "--source", "cli", "--server", edge_server.address)
    assert out.stdout.strip() == "deleted 1"


def test_client_batches_and_rollback(edge_server: ServerProcess, tmp_path: Path) -> None:
    records = [str(write_record(tmp_path, f"rb{i}", list(STANDARD_LEADS))) for i in range(3)]
    out = run("client", "insert", *records, "--server", edge_server.address, "--report", "to roll back",
              "--source", "cli-rollback", "--json")
    batch = json.loads(out.stdout)["batch_id"]
    listed = json.loads(run("client", "batches", "--server", edge_server.address, "--json").stdout)["batches"]
    assert {"batch_id": batch, "points": 3} == {k: v for k, v in listed[-1].items() if k in ("batch_id", "points")}
    out = run("client", "rollback", batch, "--server", edge_server.address)
    assert out.stdout.strip() == f"deleted 3 records of batch {batch}"
    listed = json.loads(run("client", "batches", "--server", edge_server.address, "--json").stdout)["batches"]
    assert batch not in {b["batch_id"] for b in listed}


def test_errors_print_status_and_message(edge_server: ServerProcess, tmp_path: Path) -> None:
    three_leads = write_record(tmp_path, "three", ["I", "II", "III"])
    out = run("client", "report", str(three_leads), "--server", edge_server.address, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == "INVALID_ARGUMENT: expected 12 leads, got 3"

    out = run("client", "report", str(tmp_path / "missing"), "--server", edge_server.address, check=False)
    assert out.returncode == 1 and out.stderr.strip().endswith("missing: no such file (nor a WFDB record "
                                                              f"{tmp_path / 'missing'}.hea)")

    nobody = f"127.0.0.1:{free_port()}"
    out = run("client", "stats", "--server", nobody, check=False)
    assert out.returncode == 1 and out.stderr.startswith("UNAVAILABLE: ")


def test_index_files_through_the_server(edge_server: ServerProcess, tmp_path: Path) -> None:
    files = [write_record(tmp_path, f"file{i}", list(STANDARD_LEADS), rate=250) for i in range(2)]
    out = run("index", *map(str, files), "--server", edge_server.address, "--source", "files",
              "--scp-codes", '{"SR": 0}')
    assert out.stdout.startswith("inserted 2, updated 0")
    again = run("index", *map(str, files), "--server", edge_server.address, "--source", "files")
    assert again.stdout.startswith("inserted 0, updated 2")  # idempotent: same ids, no duplicates
    result = json.loads(run("client", "report", str(files[0]), "--server", edge_server.address, "--json").stdout)
    assert result["neighbours"][0]["ecg_id"] == "file0"
    assert result["report"] == "synthetic test record"  # taken from the header's "report:" comment
    run("client", "delete", "file0", "file1", "--source", "files", "--server", edge_server.address)


def test_local_index_resumes_and_refuses_another_encoder(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "var")
    first = run("index", "--ptbxl", str(DEMO_PTBXL), "--folds", "9", "--data-dir", data_dir)
    assert first.stdout.startswith("inserted 30, updated 0, skipped 0")
    second = run("index", "--ptbxl", str(DEMO_PTBXL), "--folds", "9", "--data-dir", data_dir)
    assert second.stdout.startswith("inserted 0, updated 0, skipped 30 already indexed")

    other = tmp_path / "other.pt"
    save_checkpoint(random_encoder(seed=1), other)
    refused = run("index", "--ptbxl", str(DEMO_PTBXL), "--folds", "9", "--data-dir", data_dir,
                  "--checkpoint", str(other), check=False)
    assert refused.returncode == 1 and "--recreate" in refused.stderr and "encoder_id" in refused.stderr
    redone = run("index", "--ptbxl", str(DEMO_PTBXL), "--folds", "9", "--data-dir", data_dir,
                 "--checkpoint", str(other), "--recreate")
    assert redone.stdout.startswith("inserted 30, updated 0, skipped 0")


def test_index_refuses_a_store_in_use(edge_server: ServerProcess) -> None:
    """The running server holds its embedded store; a second writer is told so instead of corrupting it."""
    data_dir = edge_server.log_path.parent / "var"
    out = run("index", "--ptbxl", str(DEMO_PTBXL), "--folds", "9", "--data-dir", str(data_dir), check=False)
    assert out.returncode == 1 and "in use by another process" in out.stderr


def test_corpus_commands_offline(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "var")]
    out = run("index", "--ptbxl", str(DEMO_PTBXL), "--folds", "9", "--batch-id", "fold9", "--hnsw-m", "24", *data)
    assert "inserted 30" in out.stdout and "batch fold9" in out.stdout
    stats = run("corpus", "stats", *data).stdout
    assert "points: 30" in stats and "status: green" in stats and "'hnsw_m': 24" in stats
    assert run("corpus", "batches", *data).stdout.splitlines()[0].startswith("fold9  30 points  ")

    snapshot = tmp_path / "fold9.tar"
    assert "snapshot of 30 points written to" in run("corpus", "snapshot", "--out", str(snapshot), *data).stdout
    out = run("index", "--migrate-to", f"local:{tmp_path / 'server'}", *data)
    assert "copied 30 records" in out.stdout and "the target now holds 30" in out.stdout

    assert run("corpus", "rollback", "fold9", *data).stdout.strip() == "deleted 30 records of batch fold9"
    refused = run("corpus", "restore", str(snapshot), *data, check=False)
    assert refused.returncode == 1 and "already holds a store" in refused.stderr
    out = run("corpus", "restore", str(snapshot), "--force", *data)
    assert out.stdout.strip().endswith(": 30 points")
