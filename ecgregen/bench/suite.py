"""`ecgregen bench`: the whole performance picture in one run - encoder, search, service, streams, memory, and what
the measurement stage costs (alone, and the service beside the code before it).

Each section is its own module (encoder.py, store.py, service.py, measurements.py + side_by_side.py, printout.py,
budget.py); this one
runs them in order, checks the targets the project set itself, and writes one JSON (everything measured) and one
markdown report (the tables a reader compares), both named by date so that docs/bench/ keeps a history.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecgregen.bench.measure import Progress, machine, table
from ecgregen.cli.evaluate import SHARED_FORMATS
from ecgregen.settings import BENCH_DIR

SECTIONS = ("encoder", "search", "service", "measure", "print", "budget")

# The targets of issue 12 on the 2-core CPU machine.
E2E_P99_MS, E2E_CONCURRENCY, E2E_CORPUS = 50.0, 8, 20_000
MAX_GRPC_OVERHEAD = 0.20
MIN_RECALL, MAX_HNSW_OVER_FAISS_20K = 0.99, 2.0


@dataclass
class BenchConfig:
    """Everything a run depends on; stored in the JSON so that a figure can be reproduced."""

    ptbxl_dir: Path
    index_folds: Sequence[int] = (1, 2, 3, 4, 5, 6, 7, 8)
    query_folds: Sequence[int] = (9,)
    sections: Sequence[str] = SECTIONS
    work_dir: Path = BENCH_DIR
    # encoder
    batch_sizes: Sequence[int] = (1, 8, 32, 64)
    triton: str | None = "local"
    encoder_min_seconds: float = 2.0
    # search
    sizes: Sequence[int] = (2_000, 20_000, 200_000)
    hnsw_ef: Sequence[int] = (64, 128, 256)
    queries: int = 200
    # service
    corpus_size: int = E2E_CORPUS
    concurrency: Sequence[int] = (1, 8, 32, 128)
    duration_s: float = 10.0
    monitors: Sequence[int] = (300, 600, 900)
    stream_seconds: float = 40.0
    stream_speed: float = 1.0
    stream_rate_hz: float = 100.0
    encoder_runtime: str = "onnxruntime"
    compare_runtime: str | None = "torch"
    # measure: the stage alone on these files and the query folds' records (None: all of them); with before_tree
    # (a checkout of the code before the stage), the service of today's code beside it, in the same run
    formats_dir: Path = SHARED_FORMATS
    measure_repeats: int = 3
    measure_records: int | None = None
    before_tree: Path | None = None
    compare_rounds: int = 3
    compare_concurrency: Sequence[int] = (E2E_CONCURRENCY,)
    compare_monitors: Sequence[int] = (200, 250, 300, 350, 400, 500)
    # print: the printed page for the query folds' first records and the hospital files (formats_dir), the index
    # folds' first three records as every page's neighbours
    print_records: int = 5
    print_repeats: int = 5
    # budget: the server's CPU per call split by stage (py-spy), today's code and before_tree's; concurrency 8 as the
    # side by side's GenerateReport runs, duration_s per run, budget_monitors 100 Hz monitors for stream_seconds
    budget_monitors: int = 100
    seed: int = 0
    command: str = ""

    @classmethod
    def quick(cls, ptbxl_dir: Path, **overrides: Any) -> BenchConfig:
        """Every section at toy sizes (about a minute): checks that the whole command works, not the figures."""
        small = dict(batch_sizes=(1, 8), triton=None, encoder_min_seconds=0.3, sizes=(2_000,), hnsw_ef=(64,),
                     queries=50, corpus_size=2_000, concurrency=(1, 8), duration_s=1.5, monitors=(4,),
                     stream_seconds=10.0, stream_speed=5.0, measure_repeats=1, measure_records=5, compare_rounds=1,
                     compare_monitors=(4,), print_records=1, print_repeats=1, budget_monitors=4)
        return cls(ptbxl_dir=ptbxl_dir, **{**small, **overrides})


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Run the configured sections; the result holds the config, the machine, each section and the targets."""
    unknown = set(config.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    say = Progress(progress)
    started = time.perf_counter()
    work_dir = Path(config.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "config": json.loads(json.dumps(asdict(config), default=str)),
    }
    if "encoder" in config.sections:
        from ecgregen.bench.encoder import run_encoder_bench
        from ecgregen.encoders.checkpoint import load_encoder
        from ecgregen.records import load_ptbxl

        say("encoder")
        result["encoder"] = run_encoder_bench(
            load_encoder(None), load_ptbxl(config.ptbxl_dir, config.query_folds), batch_sizes=config.batch_sizes,
            triton=config.triton, min_seconds=config.encoder_min_seconds, work_dir=work_dir, progress=progress,
        )
    if "search" in config.sections:
        from ecgregen.bench.store import run_store_bench

        say("search")
        result["search"] = run_store_bench(
            config.sizes, ptbxl_dir=config.ptbxl_dir, index_folds=config.index_folds, query_folds=config.query_folds,
            work_dir=work_dir, n_queries=config.queries, concurrency=(1,), hnsw_ef=config.hnsw_ef, progress=progress,
            seed=config.seed,
        )
    if "service" in config.sections:
        from ecgregen.bench.service import run_service_bench

        say("service")
        result["service"] = run_service_bench(
            ptbxl_dir=config.ptbxl_dir, index_folds=config.index_folds, query_folds=config.query_folds,
            corpus_size=config.corpus_size, work_dir=work_dir, concurrency=config.concurrency,
            duration_s=config.duration_s, monitors=config.monitors, stream_seconds=config.stream_seconds,
            stream_speed=config.stream_speed, stream_rate_hz=config.stream_rate_hz, runtime=config.encoder_runtime,
            compare_runtime=config.compare_runtime, seed=config.seed, progress=progress,
        )
    compared_corpus: dict[str, Any] = {}  # built by the first section that compares servers, for both
    if "measure" in config.sections:
        say("measure")
        result["measure"] = run_measure_section(config, work_dir, progress, compared_corpus)
    if "print" in config.sections:
        from ecgregen.bench.printout import run_print_bench
        from ecgregen.records import load_ptbxl

        say("print")
        result["print"] = run_print_bench(
            ptbxl_dir=config.ptbxl_dir, formats_dir=Path(config.formats_dir),
            queries=load_ptbxl(config.ptbxl_dir, config.query_folds)[: config.print_records],
            neighbours=load_ptbxl(config.ptbxl_dir, config.index_folds)[:3], repeats=config.print_repeats,
            progress=progress,
        )
    if "budget" in config.sections:
        say("budget")
        result["budget"] = run_budget_section(config, work_dir, progress, compared_corpus)
    result["targets"] = check_targets(result)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def run_measure_section(config: BenchConfig, work_dir: Path, progress: bool, built: dict[str, Any]) -> dict[str, Any]:
    """The stage's CPU cost; with ``config.before_tree`` also the service of today's code beside that code, on a
    corpus of ``config.corpus_size`` records built for the two servers."""
    from ecgregen.bench.measurements import run_stage_bench
    from ecgregen.records import load_ptbxl

    queries = load_ptbxl(config.ptbxl_dir, config.query_folds)
    section: dict[str, Any] = {"stage": run_stage_bench(
        formats_dir=Path(config.formats_dir), records=queries[: config.measure_records],
        repeats=config.measure_repeats, progress=progress,
    ), "side_by_side": None}
    if config.before_tree is not None:
        from ecgregen.bench.side_by_side import run_side_by_side

        corpus = compare_corpus(config, work_dir, progress, built)
        section["side_by_side"] = {"corpus": corpus, **run_side_by_side(
            before_tree=Path(config.before_tree), data_dir=work_dir / "compare-corpus", queries=queries,
            work_dir=work_dir, rounds=config.compare_rounds, duration_s=config.duration_s,
            concurrency=config.compare_concurrency,
            monitors=config.compare_monitors, stream_seconds=config.stream_seconds, stream_speed=config.stream_speed,
            stream_rate_hz=config.stream_rate_hz, runtime=config.encoder_runtime, progress=progress,
        )}
    return section


def compare_corpus(config: BenchConfig, work_dir: Path, progress: bool, built: dict[str, Any]) -> dict[str, Any]:
    """The corpus the compared servers copy, ``config.corpus_size`` records at ``work_dir/compare-corpus``: built
    once per run (``built`` remembers it; the measure and budget sections share it, and building it is much of a
    quick run)."""
    from ecgregen.bench.service import build_corpus
    from ecgregen.store import IndexSettings

    if built:
        return built
    say = Progress(progress, "compare-corpus")
    say(f"building a {config.corpus_size}-record corpus for the compared servers")
    corpus = build_corpus(work_dir / "compare-corpus", config.corpus_size, ptbxl_dir=config.ptbxl_dir,
                          index_folds=config.index_folds, work_dir=work_dir, seed=config.seed, index=IndexSettings(),
                          say=say)
    built.update(corpus)
    return corpus


def run_budget_section(config: BenchConfig, work_dir: Path, progress: bool, built: dict[str, Any]) -> dict[str, Any]:
    """Where the server's CPU per call goes, by stage (budget.py), today's code beside ``config.before_tree``'s."""
    from ecgregen.bench.budget import run_budget
    from ecgregen.records import load_ptbxl

    corpus = compare_corpus(config, work_dir, progress, built)
    return {"corpus": corpus, **run_budget(
        before_tree=Path(config.before_tree) if config.before_tree is not None else None,
        data_dir=work_dir / "compare-corpus", queries=load_ptbxl(config.ptbxl_dir, config.query_folds),
        work_dir=work_dir, concurrency=max(config.compare_concurrency), duration_s=config.duration_s,
        monitors=config.budget_monitors, stream_seconds=config.stream_seconds, stream_speed=config.stream_speed,
        runtime=config.encoder_runtime, progress=progress,
    )}


def cpu_gate(result: dict[str, Any], max_ratio: float) -> tuple[bool, list[str]]:
    """The regression gate: the server's CPU per GenerateReport today / before (the side by side's median of
    paired ratios) at every ECG rate and concurrency measured, each at most ``max_ratio``; passed, and one line per
    ratio. A ratio that could not be measured fails: a gate that measured nothing must not pass."""
    compared = (result.get("measure") or {}).get("side_by_side")
    if not compared:
        return False, ["CPU gate: nothing to compare (it needs the measure section and --before-tree)"]
    passed, lines = True, []
    for calls in compared["summary"]["calls"]:
        ratio = calls["server_cpu_per_call_ratio"]
        ok = ratio is not None and ratio <= max_ratio
        passed &= ok
        lines.append(f"CPU gate: GenerateReport {calls['rate_hz']:g} Hz, concurrency {calls['concurrency']}: server "
                     f"CPU per call {calls['today']['server_cpu_ms_per_call']} ms today / "
                     f"{calls['before']['server_cpu_ms_per_call']} ms before = {ratio}x "
                     f"({'within' if ok else 'OVER'} {max_ratio:g}x; median of {calls['pairs']} paired run(s))")
    return passed, lines


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with what was measured and whether it holds; a target whose section did not run is absent."""
    targets: list[dict[str, Any]] = []
    encoder = result.get("encoder")
    if encoder:
        targets += encoder_targets(encoder)
    service = result.get("service")
    if service:
        levels = {r["concurrency"]: r for r in service["grpc"]["GenerateReport"]}
        if E2E_CONCURRENCY in levels and levels[E2E_CONCURRENCY]["p99_ms"] is not None:
            p99 = levels[E2E_CONCURRENCY]["p99_ms"]
            targets.append({
                "target": f"GenerateReport p99 <= {E2E_P99_MS:g} ms at concurrency {E2E_CONCURRENCY}, "
                          f"{E2E_CORPUS:,}-record corpus",
                "measured": f"{p99} ms on {service['corpus']['size']:,} records ({p99 / E2E_P99_MS:.2f}x the target)",
                "met": p99 <= E2E_P99_MS and service["corpus"]["size"] >= E2E_CORPUS,
            })
        if service["overhead"]:
            worst = max(service["overhead"], key=lambda r: r["p50_ratio"])
            targets.append({
                "target": f"gRPC overhead <= {MAX_GRPC_OVERHEAD:.0%} of in-process time (p50, every call and level)",
                "measured": f"worst {worst['p50_ratio'] - 1:+.0%} ({worst['call']}, concurrency "
                            f"{worst['concurrency']}); " + ", ".join(
                                f"c={r['concurrency']} {r['p50_ratio'] - 1:+.0%}" for r in service["overhead"]
                                if r["call"] == "GenerateReport"),
                "met": worst["p50_ratio"] <= 1 + MAX_GRPC_OVERHEAD,
            })
    search = result.get("search")
    if search:
        from ecgregen.bench.store import search_comparison

        for row in search_comparison(search, MIN_RECALL):
            if "faiss_p50_ms" not in row or row["size"] not in (20_000, 200_000):
                continue
            limit = MAX_HNSW_OVER_FAISS_20K if row["size"] == 20_000 else 1.0
            wording = f"<= {limit:g}x FAISS-flat latency" if limit > 1 else "faster than FAISS flat"
            targets.append({
                "target": f"{row['size']:,} records: recall@10 >= {MIN_RECALL} at {wording} (p50 and p99)",
                "measured": f"ef {row['hnsw_ef']}: recall@10 {row['hnsw_recall']}, p50 {row['hnsw_p50_ms']} vs "
                            f"{row['faiss_p50_ms']} ms ({row['hnsw_over_faiss_p50']}x), p99 {row['hnsw_p99_ms']} vs "
                            f"{row['faiss_p99_ms']} ms ({row['hnsw_over_faiss_p99']}x)",
                "met": row["hnsw_recall"] >= MIN_RECALL and row["hnsw_over_faiss_p50"] <= limit
                and row["hnsw_over_faiss_p99"] <= limit and (limit > 1 or row["hnsw_over_faiss_p50"] < 1),
            })
    measured = result.get("measure")
    if measured:
        from ecgregen.bench.measurements import stage_target
        from ecgregen.bench.side_by_side import side_by_side_targets

        stage = stage_target(measured["stage"])
        targets += [stage] if stage else []
        if measured["side_by_side"]:
            targets += side_by_side_targets(measured["side_by_side"])
    printed = result.get("print")
    if printed:
        from ecgregen.bench.printout import print_target

        target = print_target(printed)
        targets += [target] if target else []
    return targets


def encoder_targets(encoder: dict[str, Any]) -> list[dict[str, Any]]:
    """The encoder's speed claims, measured: batching makes each ECG cheaper on every backend, and the served
    runtime (onnxruntime) is faster than eager PyTorch at batch 1 (if not, the served default is wrong)."""
    per_ecg = {name: {r["batch"]: r["ms_per_ecg"] for r in rows} for name, rows in encoder["backends"].items()}
    targets: list[dict[str, Any]] = []
    batched = {name: (min(sizes), max(sizes)) for name, sizes in per_ecg.items() if len(sizes) > 1}
    if batched:
        targets.append({
            "target": "Encoder: batching makes each ECG cheaper (ms per ECG at the largest batch < at the smallest, "
                      "every backend)",
            "measured": "; ".join(f"{name} {per_ecg[name][lo]} ms at batch {lo}, {per_ecg[name][hi]} ms at batch {hi}"
                                  for name, (lo, hi) in batched.items()),
            "met": all(per_ecg[name][hi] < per_ecg[name][lo] for name, (lo, hi) in batched.items()),
        })
    if {"torch", "onnxruntime"} <= per_ecg.keys() and 1 in per_ecg["torch"] and 1 in per_ecg["onnxruntime"]:
        onnx, torch = per_ecg["onnxruntime"][1], per_ecg["torch"][1]
        targets.append({
            "target": "Encoder: the served runtime (onnxruntime) is faster than eager PyTorch at batch 1",
            "measured": f"onnxruntime {onnx} ms per ECG, torch {torch} ms ({onnx / torch:.2f}x)",
            "met": onnx < torch,
        })
    return targets


def _service_tables(service: dict[str, Any]) -> list[str]:
    local = {(name, r["concurrency"]): r for name, rows in service["in_process"].items() for r in rows}
    ratio = {(r["call"], r["concurrency"]): r for r in service["overhead"]}
    rows = []
    for name, levels in service["grpc"].items():
        for r in levels:
            here, over = local.get((name, r["concurrency"]), {}), ratio.get((name, r["concurrency"]), {})
            rows.append([
                name, r["concurrency"], r["ok_per_s"], f"{r['p50_ms']}/{r['p99_ms']}", here.get("ok_per_s", "-"),
                f"{here.get('p50_ms', '-')}/{here.get('p99_ms', '-')}", over.get("p50_ratio", "-"),
                over.get("throughput_ratio", "-"), r["server_cores"], r["client_cores"], r["server_rss_peak_mb"],
                sum(r["errors"].values()) + r["shed"],
            ])
    corpus = service["corpus"]
    lines = [
        f"Corpus {corpus['points']:,} records ({corpus['real_records']} real fold embeddings + noisy copies carrying "
        f"their reports), HNSW built in {corpus['hnsw_build_s']} s; {service['queries']} held-out queries sent as "
        f"raw signals, k={service['k']}; encoder runtime {service['runtime']}; AnswerQuestion: \"{service['question']}\" answered by the label vote. "
        f"{service['duration_s']} s per level, closed loop; load generator: {service['load_generator']}.", "",
        *table(["call", "concurrency", "gRPC calls/s", "gRPC p50/p99 ms", "in-process calls/s",
                "in-process p50/p99 ms", "p50 gRPC/in-process", "throughput gRPC/in-process", "server cores",
                "load generator cores", "server RSS peak MB", "errors"], rows),
    ]
    profile = service.get("profile")
    compared = service.get("compared_runtime")
    if compared:
        base = {r["concurrency"]: r for r in service["grpc"]["GenerateReport"]}
        lines += ["", f"GenerateReport over gRPC with `--encoder-runtime {compared['runtime']}` instead of "
                      f"{service['runtime']} (same corpus, queries and levels):", "",
                  *table(["concurrency", "calls/s", "p50/p99 ms", f"{service['runtime']} calls/s"],
                         [[r["concurrency"], r["ok_per_s"], f"{r['p50_ms']}/{r['p99_ms']}",
                           base.get(r["concurrency"], {}).get("ok_per_s", "-")] for r in compared["GenerateReport"]])]
    if profile and profile["samples"]:
        lines += ["", f"Where the server's time goes (py-spy, {profile['samples']} samples during {profile['call']} "
                      f"at concurrency {profile['concurrency']}; share of samples in any thread):", "",
                  *table(["stage", "share"], [[k, f"{v:.1%}"] for k, v in profile["stages"].items()])]
    return lines


def _stream_table(streams: dict[str, Any]) -> list[str]:
    rows = [[r["monitors"], r["windows"], r["dropped"], r["errors"], r["latency_p50_ms"], r["latency_p99_ms"],
             r["server_cores"], r["server_rss_mb"]] for r in streams["levels"]]
    ok = [r["monitors"] for r in streams["levels"]
          if r["latency_p99_ms"] < 1000 and not r["dropped"] and not r["errors"] and r["windows"]]
    pace = "real time" if streams["speed"] == 1 else f"{streams['speed']}x real time"
    return [
        f"Live monitors at {streams['rate_hz']:g} Hz ({pace}), {streams['window_s']:g} s windows, "
        f"{streams['seconds']:g} s each (`ecgregen simulate-monitors`, same machine). Sustained with window p99 < 1 s, "
        f"nothing dropped: {max(ok) if ok else 'none of the levels'} monitors.", "",
        *table(["monitors", "windows", "dropped", "errors", "window p50 ms", "window p99 ms", "server cores",
                "server RSS MB"], rows),
    ]


def format_bench(result: dict[str, Any]) -> str:
    """The markdown report: header (when, where, how to reproduce), targets, then one part per section."""
    from ecgregen.bench.encoder import format_encoder_bench
    from ecgregen.bench.store import format_store_bench

    host = result["machine"]
    lines = [
        f"# ecgregen benchmark, {result['date_utc'].replace('T', ' ').removesuffix('+00:00')} UTC", "",
        f"Machine: {host['cpu_count']} cores ({host['cpu_model']}), {host['memory_gb']} GB, {host['platform']}, "
        f"Python {host['python']}; CPU only. Wall time {result['wall_s']} s. Command: `{result['config']['command']}`.",
    ]
    if result["targets"]:
        lines += ["", "## Targets", "", *table(["target", "measured", "met"], [
            [t["target"], t["measured"], {True: "yes", False: "**no**", None: "undetermined"}[t["met"]]]
            for t in result["targets"]])]
    if "encoder" in result:
        lines += ["", "## 1. Encoder", "", *format_encoder_bench(result["encoder"])]
    if "search" in result:
        search = result["search"]
        lines += ["", "## 2. Search", "", format_store_bench(search).rstrip()]
        lines += [f"Skipped: {s['size']:,} records ({s['reason']})." for s in search.get("skipped_sizes", [])]
    if "service" in result:
        service = result["service"]
        memory = service["memory"]
        lines += ["", "## 3. End to end: gRPC on loopback vs the same pipeline in-process", "", *_service_tables(service)]
        if service["streams"]["levels"]:
            lines += ["", "## 4. Streaming monitors", "", *_stream_table(service["streams"])]
        lines += ["", "## 5. Memory (server process RSS)", "", *table(
            ["idle, empty corpus MB", f"idle, {service['corpus']['points']:,} records MB", "per record in RAM kB",
             "peak under load MB", "after load MB", "disk per record bytes"],
            [[memory["idle_empty_corpus_mb"], memory["idle_mb"], memory["per_record_kb"], memory["peak_mb"],
              memory["after_load_mb"], service["corpus"]["disk_per_record_bytes"]]])]
    if "measure" in result:
        from ecgregen.bench.measurements import format_stage_bench
        from ecgregen.bench.side_by_side import format_side_by_side

        lines += ["", "## 6. Measurement stage", "", *format_stage_bench(result["measure"]["stage"])]
        compared = result["measure"]["side_by_side"]
        if compared:
            corpus = compared["corpus"]
            lines += ["", "### The service beside the code before the stage", "",
                      f"Corpus {corpus['points']:,} records, built as for the service section (real fold "
                      f"embeddings scaled by noisy copies), one copy per server.", "",
                      *format_side_by_side(compared)]
    if "print" in result:
        from ecgregen.bench.printout import format_print_bench

        lines += ["", "## 7. Printed page", "", *format_print_bench(result["print"])]
    if "budget" in result:
        from ecgregen.bench.budget import format_budget

        lines += ["", "## 8. CPU budget per call", "", f"Corpus {result['budget']['corpus']['points']:,} records "
                  f"(as for the side by side), one copy per server.", "", *format_budget(result["budget"])]
    return "\n".join(lines) + "\n"


def write_bench(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """bench-YYYY-MM-DD.json and .md in ``out_dir`` (a later run the same day replaces them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{result['date_utc'][:10]}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(format_bench(result))
    return json_path, md_path
