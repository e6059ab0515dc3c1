"""Client side of the CLI: call the server with messages, return its answers as the JSON-ready dicts the CLI prints,
and word them for a person.

Errors surface as the gRPC status name and message (``INVALID_ARGUMENT: expected 12 leads, got 3``) and a
non-zero exit, raised as :class:`~ecgregen.errors.ClientError` for the CLI to print. gRPC, the generated stubs and
the stdlib are all this imports: ``ecgregen client stats`` starts in a fraction of a second, and reading a record
file is the caller's (:mod:`ecgregen.cli.client`). Printing measurements loads the measurement package's types
(numpy, never its signal code), when there are measurements to print.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from ecgregen.errors import ClientError
from ecgregen.messages import (
    diagnosis_to_dict,
    ecg_field,
    file_info_to_dict,
    measurements_to_dict,
    neighbour_to_dict,
    report_edit_to_dict,
)
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 60.0

# How `client report` names a measured value in its reasons (other names print as the proto has them).
VALUE_LABELS = {
    "heart_rate_bpm": "rate", "rr_interval_ms": "RR", "rr_min_ms": "RR min", "rr_max_ms": "RR max",
    "pr_interval_ms": "PR", "p_duration_ms": "P duration", "qrs_duration_ms": "QRS", "qt_interval_ms": "QT",
    "qtc_bazett_ms": "QTc Bazett", "qtc_fridericia_ms": "QTc Fridericia", "p_axis_deg": "P axis",
    "qrs_axis_deg": "QRS axis", "t_axis_deg": "T axis", "rr_irregularity": "RR irregularity",
}
# A hospital file's own measurements (EcgFileInfo.measurements, named as ecgdatakit reads them) by our field names.
DEVICE_VALUES = {
    "heart_rate": "heart_rate_bpm", "rr_interval": "rr_interval_ms", "pr_interval": "pr_interval_ms",
    "qrs_duration": "qrs_duration_ms", "qt_interval": "qt_interval_ms", "qtc_bazett": "qtc_bazett_ms",
    "qtc_fridericia": "qtc_fridericia_ms", "p_axis": "p_axis_deg", "qrs_axis": "qrs_axis_deg", "t_axis": "t_axis_deg",
}
PREMATURE_TIMES_SHOWN = 5  # per origin; more are counted, not listed


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every call."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.token}")]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready,
            details.compression)

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # noqa: ANN001, ANN201
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # noqa: ANN001, ANN201
        return continuation(self._with_token(details), requests)


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: list | None
    credentials: object
    wait_for_ready: bool | None
    compression: object


def open_channel(address: str) -> grpc.Channel:
    """A channel as the environment says: TLS when $ECGREGEN_TLS_CA is set (a client certificate from
    $ECGREGEN_TLS_CERT/$ECGREGEN_TLS_KEY for mutual TLS), a bearer token from $ECGREGEN_TOKEN."""
    ca = os.environ.get("ECGREGEN_TLS_CA")
    if ca:
        cert, key = os.environ.get("ECGREGEN_TLS_CERT"), os.environ.get("ECGREGEN_TLS_KEY")
        credentials = grpc.ssl_channel_credentials(
            Path(ca).read_bytes(), Path(key).read_bytes() if key else None, Path(cert).read_bytes() if cert else None)
        channel = grpc.secure_channel(address, credentials)
    else:
        channel = grpc.insecure_channel(address)
    token = os.environ.get("ECGREGEN_TOKEN")
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel


@dataclass
class Connection:
    address: str
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __enter__(self) -> pb_grpc.EcgReGenStub:
        self._channel = open_channel(self.address)
        return pb_grpc.EcgReGenStub(self._channel)

    def __exit__(self, *exc: object) -> None:
        self._channel.close()


def client_error(exc: grpc.RpcError) -> ClientError:
    return ClientError(f"{exc.code().name}: {exc.details()}")


def call(method, request, timeout_s: float):  # noqa: ANN001 - any unary or stream-unary stub method
    try:
        return method(request, timeout=timeout_s)
    except grpc.RpcError as exc:
        raise client_error(exc) from None


def latency_dict(latency: pb.StageLatency) -> dict[str, float]:
    return {
        "preprocess": round(latency.preprocess_ms, 3), "encode": round(latency.encode_ms, 3),
        "search": round(latency.search_ms, 3), "answer": round(latency.answer_ms, 3),
        "llm": round(latency.llm_ms, 3), "diagnose": round(latency.diagnose_ms, 3),
        "measure": round(latency.measure_ms, 3), "total": round(latency.total_ms, 3),
    }


def measurements_field(response: pb.GenerateReportResponse | pb.AnswerQuestionResponse) -> dict | None:
    """A response's measurements as printed; None when the server could not measure (a warning says why)."""
    return measurements_to_dict(response.measurements) if response.HasField("measurements") else None


