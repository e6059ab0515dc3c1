"""The half of the wire format a client needs: request messages from plain arrays, response messages as the JSON the
CLI prints.

Protobuf and stdlib only, so a client (the CLI's ``client`` commands) does not load the server's model, store or
tables to talk to it; :mod:`ecgregen.wire` holds the server's half (messages to and from the library's own types,
validated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ecgregen.v1 import ecgregen_pb2 as pb

if TYPE_CHECKING:
    import numpy as np


def ecg_field(ecg: pb.Ecg | pb.EcgFile) -> dict[str, pb.Ecg | pb.EcgFile]:
    """The request field that carries `ecg`: sampled leads (`ecg`) or a hospital export (`ecg_file`)."""
    return {"ecg_file": ecg} if isinstance(ecg, pb.EcgFile) else {"ecg": ecg}


def file_info_to_dict(info: pb.EcgFileInfo) -> dict:
    """What the server read from a sent file, as the CLI prints it."""
    return {
        "format": info.format, "device": dict(info.device), "acquired_at": info.acquired_at,
        "statements": list(info.statements), "statements_source": info.statements_source,
        "leads_stored": list(info.leads_stored), "leads_derived": list(info.leads_derived),
        "file_duration_s": info.file_duration_s, "start_s": info.start_s, "duration_s": info.duration_s,
        "sampling_rate_hz": info.sampling_rate_hz, "measurements": dict(info.measurements),
    }


# The measured values (Measurements' `optional double` fields, in the proto's order: ecgregen.measure's
# VALUE_FIELDS), read off the message so this module stays free of the measurement package.
MEASURED_VALUES: tuple[str, ...] = tuple(
    f.name for f in pb.Measurements.DESCRIPTOR.fields if f.has_presence and f.type == f.TYPE_DOUBLE)


def measurements_to_dict(m: pb.Measurements) -> dict:
    """The JSON shape the CLI prints: the proto's field names; a value not measured is null (`missing` says why)."""

    def present(name: str) -> bool | float | None:
        """A field with presence: None when unset (not measured, not assessed)."""
        return getattr(m, name) if m.HasField(name) else None

    out: dict = {}
    for name in MEASURED_VALUES:
        value = present(name)
        out[name] = None if value is None else round(value, 3)
    out.update(
        beat_count=m.beat_count, rr_irregular=present("rr_irregular"), p_waves_present=present("p_waves_present"),
        rhythm=m.rhythm,
        premature_beats=[{"time_s": round(b.time_s, 3), "origin": b.origin, "coupling_ms": round(b.coupling_ms, 1)}
                         for b in m.premature_beats],
        lead_quality=[{"lead": q.lead, "flags": list(q.flags)} for q in m.lead_quality],
        limb_lead_reversal=m.limb_lead_reversal, missing=dict(m.missing), measured_at_hz=m.measured_at_hz,
        not_recorded=list(m.not_recorded_leads),
    )
    if m.HasField("median_beat"):
        beat = m.median_beat
        out["median_beat"] = {
            "rate_hz": beat.rate_hz, "r_index": beat.r_index, "fiducials_ms": dict(beat.fiducials_ms),
            "leads": [{"name": lead.name, "samples": [round(x, 4) for x in lead.samples]} for lead in beat.leads],
        }
    return out


def signal_to_proto(signal: np.ndarray, sampling_rate_hz: float, lead_names: Sequence[str], units: Sequence[str]) -> pb.Ecg:
    """Any (n_leads, n_samples) signal as an ``Ecg`` message, unchecked: the server is the judge."""
    return pb.Ecg(
        sampling_rate_hz=sampling_rate_hz,
        leads=[pb.Lead(name=n, samples=row.tolist(), units=u) for n, row, u in zip(lead_names, signal, units)],
    )


def diagnosis_to_dict(d: pb.Diagnosis) -> dict:
    """The JSON shape the CLI prints for one diagnosis; `decided_by` is "" unless a measurement, not the calibrated
    probability, decided `present` (so the reader knows why a probability and its mark disagree)."""
    return {"code": d.code, "description": d.description, "superclass": d.superclass,
            "probability": round(float(d.probability), 4), "present": d.present, "threshold": round(float(d.threshold), 4),
            "decided_by": d.decided_by}


def report_edit_to_dict(e: pb.ReportEdit) -> dict:
    """The JSON shape of one edit a verified report made; `value` is None where the deciding measurement has no
    number (the rhythm)."""
    return {"action": e.action, "sentence": e.sentence, "measurement": e.measurement,
            "value": e.value if e.HasField("value") else None, "reason": e.reason}


def neighbour_to_dict(n: pb.Neighbour) -> dict:
    """The JSON shape the CLI prints (stable: acceptance checks read it)."""
    return {
        "ecg_id": n.ecg_id, "patient_id": n.patient_id, "score": round(float(n.score), 6), "report": n.report,
        "report_en": n.report_en, "language": n.language, "scp_codes": dict(n.scp_codes), "source": n.source,
    }
