"""`ecgregen client` {report, ask, insert, delete, stats, info, batches, rollback, snapshot, optimize}: call a running
server.

An ECG goes in as a WFDB record (read here and sent as samples) or as a hospital export (HL7 aECG, GE MUSE, Philips
Sierra, SCP-ECG, DICOM, EDF, ISHNE, MFER: sent as the file's bytes, which the server reads - as a gateway would).
`--format fhir` prints the answer as a FHIR R4 Bundle (:mod:`ecgregen.fhir`).

Start-up is what a person waits for on every call, so this imports gRPC and the stubs only (:mod:`ecgregen.client`);
the calls that send a record load the WFDB reader when they read it, and `report --plot` / `--print` matplotlib when
they draw.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ecgregen.cli.flags import scp_codes
from ecgregen.errors import ClientError
from ecgregen.settings import DEFAULT_SERVER

if TYPE_CHECKING:
    from ecgregen.ecg import Ecg
    from ecgregen.records import WfdbSignal
    from ecgregen.v1 import ecgregen_pb2 as pb

OUTPUT_FORMATS = ("text", "json", "fhir")


def add_client(commands: argparse._SubParsersAction) -> None:
    client = commands.add_parser("client", help="call a running server")
    csub = client.add_subparsers(dest="client_command", required=True)

    def client_parser(name: str, help_text: str, handler: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser:
        p = csub.add_parser(name, help=help_text)
        p.add_argument("--server", default=DEFAULT_SERVER, help=f"HOST:PORT (default {DEFAULT_SERVER})")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=handler)
        return p

    def add_input_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format-hint", default="", help="a hospital file's format, checked against its content "
                       "(hl7_aecg, ge_muse_xml, sierra_xml, scp_ecg, dicom_waveform, edf, ishne_holter, mfer)")
        p.add_argument("--start", type=float, default=0.0, help="a long recording (Holter): where the segment starts, s")
        p.add_argument("--seconds", type=float, default=0.0,
                       help="a long recording: the segment's length, s (0: to the end; a request takes at most 300 s)")

    def add_output_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                       help="text (default), json (as --json) or fhir (a FHIR R4 Bundle: DiagnosticReport, "
                       "diagnosis Observations, the ECG as an Observation)")
        p.add_argument("--include-patient", action="store_true",
                       help="--format fhir: put the file's patient identifiers in a Patient resource and keep the "
                       "recorder's serial number and the acquisition time (all left out by default); --print: "
                       "print them on the page")

    report = client_parser("report", "generate a report for an ECG file", run_report)
    report.add_argument("record", help="a WFDB record (path without extension) or a hospital export")
    add_input_flags(report)
    add_output_flags(report)
    report.add_argument("--k", type=int, default=3)
    report.add_argument("--exclude-patient", default=None, help="leave out this patient's records")
    report.add_argument("--plot", type=Path, help="write a PNG of the query beside its top-3 neighbours and its median "
                        "beat with the fiducials the intervals were measured between")
    report.add_argument("--report-mode", default="", choices=["", "top1", "consensus", "statements", "verified"],
                        help="whose report: top1 (closest), consensus (agrees best with the diagnoses), statements "
                        "(written from this ECG's diagnoses and measurements), verified (the top-k report that agrees "
                        "best with the diagnoses and that no measurement contradicts, else the best one edited, "
                        "each edit printed under it); default: the server's")
    report.add_argument("--language", default="", choices=["", "en", "original"],
                        help="the report's language: en (a neighbour's report in English, through the corpus "
                        "glossary) or original (as its cart wrote it); default: the server's (--report-language). "
                        "Neighbours are shown in both")
    report.add_argument("--refine", action="store_true",
                        help="let the server's LLM rewrite the top-1 report against the top-k evidence (streamed)")
    report.add_argument("--print", type=Path, metavar="FILE",
                        help="write the standard 12-lead page (25 mm/s, 10 mm/mV, actual size) with the report, and "
                        "an evidence page per top-3 neighbour: FILE.pdf, .png or .svg")
    report.add_argument("--paper", default="a4", choices=["a4", "letter"], help="--print: landscape paper (default a4)")
    report.add_argument("--ecg-page-only", action="store_true",
                        help="--print: the 12-lead page alone, without the neighbours' evidence pages")
    report.add_argument("--attach-pdf", action="store_true",
                        help="--format fhir: attach the printed page (PDF) to the DiagnosticReport as presentedForm")
    report.add_argument("--ptbxl", type=Path, action="append", default=[],
                        help="PTB-XL-layout folder(s) holding the neighbours' signals for --plot and --print (the demo corpus is always looked in)")

    ask = client_parser("ask", "answer a question about an ECG file", run_ask)
    ask.add_argument("record", help="a WFDB record (path without extension) or a hospital export")
    ask.add_argument("question")
    add_input_flags(ask)
    add_output_flags(ask)
    ask.add_argument("--options", default="", help="allowed answers, comma-separated (e.g. yes,no,not sure)")
    ask.add_argument("--answerer", default="labels", choices=["labels", "llm"])
    ask.add_argument("--k", type=int, default=3)
    ask.add_argument("--question-type", default="", choices=["", "single-verify", "single-choose", "single-query"],
                     help="ECG-QA question type (default: inferred from the options and wording)")

    insert = client_parser("insert", "insert ECG files with their report and labels", run_insert)
    insert.add_argument("records", nargs="+", help="WFDB records (paths without extension) or hospital exports")
    add_input_flags(insert)
    insert.add_argument("--report", default="")
    insert.add_argument("--scp-codes", default="{}", help='JSON, e.g. \'{"NORM": 100}\'')
    insert.add_argument("--ecg-id", default=None, help="id of the record (default: the file name)")
    insert.add_argument("--patient-id", default="")
    insert.add_argument("--source", default="custom")

    delete = client_parser("delete", "delete records by ecg_id", run_delete)
    delete.add_argument("ecg_ids", nargs="+")
    delete.add_argument("--source", default="custom")

    client_parser("stats", "corpus statistics", run_fields)
    client_parser("info", "server version, encoder and LLM state", run_fields)
    client_parser("batches", "the inserts the corpus holds", run_batches)
    client_rollback = client_parser("rollback", "delete every record one insert wrote", run_rollback)
    client_rollback.add_argument("batch_id")
    client_parser("snapshot", "back up the server's embedded store (written on the server host)", run_fields)
    client_parser("optimize", "build the HNSW index over recently inserted points (the server pauses meanwhile)",
                  run_fields)


def read_record(path: str) -> tuple[pb.Ecg, WfdbSignal]:
    """A WFDB record as an ``Ecg`` message, as stored (leads, rate and units untouched): the server checks it and
    says what is wrong. The signal comes back too, for plotting."""
    from ecgregen.messages import signal_to_proto
    from ecgregen.records import read_wfdb_signal

    raw = read_wfdb_signal(path)
    return signal_to_proto(raw.signal, raw.sampling_rate_hz, raw.lead_names, raw.units), raw


def ecg_message(path: str, args: argparse.Namespace) -> pb.Ecg | pb.EcgFile:
    """What to send for `path`: a WFDB record's samples, or any other file's bytes for the server to read."""
    from ecgregen.ecg_files import check_file_size, is_wfdb

    if is_wfdb(path):
        if args.start or args.seconds:
            raise ClientError("--start/--seconds choose a segment of a hospital file; a WFDB record is sent whole")
        return read_record(path)[0]
    from ecgregen.v1 import ecgregen_pb2 as pb

    file = Path(path)
    if not file.is_file():
        raise ClientError(f"{path}: no such file (nor a WFDB record {path}.hea)")
    check_file_size(path, file.stat().st_size)
    return pb.EcgFile(content=file.read_bytes(), name=file.name, format_hint=args.format_hint, start_s=args.start,
                      duration_s=args.seconds)


def local_ecg(path: str, args: argparse.Namespace) -> tuple[Ecg, dict | None]:
    """The ECG read here as the server reads it (for a plot or a FHIR Bundle), with the file's metadata."""
    from ecgregen.ecg_files import is_wfdb, read_ecg_file

    if is_wfdb(path):
        from ecgregen.records import read_wfdb

        return read_wfdb(path), None
    read = read_ecg_file(path, format_hint=args.format_hint, start_s=args.start, seconds=args.seconds,
                         include_patient=args.include_patient)
    return read.ecg, read.metadata.to_dict()