def report_dict(response: pb.GenerateReportResponse) -> dict:
    result = {
        "report": response.report,
        "report_language": response.report_language,
        "report_mode": response.report_mode,
        "report_ecg_id": response.report_ecg_id,
        "original_report": response.original_report,
        "original_language": response.original_language,
        "untranslated_words": list(response.untranslated_words),
        "report_edits": [report_edit_to_dict(e) for e in response.report_edits],
        "measurements": measurements_field(response),
        "diagnoses": [diagnosis_to_dict(d) for d in response.diagnoses],
        "neighbours": [neighbour_to_dict(n) for n in response.neighbours],
        "latency_ms": latency_dict(response.latency),
        "warnings": list(response.warnings),
        "encoder_id": response.encoder_id,
    }
    if response.HasField("source_file"):
        result["source_file"] = file_info_to_dict(response.source_file)
    if response.llm_model or response.fallback_reason:  # refinement was asked for
        result.update(retrieved_report=response.retrieved_report, refined=response.refined,
                      fallback_reason=response.fallback_reason, llm_model=response.llm_model)
    return result


def report(
    address: str, ecg: pb.Ecg | pb.EcgFile, k: int, exclude_patient: str | None = None, *, refine: bool = False,
    on_delta: Callable[[str], None] | None = None, report_mode: str = "", include_median_beat: bool = False,
    report_language: str = "",
) -> dict:
    """GenerateReport; with `refine`, through the streaming RPC so `on_delta` sees the text as it arrives;
    `include_median_beat` asks for the beat the measurements were made on (to plot its fiducials);
    `report_language` en or original (empty: the server's default)."""
    request = pb.GenerateReportRequest(
        **ecg_field(ecg), k=k, filter=pb.SearchFilter(exclude_patient_id=exclude_patient or ""), refine=refine,
        report_mode=report_mode, include_median_beat=include_median_beat, report_language=report_language,
    )
    with Connection(address) as stub:
        if not refine:
            response = call(stub.GenerateReport, request, DEFAULT_TIMEOUT_S)
        else:
            response = None
            try:
                for event in stub.GenerateReportStream(request, timeout=DEFAULT_TIMEOUT_S):
                    if event.HasField("delta") and on_delta:
                        on_delta(event.delta)
                    elif event.HasField("done"):
                        response = event.done
                    elif event.HasField("error"):
                        raise ClientError(f"{event.error.code}: {event.error.message}")
            except grpc.RpcError as exc:
                raise client_error(exc) from None
            if response is None:
                raise ClientError("the server closed the report stream without a final result")
    return report_dict(response)


def ask(address: str, ecg: pb.Ecg | pb.EcgFile, question: str, options: Sequence[str], answerer: str, k: int,
        question_type: str = "") -> dict:
    request = pb.AnswerQuestionRequest(
        **ecg_field(ecg), question=question, options=options, answerer=answerer, k=k, question_type=question_type,
    )
    with Connection(address) as stub:
        response = call(stub.AnswerQuestion, request, DEFAULT_TIMEOUT_S)
    return {
        "answer": list(response.answer),
        "answerer": response.answerer,
        "rationale": response.rationale,
        "measurements": measurements_field(response),
        "diagnoses": [diagnosis_to_dict(d) for d in response.diagnoses],
        "neighbours": [neighbour_to_dict(n) for n in response.neighbours],
        "latency_ms": latency_dict(response.latency),
        "warnings": list(response.warnings),
        "fallback_reason": response.fallback_reason,
        "llm_model": response.llm_model,
        **({"source_file": file_info_to_dict(response.source_file)} if response.HasField("source_file") else {}),
    }


