"""`client report --print FILE`: the standard 12-lead page of the ECG with the served report, and an evidence page per
top-3 neighbour, written as PDF, PNG or SVG (by FILE's suffix); the same document as a PDF for `--format fhir
--attach-pdf`. matplotlib is imported only here, when a page is printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecgregen.ecg import Ecg
from ecgregen.errors import ClientError
from ecgregen.printout.document import Document, PrintFormat
from ecgregen.settings import DEMO_PTBXL


def print_format(path: Path) -> PrintFormat:
    """The format FILE's suffix names; a ClientError before the server is called when it names none."""
    from ecgregen.printout.document import parse_format

    try:
        return parse_format(path.suffix)
    except ValueError:
        raise ClientError(f"--print {path}: the file's suffix chooses the format: .pdf, .png or .svg") from None


def document(args: argparse.Namespace, result: dict, local: tuple[Ecg, dict | None], server: dict) -> Document:
    """The pages for `result` (a :func:`ecgregen.client.report_dict`), the ECG read here (:func:`ecgregen.cli.client.
    local_ecg`: a WFDB record is read again for its units), the neighbours' signals from ``--ptbxl`` and the demo
    corpus, identifiers only with ``--include-patient``."""
    from ecgregen.ecg_files import is_wfdb
    from ecgregen.printout.content import report_document
    from ecgregen.printout.paper import parse_paper
    from ecgregen.printout.sources import from_file, from_wfdb, neighbour_signals

    ecg, metadata = local
    trace = from_wfdb(args.record) if is_wfdb(args.record) else from_file(ecg, metadata or {})
    folders = [*args.ptbxl, DEMO_PTBXL]
    return report_document(
        result, trace, origin=f"WFDB record {Path(args.record).name}", server=server, source=metadata,
        neighbours=neighbour_signals(result["neighbours"][:3], folders),
        signals_from=", ".join(str(f) for f in folders), include_patient=args.include_patient,
        paper=parse_paper(args.paper), evidence=not args.ecg_page_only)


def check(args: argparse.Namespace, output: str) -> None:
    """Refuse what cannot be printed before the server is called: a FILE suffix naming no format, --attach-pdf
    outside --format fhir."""
    if args.print:
        print_format(args.print)
    if args.attach_pdf and output != "fhir":
        raise ClientError("--attach-pdf attaches the printed page to the FHIR DiagnosticReport: give --format fhir")


def outputs(args: argparse.Namespace, result: dict, local: tuple[Ecg, dict | None], server: dict
            ) -> tuple[str, bytes | None]:
    """Write ``--print FILE``; what to say about it (empty: nothing printed) and the PDF for ``--attach-pdf``
    (the --print file's bytes when that is a PDF, so both are the same document)."""
    from ecgregen.printout.render import render

    pages = document(args, result, local, server)
    said, pdf = "", None
    if args.print:
        fmt = print_format(args.print)
        data = render(pages, fmt)
        args.print.write_bytes(data)
        said = f"page written to {args.print} ({len(pages.pages)} page{'s' if len(pages.pages) > 1 else ''})"
        pdf = data if fmt == PrintFormat.PDF else None
    if args.attach_pdf and pdf is None:
        pdf = render(pages, PrintFormat.PDF)
    return said, pdf
