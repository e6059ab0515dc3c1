"""The `ecgregen` command: serve, certs, token, index, calibrate, corpus {stats, batches, rollback, optimize, snapshot,
restore}, export, simulate-monitors, bench [store, load], evaluate {report, qa}, qa-generate, pretrain, client
{report, ask, insert, delete, stats, info, batches, rollback, snapshot, optimize}.

Flag names are a stable interface (acceptance checks and users' scripts use them).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecgregen.llm.stage import add_llm_flags, llm_config_from_args
from ecgregen.records import DEMO_PTBXL, PTBXL_SOURCE, EcgRecord, load_ptbxl, parse_folds, read_wfdb, wfdb_comments
from ecgregen.store import QUANTIZATIONS, IndexSettings

if TYPE_CHECKING:
    from ecgregen.bench.suite import BenchConfig

DEFAULT_SERVER = "127.0.0.1:50051"


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=Path("./var"), help="embedded Qdrant store location (default ./var)")
    p.add_argument(
        "--qdrant-url", default=None,
        help="Qdrant server/cluster (http://host:6333) instead of the embedded store; "
        "':memory:' or 'local:PATH' use qdrant-client's local mode",
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="encoder checkpoint (default: the shipped pre-trained encoder)")
    p.add_argument("--triton-url", default=None, help="encode with the model in Triton at HOST:PORT (gRPC) instead")
    p.add_argument("--triton-model", default="ecg_encoder", help="model name in Triton's repository")
    p.add_argument("--triton-wait", type=float, default=30.0, help="seconds to wait for Triton and the model at start")


def _add_runtime_flag(p: argparse.ArgumentParser) -> None:
    from ecgregen.encoders.factory import ENCODER_RUNTIMES

    p.add_argument("--encoder-runtime", default=ENCODER_RUNTIMES[0], choices=ENCODER_RUNTIMES,
                   help="how the in-process encoder runs: onnxruntime (exported once, checked against PyTorch; "
                   "the fast CPU path) or eager torch")


def _add_index_flags(p: argparse.ArgumentParser) -> None:
    d = IndexSettings()
    g = p.add_argument_group("collection settings (used when the collection is created)")
    g.add_argument("--hnsw-m", type=int, default=d.hnsw_m, help="HNSW graph degree")
    g.add_argument("--hnsw-ef-construct", type=int, default=d.hnsw_ef_construct, help="HNSW build beam width")
    g.add_argument("--full-scan-threshold-kb", type=int, default=d.full_scan_threshold_kb,
                   help="segments smaller than this are searched exhaustively (exact, faster there)")
    g.add_argument("--on-disk", action="store_true", help="keep vectors memory-mapped on disk instead of in RAM")
    g.add_argument("--quantization", default=d.quantization, choices=QUANTIZATIONS,
                   help="int8: scalar-quantised vectors in RAM (4x smaller), candidates rescored exactly")
    g.add_argument("--shards", type=int, default=d.shards, help="Qdrant cluster: shards of the collection")
    g.add_argument("--replicas", type=int, default=d.replicas, help="Qdrant cluster: replicas of each shard")


def _index_settings(args: argparse.Namespace) -> IndexSettings:
    return IndexSettings(
        hnsw_m=args.hnsw_m, hnsw_ef_construct=args.hnsw_ef_construct, full_scan_threshold_kb=args.full_scan_threshold_kb,
        on_disk=args.on_disk, quantization=args.quantization, shards=args.shards, replicas=args.replicas,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecgregen", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument("--metrics-port", type=int, default=9464)
    serve.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address (loopback by default)")
    serve.add_argument("--no-demo", action="store_true", help="do not index the demo corpus into an empty store")
    serve.add_argument("--max-streams", type=int, default=64, help="concurrent StreamECG streams at most")
    serve.add_argument("--max-inflight", type=int, default=256,
                       help="calls handled at once; beyond, RESOURCE_EXHAUSTED (load shedding)")
    serve.add_argument("--tls-cert", type=Path, help="server certificate (PEM): serve TLS")
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="CA of client certificates: require mutual TLS")
    serve.add_argument("--tokens", type=Path, help="bearer tokens with roles (ecgregen token add): require them")
    serve.add_argument("--rate-limit", type=float, default=0.0, help="calls per second per client (0: unlimited)")
    serve.add_argument("--daily-quota", type=int, default=0, help="calls per client per UTC day (0: unlimited)")
    serve.add_argument("--max-message-mb", type=float, default=64.0, help="largest gRPC message accepted")
    serve.add_argument("--triton-fallback-local", action="store_true",
                       help="while Triton is unavailable, encode in-process (the same model: --checkpoint)")
    serve.add_argument("--max-stream-s", type=float, default=24 * 3600.0,
                       help="a stream is ended with a max_duration warning after this long (monitors reconnect)")
    serve.add_argument("--report-mode", default="auto", choices=["auto", "top1", "consensus"],
                       help="whose report is served: the closest neighbour's (top1, the paper's), the one agreeing "
                       "best with the diagnoses (consensus), or auto: the mode the corpus calibration found best")

    certs = sub.add_parser("certs", help="a development CA with server and client certificates (not for production)")
    certs.add_argument("--out", type=Path, required=True)
    certs.add_argument("--host", action="append", default=[], help="server host name(s) (default localhost)")
    token = sub.add_parser("token", help="bearer tokens: only their hashes are stored")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_add = token_sub.add_parser("add", help="create a token (printed once) and store its hash")
    token_add.add_argument("name")
    token_add.add_argument("--roles", default="read", help="read, write or read,write")
    token_add.add_argument("--file", type=Path, required=True)
    _add_store_flags(serve)
    _add_runtime_flag(serve)
    _add_index_flags(serve)
    add_llm_flags(serve)

    index = sub.add_parser("index", help="embed records and upsert them into the corpus")
    index.add_argument("files", nargs="*", help="WFDB record paths (without extension)")
    index.add_argument("--ptbxl", type=Path, help="a folder in PTB-XL layout")
    index.add_argument("--folds", default="1-8", help="strat folds to index with --ptbxl (default 1-8)")
    index.add_argument("--server", help="send to a running server (HOST:PORT) instead of writing the store directly")
    index.add_argument("--batch-size", type=int, default=64)
    index.add_argument("--no-resume", action="store_true", help="re-embed records that are already indexed")
    index.add_argument("--recreate", action="store_true",
                       help="empty the store first (needed after changing the encoder)")
    index.add_argument("--source", default=None, help="source name for FILES (default 'custom')")
    index.add_argument("--report", default=None, help="report for FILES (default: the header's '# report:' comment)")
    index.add_argument("--scp-codes", default="{}", help='labels for FILES as JSON, e.g. \'{"NORM": 100}\'')
    index.add_argument("--patient-id", default="")
    index.add_argument("--batch-id", default=None, help="id of this insert, for rollback (default: a new one)")
    index.add_argument("--migrate-to", metavar="URL",
                       help="copy the whole store (--data-dir/--qdrant-url) into the Qdrant at URL, vectors and "
                            "payloads as they are (no re-embedding)")
    _add_store_flags(index)
    _add_runtime_flag(index)
    _add_index_flags(index)

    calibrate = sub.add_parser(
        "calibrate", help="fit the diagnosis calibration of a corpus on validation ECGs and keep it with the corpus")
    calibrate.add_argument("--ptbxl", type=Path, help="PTB-XL-layout folder holding the validation ECGs")
    calibrate.add_argument("--folds", default="8",
                           help="validation folds (default 8): not the folds you report on, nor ones the encoder "
                           "learnt the labels of")
    calibrate.add_argument("--out", type=Path, help="also write the calibration to this JSON file")
    calibrate.add_argument("--from-file", type=Path,
                           help="install a calibration JSON fitted elsewhere (refused for another encoder)")
    calibrate.add_argument("--dry-run", action="store_true", help="fit and print, keep nothing in the store")
    _add_store_flags(calibrate)
    _add_runtime_flag(calibrate)

    corpus = sub.add_parser("corpus", help="operate on a store directly (the server must not hold it)")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    for name, text in (("stats", "points, HNSW coverage, optimizer state, index settings"),
                       ("batches", "the inserts the corpus holds, oldest first"),
                       ("optimize", "build the HNSW index over points written since the last build")):
        _add_store_flags(corpus_sub.add_parser(name, help=text))
    rollback = corpus_sub.add_parser("rollback", help="delete every record one insert wrote")
    rollback.add_argument("batch_id")
    _add_store_flags(rollback)
    snapshot = corpus_sub.add_parser("snapshot", help="write the embedded store to one tar file")
    snapshot.add_argument("--out", type=Path, required=True)
    _add_store_flags(snapshot)
    restore = corpus_sub.add_parser("restore", help="replace the embedded store by a snapshot")
    restore.add_argument("archive", type=Path)
    restore.add_argument("--force", action="store_true", help="replace an existing store")
    _add_store_flags(restore)

    evaluate = sub.add_parser("evaluate", help="the paper's tables: report generation (I) and ECG-QA (II)")
    esub = evaluate.add_subparsers(dest="evaluate_command", required=True)
    ev_report = esub.add_parser("report", help="Table I: retrieved reports vs ground truth, with baselines")
    ev_report.add_argument("--ptbxl", type=Path, required=True, help="PTB-XL-layout folder (index, and test unless --mimic)")
    ev_report.add_argument("--index-folds", default="1-8")
    ev_report.add_argument("--test-folds", default="9")
    ev_report.add_argument("--mimic", type=Path, help="MIMIC-IV-ECG-layout folder to take the test queries from (cross-domain)")
    ev_report.add_argument("--limit", type=int, help="at most N test records (the first N by id)")
    ev_report.add_argument("--no-bertscore", action="store_true", help="skip BERTScore (the slowest metric)")
    ev_report.add_argument("--calibration-folds", default="auto",
                           help="folds (of --ptbxl, searched against the index with their own patient left out) "
                           "that fit the diagnosis calibration; auto = the highest index fold; none = raw votes")
    ev_qa = esub.add_parser("qa", help="Table II: ECG-QA exact match per question type")
    ev_qa.add_argument("--ptbxl", type=Path, required=True)
    ev_qa.add_argument("--questions", type=Path, nargs="+", required=True, help="ECG-QA JSON files or folders")
    ev_qa.add_argument("--index-folds", default="1-8")
    ev_qa.add_argument("--answerer", default="labels", choices=["labels", "llm"])
    ev_qa.add_argument("--k", type=int, default=3)
    ev_qa.add_argument("--limit", type=int, help="at most N questions")
    ev_qa.add_argument("--test-folds", default=None,
                       help="only questions about ECGs of these folds, e.g. 9 (default: every fold with questions)")
    ev_qa.add_argument("--encoder-folds", default="1-7 (labels) / 1-8 (self-supervised)",
                       help="note recorded in the JSON: the folds the encoder was trained on")
    ev_qa.add_argument("--calibration-folds", default="9,8",
                       help="A,B: the diagnosis calibration is fitted on fold A for questions on other folds, on fold B "
                            "for questions on fold A")
    ev_qa.add_argument("--fit-folds", default="1-8",
                       help="folds whose generated questions fit the answerer's band edges (less the question's fold "
                            "and its calibration fold)")
    ev_qa.add_argument("--no-diagnoses", action="store_true",
                       help="answer by the neighbours' vote as before the calibrated diagnoses")
    add_llm_flags(ev_qa)
    for p in (ev_report, ev_qa):
        p.add_argument("--json", type=Path, dest="json_out", help="write the result as JSON")
        p.add_argument("--data-dir", type=Path, default=Path("./var/eval"), help="where the cached evaluation index lives")
        p.add_argument("--qdrant-url", default=None)
        p.add_argument("--checkpoint", type=Path, default=None)
    ev_report.add_argument("--markdown", type=Path, help="write the table as markdown")
    ev_report.add_argument("--plot", type=Path, help="write a bar chart PNG")

    export = sub.add_parser("export", help="write Triton model repositories for the encoder, verified numerically")
    export.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped encoder")
    export.add_argument("--out", type=Path, default=Path("deploy/triton/model_repository"),
                        help="production repository (ONNX on onnxruntime_onnx, TorchScript on pytorch_libtorch)")
    export.add_argument("--python-out", type=Path, default=None,
                        help="python-backend repository (default: OUT with _python appended)")
    export.add_argument("--verify-ptbxl", type=Path, default=DEMO_PTBXL, help="records to verify on (PTB-XL layout)")
    export.add_argument("--verify-folds", default="9")
    export.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed")
    export.add_argument("--tensorrt-fp16", action="store_true", help="production config: TensorRT FP16 on GPU")

    generate = sub.add_parser("qa-generate", help="ECG-QA-style questions from PTB-XL metadata")
    generate.add_argument("--ptbxl", type=Path, required=True)
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--folds", default=None, help="only records of these folds (default: all)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--check", type=Path, nargs="+",
                          help="real ECG-QA question files to validate the answer rules against")

    pretrain = sub.add_parser("pretrain", help="self-supervised pre-training of the ECG encoder")
    pretrain.add_argument("--ptbxl", type=Path, required=True)
    pretrain.add_argument("--folds", default="1-8")
    pretrain.add_argument("--val-folds", default="9")
    pretrain.add_argument("--config", default="small", help="encoder size: small (CPU) or paper (768-d, 12 layers)")
    pretrain.add_argument("--recipe", default="paper+contrastive",
                          help="losses: paper (MEM+MLM+ETM), mem-only, paper+contrastive (default); labels = "
                               "second stage on SCP labels (supervised contrastive + BCE + report InfoNCE)")
    pretrain.add_argument("--init-from", default="",
                          help="serving checkpoint to start the encoder from (default: the shipped self-supervised "
                               "encoder-small-ssl.pt for the labels recipes, random init otherwise; 'random' forces "
                               "random init)")
    pretrain.add_argument("--out", type=Path, required=True, help="run folder (log.jsonl, last.pt, encoder.pt)")
    pretrain.add_argument("--epochs", type=int, default=10)
    pretrain.add_argument("--batch-size", type=int, default=32)
    pretrain.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 3e-4; labels: 5e-4)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--text-model", default="", help="local BERT folder (default: bundled all-MiniLM-L6-v2)")
    pretrain.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    pretrain.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps (smoke runs)")

    sim = sub.add_parser("simulate-monitors", help="replay WFDB records as live bedside monitors (StreamECG)")
    sim.add_argument("--records", type=Path, required=True, help="a PTB-XL-layout folder")
    sim.add_argument("--folds", default=None, help="only records of these folds (default: all)")
    sim.add_argument("--monitors", type=int, default=4)
    sim.add_argument("--speed", type=float, default=1.0, help="1.0 = real time; 2.0 = twice as fast")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds of ECG per monitor (records loop)")
    sim.add_argument("--rate", type=float, default=None, help="resample the records to this rate (e.g. 500)")
    sim.add_argument("--chunk-ms", type=float, default=250.0, help="samples per chunk, in ms")
    sim.add_argument("--window", type=float, default=10.0)
    sim.add_argument("--server", default=DEFAULT_SERVER)

    bench = sub.add_parser(
        "bench", help="performance: encoder, search vs FAISS, gRPC end to end, streams, memory (JSON + markdown)",
        description="Without a sub-command: every section, the targets checked, bench-DATE.json/.md written to --out.",
    )
    bench.add_argument("--ptbxl", type=Path, default=DEMO_PTBXL, help="PTB-XL-layout folder (default: demo corpus)")
    bench.add_argument("--index-folds", default="1-8")
    bench.add_argument("--query-folds", default="9")
    bench.add_argument("--sections", default="encoder,search,service", help="which parts to run, comma-separated")
    bench.add_argument("--quick", action="store_true", help="toy sizes (about a minute): checks the command works")
    bench.add_argument("--batch-sizes", help="encoder batch sizes (default 1,8,32,64)")
    bench.add_argument("--triton", help="Triton row of the encoder table: 'local' (bundled tritonserver, CPU, the "
                       "default), a running Triton's gRPC HOST:PORT (e.g. on a GPU), or 'none'")
    bench.add_argument("--sizes", help="search corpus sizes (default 2000,20000,200000; add 1000000 if memory allows)")
    bench.add_argument("--hnsw-ef", help="HNSW beam widths (default 64,128,256)")
    bench.add_argument("--queries", type=int, help="search queries (default 200)")
    bench.add_argument("--corpus-size", type=int, help="records in the served corpus (default 20000)")
    bench.add_argument("--concurrency", help="calls in flight per level (default 1,8,32,128)")
    bench.add_argument("--duration", type=float, help="seconds per concurrency level (default 10)")
    bench.add_argument("--monitors", help="live monitors per streaming level (default 300,600,900; 'none' skips)")
    bench.add_argument("--stream-seconds", type=float, help="seconds per streaming level (default 40)")
    bench.add_argument("--work-dir", type=Path, default=Path("./var/bench"))
    bench.add_argument("--out", type=Path, default=Path("docs/bench"), help="where bench-DATE.json and .md go")
    bench_sub = bench.add_subparsers(dest="bench_command")
    bench_store = bench_sub.add_parser("store", help="vector store at scale: recall, latency, build, memory, disk")
    bench_store.add_argument("--ptbxl", type=Path, required=True, help="PTB-XL-layout folder (real embeddings)")
    bench_store.add_argument("--sizes", default="20000,200000", help="corpus sizes, comma-separated")
    bench_store.add_argument("--index-folds", default="1-8")
    bench_store.add_argument("--query-folds", default="9")
    bench_store.add_argument("--queries", type=int, default=200)
    bench_store.add_argument("--concurrency", default="1,4,16", help="threads searching at once, comma-separated")
    bench_store.add_argument("--hnsw-ef", default="64,128,256", help="beam widths to measure, comma-separated")
    bench_store.add_argument("--noise-cosine", type=float, default=0.93,
                             help="cosine of the noisy copies (that scale the corpus) to their source")
    bench_store.add_argument("--work-dir", type=Path, default=Path("./var/bench"))
    bench_store.add_argument("--json", type=Path, dest="json_out")
    bench_store.add_argument("--markdown", type=Path)
    _add_index_flags(bench_store)
    bench_load = bench_sub.add_parser("load", help="a running server under concurrent GenerateReport calls")
    bench_load.add_argument("--server", default=DEFAULT_SERVER)
    bench_load.add_argument("--records", type=Path, default=DEMO_PTBXL, help="PTB-XL-layout folder of queries")
    bench_load.add_argument("--folds", default="9")
    bench_load.add_argument("--concurrency", default="1,8,32,128")
    bench_load.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    bench_load.add_argument("--json", type=Path, dest="json_out")

    client = sub.add_parser("client", help="call a running server")
    csub = client.add_subparsers(dest="client_command", required=True)

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=help_text)
        p.add_argument("--server", default=DEFAULT_SERVER, help=f"HOST:PORT (default {DEFAULT_SERVER})")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    report = client_parser("report", "generate a report for a WFDB record")
    report.add_argument("record", help="WFDB record path without extension")
    report.add_argument("--k", type=int, default=3)
    report.add_argument("--exclude-patient", default=None, help="leave out this patient's records")
    report.add_argument("--plot", type=Path, help="write a PNG of the query beside its top-3 neighbours")
    report.add_argument("--report-mode", default="", choices=["", "top1", "consensus"],
                        help="whose report: top1 (closest), consensus (agrees best with the diagnoses); "
                        "default: the server's")
    report.add_argument("--refine", action="store_true",
                        help="let the server's LLM rewrite the top-1 report against the top-k evidence (streamed)")
    report.add_argument("--ptbxl", type=Path, action="append", default=[],
                        help="PTB-XL-layout folder(s) holding the neighbours' signals for --plot (the demo corpus is always looked in)")

    ask = client_parser("ask", "answer a question about a WFDB record")
    ask.add_argument("record")
    ask.add_argument("question")
    ask.add_argument("--options", default="", help="allowed answers, comma-separated (e.g. yes,no,not sure)")
    ask.add_argument("--answerer", default="labels", choices=["labels", "llm"])
    ask.add_argument("--k", type=int, default=3)
    ask.add_argument("--question-type", default="", choices=["", "single-verify", "single-choose", "single-query"],
                     help="ECG-QA question type (default: inferred from the options and wording)")

    insert = client_parser("insert", "insert WFDB records with their report and labels")
    insert.add_argument("records", nargs="+")
    insert.add_argument("--report", default="")
    insert.add_argument("--scp-codes", default="{}", help='JSON, e.g. \'{"NORM": 100}\'')
    insert.add_argument("--ecg-id", default=None, help="id of the record (default: the file name)")
    insert.add_argument("--patient-id", default="")
    insert.add_argument("--source", default="custom")

    delete = client_parser("delete", "delete records by ecg_id")
    delete.add_argument("ecg_ids", nargs="+")
    delete.add_argument("--source", default="custom")

    client_parser("stats", "corpus statistics")
    client_parser("info", "server version, encoder and LLM state")
    client_parser("batches", "the inserts the corpus holds")
    client_rollback = client_parser("rollback", "delete every record one insert wrote")
    client_rollback.add_argument("batch_id")
    client_parser("snapshot", "back up the server's embedded store (written on the server host)")
    client_parser("optimize", "build the HNSW index over recently inserted points (the server pauses meanwhile)")
    return parser


def _scp_codes(text: str) -> dict[str, float]:
    try:
        codes = json.loads(text)
        if not isinstance(codes, dict):
            raise ValueError
        return {str(k): float(v) for k, v in codes.items()}
    except (ValueError, TypeError):
        raise SystemExit(f'--scp-codes must be a JSON object of code -> likelihood, got {text!r}') from None


def _records_from_files(args: argparse.Namespace) -> list[EcgRecord]:
    records = []
    for f in args.files:
        path = Path(f).with_suffix("") if Path(f).suffix in {".hea", ".dat"} else Path(f)
        report = args.report
        if report is None:
            comments = wfdb_comments(path)
            report = next((c.split(":", 1)[1].strip() for c in comments if c.lower().startswith("report:")), "")
        records.append(
            EcgRecord(
                ecg_id=path.name, patient_id=args.patient_id, report=report, scp_codes=_scp_codes(args.scp_codes),
                source=args.source or "custom", path=path,
            )
        )
    return records


def _find_signal(ecg_id: str, folders: list[Path]):  # noqa: ANN202
    """A neighbour's ECG from a PTB-XL-layout folder, for plotting (None if not found)."""
    if not ecg_id.isdigit():
        return None
    n = int(ecg_id)
    for folder in folders:
        path = folder / "records100" / f"{n // 1000 * 1000:05d}" / f"{n:05d}_lr"
        if path.with_suffix(".hea").exists():
            return read_wfdb(path)
    return None


