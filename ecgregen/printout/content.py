"""What the printed pages say: the 12-lead page's header and footer, and one evidence page per top-3 neighbour, worded
from a report result (the dict :func:`ecgregen.client.report_dict` gives, on the client and in the server alike).

Rules, and why:

* **Identifiers** follow the FHIR output's rule (:mod:`ecgregen.fhir`): by default no patient name, id, birth date or
  sex, no recorder serial number and no acquisition time (an exact time of a recording finds the person). With
  ``include_patient`` (the CLI's ``--include-patient``, read on the client from the file) they are printed. The
  server never prints them: it never returns them either. Neighbours are other people and never carry any.
* **Not confirmed** is the title of every page, as carts print "unconfirmed" until a physician over-reads.
* **Measurements** are worded as ``client report`` prints them (:func:`ecgregen.client.format_measurements`): the
  cart line, the recording device's own values beside it, rhythm, why values are absent, quality by lead.
* **Units** are said where a reader looks for the scale: a page of z-scored PTB-XL signals (NU) says that 10 mm is
  one NU, not one mV, and that its pulse is 1 NU.
* **Edits**: a ``verified`` report the measurements made us edit says so under it, sentence by sentence with the
  measurement that decided each, so a reader never takes an edited report for the neighbour's as filed; a diagnosis
  a measurement decided (present or absent whatever its probability) is marked as such.
* **Evidence**: each of the top-3 neighbours on a page of its own, on the same scale as the ECG, with its
  similarity, SCP codes and its report as filed; where no signal of it is at hand, the page says so and why.
"""

from __future__ import annotations

from collections.abc import Sequence

from ecgregen.client import format_measurements
from ecgregen.identifiers import shown_statements
from ecgregen.messages import diagnosis_to_dict, measurements_to_dict, neighbour_to_dict, report_edit_to_dict
from ecgregen.printout.document import Document, Page, PrintEcg, Units
from ecgregen.printout.paper import MAJOR_MM, MINOR_MM, MM_PER_S, MM_PER_UNIT, PAPER_NAMES, STRIP_S, Paper
from ecgregen.v1 import ecgregen_pb2 as pb

TITLE = "12-lead ECG - computer-generated, not confirmed"
EVIDENCE_NEIGHBOURS = 3
_NEAREST = {1: "nearest", 2: "second nearest", 3: "third nearest"}
# The languages reports are served in (BCP 47, as the response names them).
LANGUAGES = {"en": "English", "de": "German", "sv": "Swedish", "und": "an undetermined language"}


def report_document(result: dict, query: PrintEcg, *, origin: str, server: dict | None = None,
                    source: dict | None = None, neighbours: Sequence[PrintEcg | None] = (),
                    signals_from: str = "", include_patient: bool = False, paper: Paper = Paper.A4,
                    evidence: bool = True) -> Document:
    """The 12-lead page of `query` with `result`'s report, and (with `evidence`) a page per top-3 neighbour.

    `origin` names the input when it is not a file ("WFDB record 00134_lr", "samples sent over gRPC", "stream
    window 3"); `source` is the file's metadata (:meth:`ecgregen.ecg_files.FileMetadata.to_dict`, with ``patient``
    when read with identifiers), by default the ``source_file`` the server returned; `server` is what
    :func:`ecgregen.client.info` returns (version, encoder, corpus calibration); `neighbours` holds the
    signal of each of ``result["neighbours"][:3]`` (None: not at hand here), `signals_from` where they were looked
    for.
    """
    source = source if source is not None else result.get("source_file")
    server = server or {}
    pages: list[tuple[Page, Units]] = [(_ecg_page(result, query, origin, source, include_patient), query.units)]
    if evidence:
        shown = result["neighbours"][:EVIDENCE_NEIGHBOURS]
        for rank, n in enumerate(shown, 1):
            trace = neighbours[rank - 1] if rank <= len(neighbours) else None
            pages.append((_evidence_page(rank, len(shown), n, trace, result.get("report_ecg_id", ""), signals_from),
                          trace.units if trace else Units.MV))
    ids = ids_line(server, result.get("encoder_id", ""))
    total = len(pages)
    return Document(paper, tuple(
        Page(p.title, p.left, p.right, p.ecg, p.no_signal, (scale_line(units, paper), f"{ids} | page {i} of {total}"))
        for i, (p, units) in enumerate(pages, 1)))


