"""`ecgregen evaluate measurements`: the measurement stage (:func:`ecgregen.measure.measure`) against the references
there are - the carts' own measurements in the hospital sample files, and PTB-XL's annotations and rhythm codes.

**Carts.** Most files in the formats folder state what their cart measured (read by :mod:`ecgregen.ecg_files`).
Two ECGs (:data:`CART_HELD_OUT`, GE MUSE and Philips Sierra) were kept out of tuning the T end and are summarised
apart, as "held out of tuning"; the QT of every file is also held to :data:`CART_QT_TARGET_MS`.
Each (file, measurement) is compared with a tolerance (:data:`CART_COMPARISONS`: rate 3 bpm, PR 20 ms, QRS 15 ms,
QT and QTc 30 ms, QRS axis 20 deg, P and T axes 30 deg); axes are compared on the circle, so 179 and -179 deg are 2
deg apart. Where a file states RR but no rate, the cart's rate is 60000 / RR. Files holding the same recording (the
HL7 aECG example and its SCP and DICOM conversions) are recognised by their samples and count as one ECG in the
summary: each measurement of that ECG is one pair, within tolerance only if ours is within against every copy that
states it, so three copies cannot triple a success (or a failure).

**PTB-XL** (any folder in its layout; the records of ``--folds``). What each column means and how it is read:

* ``heart_axis``: MID (normal), AXL ("borderline left axis deviation"), AXR (Steiltyp / "rightward axis") are
  normal (-30..90 deg); ALAD (ueberdrehter Linkstyp, < -30) is left; RAD and ARAD are right; SAG(M) (sagittal) is
  extreme/indeterminate. LAD is two things: the German "Linkstyp" (-30..+30 deg: normal by the -30..90 convention)
  and the English "left axis deviation" (< -30 deg), so an LAD row is read by its own report's wording: normal when
  it says Linkstyp (and not ueberdrehter), else left. The agreement with LAD always left is printed beside it.
  Rows without an axis are left out.
* ``baseline_drift``, ``static_noise``, ``burst_noise``, ``electrodes_problems``: the leads the annotator named
  (``", I-AVR,"``, ``"v5-6"``, ``"alles"`` = all 12). Blank = none noted. Compared at record level (any lead
  flagged) and lead level; a note that names no lead ("leicht", "noisy recording") counts at record level only.
* ``extra_beats``: any extra beat; ventricular (VES) and supraventricular (SVES) where the note says which
  (``"1ES"``, ``"ES"`` say only that there were some, so those records are left out of the typed comparisons).
* ``pacemaker`` (and SCP code PACE): prevalence only - the stage does not detect pacing.
* ``scp_codes`` rhythm statements SR, SBRAD, STACH, SARRH, AFIB, AFLT vs our rhythm (:data:`RHYTHM_CODES`).

Every metric is printed beside a baseline that knows nothing of the signal: the majority class (accuracy) and
always saying "present" (F1). Records are measured in a process pool; a record the stage fails on is counted and
named, never dropped silently.
"""

from __future__ import annotations

import ast
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ecgregen.ecg import STANDARD_LEADS, Ecg, ecg_from_array
from ecgregen.ecg_files import EcgFileError, read_ecg_file
from ecgregen.measure import VALUE_FIELDS, BeatOrigin, Measurements, QualityFlag, Rhythm, cart_line, measure
from ecgregen.measure.codes import axis_class as served_axis_class
from ecgregen.measure.codes import rhythm_codes
from ecgregen.records import load_ptbxl, read_wfdb_signal

