"""The printed 12-lead page (issue 28): its scale measured on rendered pixels, every kind of input printed, derived
and absent leads marked, a short recording left short, no identifiers in the default PDF's text, the FHIR
attachment, and the page over gRPC from a real server (and `client report --print`)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader

from ecgregen.bench.printout import sample_result
from ecgregen.ecg import STANDARD_LEADS, Ecg
from ecgregen.ecg_files import read_ecg_file
from ecgregen.printout.content import report_document, window_document
from ecgregen.printout.document import PrintEcg, PrintFormat, Units
from ecgregen.printout.paper import MM_PER_INCH, MM_PER_S, MM_PER_UNIT, PULSE_S, Paper, geometry
from ecgregen.printout.render import render
from ecgregen.printout.sources import from_file, from_wfdb, from_window, neighbour_signals
from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.settings import DEMO_PTBXL
from ecgregen.v1 import ecgregen_pb2 as pb
from tests.conftest import ECGREGEN, REPO, ServerProcess, shared_ptbxl
from tests.test_fhir import verified_result

FORMATS = REPO.parent / "shared" / "data" / "formats"
MUSE = FORMATS / "muse_egm-muse-sinus_mv360_500hz.xml"  # 8 stored leads: III, aVR, aVL, aVF derived
DPI = 150


@pytest.fixture(scope="module")
def corpus() -> list[EcgRecord]:
    """Three demo-corpus records as the neighbours of every page (their signals are in the demo corpus)."""
    return load_ptbxl(DEMO_PTBXL, [1])[:3]


@pytest.fixture(scope="module")
def query() -> PrintEcg:
    """A real 10 s, 100 Hz PTB-XL record in mV."""
    return from_wfdb(load_ptbxl(DEMO_PTBXL, [9])[0].path)


def formats() -> Path:
    if not FORMATS.is_dir():
        pytest.skip(f"format samples not found at {FORMATS}")
    return FORMATS


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def px(mm: float) -> float:
    return mm * DPI / MM_PER_INCH


def dark(image: np.ndarray, x0_mm: float, x1_mm: float, y0_mm: float, y1_mm: float, height_mm: float) -> np.ndarray:
    """The black (trace) pixels of a page region given in paper mm (y up from the bottom edge), as a boolean array
    whose row 0 is the region's top; the grid's pinks are never dark."""
    top, bottom = int(px(height_mm - y1_mm)), int(px(height_mm - y0_mm))
    region = image[top:bottom, int(px(x0_mm)):int(px(x1_mm))]
    return (region < 110).all(axis=2)


def centre_rows(mask: np.ndarray) -> list[float]:
    """The centre row of each horizontal line (a run of rows with 2 mm of dark pixels or more; the pulse's
    vertical edges cross every row with a few)."""
    rows = np.flatnonzero(mask.sum(axis=1) >= px(2.0))
    runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    return [float(run.mean()) for run in runs if run.size]


def test_grid_scale_on_a_rendered_png_is_25_mm_per_s_and_10_mm_per_mv(query: PrintEcg,
                                                                      corpus: list[EcgRecord]) -> None:
    """The PNG is the paper's size at its DPI; every row's calibration pulse is 10 mm high (1 mV) and 5 mm wide
    (0.2 s at 25 mm/s); the rhythm strip's 10 s span 250 mm (1 s = 25 mm)."""
    page = geometry(Paper.A4)
    data = render(report_document(sample_result(query.ecg, corpus), query, origin="test", evidence=False),
                  PrintFormat.PNG, DPI)
    image = pixels(data)
    assert image.shape[:2] == pytest.approx((px(page.height_mm), px(page.width_mm)), abs=1)  # whole pixels
    assert Image.open(io.BytesIO(data)).info["dpi"] == pytest.approx((DPI, DPI), abs=0.05)  # PNG: px per metre
    for row in range(4):
        (x_start, y0), (rise, _), _, (_, y1), (fall, _), (x_end, _) = page.pulse(row)
        assert y1 - y0 == MM_PER_UNIT and fall - rise == PULSE_S * MM_PER_S
        pulse = dark(image, x_start, x_end, y0 - 3, y1 + 3, page.height_mm)
        top, base = centre_rows(pulse)
        assert base - top == pytest.approx(px(10.0), abs=1.0)  # 10 mm for 1 mV
        columns = np.flatnonzero(pulse[int(round(top))])
        assert (columns.max() - columns.min()) == pytest.approx(px(5.0), abs=2.5)  # 0.2 s = 5 mm, plus the line
    rhythm = dark(image, page.strip_left - 0.5, page.grid_left + page.grid_width, page.baseline(3) - 15,
                  page.baseline(3) + 18, page.height_mm)
    columns = np.flatnonzero(rhythm.any(axis=0))
    span_mm = (columns.max() - columns.min()) / px(1.0)
    assert span_mm == pytest.approx((query.ecg.n_samples - 1) / query.ecg.sampling_rate_hz * 25.0, abs=0.5)