def run_index(args: argparse.Namespace) -> None:
    from ecgregen.indexer.build import GrpcSink, LocalSink, index_records

    if bool(args.ptbxl) == bool(args.files):
        raise SystemExit("give either --ptbxl DIR or record FILES")
    records = load_ptbxl(args.ptbxl, parse_folds(args.folds)) if args.ptbxl else _records_from_files(args)
    if not records:
        raise SystemExit(f"no records with signals found ({args.ptbxl or args.files}, folds {args.folds})")
    if args.server:
        if args.recreate:
            raise SystemExit("--recreate works on a store (--data-dir/--qdrant-url), not through --server")
        report = index_records(records, GrpcSink(args.server), batch_size=args.batch_size, resume=False,
                               batch_id=args.batch_id)
    else:
        from ecgregen.pipeline import open_pipeline

        pipeline = open_pipeline(args.data_dir, args.qdrant_url, args.checkpoint, recreate=args.recreate,
                                 index=_index_settings(args), triton_url=args.triton_url,
                                 triton_model=args.triton_model, triton_wait_s=args.triton_wait,
                                 encoder_runtime=args.encoder_runtime)
        try:
            report = index_records(records, LocalSink(pipeline), batch_size=args.batch_size, resume=not args.no_resume,
                                   batch_id=args.batch_id)
        finally:
            pipeline.store.close()
    print(report.summary())


