"""What the measurement stage (`ecgregen.measure.measure`, issue 25) costs per 10 s 12-lead ECG, by sampling rate.

Every GenerateReport, Search, AnswerQuestion and stream window runs the stage in the server's worker thread after
the encoder, so its CPU time is taken from every call. Why it is measured this way:

* CPU time, not wall time: in the server the stage shares the cores with other calls, so what it costs is the
  CPU it takes; wall time on a shared machine also counts the time other processes hold the cores. Two clocks:
  the whole process (``time.process_time``) and the calling thread alone (``time.thread_time``). They differ by
  OpenBLAS's helper thread, which the stage's matrix-vector products wake and which then spins for work while the
  stage runs: on an idle machine up to a whole second core, on a busy one less (it yields to other processes), so
  the process clock moves with the machine's load. The target is judged on the process clock, the cost the
  process pays; the mean is given beside p50 / p90 because throughput pays the mean.
* Real recordings: the hospital files (`../shared/data/formats`) at their own rate - 500 Hz (GE MUSE, Philips
  Sierra, Mortara aECG / SCP / DICOM) and 1 kHz (Mortara DICOM, the ISHNE Holter) - their first 10 s; and PTB-XL
  records (100 Hz as stored) at 100 Hz, and resampled to 500 Hz and 1 kHz, so each rate's cost is seen on the
  same ECGs. The stage measures at 500 Hz: a 1 kHz ECG is brought down first, a 100 Hz one measured at its rate.
* Each ECG is measured ``repeats`` times after one uncounted call (the first call imports scipy and designs the
  filters); p50 / p90 are over every counted call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecgregen.bench.measure import Progress, table
from ecgregen.ecg import Ecg
from ecgregen.records import EcgRecord

SECONDS = 10.0  # the target is per 10 s ECG: files are cut to their first 10 s
FILE_RATES_HZ = (500.0, 1000.0)  # the rates the target and the question name; the 800 Hz EDF is neither
PTBXL_RATES_HZ = (100.0, 500.0, 1000.0)
STAGE_CPU_P50_MS, STAGE_TARGET_RATE_HZ = 5.0, 500.0  # issue 25's target


@dataclass(frozen=True)
class Inputs:
    """ECGs of one source at one rate, and where they come from (file names or record ids)."""

    source: str
    rate_hz: float
    ecgs: list[Ecg]
    names: list[str]


def file_inputs(formats_dir: Path) -> tuple[list[Inputs], list[str]]:
    """The hospital files of ``formats_dir`` grouped by the rates of :data:`FILE_RATES_HZ` (first 10 s each), and a
    note for each file that could not be read - a reader error is reported, not raised, as in `evaluate`."""
    from ecgregen.ecg_files import EcgFileError, read_ecg_file

    by_rate: dict[float, Inputs] = {rate: Inputs("hospital files", rate, [], []) for rate in FILE_RATES_HZ}
    notes: list[str] = []
    if not formats_dir.is_dir():
        return [], [f"{formats_dir}: no such folder, hospital files not measured"]
    for path in sorted(p for p in formats_dir.iterdir() if p.is_file() and p.suffix.lower() != ".md"):
        try:
            ecg = read_ecg_file(path, seconds=SECONDS).ecg
        except EcgFileError as exc:
            notes.append(str(exc))
            continue
        if ecg.sampling_rate_hz in by_rate:
            by_rate[ecg.sampling_rate_hz].ecgs.append(ecg)
            by_rate[ecg.sampling_rate_hz].names.append(path.name)
    return [group for group in by_rate.values() if group.ecgs], notes


def at_rate(ecg: Ecg, rate_hz: float) -> Ecg:
    """``ecg`` resampled to ``rate_hz`` by the service's own resampler (itself when already at that rate)."""
    from ecgregen.preprocess import resample

    if ecg.sampling_rate_hz == rate_hz:
        return ecg
    return Ecg(resample(ecg.signal.astype(np.float64), ecg.sampling_rate_hz, rate_hz).astype(np.float32), rate_hz)


def ptbxl_inputs(records: Sequence[EcgRecord]) -> list[Inputs]:
    """The records as stored and resampled to each rate of :data:`PTBXL_RATES_HZ`."""
    stored = [r.load_ecg() for r in records]
    groups = []
    for rate in PTBXL_RATES_HZ:
        ecgs = [at_rate(e, rate) for e in stored]
        stored_rates = sorted({f"{e.sampling_rate_hz:g}" for e in stored})
        source = "PTB-XL" if stored_rates == [f"{rate:g}"] else f"PTB-XL, {'/'.join(stored_rates)} Hz resampled"
        groups.append(Inputs(source, rate, ecgs, [r.ecg_id for r in records]))
    return groups


