"""The SCP-ECG rhythm statements and the axis classes a measurement implies, by PTB-XL's conventions.

:class:`~ecgregen.measure.types.Rhythm` follows the clinical definitions (bradycardia below 60 bpm). PTB-XL's
cardiologists and cart coded SBRAD only well below that: on folds 1-8 the SBRAD ECGs' median rate is 49 bpm and
the other sinus ECGs' 5th percentile 55 bpm, and F1 against SBRAD peaks with 50 bpm (0.80, against 0.21 at 60).
Statements evaluated and calibrated against PTB-XL labels therefore use these thresholds, chosen on folds 1-8
only; German "Linkstyp" (PTB-XL's heart_axis LAD, about -30 to +30 degrees) is a normal axis in these classes.
"""

from __future__ import annotations

from ecgregen.measure.types import Measurements, Rhythm

PTBXL_BRADYCARDIA_BPM = 50.0
PTBXL_TACHYCARDIA_BPM = 100.0

_SINUS = {Rhythm.SINUS, Rhythm.SINUS_BRADYCARDIA, Rhythm.SINUS_TACHYCARDIA, Rhythm.SINUS_ARRHYTHMIA}


def axis_class(degrees: float | None) -> str | None:
    """normal (-30..90), left (-90..-30), right (90..180), extreme (-180..-90); None when not measured."""
    if degrees is None:
        return None
    if -30.0 <= degrees <= 90.0:
        return "normal"
    if -90.0 <= degrees < -30.0:
        return "left"
    if degrees > 90.0:
        return "right"
    return "extreme"


def rhythm_codes(m: Measurements) -> frozenset[str]:
    """SR, SBRAD, STACH, SARRH, AFIB, AFLT as PTB-XL codes them, from the measured rhythm and rate."""
    codes: set[str] = set()
    rate = m.heart_rate_bpm
    if m.rhythm is Rhythm.ATRIAL_FIBRILLATION:
        codes.add("AFIB")
    elif m.rhythm is Rhythm.ATRIAL_FLUTTER:
        codes.add("AFLT")
    elif m.rhythm in _SINUS and rate is not None:
        if rate < PTBXL_BRADYCARDIA_BPM:
            codes.add("SBRAD")
        elif rate > PTBXL_TACHYCARDIA_BPM:
            codes.add("STACH")
        elif m.rhythm is Rhythm.SINUS_ARRHYTHMIA:
            codes.add("SARRH")
        else:
            codes.add("SR")
    return frozenset(codes)