def insert(address: str, records: Iterable[pb.Record]) -> dict:
    """InsertRecords, streaming `records` as they are made (a caller reading files reads one at a time)."""
    requests = (pb.InsertRecordsRequest(record=record) for record in records)
    with Connection(address) as stub:
        response = call(stub.InsertRecords, requests, DEFAULT_TIMEOUT_S)
    return {
        "batch_id": response.batch_id,
        "inserted": response.inserted, "updated": response.updated, "rejected": response.rejected,
        "rejections": [{"index": r.index, "ecg_id": r.ecg_id, "reason": r.reason} for r in response.rejections],
    }


def delete(address: str, ecg_ids: Sequence[str], source: str) -> dict:
    request = pb.DeleteRecordsRequest(keys=[pb.RecordKey(ecg_id=i, source=source) for i in ecg_ids])
    with Connection(address) as stub:
        response = call(stub.DeleteRecords, request, DEFAULT_TIMEOUT_S)
    return {"deleted": response.deleted}


def stats(address: str, *, optimize: bool = False) -> dict:
    with Connection(address) as stub:
        if optimize:
            s = call(stub.OptimizeCorpus, pb.OptimizeCorpusRequest(), 3600.0)
        else:
            s = call(stub.GetCorpusStats, pb.GetCorpusStatsRequest(), DEFAULT_TIMEOUT_S)
    return {
        "points": s.points, "indexed_vectors": s.indexed_vectors, "dim": s.dim, "encoder_id": s.encoder_id,
        "engine": s.engine, "status": s.status, "optimizer": s.optimizer, "segments": s.segments,
        "index": {"hnsw_m": s.index.hnsw_m, "hnsw_ef_construct": s.index.hnsw_ef_construct,
                  "full_scan_threshold_kb": s.index.full_scan_threshold_kb, "on_disk": s.index.on_disk,
                  "quantization": s.index.quantization},
    }


def batches(address: str) -> dict:
    with Connection(address) as stub:
        response = call(stub.ListBatches, pb.ListBatchesRequest(), DEFAULT_TIMEOUT_S)
    return {"batches": [
        {"batch_id": b.batch_id, "points": b.points, "first_inserted_at": b.first_inserted_at,
         "last_inserted_at": b.last_inserted_at} for b in response.batches
    ]}


def rollback(address: str, batch_id: str) -> dict:
    with Connection(address) as stub:
        response = call(stub.DeleteRecords, pb.DeleteRecordsRequest(batch_id=batch_id), DEFAULT_TIMEOUT_S)
    return {"deleted": response.deleted}


def snapshot(address: str) -> dict:
    with Connection(address) as stub:
        s = call(stub.CreateSnapshot, pb.CreateSnapshotRequest(), 600.0)
    return {"path": s.path, "bytes": s.bytes, "points": s.points}


def info(address: str) -> dict:
    with Connection(address) as stub:
        i = call(stub.GetServerInfo, pb.GetServerInfoRequest(), DEFAULT_TIMEOUT_S)
    return {
        "version": i.version, "encoder_id": i.encoder_id,
        "llm": {"enabled": i.llm.enabled, "model": i.llm.model, "endpoint": i.llm.endpoint, "circuit": i.llm.circuit,
                "detail": i.llm.detail},
        "report_mode": i.report_mode,
        "report_language": i.report_language,
        "calibration": {
            "calibrated": i.calibration.calibrated, "detail": i.calibration.detail,
            "fitted_on": i.calibration.fitted_on, "cases": i.calibration.cases,
            "created_at": i.calibration.created_at, "corpus_points": i.calibration.corpus_points,
            "k": i.calibration.k, "report_mode": i.calibration.report_mode,
        },
    }


def format_neighbours(neighbours: list[dict]) -> str:
    lines = []
    for rank, n in enumerate(neighbours, 1):
        codes = ", ".join(f"{c} {v:g}" for c, v in sorted(n["scp_codes"].items(), key=lambda kv: -kv[1]))
        lines.append(f"  {rank}. ecg {n['ecg_id']} (patient {n['patient_id'] or '?'}) score {n['score']:.4f}  [{codes}]")
        lines.append(f"     {n['report']}")
        if n["report_en"] != n["report"]:
            lines.append(f"     en: {n['report_en']}")
    return "\n".join(lines)


