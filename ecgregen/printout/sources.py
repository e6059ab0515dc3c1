"""The ECG to print, from each way an ECG reaches the service - a WFDB record, a hospital file, samples in a
request, a stream window - and the neighbours' signals from PTB-XL-layout folders.

What the page needs beyond the samples is said here, where it is known: the units (a z-scored NU record is drawn at
10 mm per NU and says so: only the WFDB header or the request's leads know it), the leads a file's reader derived,
the leads a monitor does not send.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ecgregen.ecg import STANDARD_LEADS, Ecg, canonical_lead
from ecgregen.printout.document import PrintEcg, Units
from ecgregen.records import PTBXL_SOURCE, read_wfdb, read_wfdb_signal
from ecgregen.v1 import ecgregen_pb2 as pb


def units_of(units: Sequence[str]) -> Units:
    """NU when any lead is in NU (its amplitudes are not mV, and the page must not say they are), else mV."""
    return Units.NU if any(u.strip().upper() == Units.NU.upper() for u in units) else Units.MV


def from_wfdb(path: str | Path) -> PrintEcg:
    """A WFDB record, checked as the service checks it, with its header's units."""
    return PrintEcg(read_wfdb(path), units_of(read_wfdb_signal(path).units))


def from_file(ecg: Ecg, metadata: dict) -> PrintEcg:
    """A hospital file as :mod:`ecgregen.ecg_files` read it (its metadata as ``FileMetadata.to_dict`` or the
    server's ``source_file``): always mV, the derived leads marked."""
    return PrintEcg(ecg, Units.MV, tuple(metadata.get("leads_derived") or ()))


def from_request(ecg: Ecg, request_ecg: pb.Ecg | None) -> PrintEcg:
    """The ECG of a request as the server checked it; `request_ecg` is the samples message (None for a file, read
    into mV)."""
    return PrintEcg(ecg, units_of([lead.units for lead in request_ecg.leads]) if request_ecg else Units.MV)


def from_window(signal: np.ndarray, rate_hz: float, leads_sent: Sequence[str], units: str = "mV") -> PrintEcg:
    """A stream window (12 leads in standard order, mV, the leads the monitor does not send zero-filled, as
    :class:`ecgregen.server.streaming.Window` holds it): those leads are blank on the page, not flat lines."""
    sent = {canonical_lead(name) for name in leads_sent}
    return PrintEcg(Ecg(np.asarray(signal, dtype=np.float32), float(rate_hz)), units_of([units]),
                    absent=tuple(lead for lead in STANDARD_LEADS if lead not in sent))


def find_record(ecg_id: str, folders: Sequence[Path]) -> Path | None:
    """A PTB-XL ecg_id's WFDB record in the first PTB-XL-layout folder that holds it (records100, else records500),
    or None."""
    if not ecg_id.isdigit():
        return None
    n = int(ecg_id)
    for folder in folders:
        for rate, suffix in (("records100", "lr"), ("records500", "hr")):
            path = Path(folder) / rate / f"{n // 1000 * 1000:05d}" / f"{n:05d}_{suffix}"
            if path.with_suffix(".hea").exists():
                return path
    return None


def neighbour_signals(neighbours: Sequence[dict], folders: Sequence[Path]) -> list[PrintEcg | None]:
    """Each neighbour's signal where `folders` hold it (PTB-XL neighbours only: other sources' ids name no file)."""
    out: list[PrintEcg | None] = []
    for n in neighbours:
        path = find_record(n["ecg_id"], folders) if n.get("source") == PTBXL_SOURCE else None
        out.append(from_wfdb(path) if path else None)
    return out