def test_a_5_s_ecg_prints_its_5_s_and_leaves_the_rest_of_the_strip_empty(query: PrintEcg,
                                                                         corpus: list[EcgRecord]) -> None:
    """The first 5 s of a real record: the rhythm strip's trace ends at 5 s x 25 mm/s = 125 mm and the strip
    after it is blank (not stretched to the page), and the page says why."""
    short = PrintEcg(Ecg(query.ecg.signal[:, :500], 100.0))
    page = geometry(Paper.A4)
    document = report_document(sample_result(short.ecg, corpus), short, origin="test", evidence=False)
    image = pixels(render(document, PrintFormat.PNG, DPI))
    rhythm = dark(image, page.strip_left - 0.5, page.grid_left + page.grid_width, page.baseline(3) - 15,
                  page.baseline(3) + 18, page.height_mm)
    columns = np.flatnonzero(rhythm.any(axis=0))
    assert (columns.max() - columns.min()) / px(1.0) == pytest.approx(4.99 * MM_PER_S, abs=0.5)
    assert not rhythm[:, int(px(5 * MM_PER_S + 1.0)):].any()
    assert "rhythm strip is blank after 5 s" in pdf_text(render(document, PrintFormat.PDF))


def test_letter_paper_is_letter_sized_at_the_same_scale(query: PrintEcg, corpus: list[EcgRecord]) -> None:
    page = geometry(Paper.LETTER)
    document = report_document(sample_result(query.ecg, corpus), query, origin="test", paper=Paper.LETTER,
                               evidence=False)
    image = pixels(render(document, PrintFormat.PNG, DPI))
    assert image.shape[:2] == pytest.approx((px(215.9), px(279.4)), abs=1)
    top, base = centre_rows(dark(image, page.grid_left, page.strip_left, page.baseline(0) - 3,
                                 page.baseline(0) + 13, page.height_mm))
    assert base - top == pytest.approx(px(10.0), abs=1.0)
    reader = PdfReader(io.BytesIO(render(document, PrintFormat.PDF)))
    box = reader.pages[0].mediabox
    assert (float(box.width), float(box.height)) == pytest.approx((279.4 / 25.4 * 72, 215.9 / 25.4 * 72), abs=0.1)


def test_a_wfdb_record_in_nu_says_so_and_its_neighbours_fill_the_evidence_pages(corpus: list[EcgRecord]) -> None:
    """A z-scored PTB-XL record (units NU) prints at 10 mm per NU and says so; the PDF holds the 12-lead page and
    one page per top-3 neighbour, each with its score, codes and report."""
    record = next(r for r in load_ptbxl(shared_ptbxl(), [9]) if "/NU" in r.path.with_suffix(".hea").read_text())
    trace = from_wfdb(record.path)
    assert trace.units == Units.NU
    result = sample_result(trace.ecg, corpus)
    document = report_document(result, trace, origin=f"WFDB record {record.path.name}",
                               neighbours=neighbour_signals(result["neighbours"], [DEMO_PTBXL]))
    data = render(document, PrintFormat.PDF)
    assert len(PdfReader(io.BytesIO(data)).pages) == 4
    text = pdf_text(data)
    assert "10 mm/NU (not mV)" in text and "Amplitudes in NU" in text
    assert f"WFDB record {record.path.name}" in text and "computer-generated, not confirmed" in text
    for n in corpus:
        assert f"Corpus ECG {n.ecg_id} (source ptbxl)" in text
    assert "No signal" not in text