def window_document(window: pb.WindowResult, trace: PrintEcg, *, server: dict | None = None,
                    neighbours: Sequence[PrintEcg | None] = (), signals_from: str = "", paper: Paper = Paper.A4,
                    evidence: bool = True) -> Document:
    """The pages of one StreamECG window: `trace` is the window's samples as the monitor sent them
    (:func:`ecgregen.printout.sources.from_window`), `window` what the server answered for it."""
    result = {
        "report": window.report, "report_language": window.report_language,
        "diagnoses": [diagnosis_to_dict(d) for d in window.diagnoses],
        "neighbours": [neighbour_to_dict(n) for n in window.neighbours], "warnings": list(window.warnings),
        "measurements": measurements_to_dict(window.measurements) if window.HasField("measurements") else None,
        "quality_flags": list(window.quality_flags),
        "report_edits": [report_edit_to_dict(e) for e in window.report_edits],
    }
    origin = f"stream window {window.window_index}, {window.start_s:g}-{window.end_s:g} s of the stream"
    return report_document(result, trace, origin=origin, server=server, neighbours=neighbours,
                           signals_from=signals_from, paper=paper, evidence=evidence)


def scale_line(units: Units, paper: Paper) -> str:
    """The page's scale as a reader checks it, and how to print it so that it stays true."""
    unit = "mV" if units == Units.MV else "NU (not mV)"
    return (f"{MM_PER_S:g} mm/s | {MM_PER_UNIT:g} mm/{unit} | grid {MINOR_MM:g} mm / {MAJOR_MM:g} mm | calibration "
            f"pulse 1 {unit.split()[0]} at each row's start | {PAPER_NAMES[paper]}: print at 100 % (actual size), "
            "not fit to page")


def ids_line(server: dict, encoder_id: str) -> str:
    """What made the page: service version, encoder, and the corpus the neighbours come from."""
    calibration = server.get("calibration") or {}
    corpus = (f"corpus of {calibration['corpus_points']:,} records, calibrated on {calibration['fitted_on']}"
              if calibration.get("calibrated") else "corpus diagnoses uncalibrated")
    version = f"ecgregen {server['version']} | " if server.get("version") else "ecgregen | "
    return f"{version}encoder {encoder_id or server.get('encoder_id') or 'unknown'} | {corpus}"


def _ecg_page(result: dict, query: PrintEcg, origin: str, source: dict | None, include_patient: bool) -> Page:
    left = [_patient_line(source, include_patient), _source_line(query, origin, source, include_patient),
            *_markers(query)]
    if result.get("measurements") is None:
        left.append("Measured: not available (see the notes)")
    else:
        measured = format_measurements(result["measurements"], (source or {}).get("measurements")).strip()
        left += [f"Measured: {line}" if i == 0 else line for i, line in enumerate(measured.splitlines())]
    if result.get("quality_flags"):
        left.append(f"Stream quality: {', '.join(f.replace(':', ' ') for f in result['quality_flags'])}")
    if source and source.get("statements"):
        left.append(f"The device's interpretation ({source.get('statements_source') or 'unstated'}): "
                    + "; ".join(shown_statements(source["statements"], include_patient)))
    right = [_report_line(result)]
    if result.get("report_edits"):
        right.append(_edits_line(result["report_edits"]))
    original = result.get("original_report")
    if original and original != result["report"]:
        language = LANGUAGES.get(result.get("original_language", ""), result.get("original_language") or "unstated")
        right.append(f"As its cart wrote it (in {language}): {original}")
    right.append(_diagnoses_line(result.get("diagnoses", [])))
    if result.get("warnings"):
        right.append("Notes: " + "; ".join(result["warnings"]))
    return Page(TITLE, tuple(left), tuple(right), query)


def _patient_line(source: dict | None, include_patient: bool) -> str:
    if not include_patient:
        return "Patient: not printed (identifiers, the recorder's serial number and the acquisition time only on " \
               "request: --include-patient)"
    patient = (source or {}).get("patient") or {}
    name = ", ".join(p for p in (patient.get("last_name"), patient.get("first_name")) if p)
    demographics = (source or {}).get("demographics") or {}
    parts = [name, f"ID {patient['patient_id']}" if patient.get("patient_id") else "",
             f"born {patient['birth_date']}" if patient.get("birth_date") else "",
             str(demographics.get("sex", "")), f"age {demographics['age']}" if demographics.get("age") else ""]
    return "Patient: " + (" | ".join(p for p in parts if p) or "the file names none")


def _source_line(query: PrintEcg, origin: str, source: dict | None, include_patient: bool) -> str:
    ecg = query.ecg
    recording = f"{ecg.duration_s:g} s at {ecg.sampling_rate_hz:g} Hz"
    if not source:
        return f"Source: {origin} | {recording}"
    device = source.get("device") or {}
    parts = [source.get("format", ""), " ".join(device[k] for k in ("manufacturer", "model") if device.get(k))]
    if include_patient and device.get("serial_number"):
        parts.append(f"serial {device['serial_number']}")
    if source.get("acquired_at"):
        parts.append(f"acquired {source['acquired_at']}" if include_patient else "acquisition time not printed")
    if source.get("file_duration_s", 0) > ecg.duration_s + 1e-6:
        recording += f" (from {source.get('start_s', 0):g} s of {source['file_duration_s']:g} s)"
    return "Source: " + " | ".join(p for p in (*parts, recording) if p)


