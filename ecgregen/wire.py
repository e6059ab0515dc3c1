"""Conversions between the ``ecgregen.v1`` protobuf messages and the library's own types.

The server's half (proto -> domain, with validation that becomes INVALID_ARGUMENT), and ECGs as messages for the
indexer and the benchmarks; a client's half, which needs none of the library's types, is :mod:`ecgregen.messages`.
Kept apart from the generated code, which is never edited by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ecgregen.diagnoses import Diagnosis
from ecgregen.ecg import STANDARD_LEADS, Ecg, EcgInputError, assemble_ecg
from ecgregen.ecg_files import FileMetadata, read_ecg_bytes
from ecgregen.measure import VALUE_FIELDS, BeatOrigin, Measurements, PrematureBeat, QualityFlag, Rhythm
from ecgregen.messages import signal_to_proto
from ecgregen.pipeline import RecordToInsert
from ecgregen.reports.statements import StatementReport
from ecgregen.reports.verify import ReportEdit
from ecgregen.store import Hit, SearchFilter
from ecgregen.v1 import ecgregen_pb2 as pb

DEFAULT_SOURCE = "custom"


def ecg_from_proto(msg: pb.Ecg) -> Ecg:
    """Validate and convert an ``Ecg`` message; raises :class:`EcgInputError` saying what is wrong."""
    if not msg.leads:
        raise EcgInputError("ECG has no leads")
    leads = []
    for i, lead in enumerate(msg.leads):
        label = lead.name or f"#{i}"
        if lead.samples and lead.digital:
            raise EcgInputError(f"lead {label}: give either samples or digital, not both")
        if lead.digital:
            if lead.gain <= 0 or not np.isfinite(lead.gain):
                raise EcgInputError(f"lead {label}: digital samples need a positive gain, got {lead.gain:g}")
            values = (np.asarray(lead.digital, dtype=np.float64) - lead.baseline) / lead.gain
        else:
            values = np.asarray(lead.samples, dtype=np.float64)
        leads.append((lead.name, values, lead.units))
    return assemble_ecg(leads, msg.sampling_rate_hz)


@dataclass(frozen=True)
class ReceivedEcg:
    """The ECG a request or record carries, with what reading a file said about it (nothing for samples)."""

    ecg: Ecg
    warnings: tuple[str, ...] = ()
    file: FileMetadata | None = None


def received_ecg(msg: Any, kind: str = "request") -> ReceivedEcg:
    """The `ecg` or `ecg_file` of a request or record (exactly one). Reading a file is CPU work: call this off the
    event loop."""
    has_ecg, has_file = msg.HasField("ecg"), msg.HasField("ecg_file")
    if has_ecg and has_file:
        raise EcgInputError("give ecg or ecg_file, not both")
    if has_file:
        f = msg.ecg_file
        read = read_ecg_bytes(f.content, name=f.name, format_hint=f.format_hint, start_s=f.start_s,
                              seconds=f.duration_s)
        return ReceivedEcg(read.ecg, read.warnings, read.metadata)
    if not has_ecg:
        raise EcgInputError(f"{kind} has no ECG: give ecg (samples) or ecg_file (a hospital export)")
    return ReceivedEcg(ecg_from_proto(msg.ecg))


def file_info_to_proto(meta: FileMetadata | None) -> pb.EcgFileInfo | None:
    """What the server read from a file (never the patient's identifiers); None for sampled ECGs."""
    if meta is None:
        return None
    return pb.EcgFileInfo(
        format=meta.format, format_key=meta.format_key, device=meta.device, acquired_at=meta.acquired_at,
        statements=meta.statements, statements_source=meta.statements_source, leads_stored=meta.leads_stored,
        leads_derived=meta.leads_derived, file_duration_s=meta.file_duration_s, start_s=meta.start_s,
        duration_s=meta.duration_s, sampling_rate_hz=meta.sampling_rate_hz, measurements=meta.measurements,
    )


def ecg_to_proto(ecg: Ecg) -> pb.Ecg:
    return signal_to_proto(ecg.signal, ecg.sampling_rate_hz, STANDARD_LEADS, ["mV"] * len(STANDARD_LEADS))


def measurements_to_proto(m: Measurements | None, include_median_beat: bool = False) -> pb.Measurements | None:
    """The measurements as the wire carries them (None stays unset: measuring failed). Absent values stay unset
    (proto3 `optional`), so a client tells "not measured" from 0; the median beat (12 leads of samples) only when
    the caller asked for it."""
    if m is None:
        return None
    beat = m.median_beat if include_median_beat else None
    return pb.Measurements(
        **{name: m.value(name) for name in VALUE_FIELDS}, beat_count=m.beat_count, rr_irregular=m.rr_irregular,
        p_waves_present=m.p_waves_present, rhythm=m.rhythm,
        premature_beats=[pb.PrematureBeat(time_s=b.time_s, origin=b.origin, coupling_ms=b.coupling_ms)
                         for b in m.premature_beats],
        lead_quality=[pb.LeadQuality(lead=lead, flags=flags) for lead, flags in m.lead_quality.items()],
        limb_lead_reversal=m.limb_lead_reversal, missing=m.missing, measured_at_hz=m.measured_at_hz,
        not_recorded_leads=m.not_recorded,
        median_beat=None if beat is None else pb.MedianBeat(
            rate_hz=beat.rate_hz, r_index=beat.r_index, fiducials_ms=beat.fiducials_ms,
            leads=[pb.Lead(name=name, samples=row.tolist(), units=beat.units)
                   for name, row in zip(STANDARD_LEADS, beat.signal)],
        ),
    )


def measurements_from_proto(msg: pb.Measurements) -> Measurements:
    """The measurements as a client received them, back as the library's type (the inverse of
    :func:`measurements_to_proto`, the median beat left out): what a client judges is what was sent."""
    return Measurements(
        **{name: getattr(msg, name) if msg.HasField(name) else None for name in VALUE_FIELDS},
        beat_count=msg.beat_count,
        rr_irregular=msg.rr_irregular if msg.HasField("rr_irregular") else None,
        p_waves_present=msg.p_waves_present if msg.HasField("p_waves_present") else None,
        rhythm=Rhythm(msg.rhythm) if msg.rhythm else Rhythm.UNDETERMINED,
        premature_beats=tuple(PrematureBeat(b.time_s, BeatOrigin(b.origin), b.coupling_ms) for b in msg.premature_beats),
        lead_quality={q.lead: tuple(QualityFlag(f) for f in q.flags) for q in msg.lead_quality},
        limb_lead_reversal=msg.limb_lead_reversal, missing=dict(msg.missing), measured_at_hz=msg.measured_at_hz,
        not_recorded=tuple(msg.not_recorded_leads),
    )


def filter_from_proto(msg: pb.SearchFilter) -> SearchFilter | None:
    codes = tuple(c.strip() for c in msg.scp_codes_any if c.strip())
    if not (msg.exclude_patient_id or msg.source or codes):
        return None
    return SearchFilter(exclude_patient_id=msg.exclude_patient_id or None, source=msg.source or None, scp_codes_any=codes)


def neighbour_to_proto(hit: Hit, shown_patient_id: str) -> pb.Neighbour:
    """A neighbour as the caller sees it. A neighbour is another person: `shown_patient_id` is what the caller may
    see of their id (the server passes a keyed pseudonym unless the caller is an admin), never taken implicitly.
    Its report goes out both as written and in English."""
    english = hit.english
    return pb.Neighbour(
        ecg_id=hit.ecg_id, patient_id=shown_patient_id, score=hit.score, report=hit.report,
        scp_codes=hit.scp_codes, source=hit.source, inserted_at=hit.inserted_at, batch_id=hit.batch_id,
        report_en=english.text_en, language=english.language,
    )


def diagnosis_to_proto(d: Diagnosis) -> pb.Diagnosis:
    """A diagnosis with what decided it: `decided_by` names the measurement when it, not the calibrated
    probability, set `present` (so a reader never sees a probability below threshold marked present unexplained)."""
    return pb.Diagnosis(code=d.code, description=d.description, superclass=d.superclass, probability=d.probability,
                        present=d.present, threshold=d.threshold, decided_by=d.decided_by)


def report_edits_to_proto(edits: tuple[ReportEdit, ...]) -> list[pb.ReportEdit]:
    """A verified report's edits, in order, for GenerateReportResponse.report_edits. `value` stays unset when the
    deciding measurement has no number (the rhythm), so a client tells it from a measured 0."""
    return [pb.ReportEdit(action=e.action, sentence=e.sentence, measurement=e.measurement, value=e.value,
                          reason=e.reason) for e in edits]


def statements_to_proto(report: StatementReport | None) -> dict[str, Any]:
    """The response fields of a ``statements`` report (none for a neighbour's report)."""
    if report is None:
        return {}
    return {
        "statements": [pb.ReportStatement(section=s.section, text=s.text, codes=s.codes, measured=s.measured)
                       for s in report.statements],
        "withheld_statements": report.withheld,
    }


def record_from_proto(msg: pb.Record) -> RecordToInsert:
    """Validate one record of an InsertRecords stream (reading its file, if it carries one: off the event loop)."""
    ecg_id = msg.ecg_id.strip()
    if not ecg_id:
        raise EcgInputError("record has no ecg_id")
    for code, likelihood in msg.scp_codes.items():
        if not code.strip() or not 0.0 <= likelihood <= 100.0:
            raise EcgInputError(f"SCP code {code!r} has likelihood {likelihood:g}; expected a code with 0-100")
    return RecordToInsert(
        ecg=received_ecg(msg, "record").ecg, ecg_id=ecg_id, patient_id=msg.patient_id.strip(), report=msg.report,
        scp_codes=dict(msg.scp_codes), source=msg.source.strip() or DEFAULT_SOURCE,
    )