def run_migrate(args: argparse.Namespace) -> None:
    from ecgregen.indexer.migrate import migrate
    from ecgregen.store import open_store

    if args.files or args.ptbxl:
        raise SystemExit("--migrate-to copies a whole store; give no FILES or --ptbxl")
    with open_store(args.data_dir, args.qdrant_url) as source, open_store(args.data_dir, args.migrate_to) as target:
        print(migrate(source, target).summary())


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} takes comma-separated integers, got {text!r}") from None


def _bench_config(args: argparse.Namespace) -> BenchConfig:
    """The suite's configuration: --quick or the full defaults, with every flag given on top."""
    from ecgregen.bench.suite import BenchConfig

    given: dict[str, Any] = {}
    for flag in ("batch_sizes", "sizes", "hnsw_ef", "concurrency"):
        if getattr(args, flag):
            given[flag] = _ints(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.monitors:
        given["monitors"] = () if args.monitors == "none" else _ints(args.monitors, "--monitors")
    for flag, key in (("queries", "queries"), ("corpus_size", "corpus_size"), ("duration", "duration_s"),
                      ("stream_seconds", "stream_seconds")):
        if getattr(args, flag) is not None:
            given[key] = getattr(args, flag)
    if args.triton:
        given["triton"] = None if args.triton == "none" else args.triton
    common = dict(index_folds=parse_folds(args.index_folds), query_folds=parse_folds(args.query_folds),
                  sections=[s.strip() for s in args.sections.split(",") if s.strip()], work_dir=args.work_dir,
                  command=" ".join(["ecgregen", *sys.argv[1:]]), **given)
    return BenchConfig.quick(args.ptbxl, **common) if args.quick else BenchConfig(args.ptbxl, **common)


def run_bench(args: argparse.Namespace) -> None:
    if args.bench_command is None:
        from ecgregen.bench.suite import format_bench, write_bench
        from ecgregen.bench.suite import run_bench as run_suite

        result = run_suite(_bench_config(args))
        json_path, md_path = write_bench(result, args.out)
        print(format_bench(result))
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
        return
    if args.bench_command == "load":
        from ecgregen.bench.load import format_load, run_load

        rows = asyncio.run(run_load(args.server, load_ptbxl(args.records, parse_folds(args.folds)),
                                    concurrency=_ints(args.concurrency, "--concurrency"), duration_s=args.duration))
        if args.json_out:
            args.json_out.write_text(json.dumps(rows, indent=2))
        print(format_load(rows, f"GenerateReport load on {args.server}, {args.duration:g} s per level"))
        return
    from ecgregen.bench.store import format_store_bench, run_store_bench

    result = run_store_bench(
        _ints(args.sizes, "--sizes"), ptbxl_dir=args.ptbxl, index_folds=parse_folds(args.index_folds),
        query_folds=parse_folds(args.query_folds), work_dir=args.work_dir, n_queries=args.queries,
        concurrency=_ints(args.concurrency, "--concurrency"), index=_index_settings(args),
        hnsw_ef=_ints(args.hnsw_ef, "--hnsw-ef"), noise_cosine=args.noise_cosine,
    )
    table = format_store_bench(result)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    print(table)


def run_simulate(args: argparse.Namespace) -> None:
    from ecgregen.simulate import simulate

    records = load_ptbxl(args.records, parse_folds(args.folds) if args.folds else None)
    if not records:
        raise SystemExit(f"no records with signals in {args.records}")
    summary = asyncio.run(simulate(
        records, monitors=args.monitors, server=args.server, speed=args.speed, duration_s=args.duration,
        rate_hz=args.rate, chunk_s=args.chunk_ms / 1000, window_s=args.window,
    ))
    for error in summary.errors[:10]:
        print(f"error: {error}", file=sys.stderr)
    print(summary.line())
    if summary.errors:
        sys.exit(1)


def run_calibrate(args: argparse.Namespace) -> None:
    from ecgregen.calibrate import calibrate_records, save, summary
    from ecgregen.diagnoses import Calibration
    from ecgregen.pipeline import open_pipeline

    if bool(args.ptbxl) == bool(args.from_file):
        raise SystemExit("give --ptbxl DIR (fit on its --folds) or --from-file FILE (install a fitted calibration)")
    pipeline = open_pipeline(args.data_dir, args.qdrant_url, args.checkpoint, triton_url=args.triton_url,
                             triton_model=args.triton_model, triton_wait_s=args.triton_wait,
                             encoder_runtime=args.encoder_runtime)
    try:
        if pipeline.store.count() == 0:
            raise SystemExit("the corpus is empty: index it first (ecgregen index ...), then calibrate")
        if args.from_file:
            calibration = Calibration.from_json(json.loads(args.from_file.read_text()))
        else:
            folds = parse_folds(args.folds)
            records = load_ptbxl(args.ptbxl, folds)
            if not records:
                raise SystemExit(f"no records of folds {args.folds} in {args.ptbxl}")
            calibration = calibrate_records(pipeline, records, description=f"{args.ptbxl} folds {args.folds}")
        if not args.dry_run:
            save(pipeline, calibration)
        if args.out:
            args.out.write_text(json.dumps(calibration.to_json(), indent=1))
        print(summary(calibration))
        print("dry run: nothing kept" if args.dry_run else "kept with the corpus; a server started on it serves it")
    finally:
        pipeline.store.close()


def run_corpus(args: argparse.Namespace) -> None:
    from ecgregen.store import open_store, restore_snapshot

    cmd = args.corpus_command
    if cmd == "restore":
        if args.qdrant_url:
            raise SystemExit("restore writes the embedded store (--data-dir); a Qdrant server restores its own snapshots")
        target = args.data_dir / "qdrant-edge" / "ecgregen"
        restore_snapshot(args.archive, target, force=args.force)
        with open_store(args.data_dir) as store:
            print(f"restored {args.archive} into {target}: {store.count()} points")
        return
    with open_store(args.data_dir, args.qdrant_url) as store:
        if cmd == "stats":
            print("\n".join(f"{k}: {v}" for k, v in dataclasses.asdict(store.stats()).items()))
        elif cmd == "batches":
            batches = store.batches()
            for b in batches:
                print(f"{b.batch_id or '(no batch id)'}  {b.points} points  {b.first_inserted_at} .. {b.last_inserted_at}")
            print(f"{len(batches)} batches")
        elif cmd == "rollback":
            print(f"deleted {store.delete_batch(args.batch_id)} records of batch {args.batch_id}")
        elif cmd == "optimize":
            start = time.perf_counter()
            store.optimize()
            stats = store.stats()
            print(f"optimized in {time.perf_counter() - start:.1f} s: {stats.indexed_vectors} of {stats.points} "
                  f"points indexed, {stats.segments} segments")
        elif cmd == "snapshot":
            path, points = store.snapshot(args.out)
            print(f"snapshot of {points} points written to {path} ({path.stat().st_size / 1e6:.1f} MB)")


def run_evaluate(args: argparse.Namespace) -> None:
    if args.evaluate_command == "report":
        from ecgregen.evaluate.report import evaluate_reports, markdown_table, write_outputs
        from ecgregen.records import load_mimic_ecg

        index_folds = parse_folds(args.index_folds)
        index = load_ptbxl(args.ptbxl, index_folds)
        if args.mimic:
            queries, test = load_mimic_ecg(args.mimic, args.limit), f"MIMIC-IV-ECG {args.mimic}"
        else:
            test_folds = parse_folds(args.test_folds)
            queries = sorted(load_ptbxl(args.ptbxl, test_folds), key=lambda r: int(r.ecg_id))[: args.limit]
            test = f"{args.ptbxl} folds {args.test_folds}"
        if not index or not queries:
            raise SystemExit(f"nothing to evaluate: {len(index)} index records, {len(queries)} test records")
        calibration_folds = (
            [] if args.calibration_folds == "none"
            else [max(index_folds)] if args.calibration_folds == "auto" else parse_folds(args.calibration_folds)
        )
        calibration = load_ptbxl(args.ptbxl, calibration_folds) if calibration_folds else []
        result = evaluate_reports(
            index, queries, calibration=calibration, data_dir=args.data_dir, qdrant_url=args.qdrant_url,
            checkpoint=args.checkpoint, bertscore=not args.no_bertscore,
        )
        result.update(index_folds=index_folds, index=f"{args.ptbxl} folds {args.index_folds}", test=test,
                      calibration_folds=calibration_folds, calibration_source=f"{args.ptbxl} folds {calibration_folds}")
        if not args.mimic:
            result["test_folds"] = parse_folds(args.test_folds)
        write_outputs(result, args.json_out, args.markdown, args.plot)
        print(markdown_table(result))
    else:
        from ecgregen.evaluate.qa import evaluate_qa, format_qa

        calibration_folds = [int(f) for f in args.calibration_folds.split(",") if f.strip()]
        if len(calibration_folds) != 2 or calibration_folds[0] == calibration_folds[1]:
            raise SystemExit(f"--calibration-folds takes two different folds A,B; got {args.calibration_folds!r}")
        result = evaluate_qa(
            args.ptbxl, args.questions, parse_folds(args.index_folds), answerer=args.answerer, k=args.k,
            limit=args.limit, data_dir=args.data_dir, qdrant_url=args.qdrant_url, checkpoint=args.checkpoint,
            llm=llm_config_from_args(args),
            test_folds=parse_folds(args.test_folds) if args.test_folds else None,
            diagnoses=not args.no_diagnoses, calibration_folds=(calibration_folds[0], calibration_folds[1]),
            fit_folds=parse_folds(args.fit_folds), encoder_folds=args.encoder_folds,
        )
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2))
        print(format_qa(result))


