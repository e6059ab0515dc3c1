"""`ecgregen bench`: the performance suite (encoder, search against FAISS, gRPC end to end, streams, memory, the
measurement stage), and its parts run alone at scale: `bench store` (the vector store), `bench load` (a running
server) and `bench burst` (a running server's event loop under heavy calls)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecgregen.cli.flags import add_index_flags, index_settings
from ecgregen.settings import BENCH_DIR, DEFAULT_SERVER, DEMO_PTBXL

if TYPE_CHECKING:
    from ecgregen.bench.suite import BenchConfig


def add_bench(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench", help="performance: encoder, search vs FAISS, gRPC end to end, streams, memory, measurement stage, "
                      "printed page (JSON + markdown)",
        description="Without a sub-command: every section, the targets checked, bench-DATE.json/.md written to --out.",
    )
    bench.add_argument("--ptbxl", type=Path, default=DEMO_PTBXL, help="PTB-XL-layout folder (default: demo corpus)")
    bench.add_argument("--index-folds", default="1-8")
    bench.add_argument("--query-folds", default="9")
    bench.add_argument("--sections", default="encoder,search,service,measure,print",
                       help="which parts to run, comma-separated; 'budget' (the server's CPU per call by stage, "
                            "py-spy, beside --before-tree) runs only when named")
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
    bench.add_argument("--formats", type=Path, help="hospital ECG files the measurement stage is timed on "
                       "(default ../shared/data/formats)")
    bench.add_argument("--measure-repeats", type=int, help="counted measure() calls per ECG (default 3)")
    bench.add_argument("--before-tree", type=Path, help="a checkout of the code before the measurement stage (git "
                       "worktree add DIR e4ad49e, with its generated stubs): its server is measured beside today's "
                       "in the measure section (GenerateReport at concurrency 8, monitors), alternating")
    bench.add_argument("--compare-rounds", type=int, help="GenerateReport runs per code beside --before-tree "
                       "(default 3; --duration seconds each)")
    bench.add_argument("--compare-concurrency", help="GenerateReport concurrency beside --before-tree (default 8, "
                       "the target's; 1,8 also shows what concurrent calls cost each other)")
    bench.add_argument("--compare-monitors", help="monitor levels per code beside --before-tree (default "
                       "200,250,300,350,400,500, close steps where this 2-core machine's capacity lies; "
                       "--stream-seconds each; 'none' skips)")
    bench.add_argument("--max-cpu-ratio", type=float, help="regression gate: exit 1 when the server's CPU per "
                       "GenerateReport today / --before-tree's (measure section) exceeds this at any ECG rate; "
                       "with --quick about two minutes")
    bench.add_argument("--budget-monitors", type=int, help="100 Hz monitors whose windows the budget section "
                       "profiles (default 100; 0 skips)")
    bench.add_argument("--print-records", type=int, help="query records printed beside the hospital files (default 5)")
    bench.add_argument("--print-repeats", type=int, help="counted renders per ECG and format (default 5)")
    bench.add_argument("--work-dir", type=Path, default=BENCH_DIR)
    bench.add_argument("--out", type=Path, default=Path("docs/bench"), help="where bench-DATE.json and .md go")
    bench.set_defaults(handler=run_suite)
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
    bench_store.add_argument("--work-dir", type=Path, default=BENCH_DIR)
    bench_store.add_argument("--json", type=Path, dest="json_out")
    bench_store.add_argument("--markdown", type=Path)
    add_index_flags(bench_store)
    bench_store.set_defaults(handler=run_store)
    bench_load = bench_sub.add_parser("load", help="a running server under concurrent GenerateReport calls")
    bench_load.add_argument("--server", default=DEFAULT_SERVER)
    bench_load.add_argument("--records", type=Path, default=DEMO_PTBXL, help="PTB-XL-layout folder of queries")
    bench_load.add_argument("--folds", default="9")
    bench_load.add_argument("--concurrency", default="1,8,32,128")
    bench_load.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    bench_load.add_argument("--json", type=Path, dest="json_out")
    bench_load.set_defaults(handler=run_load)
    bench_burst = bench_sub.add_parser(
        "burst", help="a running server's event loop (health checks) while a burst of heavy GenerateReport calls runs")
    bench_burst.add_argument("--server", default=DEFAULT_SERVER)
    bench_burst.add_argument("--records", type=Path, default=DEMO_PTBXL, help="PTB-XL-layout folder of queries")
    bench_burst.add_argument("--folds", default="9")
    bench_burst.add_argument("--clients", type=int, default=16, help="callers keeping a call in flight each")
    bench_burst.add_argument("--rounds", type=int, default=2, help="calls per caller")
    bench_burst.add_argument("--ecg-seconds", type=float, default=300.0, help="each ECG tiled to this length")
    bench_burst.add_argument("--json", type=Path, dest="json_out")
    bench_burst.set_defaults(handler=run_burst)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} takes comma-separated integers, got {text!r}") from None


def _bench_config(args: argparse.Namespace) -> BenchConfig:
    """The suite's configuration: --quick or the full defaults, with every flag given on top."""
    from ecgregen.bench.suite import BenchConfig
    from ecgregen.records import parse_folds

    given: dict[str, Any] = {}
    for flag in ("batch_sizes", "sizes", "hnsw_ef", "concurrency", "compare_concurrency"):
        if getattr(args, flag):
            given[flag] = _ints(getattr(args, flag), "--" + flag.replace("_", "-"))
    for flag in ("monitors", "compare_monitors"):
        if getattr(args, flag):
            text = getattr(args, flag)
            given[flag] = () if text == "none" else _ints(text, "--" + flag.replace("_", "-"))
    for flag, key in (("queries", "queries"), ("corpus_size", "corpus_size"), ("duration", "duration_s"),
                      ("stream_seconds", "stream_seconds"), ("formats", "formats_dir"),
                      ("measure_repeats", "measure_repeats"), ("before_tree", "before_tree"),
                      ("compare_rounds", "compare_rounds"), ("print_records", "print_records"),
                      ("print_repeats", "print_repeats"), ("budget_monitors", "budget_monitors")):
        if getattr(args, flag) is not None:
            given[key] = getattr(args, flag)
    if args.triton:
        given["triton"] = None if args.triton == "none" else args.triton
    common = dict(index_folds=parse_folds(args.index_folds), query_folds=parse_folds(args.query_folds),
                  sections=[s.strip() for s in args.sections.split(",") if s.strip()], work_dir=args.work_dir,
                  command=" ".join(["ecgregen", *sys.argv[1:]]), **given)
    return BenchConfig.quick(args.ptbxl, **common) if args.quick else BenchConfig(args.ptbxl, **common)