def output_format(args: argparse.Namespace) -> str:
    if args.json and args.format not in (None, "json"):
        raise ClientError(f"--json and --format {args.format} disagree; give one")
    return "json" if args.json else args.format or "text"


def fhir_bundle(args: argparse.Namespace, result: dict, local: tuple[Ecg, dict | None],
                question: str | None = None, pdf: bytes | None = None) -> dict:
    """The answer as a FHIR R4 Bundle, with the ECG (`local`, from :func:`local_ecg`) as an Observation, the
    server's encoder/corpus as Device and a report's printed page (`pdf`) as a presentedForm."""
    from ecgregen import client
    from ecgregen.fhir import answer_bundle, report_bundle

    ecg, source = local
    server = client.info(args.server)
    if question is None:
        return report_bundle(result, ecg=ecg, source=source, server=server, include_patient=args.include_patient,
                             pdf=pdf)
    return answer_bundle(result, question, ecg=ecg, source=source, server=server,
                         include_patient=args.include_patient)


def run_report(args: argparse.Namespace) -> None:
    from ecgregen import client

    fmt = output_format(args)
    if args.print or args.attach_pdf:
        from ecgregen.cli import report_print

        report_print.check(args, fmt)
    ecg = ecg_message(args.record, args)
    streaming = args.refine and fmt == "text"
    if streaming:
        print("Refining: ", end="", flush=True)
    result = client.report(
        args.server, ecg, args.k, args.exclude_patient, refine=args.refine, report_mode=args.report_mode,
        report_language=args.language, on_delta=(lambda d: print(d, end="", flush=True)) if streaming else None,
        include_median_beat=bool(args.plot),
    )
    if streaming:
        print("\n")
    local = local_ecg(args.record, args) if args.plot or args.print or fmt == "fhir" else None  # read here once
    printed, pdf = "", None
    if args.print or args.attach_pdf:
        printed, pdf = report_print.outputs(args, result, local, client.info(args.server))
    if args.plot:
        from ecgregen.cli.report_plot import plot_report
        from ecgregen.ecg import STANDARD_LEADS
        from ecgregen.records import WfdbSignal

        signal = local[0]
        raw = WfdbSignal(signal.signal.astype("float64"), signal.sampling_rate_hz, list(STANDARD_LEADS),
                         ["mV"] * len(STANDARD_LEADS))
        plot_report(raw, Path(args.record).name, result, args.ptbxl, args.plot)
    if fmt == "fhir":
        print(client.dumps(fhir_bundle(args, result, local, pdf=pdf)))
        return
    print(client.dumps(result) if fmt == "json" else client.format_report(result))
    if args.plot and fmt == "text":
        print(f"plot written to {args.plot}")
    if printed and fmt == "text":
        print(printed)