SECTIONS = ("carts", "ptbxl")
# The folds the measurement stage's thresholds were chosen on (issue 25): results on them are in-sample.
STAGE_FIT_FOLDS: tuple[int, ...] = tuple(range(1, 9))
SAME_ECG_ATOL_MV = 0.01  # copies of one recording in different formats agree to the formats' quantisation
CART_WITHIN_TARGET = 0.80
CART_MAX_RATE_ERROR_BPM = 5.0
AXIS_TARGET = 0.85  # agreement with heart_axis on fold 9
RHYTHM_F1_TARGET = 0.80  # for RHYTHM_TARGET_CODES on fold 9
RHYTHM_TARGET_CODES = ("SBRAD", "STACH", "AFIB")
TARGET_FOLDS = [9]  # the targets are stated for the held-out fold
# Cart files kept out of tuning the stage's T end (issue 32; chosen before it was changed): its one threshold,
# T_KNEE_REACH_MS, was chosen on the two Mortara ECGs (the aECG/SCP/DICOM example and the pydicom 1 kHz file).
# The thresholds before it (issue 25) had seen all four ECGs. Reported apart as "held out of tuning".
CART_HELD_OUT: tuple[str, ...] = ("muse_egm-muse-sinus_mv360_500hz.xml", "sierra_v1.03_129DYPRG.xml")
CART_QT_TARGET_MS = 20.0  # |ours - cart| QT on every file that states one
LISTED = 10  # examples of disagreement printed per table (the JSON has every record)


@dataclass(frozen=True)
class CartComparison:
    """One measurement a cart states, the field of ours it is compared with, and how close is close enough."""

    label: str
    cart_key: str  # FileMetadata.measurements key (ecgdatakit's GlobalMeasurements names)
    ours: str  # Measurements field
    tolerance: float
    unit: str
    circular: bool = False  # an angle in degrees: differences wrap at +-180


CART_COMPARISONS: tuple[CartComparison, ...] = (
    CartComparison("rate", "heart_rate", "heart_rate_bpm", 3.0, "bpm"),
    CartComparison("PR", "pr_interval", "pr_interval_ms", 20.0, "ms"),
    CartComparison("QRS", "qrs_duration", "qrs_duration_ms", 15.0, "ms"),
    CartComparison("QT", "qt_interval", "qt_interval_ms", 30.0, "ms"),
    CartComparison("QTc Bazett", "qtc_bazett", "qtc_bazett_ms", 30.0, "ms"),
    CartComparison("QTc Fridericia", "qtc_fridericia", "qtc_fridericia_ms", 30.0, "ms"),
    CartComparison("P axis", "p_axis", "p_axis_deg", 30.0, "deg", circular=True),
    CartComparison("QRS axis", "qrs_axis", "qrs_axis_deg", 20.0, "deg", circular=True),
    CartComparison("T axis", "t_axis", "t_axis_deg", 30.0, "deg", circular=True),
)

NORMAL, LEFT, RIGHT, EXTREME = "normal", "left", "right", "extreme/indeterminate"
AXIS_CLASSES = (NORMAL, LEFT, RIGHT, EXTREME)
PTBXL_AXIS_CLASS = {"MID": NORMAL, "AXL": NORMAL, "AXR": NORMAL, "ALAD": LEFT, "RAD": RIGHT, "ARAD": RIGHT,
                    "SAG": EXTREME, "SAGM": EXTREME}  # LAD: by its report's wording (ptbxl_axis_class)

# PTB-XL noise column -> the quality flags of ours that say the same thing.
QUALITY_COLUMNS: dict[str, frozenset[QualityFlag]] = {
    "baseline_drift": frozenset({QualityFlag.BASELINE_DRIFT}),
    "static_noise": frozenset({QualityFlag.STATIC_NOISE}),
    "burst_noise": frozenset({QualityFlag.BURST_NOISE}),
    "electrodes_problems": frozenset({QualityFlag.LEAD_OFF, QualityFlag.FLAT, QualityFlag.SATURATED}),
}

# SCP rhythm statement -> our rhythm that states it.
RHYTHM_CODES: dict[str, Rhythm] = {
    "SR": Rhythm.SINUS, "SBRAD": Rhythm.SINUS_BRADYCARDIA, "STACH": Rhythm.SINUS_TACHYCARDIA,
    "SARRH": Rhythm.SINUS_ARRHYTHMIA, "AFIB": Rhythm.ATRIAL_FIBRILLATION, "AFLT": Rhythm.ATRIAL_FLUTTER,
}
# Scored by ecgregen.measure.codes.rhythm_codes (PTB-XL's rate conventions, chosen on folds 1-8: SBRAD below 50 bpm);
# the others by the rhythm itself.
PTBXL_CODED = frozenset({"SR", "SBRAD", "STACH", "SARRH", "AFIB", "AFLT"})
RHYTHM_PRECEDENCE = ("AFIB", "AFLT", "STACH", "SBRAD", "SARRH", "SR")  # one label per record for the confusion table
NO_RHYTHM_CODE = "none of these"

