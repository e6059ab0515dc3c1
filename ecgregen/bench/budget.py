"""Where a call's CPU goes (issue 33): the server's CPU per GenerateReport (100 Hz and 500 Hz 10 s 12-lead ECGs)
and per stream window, split by stage, for today's code and, with ``before_tree``, the code before beside it.

Why it is measured this way:

* The total is exact, the split is sampled. The server's CPU per call is its process tree's user + system time
  (``/proc``, measurement workers included) over a closed-loop run, divided by the calls answered. The stage timers
  (``stage_timer``, a response's ``latency``) are wall times, count waiting as cost and cannot see gRPC or
  protobuf at all; so the split comes from a sampling profiler: ``py-spy record --nonblocking --subprocesses
  --format raw`` on the server and its workers during the same run. Without ``--idle`` py-spy keeps only the
  samples of threads the kernel shows running (state R), so a stage's share of the samples is its share of the
  CPU; each stage is that share of the measured total. The stages therefore add up to the total by construction;
  what can be wrong is the share, whose sampling error (one standard error of a binomial share,
  ``total * sqrt(p (1 - p) / n)``) is given beside every stage. Samples are taken at a fixed rate, not
  independently, so the error is a guide, not a bound. ``sampled_cpu_ratio`` (samples / rate over the measured
  CPU) says how much of the CPU the sampler saw: above 1 on a busy machine, where threads waiting for a core
  are also in state R.
* Stages are named by the frames' functions and files (:data:`RULES`, first rule that any frame of a stack
  matches): the pipeline's entry points of each stage, in both codes. What runs in C under gRPC's Cython (the
  request's protobuf parse, the response's serialisation) has no Python frame and lands in "gRPC, event loop";
  how much of that is protobuf is timed apart, in this process, on the same messages (:func:`protobuf_cost`).
* Profiling costs CPU: py-spy runs outside the server's tree (its own CPU is not counted) and reads the
  server's memory without pausing it, so the measured total is the server's own.
* Both servers run at once on copies of one corpus (as in side_by_side.py); each profiled run waits until both are
  idle, and the order alternates by rate, so neither code pays for the other's backlog.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from ecgregen.bench.load import closed_loop
from ecgregen.bench.measure import Progress, cpu_seconds, table
from ecgregen.bench.service import Server
from ecgregen.bench.side_by_side import CODES, describe_tree, requests_by_rate, servers_of, wait_idle
from ecgregen.records import EcgRecord
from ecgregen.simulate import simulate
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc

SAMPLE_RATE_HZ = 200
PY_SPY_START_S = 1.0  # py-spy attaches to the server and finds its workers before the load starts

# (stage, markers): a sample belongs to the first stage any of whose markers occurs in any frame of its stack.
# Measurement first (a worker's whole stack, and the server's side of sending and collecting: pickling, the
# pool's queue threads), then the stages in the order a call runs them; what matches nothing is gRPC or other.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("measure: worker measuring", ("_measure_timed (",)),
    # The worker's loop today, the process pool's before (issue 33 replaced it).
    ("measure: worker receiving, pool loop", ("_worker_loop (", "_process_worker (")),
    ("measure: server sending, collecting", ("ecgregen/measure/workers.py", "concurrent/futures/process.py",
                                             "multiprocessing/")),
    ("receive/parse (proto -> Ecg)", ("ecg_from_proto (", "received_ecg (", "parse_query (", "check_print (",
                                     "ecgregen/ecg_files.py", "_read_stream (", "feed (", "_decode (", "_windows (",
                                     "ecg_from_array (")),
    ("preprocess", ("ecgregen/preprocess.py",)),
    ("encode", ("ecgregen/encoders/",)),
    ("search", ("ecgregen/store/",)),
    ("diagnose", ("ecgregen/diagnoses.py", "ecgregen/calibrate.py")),
    ("report (select, verify, translate)", ("report_of (", "ecgregen/reports/", "ecgregen/answer.py",
                                            "ecgregen/answer_measured.py")),
    ("response build", ("_report_response (", "ecg_fields (", "latency_proto (", "_stream_item (", "with_file (",
                        "_neighbours (")),
    ("gRPC, event loop (protobuf in C)", ("grpc/", "asyncio/", "grpc_")),
]
OTHER = "other (thread pool, pipeline glue, metrics)"
STAGES = [stage for stage, _ in RULES] + [OTHER]


def stage_of(frames: Sequence[str]) -> str:
    """The stage of one sampled stack (frames as py-spy writes them: ``function (file.py:line)``)."""
    for stage, markers in RULES:
        if any(marker in frame for frame in frames for marker in markers):
            return stage
    return OTHER


def stage_samples(raw: Path) -> Counter[str]:
    """py-spy's raw output (collapsed stacks, ``frame;frame;... count`` per line) -> samples per stage."""
    samples: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():  # "process PID:command line" frames (--subprocesses) name no stage
            samples[stage_of([f for f in stack.split(";") if not f.startswith("process ")])] += int(count)
    return samples