def _markers(trace: PrintEcg) -> tuple[str, ...]:
    """What on the grid is not plain recorded millivolts: NU, derived and absent leads, a short or long recording."""
    lines = []
    if trace.units == Units.NU:
        lines.append("Amplitudes in NU: each lead z-scored as stored (PTB-XL pre-processed), drawn 10 mm per NU - "
                     "shapes and timing read true, amplitudes in mV do not")
    if trace.derived:
        lines.append(f"* derived lead(s) {', '.join(trace.derived)}: computed from the stored limb leads when the "
                     "file was read, not recorded")
    if trace.absent:
        lines.append(f"Not recorded: {', '.join(trace.absent)} (blank, not flat: no signal was sent)")
    duration = trace.ecg.duration_s
    if duration < STRIP_S - 1e-6:
        lines.append(f"The recording is {duration:g} s: the rhythm strip is blank after {duration:g} s, and each "
                     "column of leads shows the same first seconds")
    elif duration > STRIP_S + 1e-6:
        lines.append(f"The first {STRIP_S:g} s of {duration:g} s are shown")
    return tuple(lines)


def _report_line(result: dict) -> str:
    """The served report in the language it was served in, with its mode and whose it is."""
    if result.get("report_ecg_id"):
        whose = f"the report of corpus ECG {result['report_ecg_id']}, {result.get('report_mode') or 'unstated'} mode"
    else:
        whose = f"{result['report_mode']} mode" if result.get("report_mode") else "retrieved"
    if result.get("report_language"):
        whose += f", in {LANGUAGES.get(result['report_language'], result['report_language'])}"
    if result.get("refined"):
        return f"Report (reworded by {result['llm_model']} from {whose}): {result['report']}"
    suffix = f" (not reworded: {result['fallback_reason']})" if result.get("fallback_reason") else ""
    return f"Report ({whose}){suffix}: {result['report'] or '(none)'}"


def _edits_line(edits: Sequence[dict]) -> str:
    """'Edited against the measurements: removed "right axis deviation." (measured QRS axis +79 degrees is normal);
    added "..." (...)'."""
    return "Edited against the measurements: " + "; ".join(
        f'{e["action"]} "{e["sentence"]}" ({e["reason"]})' for e in edits)


def _diagnoses_line(diagnoses: Sequence[dict]) -> str:
    """The present diagnoses, and those a measurement decided (absent ones too: a measured rate that rules out a
    bradycardia the neighbours carry is worth a line to the reader)."""
    present = [d for d in diagnoses if d["present"]]
    if not present:
        line = "Present diagnoses: none reaches its threshold"
    else:
        line = "Present diagnoses (probability): " + "; ".join(
            f"{d['code']} {d['probability']:.2f}" + (f" {d['description']}" if d.get("description") else "")
            + (f" (by measurement: {d['decided_by']})" if d.get("decided_by") else "")
            for d in present)
    ruled_out = [d for d in diagnoses if not d["present"] and d.get("decided_by")]
    if ruled_out:
        line += "; absent by measurement: " + "; ".join(f"{d['code']} ({d['decided_by']})" for d in ruled_out)
    return line


def _evidence_page(rank: int, total: int, neighbour: dict, trace: PrintEcg | None, served_id: str,
                   signals_from: str) -> Page:
    codes = ", ".join(f"{c} {v:g}" for c, v in sorted(neighbour["scp_codes"].items(), key=lambda kv: -kv[1]))
    left = [f"Corpus ECG {neighbour['ecg_id']} (source {neighbour.get('source') or 'unstated'}) | similarity "
            f"{neighbour['score']:.3f} (cosine of the encoder's embeddings; 1 = identical)",
            f"SCP codes (likelihood %): {codes or 'none'}"]
    if trace is not None:
        left += [f"Its signal: {trace.ecg.duration_s:g} s at {trace.ecg.sampling_rate_hz:g} Hz", *_markers(trace)]
    served = " - the served report" if neighbour["ecg_id"] == served_id else ""
    right = [f"Its report, as filed{served}: {neighbour.get('report') or '(none)'}"]
    if neighbour.get("report_en") and neighbour["report_en"] != neighbour.get("report"):
        right.append(f"In English: {neighbour['report_en']}")
    no_signal = "" if trace is not None else (
        f"No signal of corpus ECG {neighbour['ecg_id']} at hand: the corpus keeps each ECG's embedding, report and "
        f"labels, not its samples" + (f"; looked for in {signals_from}" if signals_from else "") + ".")
    return Page(f"Evidence {rank} of {total}: the {_NEAREST[rank]} corpus ECG - computer-generated, not confirmed",
                tuple(left), tuple(right), trace, no_signal)