_LEAD_TOKENS = {"i": "I", "ii": "II", "iii": "III", "avr": "aVR", "avl": "aVL", "avf": "aVF",
                **{f"v{n}": f"V{n}" for n in range(1, 7)}}
_ALL_LEAD_WORDS = {"alles", "alle", "all"}


# --- comparisons -------------------------------------------------------------------------------------------------

def difference(ours: float, cart: float, circular: bool = False) -> float:
    """ours - cart; for angles the shorter way round the circle, in (-180, 180]."""
    diff = float(ours) - float(cart)
    if circular:
        diff = -((-diff + 180.0) % 360.0 - 180.0)
    return diff


def within_tolerance(ours: float | None, cart: float, comparison: CartComparison) -> bool:
    """An absent value of ours is never within: a cart that measured it shows it can be measured."""
    return ours is not None and abs(difference(ours, cart, comparison.circular)) <= comparison.tolerance


def axis_class(degrees: float | None) -> str | None:
    """The served axis class (:func:`ecgregen.measure.codes.axis_class`: normal -30..90, left -90..-30, right
    90..180, extreme -180..-90) of an angle taken round the circle, labelled as PTB-XL's classes are here."""
    found = served_axis_class(None if degrees is None else difference(degrees, 0.0, circular=True))
    return EXTREME if found == "extreme" else found


@dataclass(frozen=True)
class BinaryScores:
    """Agreement of a yes/no prediction with a yes/no annotation, with the baselines that ignore the signal."""

    n: int
    positives: int
    predicted: int
    true_positives: int

    @property
    def precision(self) -> float | None:
        return self.true_positives / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.positives if self.positives else None

    @property
    def f1(self) -> float | None:
        total = self.positives + self.predicted
        return 2 * self.true_positives / total if total else None

    @property
    def accuracy(self) -> float | None:
        if not self.n:
            return None
        true_negatives = self.n - self.positives - self.predicted + self.true_positives
        return (self.true_positives + true_negatives) / self.n

    @property
    def prevalence(self) -> float | None:
        return self.positives / self.n if self.n else None

    @property
    def majority_accuracy(self) -> float | None:
        return max(self.positives, self.n - self.positives) / self.n if self.n else None

    @property
    def always_present_f1(self) -> float | None:
        """F1 of saying "present" for every record: the best a constant does on F1 (the majority "absent" gets 0)."""
        return 2 * self.positives / (self.n + self.positives) if self.positives else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), **{k: getattr(self, k) for k in (
            "precision", "recall", "f1", "accuracy", "prevalence", "majority_accuracy", "always_present_f1")}}


def binary_scores(truth: Sequence[bool], predicted: Sequence[bool]) -> BinaryScores:
    t, p = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    return BinaryScores(n=int(t.size), positives=int(t.sum()), predicted=int(p.sum()),
                        true_positives=int((t & p).sum()))


# --- PTB-XL annotations ------------------------------------------------------------------------------------------

def parse_leads(text: object) -> frozenset[str] | None:
    """The leads a PTB-XL noise note names: ``", I-AVR,"`` -> I, II, III, aVR (ranges in standard lead order),
    ``"v5-6"`` and ``"V2,3"`` -> two chest leads, ``"alles"`` -> all 12.

    Blank means nothing noted (an empty set); a note that names no lead ("leicht", "noisy recording") is None: noise
    was noted, where is unknown.
    """
    if not isinstance(text, str) or not text.strip(" ,"):
        return frozenset()
    found: set[str] = set()
    previous: str | None = None
    in_range = False
    for token in re.findall(r"[a-z]+\d*|\d+|-", text.lower()):
        if token in _ALL_LEAD_WORDS:
            return frozenset(STANDARD_LEADS)
        if token == "-":
            in_range = previous is not None
            continue
        lead = _LEAD_TOKENS.get(token)
        if lead is None and token in "123456" and previous is not None and previous.startswith("V"):
            lead = f"V{token}"  # "v5-6", "V2,3": the chest lead prefix is written once
        if lead is None:
            in_range = False
            continue
        if in_range and previous is not None:
            lo, hi = sorted((STANDARD_LEADS.index(previous), STANDARD_LEADS.index(lead)))
            found.update(STANDARD_LEADS[lo:hi + 1])
        found.add(lead)
        previous, in_range = lead, False
    return frozenset(found) if found else None