def split(samples: Counter[str], total_ms: float) -> list[dict[str, Any]]:
    """Each stage's share of the samples as ms of ``total_ms``, with one binomial standard error."""
    n = sum(samples.values())
    rows = []
    for stage in STAGES:
        p = samples[stage] / n if n else 0.0
        rows.append({"stage": stage, "samples": samples[stage], "share": round(p, 4), "ms": round(p * total_ms, 3),
                     "error_ms": round(total_ms * math.sqrt(p * (1 - p) / n), 3) if n else None})
    return rows


def sampling_error_ms(rows: Sequence[dict[str, Any]]) -> float:
    """The error of a sum of stages, as if their errors were independent (root of the summed squares)."""
    return math.sqrt(sum((r["error_ms"] or 0.0) ** 2 for r in rows))


def _py_spy() -> str:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("the budget section needs py-spy (requirements-bench.lock)")
    return spy


class Profiled:
    """py-spy on a server and its workers, and the server tree's CPU, while a block runs."""

    def __init__(self, server: Server, out: Path, rate_hz: int) -> None:
        self.server, self.out, self.rate_hz = server, out, rate_hz
        self.cpu_s = 0.0
        self.samples: Counter[str] = Counter()

    def __enter__(self) -> Profiled:
        self.out.unlink(missing_ok=True)
        self._spy = subprocess.Popen(
            [_py_spy(), "record", "-p", str(self.server.process.pid), "--subprocesses", "--nonblocking", "-r",
             str(self.rate_hz), "--format", "raw", "-o", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(PY_SPY_START_S)
        self._cpu0 = cpu_seconds(self.server.process.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = cpu_seconds(self.server.process.pid) - self._cpu0
        self._spy.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
        _, err = self._spy.communicate(timeout=60)
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
        self.samples = stage_samples(self.out)


def protobuf_cost(request: pb.GenerateReportRequest, response: pb.GenerateReportResponse,
                  repeats: int = 50) -> dict[str, float]:
    """CPU ms of parsing one request and serialising one response, timed here (the server does both in C under
    gRPC, where no sample can name them)."""
    data = request.SerializeToString()
    start = time.process_time()
    for _ in range(repeats):
        pb.GenerateReportRequest.FromString(data)
    parse = (time.process_time() - start) / repeats
    start = time.process_time()
    for _ in range(repeats):
        response.SerializeToString()
    serialise = (time.process_time() - start) / repeats
    return {"request_bytes": len(data), "response_bytes": response.ByteSize(),
            "parse_ms": round(parse * 1000, 3), "serialise_ms": round(serialise * 1000, 3)}


async def _calls(server: Server, requests: Sequence[pb.GenerateReportRequest], concurrency: int, duration_s: float,
                 raw: Path, rate_hz: int) -> dict[str, Any]:
    """A profiled closed-loop GenerateReport run: calls, the tree's CPU per call, its split, protobuf's share."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        for request in requests[:5]:  # lazily built parts are not a call's cost
            response = await stub.GenerateReport(request, timeout=60)
        with Profiled(server, raw, rate_hz) as profile:
            row = await closed_loop(lambda i: stub.GenerateReport(requests[i % len(requests)], timeout=60),
                                    concurrency, duration_s)
    return _budget_row(profile, row["ok"], {"concurrency": concurrency, "errors": sum(row["errors"].values())},
                       protobuf_cost(requests[0], response))


async def _windows(server: Server, records: Sequence[EcgRecord], monitors: int, seconds: float, speed: float,
                   raw: Path, rate_hz: int) -> dict[str, Any]:
    """A profiled run of ``monitors`` 100 Hz live monitors: windows, the tree's CPU per window, its split."""
    with Profiled(server, raw, rate_hz) as profile:
        summary = await simulate(records, monitors=monitors, server=server.address, speed=speed, duration_s=seconds,
                                 rate_hz=100.0)
    return _budget_row(profile, summary.windows, {"monitors": monitors, "errors": len(summary.errors)}, None)


def _budget_row(profile: Profiled, calls: int, fields: dict[str, Any], protobuf: dict[str, float] | None
                ) -> dict[str, Any]:
    total_ms = profile.cpu_s * 1000 / calls if calls else 0.0
    n = sum(profile.samples.values())
    return {**fields, "calls": calls, "cpu_ms_per_call": round(total_ms, 3), "samples": n,
            "sampled_cpu_ratio": round(n / profile.rate_hz / profile.cpu_s, 3) if profile.cpu_s else None,
            "stages": split(profile.samples, total_ms), "protobuf": protobuf}


def run_budget(*, before_tree: Path | None, data_dir: Path, queries: Sequence[EcgRecord], work_dir: Path,
               request_rates_hz: Sequence[float] = (100.0, 500.0), concurrency: int = 8, duration_s: float = 10.0,
               monitors: int = 100, stream_seconds: float = 30.0, stream_speed: float = 1.0,
               sample_rate_hz: int = SAMPLE_RATE_HZ, runtime: str = "onnxruntime",
               progress: bool = True) -> dict[str, Any]:
    """The CPU budget of today's code (and of ``before_tree``'s) on copies of the store at ``data_dir``; JSON-able.

    One profiled GenerateReport run per rate and code (the order alternating by rate), then one profiled monitor
    run per code (``monitors`` 100 Hz monitors for ``stream_seconds``; 0 skips)."""
    say = Progress(progress, "budget")
    trees: dict[str, Path | None] = {"today": None, **({"before": before_tree} if before_tree is not None else {})}
    codes = [c for c in CODES if c in trees]
    described = {code: describe_tree(tree or Path(__file__).resolve().parents[2]) for code, tree in trees.items()}
    requests = requests_by_rate(queries, request_rates_hz)
    say(f"starting {' and '.join(codes)}'s servers")
    runs: list[dict[str, Any]] = []
    with servers_of(trees, data_dir, work_dir, "budget", runtime) as servers:
        for i, (rate, batch) in enumerate(requests.items()):
            for code in codes if i % 2 == 0 else codes[::-1]:
                wait_idle(list(servers.values()), say)
                row = asyncio.run(_calls(servers[code], batch, concurrency, duration_s,
                                         work_dir / f"budget-{code}-{rate:g}.raw", sample_rate_hz))
                runs.append({"call": f"GenerateReport {rate:g} Hz", "code": code, **row})
                say(f"{code} GenerateReport {rate:g} Hz: {row['cpu_ms_per_call']} ms CPU per call, "
                    f"{row['samples']} samples")
        if monitors:
            for code in codes[::-1]:
                wait_idle(list(servers.values()), say)
                row = asyncio.run(_windows(servers[code], queries, monitors, stream_seconds, stream_speed,
                                           work_dir / f"budget-{code}-stream.raw", sample_rate_hz))
                runs.append({"call": "stream window 100 Hz", "code": code, **row})
                say(f"{code} stream windows: {row['cpu_ms_per_call']} ms CPU per window, {row['samples']} samples")
    return {"codes": described, "before_tree": str(before_tree) if before_tree else None, "runtime": runtime,
            "concurrency": concurrency, "duration_s": duration_s, "monitors": monitors,
            "stream_seconds": stream_seconds, "stream_speed": stream_speed, "sample_rate_hz": sample_rate_hz,
            "queries": len(queries), "runs": runs}


def _cell(run: dict[str, Any], stage: str) -> str:
    """A stage's ms of a run, ± its sampling error, and its share."""
    row = next(s for s in run["stages"] if s["stage"] == stage)
    return f"{row['ms']:.2f} ± {row['error_ms']:.2f} ({row['share']:.0%})" if row["error_ms"] is not None else "-"


def _stage_ms(run: dict[str, Any], stages: Sequence[str]) -> tuple[float, float]:
    """The ms of some stages of a run together, and their sampling error."""
    rows = [s for s in run["stages"] if s["stage"] in stages]
    return sum(r["ms"] for r in rows), sampling_error_ms(rows)


def _change(by_code: dict[str, dict[str, Any]], stages: Sequence[str]) -> list[str]:
    """today - before of some stages' ms, as a table cell (none without the code before)."""
    if "before" not in by_code:
        return []
    return [f"{_stage_ms(by_code['today'], stages)[0] - _stage_ms(by_code['before'], stages)[0]:+.2f}"]


def format_budget(result: dict[str, Any]) -> list[str]:
    """One table per call kind: ms of CPU per call by stage, ± one standard error, today beside before."""
    codes = result["codes"]
    lines = [
        f"The server's CPU per call (process tree incl. measurement workers, `/proc`), split by stage from py-spy "
        f"samples ({result['sample_rate_hz']} Hz, `--nonblocking --subprocesses`, running threads only) taken "
        f"during the same run: a stage = its share of the samples x the measured total, ± one binomial standard "
        f"error (the stages add up to the total by construction; the error is in the split). GenerateReport closed "
        f"loop at concurrency {result['concurrency']}, {result['duration_s']:g} s per run, {result['queries']} "
        f"held-out ECGs; stream windows from {result['monitors']} 100 Hz monitors, {result['stream_seconds']:g} s "
        f"at {result['stream_speed']:g}x real time. Today = {codes['today']}"
        + (f", before = {codes['before']} (`{result['before_tree']}`)." if "before" in codes else "."),
        "Protobuf's parse and serialisation run in C under gRPC and are inside \"gRPC, event loop\"; their cost is "
        "timed apart in the bench process on the same messages (\"of which protobuf\").",
    ]
    calls = list(dict.fromkeys(r["call"] for r in result["runs"]))
    for call in calls:
        by_code = {r["code"]: r for r in result["runs"] if r["call"] == call}
        shown = [c for c in CODES if c in by_code]
        both = len(shown) == 2
        rows = [[stage, *(_cell(by_code[c], stage) for c in shown), *_change(by_code, [stage])] for stage in STAGES]
        measuring = [s for s in STAGES if s.startswith("measure")]
        rows.append(["measure in all (the three measure rows)",
                     *(f"{ms:.2f} ± {err:.2f}" for ms, err in (_stage_ms(by_code[c], measuring) for c in shown)),
                     *_change(by_code, measuring)])
        rows.append(["**total (measured)**", *(f"**{by_code[c]['cpu_ms_per_call']:.2f}**" for c in shown),
                     *([f"**{by_code['today']['cpu_ms_per_call'] - by_code['before']['cpu_ms_per_call']:+.2f}**"]
                       if both else [])])
        blank = [""] if both else []
        rows.append(["samples; sampled CPU / measured", *(f"{by_code[c]['samples']}; {by_code[c]['sampled_cpu_ratio']}"
                                                         for c in shown), *blank])
        rows.append([f"calls ({'windows' if 'monitors' in by_code[shown[0]] else 'answered'})",
                     *(str(by_code[c]["calls"]) for c in shown), *blank])
        if by_code[shown[0]]["protobuf"]:
            rows.append(["of which protobuf: request parse + response serialise (timed apart)",
                         *(f"{p['parse_ms']:.3f} + {p['serialise_ms']:.3f} ({p['request_bytes']:,} / "
                           f"{p['response_bytes']:,} bytes)" for p in (by_code[c]["protobuf"] for c in shown)),
                         *blank])
        lines += ["", f"{call}, ms of server CPU per {'window' if 'window' in call else 'call'} (share of the total):",
                  "", *table(["stage", *(f"{c} ({codes[c]})" for c in shown), *(["today - before"] if both else [])],
                             rows)]
    return lines
