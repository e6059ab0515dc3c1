"""`ecgregen simulate-monitors`: WFDB records replayed as live bedside monitors against a running server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecgregen.settings import DEFAULT_SERVER


def add_simulate(commands: argparse._SubParsersAction) -> None:
    sim = commands.add_parser("simulate-monitors", help="replay WFDB records as live bedside monitors (StreamECG)")
    sim.add_argument("--records", type=Path, required=True, help="a PTB-XL-layout folder")
    sim.add_argument("--folds", default=None, help="only records of these folds (default: all)")
    sim.add_argument("--monitors", type=int, default=4)
    sim.add_argument("--speed", type=float, default=1.0, help="1.0 = real time; 2.0 = twice as fast")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds of ECG per monitor (records loop)")
    sim.add_argument("--rate", type=float, default=None, help="resample the records to this rate (e.g. 500)")
    sim.add_argument("--chunk-ms", type=float, default=250.0, help="samples per chunk, in ms")
    sim.add_argument("--window", type=float, default=10.0)
    sim.add_argument("--server", default=DEFAULT_SERVER)
    sim.set_defaults(handler=run_simulate)


def run_simulate(args: argparse.Namespace) -> None:
    import asyncio

    from ecgregen.records import load_ptbxl, parse_folds
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