def format_diagnoses(diagnoses: list[dict], limit: int = 8) -> str:
    """Present diagnoses first, then the most probable others, one line each; one a measurement decided says which
    (its mark may then disagree with its probability and threshold)."""
    shown = [d for d in diagnoses if d["present"]] + [d for d in diagnoses if not d["present"]]
    lines = [
        f"  {'+' if d['present'] else ' '} {d['code']:<6} {d['probability']:5.2f} (threshold {d['threshold']:.2f})  "
        f"{d['description']}" + (f" [{d['superclass']}]" if d["superclass"] else "")
        + (f" (by measurement: {d['decided_by']})" if d.get("decided_by") else "")
        for d in shown[:max(limit, sum(d["present"] for d in diagnoses))]
    ]
    return "\n".join(lines) or "  (none: no neighbour carries a label)"


def _with_warnings(text: str, warnings: list[str]) -> str:
    return text + "".join(f"\nwarning: {w}" for w in warnings)


def format_source_file(info: dict | None) -> str:
    """A line on what the server read from a sent file (empty for samples)."""
    if not info:
        return ""
    device = " ".join(info["device"].get(k, "") for k in ("manufacturer", "model") if info["device"].get(k))
    line = (f"File: {info['format']}" + (f", {device}" if device else "")
            + (f", acquired {info['acquired_at']}" if info["acquired_at"] else "")
            + f", {info['duration_s']:g} s at {info['sampling_rate_hz']:g} Hz"
            + (f" (from {info['start_s']:g} s of {info['file_duration_s']:g} s)" if info["duration_s"] < info["file_duration_s"] else ""))
    if info["statements"]:
        line += f"\nThe device's interpretation ({info['statements_source'] or 'unstated'}): " + "; ".join(info["statements"])
    return line + "\n\n"


def cart_values_line(values: Mapping[str, float | None]) -> str:
    """The cart line of values by field name (absent: "-"), through the measurement package's own formatter: one
    format for what the server measured and for what a recording device measured."""
    from ecgregen.measure.types import VALUE_FIELDS, Measurements, cart_line  # the types only: numpy, no signal code

    return cart_line(Measurements(**{name: values.get(name) for name in VALUE_FIELDS}))


def _lead_runs(leads: Sequence[str], indices: Sequence[int]) -> str:
    """'V1-V6', 'I, III': leads by their positions in standard order, three or more in a row as a range."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{leads[r[0]]}-{leads[r[-1]]}" if len(r) >= 3 else ", ".join(leads[i] for i in r) for r in runs)


def format_quality(lead_quality: Sequence[dict], limb_lead_reversal: bool, not_recorded: Sequence[str] = ()) -> str:
    """'Quality: V1-V6 lead_off, flat; II baseline_drift', or 'Quality: all leads ok'; leads a monitor did not send
    (and that could not be derived) are said apart - 'not recorded: V1, V2, V3' - so a reader never takes them for
    electrodes that came off: they are not in `lead_quality` at all."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, q in enumerate(lead_quality):
        if q["flags"]:
            groups.setdefault(tuple(q["flags"]), []).append(i)
    leads = [q["lead"] for q in lead_quality]
    text = "; ".join(f"{_lead_runs(leads, indices)} {', '.join(flags)}" for flags, indices in groups.items())
    text = text or ("all recorded leads ok" if not_recorded else "all leads ok")
    absent = f"not recorded: {', '.join(not_recorded)}" if not_recorded else ""
    return ("Quality: " + "; ".join(part for part in (text, absent) if part)
            + ("; limb lead reversal suspected" if limb_lead_reversal else ""))


