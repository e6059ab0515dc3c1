"""The ECG as the service sees it: 12 named leads at one sampling rate, checked once at the door.

Every way in (gRPC, WFDB files, PTB-XL folders, later streams) builds an :class:`Ecg` through
:func:`assemble_ecg`, so lead naming, unit conversion and the limits below are enforced in one place and a bad
recording is refused with a message that says exactly what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

STANDARD_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_LEAD_BY_KEY = {name.upper(): name for name in STANDARD_LEADS}

MIN_RATE_HZ = 50.0
MAX_RATE_HZ = 1000.0
MIN_DURATION_S = 2.0
MAX_DURATION_S = 300.0

# Factor that turns a value in these units into millivolts. "NU" (normalised units) are signals that were
# already z-scored upstream (most of the shared PTB-XL records); the per-lead z-score in preprocessing makes
# them comparable with raw mV recordings, so they are passed through unscaled.
_TO_MILLIVOLT = {"MV": 1.0, "UV": 1e-3, "µV".upper(): 1e-3, "V": 1e3, "NU": 1.0}


class EcgInputError(ValueError):
    """An ECG (or record) that cannot be used. The message is shown to the caller as is."""


@dataclass(frozen=True)
class Ecg:
    """A recording in canonical lead order (:data:`STANDARD_LEADS`), in millivolts (or NU).

    ``not_recorded`` names the leads the recording does not carry (a bedside monitor that sends II and V5): their
    rows are zeros that the encoder takes as it always has, but the measurement stage must not read them as flat or
    disconnected electrodes. It travels with the ECG, so it reaches the measurement worker processes too.
    """

    signal: np.ndarray  # float32, shape (12, n_samples)
    sampling_rate_hz: float
    not_recorded: tuple[str, ...] = ()  # standard lead names, in standard order
    # "mV", or "NU" when a lead came in normalised units: the samples are then z-scores, not millivolts, and what is
    # drawn or measured from them (the median beat) must say so.
    units: str = "mV"

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate_hz


def canonical_lead(name: str) -> str:
    """Map a lead name in any case ("avr", "AVR", "aVR", " v1 ") to its standard spelling."""
    key = name.strip().upper()
    if key not in _LEAD_BY_KEY:
        raise EcgInputError(f"unknown lead name {name!r}; expected one of {', '.join(STANDARD_LEADS)}")
    return _LEAD_BY_KEY[key]


def unit_scale(units: str) -> float:
    """Factor from `units` to millivolts; empty means mV."""
    key = (units or "mV").strip().upper()
    if key not in _TO_MILLIVOLT:
        raise EcgInputError(f"unsupported units {units!r}; expected mV, uV, V or NU")
    return _TO_MILLIVOLT[key]


def derive_limb_leads(leads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The limb leads not in `leads` that follow from two of I, II and III, in standard order (Einthoven:
    II = I + III; Goldberger: aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2); empty when fewer than two of
    them are given.

    The one place this arithmetic lives: hospital files that store 8 leads and bedside monitors that send 8 are
    completed alike. NaN in a source gives NaN in what is derived from it, so a caller can mark samples it has no
    value for (a lead off for a moment) and see exactly which derived samples they spoil.
    """
    i, ii, iii = leads.get("I"), leads.get("II"), leads.get("III")
    if i is None and ii is not None and iii is not None:
        i = ii - iii
    if ii is None and i is not None and iii is not None:
        ii = i + iii
    if i is None or ii is None:
        return {}
    limb = {"I": i, "II": ii, "III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}
    return {name: samples for name, samples in limb.items() if name not in leads}


def assemble_ecg(
    leads: Sequence[tuple[str, np.ndarray, str]],
    sampling_rate_hz: float,
) -> Ecg:
    """Build a checked :class:`Ecg` from (lead name, samples, units) triples in any order.

    Raises :class:`EcgInputError` for a wrong lead count, unknown or repeated lead names, unequal lengths,
    an implausible sampling rate, a recording too short or too long, or non-finite samples.
    """
    if not np.isfinite(sampling_rate_hz) or not MIN_RATE_HZ <= sampling_rate_hz <= MAX_RATE_HZ:
        raise EcgInputError(
            f"sampling_rate_hz must be between {MIN_RATE_HZ:g} and {MAX_RATE_HZ:g} Hz, got {sampling_rate_hz:g}"
        )
    if len(leads) != len(STANDARD_LEADS):
        raise EcgInputError(f"expected {len(STANDARD_LEADS)} leads, got {len(leads)}")
    by_name: dict[str, np.ndarray] = {}
    for raw_name, samples, units in leads:
        name = canonical_lead(raw_name)
        if name in by_name:
            raise EcgInputError(f"lead {name} given twice")
        by_name[name] = np.asarray(samples, dtype=np.float64) * unit_scale(units)
    lengths = {name: arr.size for name, arr in by_name.items()}
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{n}={c}" for n, c in lengths.items())
        raise EcgInputError(f"all leads must have the same number of samples, got {detail}")
    n = next(iter(lengths.values()))
    duration = n / sampling_rate_hz
    if duration < MIN_DURATION_S:
        raise EcgInputError(
            f"ECG too short: {n} samples at {sampling_rate_hz:g} Hz is {duration:.3g} s, need at least {MIN_DURATION_S:g} s"
        )
    if duration > MAX_DURATION_S:
        raise EcgInputError(
            f"ECG too long: {duration:.0f} s, at most {MAX_DURATION_S:g} s per request (stream longer recordings)"
        )
    for name in STANDARD_LEADS:
        bad = int(np.count_nonzero(~np.isfinite(by_name[name])))
        if bad:
            raise EcgInputError(f"lead {name} has {bad} non-finite samples (NaN or infinity)")
    signal = np.stack([by_name[name] for name in STANDARD_LEADS]).astype(np.float32)
    normalised = any((units or "").strip().upper() == "NU" for _, _, units in leads)
    return Ecg(signal=signal, sampling_rate_hz=float(sampling_rate_hz), units="NU" if normalised else "mV")


def ecg_from_array(signal: np.ndarray, sampling_rate_hz: float, lead_names: Sequence[str], units: Sequence[str] | str = "mV") -> Ecg:
    """Convenience for (n_leads, n_samples) arrays, e.g. from WFDB or a test."""
    unit_list = [units] * len(lead_names) if isinstance(units, str) else list(units)
    if signal.ndim != 2 or signal.shape[0] != len(lead_names):
        raise EcgInputError(f"signal of shape {signal.shape} does not match {len(lead_names)} lead names")
    return assemble_ecg(list(zip(lead_names, signal, unit_list)), sampling_rate_hz)