def run_ask(args: argparse.Namespace) -> None:
    from ecgregen import client

    fmt = output_format(args)
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    result = client.ask(args.server, ecg_message(args.record, args), args.question, options, args.answerer, args.k,
                        args.question_type)
    if fmt == "fhir":
        print(client.dumps(fhir_bundle(args, result, local_ecg(args.record, args), args.question)))
        return
    print(client.dumps(result) if fmt == "json" else client.format_answer(result))


def run_insert(args: argparse.Namespace) -> None:
    from ecgregen import client
    from ecgregen.messages import ecg_field
    from ecgregen.v1 import ecgregen_pb2 as pb

    codes = scp_codes(args.scp_codes)
    if args.ecg_id and len(args.records) > 1:
        raise ClientError("--ecg-id names one record; give one RECORD or leave it out (the file name is used)")

    def records() -> Iterator[pb.Record]:  # read as they are sent
        for path in args.records:
            yield pb.Record(ecg_id=args.ecg_id or Path(path).name, patient_id=args.patient_id, report=args.report,
                            scp_codes=codes, source=args.source, **ecg_field(ecg_message(path, args)))

    result = client.insert(args.server, records())
    print(client.dumps(result) if args.json else
          f"inserted {result['inserted']}, updated {result['updated']}, rejected {result['rejected']} "
          f"(batch {result['batch_id']})"
          + "".join(f"\n  record {r['index']} ({r['ecg_id']}): {r['reason']}" for r in result["rejections"]))


def run_delete(args: argparse.Namespace) -> None:
    from ecgregen import client

    result = client.delete(args.server, args.ecg_ids, args.source)
    print(client.dumps(result) if args.json else f"deleted {result['deleted']}")


def run_fields(args: argparse.Namespace) -> None:
    """`stats`, `info`, `snapshot`, `optimize`: the answer as JSON, or one `key: value` line per field."""
    from ecgregen import client

    calls: dict[str, Callable[[str], dict]] = {
        "stats": client.stats, "info": client.info, "snapshot": client.snapshot,
        "optimize": lambda address: client.stats(address, optimize=True),
    }
    result = calls[args.client_command](args.server)
    print(client.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


def run_batches(args: argparse.Namespace) -> None:
    from ecgregen import client

    result = client.batches(args.server)
    print(client.dumps(result) if args.json else "\n".join(
        f"{b['batch_id'] or '(no batch id)'}  {b['points']} points  {b['first_inserted_at']} .. {b['last_inserted_at']}"
        for b in result["batches"]) + f"\n{len(result['batches'])} batches")


def run_rollback(args: argparse.Namespace) -> None:
    from ecgregen import client

    result = client.rollback(args.server, args.batch_id)
    print(client.dumps(result) if args.json else f"deleted {result['deleted']} records of batch {args.batch_id}")