def format_rhythm(m: dict) -> str:
    """'Rhythm: sinus rhythm, 11 beats, P waves present, RR regular, premature beats: 1 ventricular (at 4.2 s)'."""
    parts = [m["rhythm"].replace("_", " ") or "undetermined", f"{m['beat_count']} beats",
             {True: "P waves present", False: "no P waves", None: "P waves not assessed"}[m["p_waves_present"]]]
    if m["rr_irregular"] is not None:
        parts.append("RR irregular" if m["rr_irregular"] else "RR regular")
    by_origin: dict[str, list[float]] = {}
    for beat in m["premature_beats"]:
        by_origin.setdefault(beat["origin"], []).append(beat["time_s"])
    premature = ", ".join(
        f"{len(times)} {origin} (at {', '.join(f'{t:.1f}' for t in times[:PREMATURE_TIMES_SHOWN])}"
        f"{', ...' if len(times) > PREMATURE_TIMES_SHOWN else ''} s)" for origin, times in by_origin.items())
    return "Rhythm: " + ", ".join(parts) + f", premature beats: {premature or 'none'}"


def format_measurements(m: dict | None, device: Mapping[str, int] | None = None) -> str:
    """What the ECG's samples measure, as a cart prints it, first: the cart line (and a recording device's own
    values beside it, for a file that carries them), rhythm, why values are absent, and signal quality by lead."""
    if m is None:
        return "Measurements: not available (see the warnings)\n\n"
    lines = [cart_values_line(m)]
    theirs = {DEVICE_VALUES[name]: value for name, value in (device or {}).items() if name in DEVICE_VALUES}
    if theirs:
        lines.append(f"Device: {cart_values_line(theirs)}")
    lines.append(format_rhythm(m))
    reasons: dict[str, list[str]] = {}
    for name, reason in m["missing"].items():
        reasons.setdefault(reason, []).append(VALUE_LABELS.get(name, name))
    if reasons:
        lines.append("Not measured: "
                     + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in reasons.items()))
    lines.append(format_quality(m["lead_quality"], m["limb_lead_reversal"], m.get("not_recorded", ())))
    return "\n".join(lines) + "\n\n"


def _measurements_of(result: dict) -> str:
    source = result.get("source_file")
    return format_measurements(result["measurements"], source["measurements"] if source else None)


def format_edits(edits: Sequence[dict]) -> str:
    """A verified report's edits, one line each under the report line, with the measurement that decided it:
    '  edited: removed "right axis deviation." - measured QRS axis +79 degrees is normal (-30..+90)'."""
    return "".join(f'\n  edited: {e["action"]} "{e["sentence"]}" - {e["reason"]}' for e in edits)


def format_report(result: dict) -> str:
    text = (_measurements_of(result) + format_source_file(result.get("source_file"))
            + f"Report ({result['report_language']}): {result['report']}" + format_edits(result.get("report_edits", ())))
    if result["original_report"] and result["original_report"] != result["report"]:
        text += f"\nOriginal ({result['original_language']}): {result['original_report']}"
    if result["untranslated_words"]:
        text += f"\n(not in the glossary, kept as written: {', '.join(dict.fromkeys(result['untranslated_words']))})"
    if result.get("refined"):
        text += f"\n(refined by {result['llm_model']}; retrieved report: {result['retrieved_report']})"
    elif result.get("fallback_reason"):
        text += f"\n(not refined: {result['fallback_reason']}; this is the retrieved report)"
    if result["report_ecg_id"]:
        text += f"\n(report of ecg {result['report_ecg_id']}, mode {result['report_mode']})"
    elif result["report_mode"] == "statements":
        text += "\n(written from the diagnoses and measurements below, mode statements; evidence per sentence: --json)"
    text += f"\n\nDiagnoses (+ = present):\n{format_diagnoses(result['diagnoses'])}"
    text += f"\n\nNeighbours:\n{format_neighbours(result['neighbours'])}"
    return _with_warnings(f"{text}\n\nLatency (ms): {result['latency_ms']}", result["warnings"])


def format_answer(result: dict) -> str:
    text = (_measurements_of(result) + format_source_file(result.get("source_file"))
            + f"Answer: {', '.join(result['answer']) or '(none)'}   [answerer: {result['answerer']}")
    text += f", {result['llm_model']}]" if result["answerer"] == "llm" else "]"
    if result["fallback_reason"]:
        text += f"\n(LLM answer unusable: {result['fallback_reason']}; retrieval-only answer given)"
    text += f"\nWhy: {result['rationale']}\n\nDiagnoses (+ = present):\n{format_diagnoses(result['diagnoses'])}"
    text += f"\n\nEvidence:\n{format_neighbours(result['neighbours'])}"
    return _with_warnings(text, result["warnings"])


def dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2)