def test_every_hospital_fixture_prints(corpus: list[EcgRecord]) -> None:
    """Each real export prints: the source named with its format and model, the cart's measurements beside the
    page's, every page's scale."""
    for path in sorted(p for p in formats().iterdir() if p.suffix != ".md"):
        read = read_ecg_file(path, seconds=10)
        metadata = read.metadata.to_dict()
        document = report_document(sample_result(read.ecg, corpus), from_file(read.ecg, metadata), origin=path.name,
                                   source=metadata, evidence=False)
        text = pdf_text(render(document, PrintFormat.PDF))
        assert f"Source: {metadata['format']}" in text, path.name
        assert "25 mm/s | 10 mm/mV" in text and "Measured: Rate" in text, path.name
        assert render(document, PrintFormat.SVG).startswith(b"<?xml"), path.name


def test_an_8_lead_file_marks_its_derived_leads() -> None:
    read = read_ecg_file(formats() / MUSE.name)
    metadata = read.metadata.to_dict()
    trace = from_file(read.ecg, metadata)
    assert trace.derived == ("III", "aVR", "aVL", "aVF")
    text = pdf_text(render(report_document(sample_result(read.ecg, load_ptbxl(DEMO_PTBXL, [1])[:3]), trace,
                                           origin="", source=metadata, evidence=False), PrintFormat.PDF))
    for lead in ("III*", "aVR*", "aVL*", "aVF*"):
        assert lead in text
    assert "I*" not in text.replace("III*", "") and "V1*" not in text
    assert "* derived lead(s) III, aVR, aVL, aVF: computed from the stored limb leads" in text


def test_the_default_pdf_text_layer_holds_no_identifiers(corpus: list[EcgRecord]) -> None:
    """A GE export read with its identifiers: the default page prints none of them (patient id, name, birth date,
    the cart's serial number, the acquisition time, the earlier ECG's date and time in the cart's statements) in its
    text or metadata; with include_patient all are there."""
    read = read_ecg_file(formats() / MUSE.name, include_patient=True)
    source = read.metadata.to_dict()
    identifying = [source["patient"]["patient_id"], source["patient"]["last_name"], source["patient"]["first_name"],
                   source["patient"]["birth_date"], source["device"]["serial_number"], source["acquired_at"][:10],
                   source["acquired_at"][11:16], "30-MAR-2023"]
    result = sample_result(read.ecg, corpus)
    trace = from_file(read.ecg, source)
    default = render(report_document(result, trace, origin="", source=source), PrintFormat.PDF)
    text = pdf_text(default)
    assert "Patient: not printed" in text and "acquisition time not printed" in text
    assert not [value for value in identifying if value in text]
    assert not [value for value in identifying if value.encode() in default]  # metadata, anything uncompressed
    named = pdf_text(render(report_document(result, trace, origin="", source=source, include_patient=True),
                            PrintFormat.PDF))
    assert all(value in named for value in identifying)


def test_a_verified_reports_edits_and_measurement_decided_diagnoses_are_printed_under_it(
        query: PrintEcg, corpus: list[EcgRecord]) -> None:
    """The page says, right under the served report, each sentence removed or added against the measurements with
    why, and marks the diagnosis a measurement decided - on the page's header and in the rendered PDF's text."""
    result = verified_result(sample_result(query.ecg, corpus), query.ecg)
    page = report_document(result, query, origin="test", evidence=False).pages[0]
    report, edits = page.right[:2]
    assert report.startswith("Report (the report of corpus ECG") and "verified mode" in report
    assert edits == "Edited against the measurements: " + "; ".join(
        f'{e["action"]} "{e["sentence"]}" ({e["reason"]})' for e in result["report_edits"])
    [decided] = [d for d in result["diagnoses"] if d.get("decided_by")]
    assert f"absent by measurement: {decided['code']} ({decided['decided_by']})" in page.right[2]
    text = " ".join(pdf_text(render(report_document(result, query, origin="test", evidence=False),
                                    PrintFormat.PDF)).split())
    assert "Edited against the measurements: removed \"right axis deviation.\"" in text


