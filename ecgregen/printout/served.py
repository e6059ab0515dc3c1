"""The page the server prints into a GenerateReport response (``print_format``), for a hospital system that files it
without running our CLI.

The request's print fields are checked before any work (a bad one is INVALID_ARGUMENT, as every other field);
the page is made from the response itself, worded exactly as ``client report --print`` words it, so the two pages
of one call are the same page. It runs in a worker thread: rendering is CPU work the event loop must not do.
Identifiers are never printed here: the server returns none either. matplotlib is imported by the first call that
prints, so a server that never prints never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ecgregen.ecg import Ecg, EcgInputError
from ecgregen.printout.content import report_document
from ecgregen.printout.document import CONTENT_TYPES, PrintFormat, parse_format
from ecgregen.printout.paper import Paper, parse_paper
from ecgregen.printout.sources import from_file, from_request, neighbour_signals
from ecgregen.v1 import ecgregen_pb2 as pb

SAMPLES_ORIGIN = "samples sent over gRPC"


@dataclass(frozen=True)
class PrintRequest:
    fmt: PrintFormat
    paper: Paper
    evidence: bool


def check_print(request: pb.GenerateReportRequest) -> PrintRequest | None:
    """The print the request asks for (None: none), checked; raises EcgInputError naming the bad field."""
    if not request.print_format:
        if request.print_paper or request.print_ecg_page_only:
            raise EcgInputError("print_paper and print_ecg_page_only need a print_format (pdf, png or svg)")
        return None
    try:
        return PrintRequest(parse_format(request.print_format), parse_paper(request.print_paper),
                            not request.print_ecg_page_only)
    except ValueError as exc:
        raise EcgInputError(str(exc)) from None


def server_dict(info: pb.ServerInfo) -> dict:
    """What the page's footer names of the server (:func:`ecgregen.printout.content.ids_line`'s shape)."""
    c = info.calibration
    return {"version": info.version, "encoder_id": info.encoder_id,
            "calibration": {"calibrated": c.calibrated, "corpus_points": c.corpus_points, "fitted_on": c.fitted_on}}


def print_response(response: pb.GenerateReportResponse, ask: PrintRequest, ecg: Ecg, request_ecg: pb.Ecg | None,
                   server: pb.ServerInfo, signal_dirs: Sequence[Path]) -> pb.PrintedPage:
    """The page of `response` for the ECG the request carried (`request_ecg`: its samples message, None for a
    file); neighbours' signals are looked for in `signal_dirs` (PTB-XL layout)."""
    from ecgregen.client import report_dict
    from ecgregen.printout.render import render  # matplotlib: loaded by the first call that prints

    started = time.perf_counter()
    result = report_dict(response)
    source = result.get("source_file")
    trace = from_file(ecg, source) if source else from_request(ecg, request_ecg)
    neighbours = neighbour_signals(result["neighbours"][:3], signal_dirs) if ask.evidence else []
    where = "the server's signal folders (" + ", ".join(d.name for d in signal_dirs) + ")" if signal_dirs else ""
    document = report_document(result, trace, origin=SAMPLES_ORIGIN, server=server_dict(server),
                               neighbours=neighbours, signals_from=where, paper=ask.paper, evidence=ask.evidence)
    content = render(document, ask.fmt)
    return pb.PrintedPage(content=content, content_type=CONTENT_TYPES[ask.fmt], pages=len(document.pages),
                          paper=ask.paper, render_ms=(time.perf_counter() - started) * 1e3)