@dataclass(frozen=True)
class ExtraBeats:
    """PTB-XL's ``extra_beats`` note: whether there were any, and of which kind when it says (None: not said)."""

    any: bool
    ventricular: bool | None
    supraventricular: bool | None


def parse_extra_beats(text: object) -> ExtraBeats:
    """``"SVES"``, ``"VES1,alles"``, ``"VES,SVES"`` name the kind; ``"1ES"``, ``"ES"``, ``"1,V1"`` only count."""
    if not isinstance(text, str) or not text.strip():
        return ExtraBeats(False, False, False)
    upper = text.upper()
    supraventricular = "SVES" in upper
    ventricular = re.search(r"(?<!S)VES", upper) is not None
    if not (supraventricular or ventricular):
        return ExtraBeats(True, None, None)
    return ExtraBeats(True, ventricular, supraventricular)


def ptbxl_axis_class(code: object, report: str) -> tuple[str, str] | None:
    """(row label, class) for a ``heart_axis`` value; None when the row states no axis or an unknown code.

    LAD is read by the report's wording (see the module docstring): the German "Linkstyp" is -30..+30 deg.
    """
    if not isinstance(code, str) or not code.strip():
        return None
    code = code.strip()
    if code == "LAD":
        text = report.lower()
        if "linkstyp" in text and "berdreht" not in text:
            return "LAD (Linkstyp)", NORMAL
        return "LAD", LEFT
    return (code, PTBXL_AXIS_CLASS[code]) if code in PTBXL_AXIS_CLASS else None


@dataclass(frozen=True)
class Annotated:
    """A PTB-XL record with its annotations, parsed."""

    ecg_id: str
    fold: int
    path: Path
    report: str
    heart_axis: str | None
    axis: tuple[str, str] | None  # (row label, class) from ptbxl_axis_class
    noise: dict[str, frozenset[str] | None]  # QUALITY_COLUMNS name -> parse_leads
    extra_beats: ExtraBeats
    pacemaker: bool
    rhythm_codes: frozenset[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ecg_id": self.ecg_id, "fold": self.fold, "heart_axis": self.heart_axis,
            "axis_class": self.axis[1] if self.axis else None,
            "noise": {k: None if v is None else sorted(v, key=STANDARD_LEADS.index) for k, v in self.noise.items()},
            "extra_beats": asdict(self.extra_beats), "pacemaker": self.pacemaker,
            "rhythm_codes": sorted(self.rhythm_codes),
        }


def load_annotated(root: Path, folds: Iterable[int], limit: int | None = None) -> list[Annotated]:
    """The records of `folds` with signals on disk (first `limit` by ecg_id), with their annotations parsed."""
    records = sorted(load_ptbxl(root, folds), key=lambda r: int(r.ecg_id))[:limit]
    table = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
    out = []
    for record in records:
        row = table.loc[int(record.ecg_id)]
        codes = frozenset(ast.literal_eval(row["scp_codes"]))
        pacemaker = isinstance(row["pacemaker"], str) and row["pacemaker"].strip().lower().startswith("ja")
        axis = row["heart_axis"] if isinstance(row["heart_axis"], str) else None
        out.append(Annotated(
            ecg_id=record.ecg_id, fold=int(record.fold or 0), path=record.path, report=record.report,
            heart_axis=axis, axis=ptbxl_axis_class(axis, record.report),
            noise={column: parse_leads(row[column]) for column in QUALITY_COLUMNS},
            extra_beats=parse_extra_beats(row["extra_beats"]), pacemaker=pacemaker or "PACE" in codes,
            rhythm_codes=codes & RHYTHM_CODES.keys(),
        ))
    return out


