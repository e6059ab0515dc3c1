"""Did a change to the measurement stage keep its values? ``measure()`` of two code trees on the same ECGs, compared.

Issue 33 made the stage cheaper on condition that what it says stays the same: every interval within 2 ms, the
rate within 1 bpm, every axis within 2 degrees, and the rhythm, the beat count, the premature beats and each lead's
quality flags equal. This compares today's code (this process) with another checkout (``--before-tree``: run in a
child process with that tree first on ``PYTHONPATH``) on the ECGs of the check: the hospital files (their first
10 s, at their own rates) and PTB-XL records of the given folds as stored (100 Hz) and resampled to 500 Hz by the
service's resampler. Both codes measure the very same arrays (saved once, read by both).

``--write-reference FILE`` keeps the other code's values instead (the functional suite compares today's code with
such a file: ``tests/data/measure_reference.json``).

    python -m ecgregen.bench.same_values --before-tree /tmp/before --ptbxl ../shared/data/ptbxl --folds 9
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecgregen.ecg import Ecg

# Per value: the largest difference that counts as the same (ms, bpm, degrees; RR irregularity is a ratio).
TOLERANCES = {
    "heart_rate_bpm": 1.0, "rr_interval_ms": 2.0, "rr_min_ms": 2.0, "rr_max_ms": 2.0, "rr_irregularity": 0.01,
    "pr_interval_ms": 2.0, "p_duration_ms": 2.0, "qrs_duration_ms": 2.0, "qt_interval_ms": 2.0,
    "qtc_bazett_ms": 2.0, "qtc_fridericia_ms": 2.0, "p_axis_deg": 2.0, "qrs_axis_deg": 2.0, "t_axis_deg": 2.0,
}
# What must be equal.
EXACT = ("rhythm", "beat_count", "premature_beats", "lead_quality", "missing")

# Run by the other tree's Python: read the ECGs, measure each, print the summaries as JSON. Only names both codes
# have (Ecg, measure, the Measurements fields) are used.
_CHILD = """
import json, sys
import numpy as np
from ecgregen.ecg import Ecg
from ecgregen.measure import measure
data = np.load(sys.argv[1], allow_pickle=False)
out = []
for i in range(int(data["count"])):
    m = measure(Ecg(data[f"signal{i}"], float(data[f"rate{i}"])))
    out.append(SUMMARY(m))