def run_suite(args: argparse.Namespace) -> None:
    from ecgregen.bench.suite import cpu_gate, format_bench, run_bench, write_bench

    config = _bench_config(args)
    if args.max_cpu_ratio is not None and ("measure" not in config.sections or config.before_tree is None):
        raise SystemExit("--max-cpu-ratio compares with the code before: it needs the measure section and "
                         "--before-tree")
    result = run_bench(config)
    json_path, md_path = write_bench(result, args.out)
    print(format_bench(result))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    if args.max_cpu_ratio is not None:
        passed, lines = cpu_gate(result, args.max_cpu_ratio)
        print("\n".join(lines))
        if not passed:
            raise SystemExit(1)


def run_load(args: argparse.Namespace) -> None:
    import asyncio

    from ecgregen.bench.load import format_load, run_load
    from ecgregen.records import load_ptbxl, parse_folds

    rows = asyncio.run(run_load(args.server, load_ptbxl(args.records, parse_folds(args.folds)),
                                concurrency=_ints(args.concurrency, "--concurrency"), duration_s=args.duration))
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=2))
    print(format_load(rows, f"GenerateReport load on {args.server}, {args.duration:g} s per level"))


def run_burst(args: argparse.Namespace) -> None:
    from ecgregen.bench.burst import format_burst, run_burst
    from ecgregen.records import load_ptbxl, parse_folds

    result = run_burst(args.server, load_ptbxl(args.records, parse_folds(args.folds)), clients=args.clients,
                       rounds=args.rounds, ecg_seconds=args.ecg_seconds)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    print(format_burst(result))


def run_store(args: argparse.Namespace) -> None:
    from ecgregen.bench.store import format_store_bench, run_store_bench
    from ecgregen.records import parse_folds

    result = run_store_bench(
        _ints(args.sizes, "--sizes"), ptbxl_dir=args.ptbxl, index_folds=parse_folds(args.index_folds),
        query_folds=parse_folds(args.query_folds), work_dir=args.work_dir, n_queries=args.queries,
        concurrency=_ints(args.concurrency, "--concurrency"), index=index_settings(args),
        hnsw_ef=_ints(args.hnsw_ef, "--hnsw-ef"), noise_cosine=args.noise_cosine,
    )
    table = format_store_bench(result)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