def _tls(args: argparse.Namespace):  # noqa: ANN202 - TlsSettings, imported lazily
    from ecgregen.server.security import TlsSettings

    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    return TlsSettings(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None


def run_security(args: argparse.Namespace) -> None:
    from ecgregen.server.security import add_key, make_dev_certs

    if args.command == "certs":
        for path in make_dev_certs(args.out, args.host or ["localhost"]):
            print(path)
    else:
        token = add_key(args.file, args.name, {r.strip() for r in args.roles.split(",") if r.strip()})
        print(f"token for {args.name} (shown once; {args.file} keeps only its hash):\n{token}")


def run_export(args: argparse.Namespace) -> None:
    from ecgregen.encoders.checkpoint import load_encoder
    from ecgregen.encoder_export.export import ExportMismatch, export_repositories

    records = load_ptbxl(args.verify_ptbxl, parse_folds(args.verify_folds))
    python_out = args.python_out or args.out.with_name(args.out.name + "_python")
    try:
        report = export_repositories(load_encoder(args.checkpoint), records, args.out, python_out,
                                     tolerance=args.tolerance, tensorrt_fp16=args.tensorrt_fp16)
    except ExportMismatch as exc:
        raise SystemExit(str(exc)) from None
    print(report.summary())


def run_qa_generate(args: argparse.Namespace) -> None:
    from ecgregen.evaluate.ecgqa import write_generated

    folds = parse_folds(args.folds) if args.folds else None
    summary = write_generated(args.ptbxl, args.out, folds=folds, seed=args.seed)
    if args.check:
        from ecgregen.evaluate.ecgqa import PtbxlMetadata, check_against_real, load_questions

        # The fullest metadata table the folder has: the real questions refer to ECGs without signals too.
        table = args.ptbxl / "ptbxl_database_all_reports.csv"
        metadata = PtbxlMetadata.from_csv(table if table.exists() else args.ptbxl / "ptbxl_database.csv")
        summary["check"] = check_against_real(load_questions(args.check), metadata)
    print(json.dumps(summary, indent=2))


def run_pretrain(args: argparse.Namespace) -> None:
    from ecgregen.encoders.model import CONFIGS
    from ecgregen.pretrain.model import RECIPES
    from ecgregen.pretrain.train import TrainSettings, pretrain

    if args.config not in CONFIGS or args.recipe not in RECIPES:
        raise SystemExit(f"--config is one of {', '.join(CONFIGS)}; --recipe one of {', '.join(RECIPES)}")
    train, val = load_ptbxl(args.ptbxl, parse_folds(args.folds)), load_ptbxl(args.ptbxl, parse_folds(args.val_folds))
    if len(train) < args.batch_size or len(val) < 2:
        raise SystemExit(f"too few records: {len(train)} training (folds {args.folds}), {len(val)} validation")
    settings = TrainSettings(
        encoder=args.config, recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (5e-4 if RECIPES[args.recipe].stage == "labels" else 3e-4),
        seed=args.seed, text_model=args.text_model, init_from=str(args.init_from or ""),
    )
    summary = pretrain(train, val, args.out, settings, resume=args.resume, max_steps=args.max_steps)
    if summary:
        print(json.dumps(summary, indent=2))


def run_client(args: argparse.Namespace) -> None:
    from ecgregen import client

    cmd = args.client_command
    if cmd == "report":
        streaming = args.refine and not args.json
        if streaming:
            print("Refining: ", end="", flush=True)
        result, ecg = client.report(
            args.server, args.record, args.k, args.exclude_patient, refine=args.refine, report_mode=args.report_mode,
            on_delta=(lambda d: print(d, end="", flush=True)) if streaming else None,
        )
        if streaming:
            print("\n")
        if args.plot:
            folders = [*args.ptbxl, DEMO_PTBXL]
            neighbours = [_find_signal(n["ecg_id"], folders) if n["source"] == PTBXL_SOURCE else None
                          for n in result["neighbours"][:3]]
            client.plot_report(ecg, Path(args.record).name, result, neighbours, args.plot)
        print(client.dumps(result) if args.json else client.format_report(result))
        if args.plot and not args.json:
            print(f"plot written to {args.plot}")
    elif cmd == "ask":
        options = [o.strip() for o in args.options.split(",") if o.strip()]
        result = client.ask(args.server, args.record, args.question, options, args.answerer, args.k, args.question_type)
        print(client.dumps(result) if args.json else client.format_answer(result))
    elif cmd == "insert":
        result = client.insert(
            args.server, args.records, report_text=args.report, scp_codes=_scp_codes(args.scp_codes),
            ecg_id=args.ecg_id, patient_id=args.patient_id, source=args.source,
        )
        print(client.dumps(result) if args.json else
              f"inserted {result['inserted']}, updated {result['updated']}, rejected {result['rejected']} "
              f"(batch {result['batch_id']})"
              + "".join(f"\n  record {r['index']} ({r['ecg_id']}): {r['reason']}" for r in result["rejections"]))
    elif cmd == "delete":
        result = client.delete(args.server, args.ecg_ids, args.source)
        print(client.dumps(result) if args.json else f"deleted {result['deleted']}")
    elif cmd in ("stats", "info", "snapshot", "optimize"):
        calls = {"stats": client.stats, "info": client.info, "snapshot": client.snapshot,
                 "optimize": lambda address: client.stats(address, optimize=True)}
        result = calls[cmd](args.server)
        print(client.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    elif cmd == "batches":
        result = client.batches(args.server)
        print(client.dumps(result) if args.json else "\n".join(
            f"{b['batch_id'] or '(no batch id)'}  {b['points']} points  {b['first_inserted_at']} .. {b['last_inserted_at']}"
            for b in result["batches"]) + f"\n{len(result['batches'])} batches")
    elif cmd == "rollback":
        result = client.rollback(args.server, args.batch_id)
        print(client.dumps(result) if args.json else f"deleted {result['deleted']} records of batch {args.batch_id}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpx2"):  # one INFO line per LLM request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ecgregen.client import ClientError
    from ecgregen.encoders.base import EncoderUnavailable
    from ecgregen.store import StoreError

    try:
        if args.command == "serve":
            from ecgregen.server.app import ServeSettings, serve

            settings = ServeSettings(
                host=args.host, port=args.port, metrics_host=args.metrics_host, metrics_port=args.metrics_port,
                data_dir=args.data_dir, qdrant_url=args.qdrant_url, checkpoint=args.checkpoint,
                seed_demo=not args.no_demo, llm=llm_config_from_args(args), index=_index_settings(args),
                triton_url=args.triton_url, triton_model=args.triton_model, triton_wait_s=args.triton_wait,
                max_streams=args.max_streams, max_in_flight=args.max_inflight, tls=_tls(args),
                tokens_file=args.tokens, rate_limit=args.rate_limit, daily_quota=args.daily_quota,
                max_message_bytes=int(args.max_message_mb * 1024 * 1024), max_stream_s=args.max_stream_s,
                triton_fallback_local=args.triton_fallback_local, encoder_runtime=args.encoder_runtime,
                report_mode=args.report_mode,
            )
            asyncio.run(serve(settings))
        elif args.command == "index":
            run_migrate(args) if args.migrate_to else run_index(args)
        elif args.command == "calibrate":
            run_calibrate(args)
        elif args.command == "corpus":
            run_corpus(args)
        elif args.command == "bench":
            run_bench(args)
        elif args.command == "export":
            run_export(args)
        elif args.command == "simulate-monitors":
            run_simulate(args)
        elif args.command in ("certs", "token"):
            run_security(args)
        elif args.command == "evaluate":
            run_evaluate(args)
        elif args.command == "qa-generate":
            run_qa_generate(args)
        elif args.command == "pretrain":
            run_pretrain(args)
        else:
            run_client(args)
    except (ClientError, StoreError, EncoderUnavailable, FileNotFoundError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
