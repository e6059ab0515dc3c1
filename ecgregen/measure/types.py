"""What the measurement stage returns: a cart's global measurements, each present or absent with its reason.

Stdlib + numpy only, so the wire, FHIR, metrics and the CLI can use these types without the signal code.
A value that could not be measured is ``None`` and :attr:`Measurements.missing` says why, in words a clinician
reads ("no P waves (irregular rhythm)", "T end not found", "too few beats", "lead(s) V1-V6 off"). No value is
ever filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Rhythm(StrEnum):
    """``Measurements.rhythm``: the rhythm read from rate, RR regularity and P waves (a closed set)."""

    SINUS = "sinus_rhythm"
    SINUS_BRADYCARDIA = "sinus_bradycardia"  # P waves, regular enough, rate < 60
    SINUS_TACHYCARDIA = "sinus_tachycardia"  # P waves, rate > 100
    SINUS_ARRHYTHMIA = "sinus_arrhythmia"  # P waves, RR varies gradually (not by premature beats)
    ATRIAL_FIBRILLATION = "atrial_fibrillation"  # irregularly irregular RR, no P waves
    REGULAR_WITHOUT_P = "regular_without_p_waves"  # e.g. junctional rhythm
    ATRIAL_FLUTTER = "atrial_flutter"  # regular, flutter waves twice per QRS (2:1 block); not a sinus rhythm
    UNDETERMINED = "undetermined"  # too few beats or too much noise to say


class QualityFlag(StrEnum):
    """Per-lead signal quality flags (a lead with none is ``ok``)."""

    FLAT = "flat"  # no signal at all
    SATURATED = "saturated"  # clipped at the amplifier's rail
    LEAD_OFF = "lead_off"  # electrode off: flat or railed while other leads carry signal
    BASELINE_DRIFT = "baseline_drift"
    STATIC_NOISE = "static_noise"  # persistent high-frequency noise
    BURST_NOISE = "burst_noise"  # short stretches of large noise


class BeatOrigin(StrEnum):
    SUPRAVENTRICULAR = "supraventricular"
    VENTRICULAR = "ventricular"


# Every interval / axis value of :class:`Measurements`, in the order a cart prints them; their names are the wire's.
VALUE_FIELDS: tuple[str, ...] = (
    "heart_rate_bpm", "rr_interval_ms", "rr_min_ms", "rr_max_ms", "pr_interval_ms", "p_duration_ms",
    "qrs_duration_ms", "qt_interval_ms", "qtc_bazett_ms", "qtc_fridericia_ms", "p_axis_deg", "qrs_axis_deg",
    "t_axis_deg", "rr_irregularity",
)

# Fiducial points of the representative beat, in ms relative to its alignment point (the QRS peak).
FIDUCIALS: tuple[str, ...] = ("p_onset", "p_offset", "qrs_onset", "qrs_offset", "t_end")


@dataclass(frozen=True)
class PrematureBeat:
    """A beat earlier than the rhythm predicts (or, in AF, of another shape), by where it arose."""

    time_s: float  # its QRS peak, from the start of the ECG
    origin: BeatOrigin
    coupling_ms: float  # RR before it


@dataclass(frozen=True)
class MedianBeat:
    """The representative beat the intervals and axes were measured on (for plots and review)."""

    signal: np.ndarray  # float32 (12, n), baseline at 0, standard lead order
    rate_hz: float
    r_index: int  # sample of the alignment point (time 0 of the fiducials)
    fiducials_ms: dict[str, float]  # a subset of FIDUCIALS: those found
    units: str = "mV"  # the input's amplitude units: "NU" (z-scored upstream, e.g. most PTB-XL records) or "mV"


@dataclass(frozen=True)
class Measurements:
    """Global measurements of one ECG (or stream window), computed from its samples."""

    heart_rate_bpm: float | None = None  # ventricular rate from the mean RR
    rr_interval_ms: float | None = None  # mean RR
    rr_min_ms: float | None = None
    rr_max_ms: float | None = None
    pr_interval_ms: float | None = None  # P onset -> QRS onset
    p_duration_ms: float | None = None
    qrs_duration_ms: float | None = None
    qt_interval_ms: float | None = None  # QRS onset -> T end
    qtc_bazett_ms: float | None = None
    qtc_fridericia_ms: float | None = None
    p_axis_deg: float | None = None  # frontal plane, -180..180
    qrs_axis_deg: float | None = None
    t_axis_deg: float | None = None
    rr_irregularity: float | None = None  # median |successive RR difference| / median RR, premature beats left out
    beat_count: int = 0
    rr_irregular: bool | None = None
    p_waves_present: bool | None = None
    rhythm: Rhythm = Rhythm.UNDETERMINED
    premature_beats: tuple[PrematureBeat, ...] = ()
    lead_quality: dict[str, tuple[QualityFlag, ...]] = field(default_factory=dict)  # every lead; () = ok
    limb_lead_reversal: bool = False  # suspected LA/RA reversal
    missing: dict[str, str] = field(default_factory=dict)  # value field -> why it is absent
    measured_at_hz: float = 0.0  # the rate of the samples the fiducials rest on: the input's, at most 500 Hz
    median_beat: MedianBeat | None = None
    # Leads the ECG does not carry (a monitor that sends only some and they cannot be derived): not measured, so
    # absent from lead_quality - never "flat" or "lead_off".
    not_recorded: tuple[str, ...] = ()

    def value(self, name: str) -> float | None:
        """One of :data:`VALUE_FIELDS` by name."""
        if name not in VALUE_FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    @property
    def flagged_leads(self) -> dict[str, tuple[QualityFlag, ...]]:
        """Only the leads with a quality flag."""
        return {lead: flags for lead, flags in self.lead_quality.items() if flags}

    @property
    def premature_counts(self) -> dict[BeatOrigin, int]:
        counts = {origin: 0 for origin in BeatOrigin}
        for beat in self.premature_beats:
            counts[beat.origin] += 1
        return counts


def cart_line(m: Measurements) -> str:
    """The first line a cart prints: ``Rate 72 bpm | PR 160 ms | QRS 96 ms | QT/QTc 400/425 ms | Axes P/QRS/T 50/30/40``.

    Absent values print as ``-`` (the reasons are listed beside the line by the callers that show them). QTc is
    Bazett's, as carts print it.
    """

    def num(value: float | None) -> str:
        return "-" if value is None else f"{round(value) + 0:.0f}"  # + 0: no "-0" for a small negative axis

    return (f"Rate {num(m.heart_rate_bpm)} bpm | PR {num(m.pr_interval_ms)} ms | QRS {num(m.qrs_duration_ms)} ms | "
            f"QT/QTc {num(m.qt_interval_ms)}/{num(m.qtc_bazett_ms)} ms | "
            f"Axes P/QRS/T {num(m.p_axis_deg)}/{num(m.qrs_axis_deg)}/{num(m.t_axis_deg)}")
