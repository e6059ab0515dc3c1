"""The measurement stage: what an ECG cart measures, computed from the samples.

``measure(ecg)`` takes the same checked :class:`ecgregen.ecg.Ecg` every way in builds (any rate, 2-300 s) and
returns :class:`Measurements`: rate and RR, PR, P duration, QRS, QT, QTc (Bazett, Fridericia), P/QRS/T axes,
rhythm, premature beats, P-wave presence and per-lead signal quality. Intervals come from global fiducials on
the representative (median) beat across all usable leads, as carts do.
"""

from collections.abc import Sequence

from ecgregen.ecg import Ecg
from ecgregen.measure.types import (
    FIDUCIALS,
    VALUE_FIELDS,
    BeatOrigin,
    Measurements,
    MedianBeat,
    PrematureBeat,
    QualityFlag,
    Rhythm,
    cart_line,
)

__all__ = [
    "FIDUCIALS", "VALUE_FIELDS", "BeatOrigin", "Measurements", "MedianBeat", "PrematureBeat", "QualityFlag",
    "Rhythm", "cart_line", "measure",
]


def measure(ecg: Ecg, units: str | Sequence[str] | None = None) -> Measurements:
    """Measure one ECG (:func:`ecgregen.measure.stage.measure`; `units` as the input stated them, for the median
    beat's; None: the ECG's own, :attr:`Ecg.units`, so a server's workers label a z-scored ECG's beat NU).

    Imported on first call: the types above are what the wire, FHIR and the CLI need, and they must not pay for
    scipy (the client starts at once).
    """
    from ecgregen.measure.stage import measure as measure_samples

    return measure_samples(ecg, ecg.units if units is None else units)
