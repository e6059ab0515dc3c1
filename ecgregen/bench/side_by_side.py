"""Today's code beside an earlier checkout of it, in the same run: GenerateReport throughput at concurrency 8 and
live-monitor window latency of one server of each, on copies of one corpus (issue 25: what the measurement stage
costs the service).

Why it is built this way:

* This machine's speed drifts from run to run by more than the effect sought (docs/performance.md), so figures of
  two runs cannot be compared. Both servers run at once, each on its own port and its own copy of the corpus, and
  are loaded in turn: throughput rounds alternate which code goes first (AB, BA, ...), monitor levels too; every
  pair gives a ratio (today / before) and the median of the pairs is the figure.
* Before each measured run the other server must have finished its backlog: the run waits until neither server
  uses CPU, so no run pays for its predecessor.
* The server's own CPU per call (``/proc``) is reported beside throughput: on a machine shared with the load
  generator and other processes it is the steadier measure of what a call costs.
* Concurrency 8 is the target's; concurrency 1 beside it separates what a call costs from what concurrent calls
  cost each other (work that holds the GIL makes the other worker threads and the event loop wait).
* GenerateReport is sent the held-out PTB-XL records as stored (100 Hz, as the service section sends them) and
  resampled to 500 Hz, the rate carts export: the stage costs more at 500 Hz (measurements.py); the rest of a
  call costs a little more too, in both codes (a 5x larger message, resampled down to the encoder's rate).
* The earlier code runs from its own checkout (``git worktree add DIR COMMIT`` and its generated stubs), started by
  :func:`ecgregen.bench.service.start_server` with ``tree``; the load generator and the monitors are today's
  client, which both servers speak to (the API only gained fields).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from ecgregen.bench.load import closed_loop
from ecgregen.bench.measure import Progress, cpu_seconds, table
from ecgregen.bench.measurements import at_rate, load_average
from ecgregen.bench.service import Server, start_server, stream_levels
from ecgregen.records import EcgRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import ecg_to_proto

CODES = ("today", "before")
# Issue 25's service targets: throughput at concurrency 8 at least this share of the earlier code's; the monitors
# one process holds with window p99 under 1 s within 15% of the earlier code's.
MIN_THROUGHPUT_RATIO, CONCURRENCY = 0.85, 8
MAX_CAPACITY_LOSS, WINDOW_P99_LIMIT_MS = 0.15, 1000.0
# Issue 33's: no dearer and no slower than the code before, 500 monitors held, the first call within a second and
# the start within 5 s of the code before's.
MAX_COST_RATIO, MIN_RATE_RATIO, TARGET_MONITORS = 1.0, 1.0, 500
FIRST_CALL_LIMIT_MS, START_MARGIN_S = 1000.0, 5.0
IDLE_CORES, IDLE_WAIT_S = 0.1, 60.0


def describe_tree(tree: Path) -> str:
    """``git describe --always --dirty`` of a checkout: which code a figure belongs to ("unknown" outside git)."""
    try:
        return subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def requests_by_rate(queries: Sequence[EcgRecord], rates_hz: Sequence[float]) -> dict[float, list]:
    """The GenerateReport requests of `queries` (k 3) at each rate: the held-out records as stored or resampled."""
    ecgs = [q.load_ecg() for q in queries]
    return {rate: [pb.GenerateReportRequest(ecg=ecg_to_proto(at_rate(e, rate)), k=3) for e in ecgs]
            for rate in rates_hz}


@contextmanager
def servers_of(trees: dict[str, Path | None], data_dir: Path, work_dir: Path, prefix: str,
               runtime: str) -> Iterator[dict[str, Server]]:
    """One server per code of `trees` (None: today's checkout), started at once, each on its own copy of the store
    at `data_dir` (under `work_dir`, named by `prefix`); every one that started is stopped on the way out, also when
    another did not start."""
    for code in trees:
        shutil.rmtree(work_dir / f"{prefix}-{code}", ignore_errors=True)
        shutil.copytree(data_dir, work_dir / f"{prefix}-{code}")
    with ThreadPoolExecutor(len(trees)) as pool:
        started = {code: pool.submit(start_server, work_dir / f"{prefix}-{code}", work_dir / f"{prefix}-{code}.log",
                                     runtime, tree=tree) for code, tree in trees.items()}
    try:
        yield {code: future.result() for code, future in started.items()}
    finally:
        for future in started.values():
            if future.exception() is None:
                future.result().stop()


def wait_idle(servers: Sequence[Server], say: Progress) -> float:
    """Wait until the servers together use under :data:`IDLE_CORES` (a stream backlog drained); seconds waited."""
    started = time.perf_counter()
    pids = [s.process.pid for s in servers]
    while time.perf_counter() - started < IDLE_WAIT_S:
        before = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(0.5)
        if (sum(cpu_seconds(pid) for pid in pids) - before) / 0.5 < IDLE_CORES:
            return round(time.perf_counter() - started, 1)
    say(f"servers still busy after {IDLE_WAIT_S:g} s; measuring anyway")
    return round(time.perf_counter() - started, 1)


async def _throughput(server: Server, requests: Sequence[pb.GenerateReportRequest], concurrency: int,
                      duration_s: float) -> dict:
    """One closed-loop GenerateReport run, with the server's CPU per successful call."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        pid = server.process.pid
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        row = await closed_loop(lambda i: stub.GenerateReport(requests[i % len(requests)], timeout=60), concurrency,
                                duration_s)
        cpu = cpu_seconds(pid) - cpu0
    row["server_cores"] = round(cpu / (time.perf_counter() - wall0), 2)
    row["server_cpu_ms_per_call"] = round(cpu * 1000 / row["ok"], 2) if row["ok"] else None
    return row


async def _first_call(server: Server, request: pb.GenerateReportRequest) -> float:
    """The latency of a server's first GenerateReport at one rate, in ms (what start-up left undone is in it)."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        start = time.perf_counter()
        await stub.GenerateReport(request, timeout=60)
        return round((time.perf_counter() - start) * 1000, 1)


async def _warm_up(server: Server, requests: Sequence[pb.GenerateReportRequest]) -> None:
    """The first calls build lazily made parts (sessions, filters, caches); they are not measured."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        for request in requests[:5]:
            await stub.GenerateReport(request, timeout=60)


def held(row: dict[str, Any]) -> bool:
    """A monitor level is held when its windows came back with p99 under 1 s, none dropped, no errors."""
    return bool(row["windows"]) and row["latency_p99_ms"] < WINDOW_P99_LIMIT_MS and not row["dropped"] \
        and not row["errors"]


def run_side_by_side(
    *, before_tree: Path, data_dir: Path, queries: Sequence[EcgRecord], work_dir: Path, rounds: int = 3,
    duration_s: float = 10.0, concurrency: Sequence[int] = (CONCURRENCY,),
    request_rates_hz: Sequence[float] = (100.0, 500.0), monitors: Sequence[int] = (200, 250, 300, 350, 400, 500),
    stream_seconds: float = 30.0, stream_speed: float = 1.0, stream_rate_hz: float = 100.0,
    runtime: str = "onnxruntime", progress: bool = True,
) -> dict[str, Any]:
    """A server of today's code and one of ``before_tree`` on copies of the store at ``data_dir``; JSON-able.

    Each round runs GenerateReport at every rate of ``request_rates_hz`` and every level of ``concurrency`` on both
    servers; then each level of ``monitors`` on both."""
    say = Progress(progress, "side-by-side")
    # Named as the servers start: today's tree is a shared working copy that may move on during the run.
    codes = {"today": describe_tree(Path(__file__).resolve().parents[2]), "before": describe_tree(before_tree)}
    requests = requests_by_rate(queries, request_rates_hz)
    say(f"starting a server of today's code and one of {before_tree}")
    with servers_of({"today": None, "before": before_tree}, data_dir, work_dir, "compare", runtime) as servers:
        start = {code: {"start_s": server.start_s,
                        "first_call_ms": {f"{rate:g}": asyncio.run(_first_call(server, batch[0]))
                                          for rate, batch in requests.items()}}
                 for code, server in servers.items()}
        for code, first in start.items():
            say(f"{code}: started in {first['start_s']} s, first calls {first['first_call_ms']} ms")
        for server in servers.values():
            for batch in requests.values():
                asyncio.run(_warm_up(server, batch))
        throughput = []
        for r in range(rounds):
            for (rate, batch), c in itertools.product(requests.items(), concurrency):
                for code in CODES if r % 2 == 0 else CODES[::-1]:
                    idle_s = wait_idle(list(servers.values()), say)
                    load = load_average()[0]
                    row = asyncio.run(_throughput(servers[code], batch, c, duration_s))
                    throughput.append({"round": r + 1, "rate_hz": rate, "code": code, "waited_idle_s": idle_s,
                                       "load_1m": load, **row})
                    say(f"round {r + 1} {code}: GenerateReport {rate:g} Hz c={c} {row['ok_per_s']}/s p50 "
                        f"{row['p50_ms']} p99 {row['p99_ms']} ms, server {row['server_cpu_ms_per_call']} ms CPU/call")
        streams = []
        for i, n in enumerate(monitors):
            for code in CODES if i % 2 == 0 else CODES[::-1]:
                idle_s = wait_idle(list(servers.values()), say)
                load = load_average()[0]
                (row,) = asyncio.run(stream_levels(servers[code], queries, [n], seconds=stream_seconds,
                                                   speed=stream_speed, rate_hz=stream_rate_hz, say=say))
                streams.append({"code": code, "waited_idle_s": idle_s, "load_1m": load, **row})
    return {
        "codes": codes,
        "before_tree": str(before_tree), "runtime": runtime, "concurrency": list(concurrency), "rounds": rounds,
        "duration_s": duration_s, "request_rates_hz": list(request_rates_hz), "queries": len(queries),
        "throughput": throughput, "start": start,
        "streams": {"rate_hz": stream_rate_hz, "seconds": stream_seconds, "speed": stream_speed, "levels": streams},
        "summary": summarise(throughput, streams),
    }


def summarise_calls(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs at one request rate and concurrency: median per code, and the median of the paired ratios (today /
    before, the two runs of a round) of throughput and of server CPU per call."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_round.setdefault(row["round"], {})[row["code"]] = row
    pairs = [p for p in by_round.values() if set(p) == set(CODES)]

    def median(code: str, key: str) -> float | None:
        values = [row[key] for row in rows if row["code"] == code and row[key] is not None]
        return round(statistics.median(values), 2) if values else None

    def paired_ratio(key: str) -> float | None:
        ratios = [p["today"][key] / p["before"][key] for p in pairs if p["today"][key] and p["before"][key]]
        return round(statistics.median(ratios), 3) if ratios else None

    return {"rate_hz": rows[0]["rate_hz"], "concurrency": rows[0]["concurrency"], "pairs": len(pairs),
            "throughput_ratio": paired_ratio("ok_per_s"),
            "server_cpu_per_call_ratio": paired_ratio("server_cpu_ms_per_call"),
            **{code: {key: median(code, key) for key in ("ok_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_call")}
               for code in CODES}}


def summarise(throughput: list[dict[str, Any]], streams: list[dict[str, Any]]) -> dict[str, Any]:
    """GenerateReport per request rate and concurrency (:func:`summarise_calls`); per monitor level whether each code
    held it, its window p99 and server CPU per window, and their ratios today / before."""
    settings = sorted({(row["rate_hz"], row["concurrency"]) for row in throughput})
    calls = [summarise_calls([row for row in throughput if (row["rate_hz"], row["concurrency"]) == setting])
             for setting in settings]
    levels: dict[int, dict[str, dict[str, Any]]] = {}
    for row in streams:
        levels.setdefault(row["monitors"], {})[row["code"]] = row

    def ratio(pair: dict[str, dict[str, Any]], key: str) -> float | None:
        if set(pair) != set(CODES) or not pair["today"][key] or not pair["before"][key]:
            return None
        return round(pair["today"][key] / pair["before"][key], 2)

    monitor_rows = []
    for n, pair in sorted(levels.items()):
        monitor_rows.append({
            "monitors": n, **{f"{code}_p99_ms": pair[code]["latency_p99_ms"] for code in CODES if code in pair},
            **{f"{code}_held": held(pair[code]) for code in CODES if code in pair},
            **{f"{code}_cpu_ms_per_window": pair[code].get("server_cpu_ms_per_window") for code in CODES
               if code in pair},
            "p99_ratio": ratio(pair, "latency_p99_ms"), "cpu_per_window_ratio": ratio(pair, "server_cpu_ms_per_window"),
        })
    return {"calls": calls, "monitors": monitor_rows}


def side_by_side_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 25's two service targets, then issue 33's (:func:`cost_targets`), judged on the pairs of this run."""
    summary, codes = result["summary"], result["codes"]
    targets = []
    for calls in summary["calls"]:
        ratio = calls["throughput_ratio"]
        if ratio is None or calls["concurrency"] != CONCURRENCY:
            continue
        today, before = calls["today"], calls["before"]
        targets.append({
            "target": f"GenerateReport throughput at concurrency {CONCURRENCY}, {calls['rate_hz']:g} Hz ECGs, >= "
                      f"{MIN_THROUGHPUT_RATIO:g}x the code before ({codes['before']}), same run",
            "measured": f"{ratio:.2f}x (median of {calls['pairs']} paired round(s); today {today['ok_per_s']} vs "
                        f"{before['ok_per_s']} calls/s, server CPU per call {today['server_cpu_ms_per_call']} vs "
                        f"{before['server_cpu_ms_per_call']} ms)",
            "met": ratio >= MIN_THROUGHPUT_RATIO,
        })
    if summary["monitors"]:
        levels = summary["monitors"]
        met, bounds = capacity_verdict(levels)
        measured = "; ".join(f"{r['monitors']} monitors p99 {r.get('today_p99_ms')} vs {r.get('before_p99_ms')} ms, "
                             f"server CPU per window {r.get('today_cpu_ms_per_window')} vs "
                             f"{r.get('before_cpu_ms_per_window')} ms" for r in levels)
        targets.append({
            "target": f"Live 100 Hz monitors held with window p99 < 1 s within {MAX_CAPACITY_LOSS:.0%} of the code "
                      f"before, same run (at the levels measured: {', '.join(str(r['monitors']) for r in levels)})",
            "measured": f"{bounds}{'' if met is not None else ': the levels are too coarse to tell'} ({measured})",
            "met": met,
        })
    return targets + cost_targets(result)


def cost_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 33's targets: server CPU per GenerateReport at most the code before's and throughput at least its, at
    concurrency 8 and each rate; at 500 monitors, window p99 under 1 s where the code before holds them, with no
    more CPU per window; the first call of a fresh server within a second, its start within 5 s of the code
    before's. A target whose runs are missing from this result is left out."""
    summary, before = result["summary"], result["codes"]["before"]
    targets = []
    for calls in summary["calls"]:
        if calls["concurrency"] != CONCURRENCY or calls["server_cpu_per_call_ratio"] is None:
            continue
        rate, today, then = f"{calls['rate_hz']:g} Hz", calls["today"], calls["before"]
        cpu, pace = calls["server_cpu_per_call_ratio"], calls["throughput_ratio"]
        targets.append({
            "target": f"(issue 33) server CPU per GenerateReport, {rate} ECGs, <= {MAX_COST_RATIO:g}x the code before "
                      f"({before})",
            "measured": f"{cpu:.2f}x ({today['server_cpu_ms_per_call']} vs {then['server_cpu_ms_per_call']} ms, "
                        f"median of {calls['pairs']} paired round(s))",
            "met": cpu <= MAX_COST_RATIO,
        })
        targets.append({
            "target": f"(issue 33) GenerateReport throughput at concurrency {CONCURRENCY}, {rate} ECGs, >= "
                      f"{MIN_RATE_RATIO:g}x the code before",
            "measured": f"{pace:.2f}x ({today['ok_per_s']} vs {then['ok_per_s']} calls/s)",
            "met": pace >= MIN_RATE_RATIO,
        })
    level = next((r for r in summary["monitors"] if r["monitors"] == TARGET_MONITORS), None)
    if level is not None and "today_held" in level and "before_held" in level:
        cpu = level["cpu_per_window_ratio"]
        targets.append({
            "target": f"(issue 33) {TARGET_MONITORS} live 100 Hz monitors: window p99 < 1 s where the code before "
                      f"holds them, server CPU per window <= {MAX_COST_RATIO:g}x",
            "measured": f"p99 {level['today_p99_ms']} vs {level['before_p99_ms']} ms (held: today "
                        f"{level['today_held']}, before {level['before_held']}); CPU per window "
                        f"{level['today_cpu_ms_per_window']} vs {level['before_cpu_ms_per_window']} ms ({cpu}x)",
            "met": (None if not level["before_held"]
                    else bool(level["today_held"]) and cpu is not None and cpu <= MAX_COST_RATIO),
        })
    start = result.get("start")
    if start:
        first = max(start["today"]["first_call_ms"].values())
        slower = start["today"]["start_s"] - start["before"]["start_s"]
        targets.append({
            "target": f"(issue 33) a fresh server's first GenerateReport within {FIRST_CALL_LIMIT_MS:g} ms, and its "
                      f"start within {START_MARGIN_S:g} s of the code before's",
            "measured": f"first calls {start['today']['first_call_ms']} ms (before {start['before']['first_call_ms']}"
                        f"); started in {start['today']['start_s']} s vs {start['before']['start_s']} s, both at once",
            "met": first <= FIRST_CALL_LIMIT_MS and slower <= START_MARGIN_S,
        })
    return targets


def capacity_verdict(levels: list[dict[str, Any]]) -> tuple[bool | None, str]:
    """Whether today's capacity is within 15% of the earlier code's, as far as the measured levels can tell, and
    each code's bounds in words.

    A code's capacity is at least the largest level it held and below the next level above that it did not hold
    (unbounded when there is none). Met when today's lower bound reaches 85% of the earlier code's upper bound;
    missed when today's upper bound is at most 85% of the earlier code's lower bound; otherwise None - levels 2x
    apart cannot resolve 15%, and saying met or missed there would be a guess."""
    low, high = {}, {}
    for code in CODES:
        low[code] = max((r["monitors"] for r in levels if r.get(f"{code}_held")), default=0)
        failed = [r["monitors"] for r in levels if r["monitors"] > low[code] and r.get(f"{code}_held") is False]
        high[code] = min(failed, default=math.inf)
    words = "; ".join(f"{code} holds {low[code] or 'none of the levels'}"
                      + (f", not {high[code]}" if high[code] < math.inf else ", every level") for code in CODES)
    keep = 1 - MAX_CAPACITY_LOSS
    if low["today"] >= keep * high["before"]:
        return True, words
    if high["today"] <= keep * low["before"]:
        return False, words
    return None, words


def format_side_by_side(result: dict[str, Any]) -> list[str]:
    """Every measured run (so a reader sees the spread) and the per-level monitor comparison."""
    codes, summary = result["codes"], result["summary"]
    streams = result["streams"]
    pace = "real time" if streams["speed"] == 1 else f"{streams['speed']:g}x real time"
    lines = [
        f"Today's code ({codes['today']}) and the code before ({codes['before']}, `{result['before_tree']}`), one "
        f"`ecgregen serve --no-llm` of each at once on copies of the same corpus, encoder runtime "
        f"{result['runtime']}; {result['queries']} held-out ECGs as raw signals, as stored and resampled. "
        f"GenerateReport closed loop at concurrency {', '.join(map(str, result['concurrency']))}, "
        f"{result['duration_s']:g} s per run, rounds alternating which code goes first. Medians per code, and of the "
        f"ratios today/before of the two runs of each round:", "",
        *table(["ECG rate", "concurrency", "calls/s today / before", "ratio", "p50/p99 ms today",
                "p50/p99 ms before", "server CPU ms per call today / before", "ratio"],
               [[f"{c['rate_hz']:g} Hz", c["concurrency"], f"{c['today']['ok_per_s']} / {c['before']['ok_per_s']}",
                 c["throughput_ratio"], f"{c['today']['p50_ms']}/{c['today']['p99_ms']}",
                 f"{c['before']['p50_ms']}/{c['before']['p99_ms']}",
                 f"{c['today']['server_cpu_ms_per_call']} / {c['before']['server_cpu_ms_per_call']}",
                 c["server_cpu_per_call_ratio"]] for c in summary["calls"]]),
        "", *[f"Start: {code} served {first['start_s']} s after its command (both started at once); its first "
              f"GenerateReport per ECG rate: {', '.join(f'{r} Hz {ms} ms' for r, ms in first['first_call_ms'].items())}."
              for code, first in result.get("start", {}).items()],
        "", "Every run:", "",
        *table(["round", "ECG rate", "concurrency", "code", "load avg", "calls/s", "p50/p99 ms", "server cores",
                "server CPU ms per call", "errors"],
               [[r["round"], f"{r['rate_hz']:g} Hz", r["concurrency"], r["code"], r["load_1m"], r["ok_per_s"],
                 f"{r['p50_ms']}/{r['p99_ms']}", r["server_cores"], r["server_cpu_ms_per_call"],
                 sum(r["errors"].values()) + r["shed"]] for r in result["throughput"]]),
    ]
    if not streams["levels"]:
        return lines
    return lines + [
        "", f"Live monitors at {streams['rate_hz']:g} Hz ({pace}), 10 s windows, {streams['seconds']:g} s per level "
            f"and code, the order swapped from level to level:", "",
        *table(["monitors", "code", "load avg", "windows", "dropped", "errors", "window p50/p99 ms", "server cores",
                "server CPU ms per window"],
               [[r["monitors"], r["code"], r["load_1m"], r["windows"], r["dropped"], r["errors"],
                 f"{r['latency_p50_ms']}/{r['latency_p99_ms']}", r["server_cores"], r["server_cpu_ms_per_window"]]
                for r in streams["levels"]]),
        "", *table(["monitors", "p99 today / before ms", "ratio", "server CPU ms per window today / before", "ratio"],
                   [[r["monitors"], f"{r.get('today_p99_ms')} / {r.get('before_p99_ms')}", r["p99_ratio"],
                     f"{r.get('today_cpu_ms_per_window')} / {r.get('before_cpu_ms_per_window')}",
                     r["cpu_per_window_ratio"]] for r in summary["monitors"]]),
    ]