def test_a_neighbour_without_a_signal_says_so(query: PrintEcg, corpus: list[EcgRecord]) -> None:
    result = sample_result(query.ecg, corpus)
    text = pdf_text(render(report_document(result, query, origin="test", neighbours=[None, None, None],
                                           signals_from="nowhere"), PrintFormat.PDF))
    assert text.count("No signal of corpus ECG") == 3 and "looked for in nowhere" in text


def test_a_stream_window_prints_with_the_leads_the_monitor_does_not_send_blank(client_server: ServerProcess,
                                                                              query: PrintEcg) -> None:
    """A monitor streams 8 leads of a real record through StreamECG; its window prints with the server's answer
    for it, the four limb leads it does not send marked as not recorded."""
    leads = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    signal = query.ecg.signal[[STANDARD_LEADS.index(lead) for lead in leads]]
    messages = [pb.StreamEcgRequest(config=pb.StreamConfig(device_id="bed-1", sampling_rate_hz=100,
                                                           lead_names=leads)),
                *(pb.StreamEcgRequest(chunk=pb.StreamChunk(sequence=i, leads=[pb.StreamLead(samples=row)
                                                                              for row in part]))
                  for i, part in enumerate(np.split(signal, 10, axis=1)))]
    [window] = [r.window_result for r in client_server.stub().StreamECG(iter(messages), timeout=120)
                if r.HasField("window_result")]
    full = np.zeros((12, signal.shape[1]), np.float32)
    full[[STANDARD_LEADS.index(lead) for lead in leads]] = signal
    trace = from_window(full, 100, leads)
    assert trace.absent == ("III", "aVR", "aVL", "aVF")
    text = pdf_text(render(window_document(window, trace), PrintFormat.PDF))
    assert "stream window 0, 0-10 s of the stream" in text and text.count("not recorded") >= 4
    assert " ".join(window.report.split()) in " ".join(text.split())


# ---- over gRPC, and `client report --print` ----

def report_request(path: Path, **fields: object) -> pb.GenerateReportRequest:
    return pb.GenerateReportRequest(ecg_file=pb.EcgFile(content=path.read_bytes(), name=path.name), k=3, **fields)


def test_the_page_comes_back_over_grpc(client_server: ServerProcess) -> None:
    """A hospital file sent as it is: the response carries the PDF - the 12-lead page and three evidence pages
    with the demo corpus neighbours' signals -, worded from the response itself, with no identifier; a PNG on
    Letter; nothing unasked; GenerateReportStream prints into its final response."""
    response = client_server.stub().GenerateReport(report_request(formats() / MUSE.name, print_format="pdf"),
                                                   timeout=120)
    printed = response.printout
    assert printed.content_type == "application/pdf" and printed.pages == 4 and printed.paper == "a4"
    assert printed.render_ms > 0
    text = pdf_text(printed.content)
    assert "Source: GE MUSE XML | MV360" in text and "III*" in text and "No signal" not in text
    assert f"encoder {response.encoder_id}" in text and "computer-generated, not confirmed" in text
    assert "JOHN" not in text and "VU222470021SA" not in text and "22:41" not in text
    for n in response.neighbours:
        assert f"Corpus ECG {n.ecg_id}" in text
    png = client_server.stub().GenerateReport(report_request(formats() / MUSE.name, print_format="png",
                                                             print_paper="letter", print_ecg_page_only=True),
                                              timeout=120).printout
    assert png.content_type == "image/png" and png.pages == 1
    assert pixels(png.content).shape[:2] == pytest.approx((px(215.9), px(279.4)), abs=1)
    assert not client_server.stub().GenerateReport(report_request(formats() / MUSE.name), timeout=120).HasField(
        "printout")
    events = list(client_server.stub().GenerateReportStream(report_request(formats() / MUSE.name, print_format="svg"),
                                                            timeout=120))
    assert not events[0].retrieval.HasField("printout")  # printed once, into the final response
    assert events[-1].done.printout.content_type == "image/svg+xml" and events[-1].done.printout.pages == 4