# --- measuring ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """What the comparisons need of one record's :class:`Measurements` (small, so the pool sends little back)."""

    units: str  # the record's units as stored: "mV" raw, "NU" band-passed and z-scored
    seconds: float  # read + measure
    rate_hz: float = 0.0
    duration_s: float = 0.0
    error: str = ""  # the stage (or the reader) failed: the exception, as it was raised
    values: dict[str, float | None] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    rhythm: str = ""
    codes: tuple[str, ...] = ()  # the rhythm statements by PTB-XL's conventions (ecgregen.measure.codes)
    beat_count: int = 0
    premature: dict[str, int] = field(default_factory=dict)  # BeatOrigin value -> count
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)  # flagged leads only

    def leads_with(self, wanted: frozenset[QualityFlag]) -> frozenset[str]:
        """Leads carrying any of `wanted` (a PTB-XL column maps to one or more of our flags)."""
        return frozenset(lead for lead, flags in self.flags.items() if wanted & set(flags))


def summarise(m: Measurements, ecg: Ecg, units: str, seconds: float) -> Measured:
    """Plain values only (no median beat, no enums), so the JSON carries every record and a worker returns little."""
    return Measured(
        units=units, seconds=seconds, rate_hz=ecg.sampling_rate_hz, duration_s=ecg.duration_s,
        values={name: m.value(name) for name in VALUE_FIELDS}, missing=dict(m.missing),
        rhythm=str(m.rhythm.value), codes=tuple(sorted(rhythm_codes(m))), beat_count=m.beat_count,
        premature={origin.value: n for origin, n in m.premature_counts.items()},
        flags={lead: tuple(str(f.value) for f in flags) for lead, flags in m.flagged_leads.items()},
    )