json.dump(out, sys.stdout)
"""


def summary(m: Any) -> dict[str, Any]:
    """The values the check compares, as plain JSON (the same function text runs in both codes)."""
    return {
        "values": {name: getattr(m, name) for name in TOLERANCES},
        "rhythm": str(getattr(m.rhythm, "value", m.rhythm)),
        "beat_count": m.beat_count,
        "premature_beats": [str(getattr(p.origin, "value", p.origin)) for p in m.premature_beats],
        "lead_quality": {lead: sorted(str(getattr(f, "value", f)) for f in flags)
                         for lead, flags in sorted(m.lead_quality.items())},
        "missing": sorted(m.missing),
    }


def check_ecgs(ptbxl: Path | None, folds: Sequence[int], formats: Path | None,
               limit: int = 0) -> list[tuple[str, Ecg]]:
    """(name, ECG): the hospital files at their rates, then each PTB-XL record at 100 Hz and at 500 Hz."""
    from ecgregen.bench.measurements import at_rate, file_inputs
    from ecgregen.records import load_ptbxl

    out: list[tuple[str, Ecg]] = []
    if formats is not None:
        for group in file_inputs(formats)[0]:
            out += [(f"{name} ({group.rate_hz:g} Hz)", ecg) for name, ecg in zip(group.names, group.ecgs)]
    if ptbxl is not None:
        records = load_ptbxl(ptbxl, folds)
        for record in records[:limit] if limit else records:
            ecg = record.load_ecg()
            out += [(f"ptbxl {record.ecg_id} ({rate:g} Hz)", at_rate(ecg, rate)) for rate in (100.0, 500.0)]
    return out


def measure_with(tree: Path, ecgs: Sequence[Ecg]) -> list[dict[str, Any]]:
    """The summaries of `ecgs` measured by the code of `tree` (a child process with that tree on PYTHONPATH)."""
    import inspect

    with tempfile.TemporaryDirectory(prefix="ecgregen-same-") as scratch:
        arrays = Path(scratch) / "ecgs.npz"
        np.savez(arrays, count=len(ecgs), **{f"signal{i}": e.signal for i, e in enumerate(ecgs)},
                 **{f"rate{i}": e.sampling_rate_hz for i, e in enumerate(ecgs)})
        code = (f"from typing import Any\nTOLERANCES = {TOLERANCES!r}\n" + inspect.getsource(summary)
                + _CHILD.replace("SUMMARY", "summary"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", code, str(arrays)], env=env, cwd=tree, capture_output=True,
                              text=True, check=False)
    if done.returncode:
        raise SystemExit(f"measuring with {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def differences(names: Sequence[str], before: Sequence[dict[str, Any]],
                today: Sequence[dict[str, Any]]) -> list[str]:
    """One line per value outside its tolerance or categorical result that changed."""
    out = []
    for name, b, t in zip(names, before, today):
        for field, tolerance in TOLERANCES.items():
            x, y = b["values"][field], t["values"][field]
            if (x is None) != (y is None):
                out.append(f"{name}: {field} {x} -> {y}")
            elif x is not None and _gap(field, x, y) > tolerance:
                out.append(f"{name}: {field} {x} -> {y} (over {tolerance:g})")
        out += [f"{name}: {key} {b[key]} -> {t[key]}" for key in EXACT if b[key] != t[key]]
    return out


def _gap(field: str, x: float, y: float) -> float:
    if field.endswith("_deg"):  # axes wrap: -179 and +179 are 2 degrees apart
        return abs((x - y + 180.0) % 360.0 - 180.0)
    return abs(x - y)


def largest_gaps(before: Sequence[dict[str, Any]], today: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per value, the largest difference over the ECGs measured by both codes."""
    gaps: dict[str, float] = {}
    for b, t in zip(before, today):
        for field in TOLERANCES:
            x, y = b["values"][field], t["values"][field]
            if x is not None and y is not None:
                gaps[field] = max(gaps.get(field, 0.0), _gap(field, x, y))
    return gaps


def main(argv: Sequence[str] | None = None) -> int:
    from ecgregen.measure import measure
    from ecgregen.records import parse_folds

    parser = argparse.ArgumentParser(prog="python -m ecgregen.bench.same_values", description=__doc__.split("\n")[0])
    parser.add_argument("--before-tree", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--ptbxl", type=Path, default=Path("../shared/data/ptbxl"))
    parser.add_argument("--folds", default="9", help="PTB-XL folds whose records are measured (default 9)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many PTB-XL records (0: all)")
    parser.add_argument("--formats", type=Path, default=Path("../shared/data/formats"))
    parser.add_argument("--write-reference", type=Path, help="write the other code's values here instead")
    args = parser.parse_args(argv)
    named = check_ecgs(args.ptbxl if args.ptbxl.is_dir() else None, parse_folds(args.folds),
                       args.formats if args.formats.is_dir() else None, args.limit)
    names, ecgs = [n for n, _ in named], [e for _, e in named]
    before = measure_with(args.before_tree.resolve(), ecgs)
    if args.write_reference:
        args.write_reference.write_text(json.dumps(dict(zip(names, before)), indent=1, sort_keys=True) + "\n")
        print(f"wrote the values of {len(names)} ECGs measured by {args.before_tree} to {args.write_reference}")
        return 0
    today = [summary(measure(e)) for e in ecgs]
    changed = differences(names, before, today)
    gaps = largest_gaps(before, today)
    print(f"{len(names)} ECGs ({sum('ptbxl' not in n for n in names)} hospital files, the rest PTB-XL folds "
          f"{args.folds} at 100 and 500 Hz) measured by {args.before_tree} and by today's code.")
    print("largest difference per value: " + ", ".join(f"{k} {v:.3g}" for k, v in gaps.items() if not math.isnan(v)))
    for line in changed:
        print("  " + line)
    print(f"{len(changed)} difference(s) beyond the tolerances (2 ms, 1 bpm, 2 degrees; categories equal)")
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