@pytest.mark.parametrize(("fields", "message"), [
    ({"print_format": "docx"}, "unknown print format 'docx'; one of pdf, png, svg"),
    ({"print_format": "pdf", "print_paper": "a3"}, "unknown paper 'a3'; one of a4, letter"),
    ({"print_paper": "letter"}, "print_paper and print_ecg_page_only need a print_format"),
])
def test_a_bad_print_request_is_invalid_argument(client_server: ServerProcess, fields: dict, message: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client_server.stub().GenerateReport(report_request(formats() / MUSE.name, **fields), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in raised.value.details()


def test_client_report_print_writes_the_page(client_server: ServerProcess, tmp_path: Path) -> None:
    """`client report FILE --print out.pdf`, an SVG of the 12-lead page alone on Letter, a bad suffix refused before
    the call, and `--format fhir --attach-pdf`, as a user runs them."""
    record = load_ptbxl(DEMO_PTBXL, [9])[1].path
    out = tmp_path / "page.pdf"
    run = subprocess.run([*ECGREGEN, "client", "report", str(record), "--server", client_server.address,
                          "--print", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"page written to {out} (4 pages)" in run.stdout
    assert f"WFDB record {record.name}" in pdf_text(out.read_bytes())
    svg = tmp_path / "page.svg"
    run = subprocess.run([*ECGREGEN, "client", "report", str(record), "--server", client_server.address,
                          "--print", str(svg), "--ecg-page-only", "--paper", "letter"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert b'width="792pt"' in svg.read_bytes()[:2000]  # 279.4 mm
    bad = subprocess.run([*ECGREGEN, "client", "report", str(record), "--server", client_server.address,
                          "--print", str(tmp_path / "page.docx")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "the file's suffix chooses the format: .pdf, .png or .svg" in bad.stderr
    fhir = subprocess.run([*ECGREGEN, "client", "report", str(record), "--server", client_server.address,
                           "--format", "fhir", "--attach-pdf"], capture_output=True, text=True, timeout=120)
    assert fhir.returncode == 0, fhir.stderr
    [attached] = [f for f in json.loads(fhir.stdout)["entry"][0]["resource"]["presentedForm"]
                  if f["contentType"] == "application/pdf"]
    assert f"WFDB record {record.name}" in pdf_text(base64.b64decode(attached["data"]))


def test_fhir_attaches_the_pdf_and_validates(query: PrintEcg, corpus: list[EcgRecord]) -> None:
    """The DiagnosticReport's presentedForm carries the PDF beside the text, and the bundle validates as R4B."""
    from ecgregen.fhir import report_bundle
    from tests.test_fhir import assert_valid

    result = sample_result(query.ecg, corpus)
    pdf = render(report_document(result, query, origin="test"), PrintFormat.PDF)
    bundle = report_bundle(result, ecg=query.ecg, pdf=pdf)
    assert_valid(bundle)
    forms = bundle["entry"][0]["resource"]["presentedForm"]
    [attached] = [f for f in forms if f["contentType"] == "application/pdf"]
    assert base64.b64decode(attached["data"]) == pdf and attached["size"] == len(pdf)
    assert [f["contentType"] for f in forms] == ["text/plain", "application/pdf"]


def test_the_bench_section_times_every_format_and_states_the_target(corpus: list[EcgRecord]) -> None:
    """`ecgregen bench`'s print section on one record (no hospital files): a row per format and the document,
    the 300 ms target stated with what was measured (not asserted: a shared CPU's figures flake)."""
    from ecgregen.bench.printout import format_print_bench, print_target, run_print_bench

    missing = REPO / "no-such-folder"
    bench = run_print_bench(ptbxl_dir=DEMO_PTBXL, formats_dir=missing,
                            queries=load_ptbxl(DEMO_PTBXL, [9])[:1], neighbours=corpus, repeats=1, progress=False)
    assert bench["notes"] == [f"{missing}: no such folder, hospital files not printed"]
    assert [(r["printed"], r["format"], r["pages"]) for r in bench["rows"]] == [
        ("12-lead page", "pdf", 1), ("12-lead page", "png", 1), ("12-lead page", "svg", 1),
        ("document: page + 3 evidence pages", "pdf", 4)]
    target = print_target(bench)
    assert target["target"].startswith("Printing: CPU p50 <= 300 ms per page")
    assert f"12-lead page png {bench['rows'][1]['cpu_p50_per_page_ms']} ms" in target["measured"]
    assert "| 12-lead page | png | 1 | 1 |" in "\n".join(format_print_bench(bench))