def measure_wfdb(path: Path) -> Measured:
    """Read one WFDB record as the service reads it and measure it (a pool worker: errors come back as values)."""
    start = time.perf_counter()
    units = "?"
    try:
        raw = read_wfdb_signal(path)
        units = "/".join(sorted(set(raw.units)))
        ecg = ecg_from_array(raw.signal, raw.sampling_rate_hz, raw.lead_names, raw.units)
        return summarise(measure(ecg, raw.units), ecg, units, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - one record's failure is reported with the rest, not fatal to the run
        return Measured(units=units, seconds=time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")


def measure_all(paths: Sequence[Path], workers: int, label: str) -> list[Measured]:
    """Measure records in order, `workers` processes at a time, with a progress bar on stderr."""
    bar = tqdm(total=len(paths), desc=f"measuring {label}", unit="record", file=sys.stderr, leave=False)
    out: list[Measured] = []
    if workers <= 1:
        for path in paths:
            out.append(measure_wfdb(path))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for measured in pool.map(measure_wfdb, paths, chunksize=max(1, min(16, len(paths) // (4 * workers)))):
                out.append(measured)
                bar.update()
    bar.close()
    return out


# --- section 1: the carts ----------------------------------------------------------------------------------------

def _cart_rows(stated: dict[str, int], ours: Measurements) -> list[dict[str, Any]]:
    rows = []
    for comparison in CART_COMPARISONS:
        cart: float | None = stated.get(comparison.cart_key)
        source = "stated"
        if cart is None and comparison.cart_key == "heart_rate" and stated.get("rr_interval"):
            cart, source = 60000.0 / stated["rr_interval"], f"60000 / RR {stated['rr_interval']}"
        if cart is None:
            continue
        value = getattr(ours, comparison.ours)
        rows.append({
            "measurement": comparison.label, "field": comparison.ours, "unit": comparison.unit, "cart": cart,
            "cart_source": source, "ours": value, "absent_reason": ours.missing.get(comparison.ours, ""),
            "difference": None if value is None else difference(value, cart, comparison.circular),
            "tolerance": comparison.tolerance, "within": within_tolerance(value, cart, comparison),
        })
    return rows


def evaluate_carts(formats_dir: Path) -> dict[str, Any]:
    """Every ECG file of `formats_dir` measured; those that state their cart's measurements compared with them."""
    files: list[dict[str, Any]] = []
    ecgs: list[Ecg] = []
    unreadable = []
    for path in sorted(p for p in formats_dir.iterdir() if p.is_file() and p.suffix.lower() != ".md"):
        try:
            from_file = read_ecg_file(path)
        except EcgFileError as exc:
            unreadable.append({"file": path.name, "reason": str(exc)})
            continue
        start = time.perf_counter()
        ours = measure(from_file.ecg)
        seconds = time.perf_counter() - start
        same = next((i for i, other in enumerate(ecgs) if _same_recording(other, from_file.ecg)), None)
        ecgs.append(from_file.ecg)
        files.append({
            "file": path.name, "format": from_file.metadata.format, "rate_hz": from_file.ecg.sampling_rate_hz,
            "duration_s": round(from_file.ecg.duration_s, 2), "cart": from_file.metadata.measurements,
            "ecg": files[same]["ecg"] if same is not None else path.name, "measure_s": round(seconds, 3),
            "rows": _cart_rows(from_file.metadata.measurements, ours), "cart_line": cart_line(ours),
            "ours": asdict(summarise(ours, from_file.ecg, "mV", seconds)),
        })
    stating = [f for f in files if f["rows"]]
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in stating:
        groups.setdefault(f["ecg"], []).append(f)
    # An ECG is held out when any of its copies is: its samples are the same whatever the file.
    held_out = {ecg for ecg, members in groups.items() if any(f["file"] in CART_HELD_OUT for f in members)}
    summary_rows = []
    for ecg, members in groups.items():
        for comparison in CART_COMPARISONS:
            rows = [row for f in members for row in f["rows"] if row["measurement"] == comparison.label]
            if rows:
                summary_rows.append({"ecg": ecg, "files": [f["file"] for f in members],
                                     "measurement": comparison.label, "copies": len(rows),
                                     "within": all(row["within"] for row in rows)})
    qt_errors = {f["file"]: abs(row["difference"]) if row["difference"] is not None else None
                 for f in stating for row in f["rows"] if row["field"] == "qt_interval_ms"}
    rate_rows = [(f["file"], row) for f in stating for row in f["rows"] if row["field"] == "heart_rate_bpm"]
    rate_errors = [abs(row["difference"]) for _, row in rate_rows if row["difference"] is not None]
    within = sum(r["within"] for r in summary_rows)
    return {
        "formats_dir": str(formats_dir), "files": files, "unreadable": unreadable, "pairs": summary_rows,
        "summary": {
            "ecgs": len(groups), "pairs": len(summary_rows), "within": within,
            "within_share": within / len(summary_rows) if summary_rows else None,
            "max_rate_error_bpm": max(rate_errors) if rate_errors else None,
            "rate_absent_on": [name for name, row in rate_rows if row["ours"] is None],
            "target_within_share": CART_WITHIN_TARGET, "target_max_rate_error_bpm": CART_MAX_RATE_ERROR_BPM,
            "qt_errors_ms": qt_errors, "target_qt_ms": CART_QT_TARGET_MS,
        },
        "held_out": sorted(held_out), "tuned_on": sorted(set(groups) - held_out),
        "held_out_summary": _pair_summary([r for r in summary_rows if r["ecg"] in held_out]),
        "tuned_summary": _pair_summary([r for r in summary_rows if r["ecg"] not in held_out]),
    }


def _pair_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    within = sum(r["within"] for r in rows)
    return {"pairs": len(rows), "within": within, "within_share": within / len(rows) if rows else None}


def _same_recording(a: Ecg, b: Ecg) -> bool:
    return (a.sampling_rate_hz == b.sampling_rate_hz and a.signal.shape == b.signal.shape
            and bool(np.allclose(a.signal, b.signal, atol=SAME_ECG_ATOL_MV)))


# --- section 2 and 3: PTB-XL ------------------------------------------------------------------------------------

def evaluate_ptbxl(root: Path, folds: Sequence[int], limit: int | None = None, workers: int = 2) -> dict[str, Any]:
    """The stage on the records of `folds` against heart_axis, the noise columns, extra_beats and the rhythm codes."""
    start = time.perf_counter()
    annotated = load_annotated(root, folds, limit)
    if not annotated:
        raise ValueError(f"no records with signals in {root} folds {fold_spec(folds)}")
    measured = measure_all([a.path for a in annotated], workers, f"PTB-XL fold(s) {fold_spec(folds)}")
    wall = time.perf_counter() - start
    ok = [(a, m) for a, m in zip(annotated, measured) if not m.error]
    failed = [{"ecg_id": a.ecg_id, "error": m.error} for a, m in zip(annotated, measured) if m.error]
    seconds = [m.seconds for m in measured]
    return {
        "ptbxl": str(root), "folds": list(folds), "limit": limit, "records": len(annotated),
        "units": dict(Counter(m.units for m in measured)),
        "rates_hz": sorted({m.rate_hz for m in measured if not m.error}),
        "durations_s": sorted({round(m.duration_s, 2) for m in measured if not m.error}),
        "failed": failed, "wall_time_s": round(wall, 1), "workers": workers,
        "seconds_per_record": {"median": float(np.median(seconds)), "max": float(np.max(seconds))},
        "heart_axis": _axis_section(ok), "quality": _quality_section(ok), "extra_beats": _extra_beats_section(ok),
        "pacemaker": {"records": sum(a.pacemaker for a, _ in ok), "n": len(ok)},
        "rhythm": _rhythm_section(ok),
        "per_record": [{**a.to_dict(), "ours": asdict(m)} for a, m in zip(annotated, measured)],
    }


def _axis_section(ok: list[tuple[Annotated, Measured]]) -> dict[str, Any]:
    rows = [(a, m) for a, m in ok if a.axis is not None]
    ours = [axis_class(m.values.get("qrs_axis_deg")) for _, m in rows]
    truth = [a.axis[1] for a, _ in rows if a.axis]
    by_code_only = [LEFT if a.heart_axis == "LAD" else cls for (a, _), cls in zip(rows, truth)]
    confusion: dict[str, Counter] = {}
    for (a, _), predicted in zip(rows, ours):
        label = f"{a.axis[0]} ({a.axis[1]})" if a.axis else ""
        confusion.setdefault(label, Counter())[predicted or "unmeasured"] += 1
    majority, majority_n = Counter(truth).most_common(1)[0] if truth else ("-", 0)
    disagreements = [
        {"ecg_id": a.ecg_id, "heart_axis": a.heart_axis, "class": cls, "ours": predicted,
         "qrs_axis_deg": m.values.get("qrs_axis_deg"), "absent_reason": m.missing.get("qrs_axis_deg", "")}
        for (a, m), cls, predicted in zip(rows, truth, ours) if predicted != cls
    ]
    return {
        "n": len(rows), "without_axis": len(ok) - len(rows),
        "agreement": share_of(sum(p == t for p, t in zip(ours, truth)), len(rows)),
        "agreement_lad_as_left": share_of(sum(p == t for p, t in zip(ours, by_code_only)), len(rows)),
        "majority_class": majority, "majority_agreement": share_of(majority_n, len(rows)),
        "unmeasured": sum(p is None for p in ours), "target": AXIS_TARGET,
        "confusion": {row: dict(counts)
                      for row, counts in sorted(confusion.items(), key=lambda kv: -sum(kv[1].values()))},
        "disagreements": disagreements,
    }


def _quality_section(ok: list[tuple[Annotated, Measured]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    every_flag = frozenset().union(*QUALITY_COLUMNS.values())
    for column, flags in [*QUALITY_COLUMNS.items(), ("any noise column", every_flag)]:
        columns = list(QUALITY_COLUMNS) if column == "any noise column" else [column]
        scopes: dict[str, Any] = {}
        for scope, part in (("all records", ok), ("mV records", [(a, m) for a, m in ok if m.units == "mV"])):
            truth = [any(a.noise[c] != frozenset() for c in columns) for a, _ in part]
            predicted = [bool(m.leads_with(flags)) for _, m in part]
            scopes[f"record, {scope}"] = binary_scores(truth, predicted).to_dict()
        known = [(a, m) for a, m in ok if all(a.noise[c] is not None for c in columns)]
        lead_truth = [lead in frozenset().union(*(a.noise[c] or frozenset() for c in columns))
                      for a, _ in known for lead in STANDARD_LEADS]
        lead_pred = [lead in m.leads_with(flags) for _, m in known for lead in STANDARD_LEADS]
        scopes["lead, all records"] = binary_scores(lead_truth, lead_pred).to_dict()
        out[column] = {"flags": sorted(str(f.value) for f in flags), "leads_unstated": len(ok) - len(known),
                       "scores": scopes}
    return out


def _extra_beats_section(ok: list[tuple[Annotated, Measured]]) -> dict[str, Any]:
    def count(m: Measured, origin: BeatOrigin | None) -> int:
        return sum(m.premature.values()) if origin is None else m.premature.get(origin.value, 0)

    out = {}
    for name, origin, kind in (("any extra beat", None, "any"),
                               ("ventricular", BeatOrigin.VENTRICULAR, "ventricular"),
                               ("supraventricular", BeatOrigin.SUPRAVENTRICULAR, "supraventricular")):
        rows = [(a, m) for a, m in ok if getattr(a.extra_beats, kind) is not None]
        truth = [bool(getattr(a.extra_beats, kind)) for a, _ in rows]
        predicted = [count(m, origin) > 0 for _, m in rows]
        out[name] = {"left_out_kind_unstated": len(ok) - len(rows), "scores": binary_scores(truth, predicted).to_dict(),
                     "missed": [a.ecg_id for (a, _), t, p in zip(rows, truth, predicted) if t and not p],
                     "false_alarms": [a.ecg_id for (a, _), t, p in zip(rows, truth, predicted) if p and not t]}
    return out


def _rhythm_section(ok: list[tuple[Annotated, Measured]]) -> dict[str, Any]:
    present = {code for a, _ in ok for code in a.rhythm_codes}
    codes = [code for code in RHYTHM_CODES if code != "AFLT" or "AFLT" in present]
    per_code = {}
    for code in codes:
        truth = [code in a.rhythm_codes for a, _ in ok]
        predicted = [code in m.codes if code in PTBXL_CODED else m.rhythm == RHYTHM_CODES[code].value for _, m in ok]

        def example(a: Annotated, m: Measured) -> dict[str, Any]:
            return {"ecg_id": a.ecg_id, "codes": sorted(a.rhythm_codes), "ours": m.rhythm,
                    "rate_bpm": m.values.get("heart_rate_bpm"), "rr_irregularity": m.values.get("rr_irregularity")}

        per_code[code] = {
            "ours": RHYTHM_CODES[code].value, "scores": binary_scores(truth, predicted).to_dict(),
            "missed": [example(a, m) for (a, m), t, p in zip(ok, truth, predicted) if t and not p],
            "false_alarms": [example(a, m) for (a, m), t, p in zip(ok, truth, predicted) if p and not t],
        }
    confusion: dict[str, Counter] = {}
    for a, m in ok:
        label = next((c for c in RHYTHM_PRECEDENCE if c in a.rhythm_codes), NO_RHYTHM_CODE)
        confusion.setdefault(label, Counter())[m.rhythm] += 1
    order = [*RHYTHM_PRECEDENCE, NO_RHYTHM_CODE]
    return {"per_code": per_code, "target": RHYTHM_F1_TARGET, "target_codes": list(RHYTHM_TARGET_CODES),
            "confusion": {k: dict(confusion[k]) for k in order if k in confusion}}


def share_of(k: int, n: int) -> float | None:
    return k / n if n else None


# --- the whole command -------------------------------------------------------------------------------------------

def evaluate_measurements(sections: Sequence[str], *, formats_dir: Path, ptbxl: Path, folds: Sequence[int],
                          limit: int | None = None, workers: int = 2) -> dict[str, Any]:
    """The chosen sections, JSON-ready; the PTB-XL section's per-record results let a disagreement be looked up."""
    unknown = set(sections) - set(SECTIONS)
    if unknown or not sections:
        raise ValueError(f"--sections takes {', '.join(SECTIONS)} (comma-separated); got {', '.join(sections)}")
    result: dict[str, Any] = {"sections": list(sections), "stage_fit_folds": list(STAGE_FIT_FOLDS)}
    if "carts" in sections:
        result["carts"] = evaluate_carts(formats_dir)
    if "ptbxl" in sections:
        result["ptbxl"] = evaluate_ptbxl(ptbxl, folds, limit=limit, workers=workers)
    return result


def fold_spec(folds: Iterable[int]) -> str:
    """[1, 2, 3, 9] -> '1-3,9'."""
    parts: list[str] = []
    for fold in sorted(set(folds)):
        if parts and parts[-1].split("-")[-1] == str(fold - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{fold}"
        else:
            parts.append(str(fold))
    return ",".join(parts)