def stage_cost(inputs: Inputs, repeats: int) -> dict[str, Any]:
    """CPU (process, calling thread) and wall time per `measure()` call over ``inputs``, p50 / p90 in ms."""
    from ecgregen.measure import measure

    process, thread, wall = [], [], []
    for ecg in inputs.ecgs:
        measure(ecg)  # uncounted: imports, filter design and caches of this rate and length
        for _ in range(repeats):
            p0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            measure(ecg)
            process.append(time.process_time() - p0)
            thread.append(time.thread_time() - t0)
            wall.append(time.perf_counter() - w0)

    def ms(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 2)

    return {
        "source": inputs.source, "rate_hz": inputs.rate_hz, "ecgs": len(inputs.ecgs), "calls": len(process),
        "cpu_p50_ms": ms(process, 50), "cpu_p90_ms": ms(process, 90), "cpu_mean_ms": round(np.mean(process) * 1000, 2),
        "thread_cpu_p50_ms": ms(thread, 50), "thread_cpu_p90_ms": ms(thread, 90),
        "wall_p50_ms": ms(wall, 50), "wall_p90_ms": ms(wall, 90), "names": inputs.names,
    }


def load_average() -> list[float]:
    """The 1/5/15-minute load averages: how busy the shared machine was while the CPU times were taken."""
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def run_stage_bench(*, formats_dir: Path, records: Sequence[EcgRecord], repeats: int = 3,
                    progress: bool = True) -> dict[str, Any]:
    """Every input group's cost (hospital files first, then PTB-XL by rate); JSON-able."""
    say = Progress(progress, "measure-bench")
    groups, notes = file_inputs(formats_dir)
    groups += ptbxl_inputs(records) if records else []
    load_before = load_average()
    rows = []
    for group in groups:
        rows.append(stage_cost(group, repeats))
        row = rows[-1]
        say(f"measure() {row['source']} at {row['rate_hz']:g} Hz: CPU p50 {row['cpu_p50_ms']} ms "
            f"p90 {row['cpu_p90_ms']} ms ({row['calls']} calls)")
    return {"seconds_per_ecg": SECONDS, "repeats": repeats, "formats_dir": str(formats_dir), "rows": rows,
            "notes": notes, "load_average": {"before": load_before, "after": load_average()}}


def stage_target(stage: dict[str, Any]) -> dict[str, Any] | None:
    """Issue 25's cost target on every 500 Hz row (None when no 500 Hz ECG was measured)."""
    rows = [r for r in stage["rows"] if r["rate_hz"] == STAGE_TARGET_RATE_HZ]
    if not rows:
        return None
    return {
        "target": f"Measurement stage: CPU p50 <= {STAGE_CPU_P50_MS:g} ms per {stage['seconds_per_ecg']:g} s "
                  f"12-lead ECG at {STAGE_TARGET_RATE_HZ:g} Hz",
        "measured": "; ".join(f"{r['source']} {r['cpu_p50_ms']} ms ({r['cpu_p50_ms'] / STAGE_CPU_P50_MS:.1f}x the "
                              f"target; calling thread alone {r['thread_cpu_p50_ms']} ms)" for r in rows),
        "met": all(r["cpu_p50_ms"] <= STAGE_CPU_P50_MS for r in rows),
    }


def format_stage_bench(stage: dict[str, Any]) -> list[str]:
    """The stage's table, one row per source and rate, with the machine's load while it ran."""
    load = stage["load_average"]
    lines = [
        f"`measure()` on {stage['seconds_per_ecg']:g} s 12-lead ECGs, {stage['repeats']} counted calls per ECG after "
        f"one uncounted; CPU of the whole process (numpy's OpenBLAS helper thread included) and of the calling thread "
        f"alone. Load average {load['before'][0]:g} before, {load['after'][0]:g} after, on {os.cpu_count()} cores "
        f"(above that, processes were waiting for a core).", "",
        *table(["source", "Hz", "ECGs", "calls", "CPU p50/p90 ms", "CPU mean ms", "calling thread p50/p90 ms",
                "wall p50/p90 ms", f"p50 / target {STAGE_CPU_P50_MS:g} ms"],
               [[r["source"], f"{r['rate_hz']:g}", r["ecgs"], r["calls"], f"{r['cpu_p50_ms']}/{r['cpu_p90_ms']}",
                 r["cpu_mean_ms"],
                 f"{r['thread_cpu_p50_ms']}/{r['thread_cpu_p90_ms']}", f"{r['wall_p50_ms']}/{r['wall_p90_ms']}",
                 f"{r['cpu_p50_ms'] / STAGE_CPU_P50_MS:.1f}x" if r["rate_hz"] == STAGE_TARGET_RATE_HZ else "-"]
                for r in stage["rows"]]),
    ]
    files = [r for r in stage["rows"] if r["source"] == "hospital files"]
    lines += [""] + [f"Hospital files at {r['rate_hz']:g} Hz: {', '.join(r['names'])}." for r in files]
    lines += [f"Not measured: {note}" for note in stage["notes"]]
    return lines
