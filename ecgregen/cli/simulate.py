"""`ecgregen simulate-monitors`: PTB-XL records or hospital files (a Holter, an EDF recording) replayed as live
bedside monitors against a running server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecgregen.settings import DEFAULT_SERVER


def add_simulate(commands: argparse._SubParsersAction) -> None:
    sim = commands.add_parser("simulate-monitors", help="replay ECG records as live bedside monitors (StreamECG)")
    source = sim.add_mutually_exclusive_group(required=True)
    source.add_argument("--records", type=Path, help="a PTB-XL-layout folder")
    source.add_argument("--files", nargs="+", type=Path,
                        help="WFDB records or hospital exports (ISHNE Holter, EDF, HL7 aECG, DICOM, ...), one per "
                        "monitor in turn")
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

    from ecgregen.records import EcgRecord, load_ptbxl, parse_folds
    from ecgregen.simulate import simulate

    if args.files:
        records = [EcgRecord(ecg_id=path.name, patient_id="", report="", scp_codes={}, source="file", path=path)
                   for path in args.files]
    else:
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
