"""Predicted diagnoses: a calibrated probability per SCP statement from the neighbours' labels.

Retrieval returns k neighbours, each with its cardiologist's SCP codes. A code's *vote* is the similarity-weighted
share of the top ``k`` neighbours carrying it (weights ``exp((cos_i - cos_1) / temperature)``, so a much closer
neighbour counts more). Votes are not probabilities: how often a 0.6 vote is right depends on the encoder, the
corpus and how common the code is. A :class:`Calibration`, fitted on validation ECGs that were searched against the
very corpus being served (own patient left out), turns votes into probabilities with one logistic (Platt) map per
prevalence band of codes, and sets the ``present`` decision: a threshold per band, and per code for codes common
enough in the validation set to have their own. It belongs to one encoder and one corpus: it is stored with the
corpus, refused for another encoder, and flagged stale when the corpus has grown or shrunk by a quarter.

Statements that a measurement defines (rate for SBRAD/STACH, the rhythm for SR/SARRH/AFIB, PR for 1AVB/LPR, QTc
for LNGQT, premature beats for PVC/PAC, the QRS axis for LAFB/LPFB, QRS duration for the bundle branch blocks:
:data:`MEASURED_STATEMENTS`) also take the ECG's own :class:`~ecgregen.measure.Measurements` as evidence. Each such
measurement is turned into a fixed log-likelihood ratio (estimated once, from the measurements alone, on PTB-XL
folds 1-7), and the calibration fits ``p = sigmoid(a * vote + b * evidence + c)`` per statement on the same
validation ECGs, shrunk towards "add the evidence to the vote's log-odds" because the validation sets are small.
A statement no neighbour carries appears when its measurement points to it. A calibration fitted before this
(no ``measured`` section) still serves the votes, and every answer says that the measurements were not used.

Without a calibration the votes are served as they are, with a 0.5 threshold, and every answer says so.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ecgregen.measure.codes import rhythm_codes
from ecgregen.measure.findings import QRS_COMPLETE_MS, Finding, check, clinical_rhythm
from ecgregen.measure.types import BeatOrigin, Measurements, Rhythm
from ecgregen.settings import DEMO_PTBXL
from ecgregen.store import Hit

CALIBRATION_VERSION = 1
# Code prevalence (share of corpus records carrying it) at the band edges: rare, uncommon, common, very common.
BAND_EDGES = (0.005, 0.02, 0.1)
BAND_NAMES = ("<0.5%", "0.5-2%", "2-10%", ">=10%")
STALE_FRACTION = 0.25  # the corpus grew or shrank by more than this since the calibration: flagged stale
UNCALIBRATED_K = 10
UNCALIBRATED_TEMPERATURE = 0.1
# What the fit may choose. Chosen by two-fold cross-validation (by patient) within PTB-XL fold 8, label-aware
# encoder (`scripts/calibration_cv.py`; its figures are in docs/calibration-cv.md, the one place they are stated,
# named here by row): searching k in 5-30 and the temperature in 0.02-0.1 on ~100 validation ECGs gained nothing
# ("search k 5-30, ..." against "k 10, T 0.1, weight 1"), so both are fixed; thresholds of their own for codes with
# 20 or more positives changed nothing either ("..., own >= 20" against the default), so a code needs
# OWN_THRESHOLD_POSITIVES (a large validation set, e.g. fold 9 of the full PTB-XL) before it gets one; k 20 is within
# the noise of k 10. The thresholds maximise micro-F1 + MACRO_WEIGHT x macro-F1: weight 1 buys macro-F1 at micro-F1's
# expense ("k 10, T 0.1, weight 1" against "... weight 0.5 (default)").
K_GRID = (10,)
TEMPERATURE_GRID = (0.1,)
OWN_THRESHOLD_POSITIVES = 200
MACRO_WEIGHT = 0.5
_THRESHOLD_GRID = np.round(np.arange(0.02, 0.96, 0.02), 2)

# Whose words the report is: a neighbour's (top1: the closest, the paper's; consensus: the one agreeing best with the
# diagnoses) or this ECG's own statements (:mod:`ecgregen.reports.statements`).
NEIGHBOUR_REPORT_MODES = ("top1", "consensus")
# verified: the best-agreeing neighbour report the measurements do not contradict, edited where none qualifies
# (:mod:`ecgregen.reports.verify`); the service's default.
REPORT_MODES = (*NEIGHBOUR_REPORT_MODES, "statements", "verified")

# The measured statements' fit (:func:`_fit_measured`). Chosen by two-fold cross-validation by patient within PTB-XL
# fold 8, four random splits (label-aware encoder, `scripts/calibration_cv.py --seeds 4`, docs/calibration-cv.md):
# one model for all measured statements (prior: the evidence added to the vote's log-odds, precision 1), a
# statement's own model (prior: the shared one) from 5 positive validation ECGs, one present threshold fitted for
# them all. It lifts micro- and macro-F1 over all codes above the votes alone ("k 10, T 0.1, weight 0.5 (default)"
# against its "votes only" row); no own models, own models from 20 positives and prior precision 3 or 0.1 (the
# "default, measured: ..." rows) are within the noise of it.
# Below MEASURED_MIN_POSITIVES positives outside the commonest measured statement nothing is fitted: the prior itself
# serves, at threshold 0.5. Fold 8 has 87 such positives (each half of the cross-validation about 43); the demo
# corpus's 32 validation ECGs have 14, on which the shared threshold came out at 0.08 - fitted to a handful of ECGs.
MEASURED_PRIOR_PRECISION = 1.0
MEASURED_OWN_POSITIVES = 5
MEASURED_MIN_POSITIVES = 30
MEASURED_PRIOR_THRESHOLD = 0.5
MEASUREMENTS_UNUSED = ("the diagnosis calibration predates the measurements: the probabilities are the neighbours' "
                       "votes only (rate, rhythm, PR, QTc, axis and premature beats not used; the present decisions "
                       "still agree with them); run `ecgregen calibrate`")


class CalibrationError(ValueError):
    """A calibration that cannot be used here (another encoder, a damaged file, too few validation ECGs)."""


@dataclass(frozen=True)
class Statement:
    code: str
    description: str
    superclass: str  # PTB-XL's diagnostic superclass (NORM, MI, STTC, CD, HYP); "" for form/rhythm-only statements
    kind: str  # diagnostic, form, rhythm (the first that applies)


def load_statements(path: str | Path | None = None) -> dict[str, Statement]:
    """SCP statements from a PTB-XL ``scp_statements.csv`` (default: the one shipped with the demo corpus)."""
    if path is None:
        path = DEMO_PTBXL / "scp_statements.csv"
    df = pd.read_csv(path, index_col=0)
    statements = {}
    for code, row in df.iterrows():
        superclass = row.get("diagnostic_class")
        kind = next((k for k in ("diagnostic", "form", "rhythm") if row.get(k) == 1), "")
        statements[str(code)] = Statement(
            str(code), str(row["description"]), superclass if isinstance(superclass, str) else "", kind
        )
    return statements


@functools.cache
def _shipped_codes() -> frozenset[str]:
    return frozenset(load_statements())


def known_code(code: str) -> bool:
    """One of PTB-XL's SCP statements (bounds the label values of the diagnosis metrics)."""
    return code in _shipped_codes()


@dataclass(frozen=True)
class Diagnosis:
    code: str
    description: str
    superclass: str
    probability: float
    present: bool
    threshold: float  # present = probability >= threshold, unless a measurement decided it (`decided_by`)
    # "" when `present` is the calibrated probability against the threshold; else the measurement that decided it
    # ("measured rate 55 bpm with P waves: sinus bradycardia"), see reconcile().
    decided_by: str = ""


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(max(z, -50.0), 50.0)))


def _rhythm_statement(code: str) -> Callable[[Measurements], float | None]:
    """1 when the measured rhythm and rate imply `code` by PTB-XL's conventions (:func:`rhythm_codes`), 0 when they
    imply something else (regular without P waves included), None when the rhythm could not be determined."""

    def value(m: Measurements) -> float | None:
        return None if m.rhythm is Rhythm.UNDETERMINED else float(code in rhythm_codes(m))

    return value


def _premature_count(origin: BeatOrigin) -> Callable[[Measurements], float | None]:
    """Premature beats of `origin`; None when there were too few beats to tell one early."""

    def value(m: Measurements) -> float | None:
        return None if m.rr_interval_ms is None else float(m.premature_counts[origin])

    return value


def _field(name: str) -> Callable[[Measurements], float | None]:
    return lambda m: m.value(name)


@dataclass(frozen=True)
class MeasuredStatement:
    """An SCP statement that a measurement defines, and how much each range of that measurement says for it.

    ``evidence[i]`` is the log-likelihood ratio ``log P(bin i | code) - log P(bin i | not code)`` of the bins cut at
    ``edges`` (a value on an edge is in the upper bin), counted on PTB-XL folds 1-7 from the measurements alone
    (``scripts/measured_evidence.py``; 0.5 added to every count): folds the calibration and the reports never use.
    """

    code: str
    measured: str  # what is measured, in words
    value: Callable[[Measurements], float | None]  # None: not measured (the statement then takes the vote alone)
    edges: tuple[float, ...]
    evidence: tuple[float, ...]

    def evidence_of(self, m: Measurements) -> float | None:
        x = self.value(m)
        return None if x is None else self.evidence[int(np.digitize(x, self.edges))]


# PTB-XL's statements a measurement defines. The rest of scp_statements.csv's rhythm and beat statements are left to
# the votes: AFLT, BIGU, PRC(S), TRIGU, SVTAC and PSVT have 0-2 ECGs on folds 1-7, and SVARR (13) and IRBBB/ILBBB are
# not told apart by what is measured (SVARR: same RR irregularity with and without). PTB-XL has no axis statements:
# LAFB and LPFB take the QRS axis.
MEASURED_STATEMENTS: dict[str, MeasuredStatement] = {s.code: s for s in (
    MeasuredStatement("SR", "rhythm (sinus, 50-100 bpm)", _rhythm_statement("SR"), (0.5,), (-2.69, 1.28)),
    MeasuredStatement("SBRAD", "rhythm (sinus, < 50 bpm)", _rhythm_statement("SBRAD"), (0.5,), (-1.59, 4.97)),
    MeasuredStatement("STACH", "rhythm (sinus, > 100 bpm)", _rhythm_statement("STACH"), (0.5,), (-2.38, 4.37)),
    MeasuredStatement("SARRH", "rhythm (sinus, RR varying)", _rhythm_statement("SARRH"), (0.5,), (-0.49, 2.45)),
    MeasuredStatement("AFIB", "rhythm (irregular RR, no P waves)", _rhythm_statement("AFIB"), (0.5,), (-1.67, 5.22)),
    MeasuredStatement("1AVB", "PR interval (ms)", _field("pr_interval_ms"), (200.0, 220.0, 240.0),
                      (-1.54, 1.18, 2.98, 2.99)),
    MeasuredStatement("LPR", "PR interval (ms)", _field("pr_interval_ms"), (200.0, 220.0, 240.0),
                      (-3.56, 1.25, 2.77, 2.88)),
    MeasuredStatement("LNGQT", "QTc, Bazett (ms)", _field("qtc_bazett_ms"), (460.0, 500.0), (-1.46, 1.51, 2.35)),
    MeasuredStatement("PVC", "ventricular premature beats", _premature_count(BeatOrigin.VENTRICULAR), (0.5, 1.5),
                      (-2.25, 3.58, 4.40)),
    MeasuredStatement("PAC", "supraventricular premature beats", _premature_count(BeatOrigin.SUPRAVENTRICULAR),
                      (0.5, 1.5), (-1.43, 2.20, 3.05)),
    MeasuredStatement("LAFB", "QRS axis (degrees)", _field("qrs_axis_deg"), (-45.0, -30.0), (2.97, 2.14, -2.30)),
    MeasuredStatement("LPFB", "QRS axis (degrees)", _field("qrs_axis_deg"), (90.0, 120.0), (-1.40, 3.37, 3.45)),
    MeasuredStatement("CLBBB", "QRS duration (ms)", _field("qrs_duration_ms"), (110.0, 130.0), (-4.52, -2.09, 3.01)),
    MeasuredStatement("CRBBB", "QRS duration (ms)", _field("qrs_duration_ms"), (110.0, 130.0), (-2.56, 0.49, 2.58)),
    MeasuredStatement("IVCD", "QRS duration (ms)", _field("qrs_duration_ms"), (110.0, 130.0), (-0.84, 1.88, 1.08)),
)}


def neighbour_votes(hits: Sequence[Hit], k: int, temperature: float) -> dict[str, float]:
    """Similarity-weighted share of the top-`k` neighbours that carry each code (codes of no neighbour: absent)."""
    top = hits[:k]
    if not top:
        return {}
    best = top[0].score
    weights = [math.exp((h.score - best) / temperature) for h in top]
    total = sum(weights)
    votes: dict[str, float] = {}
    for weight, hit in zip(weights, top):
        for code in hit.scp_codes:
            votes[code] = votes.get(code, 0.0) + weight / total
    return votes


@dataclass(frozen=True)
class BandMap:
    """Platt map of one prevalence band, p = sigmoid(slope * vote + intercept), and its present threshold on p."""

    slope: float
    intercept: float
    threshold: float

    def probability(self, vote: float) -> float:
        return _sigmoid(self.slope * vote + self.intercept)

    def logit(self, vote: float) -> float:
        return self.slope * vote + self.intercept


@dataclass(frozen=True)
class MeasuredMap:
    """One measured statement's p = sigmoid(vote_slope * vote + evidence_weight * evidence + intercept), and its
    present threshold on p (`evidence`: :meth:`MeasuredStatement.evidence_of`)."""

    vote_slope: float
    evidence_weight: float
    intercept: float
    threshold: float

    def probability(self, vote: float, evidence: float) -> float:
        return _sigmoid(self.vote_slope * vote + self.evidence_weight * evidence + self.intercept)


@dataclass
class Calibration:
    encoder_id: str
    k: int
    temperature: float
    corpus_points: int
    prevalence: dict[str, float]  # code -> share of the corpus carrying it: its band
    bands: list[BandMap]
    code_thresholds: dict[str, float] = field(default_factory=dict)  # own thresholds of frequent codes, on p
    report_mode: str = "top1"  # the report mode that scored best on the validation ECGs
    fitted_on: dict = field(default_factory=dict)  # what the validation ECGs were, when, how many
    scores: dict = field(default_factory=dict)  # on the validation ECGs: F1, Brier before/after, BLEU per mode
    version: int = CALIBRATION_VERSION
    # Measured statements' maps; None: fitted before the measurements were used (the votes alone are served then).
    measured: dict[str, MeasuredMap] | None = None

    def band(self, code: str) -> int:
        """A code's prevalence band; a code the corpus did not have at calibration time is rare."""
        return int(np.digitize(self.prevalence.get(code, 0.0), BAND_EDGES))

    def probability(self, code: str, vote: float) -> float:
        return self.bands[self.band(code)].probability(vote)

    def threshold(self, code: str) -> float:
        return self.code_thresholds.get(code, self.bands[self.band(code)].threshold)

    def stale_reason(self, corpus_points: int) -> str:
        """Why the calibration no longer fits a corpus of `corpus_points` records ("" while it does)."""
        base = max(1, self.corpus_points)
        if abs(corpus_points - self.corpus_points) > STALE_FRACTION * base:
            return (f"diagnosis calibration is stale: fitted on a corpus of {self.corpus_points} records, it now has "
                    f"{corpus_points}; run `ecgregen calibrate`")
        return ""

    def check_encoder(self, encoder_id: str) -> None:
        if self.encoder_id != encoder_id:
            raise CalibrationError(
                f"the diagnosis calibration was fitted for encoder {self.encoder_id!r}, but the corpus is served by "
                f"{encoder_id!r}: run `ecgregen calibrate` for this encoder"
            )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> Calibration:
        try:
            if int(data.get("version", 0)) != CALIBRATION_VERSION:
                raise CalibrationError(f"calibration version {data.get('version')!r}; expected {CALIBRATION_VERSION}")
            bands = [BandMap(float(b["slope"]), float(b["intercept"]), float(b["threshold"])) for b in data["bands"]]
            if len(bands) != len(BAND_NAMES):
                raise CalibrationError(f"calibration has {len(bands)} bands; expected {len(BAND_NAMES)}")
            return cls(
                encoder_id=str(data["encoder_id"]), k=int(data["k"]), temperature=float(data["temperature"]),
                corpus_points=int(data["corpus_points"]),
                prevalence={str(c): float(p) for c, p in data["prevalence"].items()}, bands=bands,
                code_thresholds={str(c): float(t) for c, t in data.get("code_thresholds", {}).items()},
                report_mode=str(data.get("report_mode", "top1")), fitted_on=dict(data.get("fitted_on", {})),
                scores=dict(data.get("scores", {})),
                measured=None if data.get("measured") is None else {
                    str(c): MeasuredMap(float(m["vote_slope"]), float(m["evidence_weight"]), float(m["intercept"]),
                                        float(m["threshold"]))
                    for c, m in data["measured"].items()
                },
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"not a usable calibration: {exc!r}") from None


class Diagnoser:
    """Neighbours -> :class:`Diagnosis` list; calibrated when a calibration for this encoder is given."""

    def __init__(self, statements: Mapping[str, Statement], calibration: Calibration | None = None) -> None:
        self.statements = statements
        self.calibration = calibration

    @property
    def k(self) -> int:
        """Neighbours the diagnoses are computed from (searched even when a caller asks for fewer)."""
        return self.calibration.k if self.calibration else UNCALIBRATED_K

    def diagnose(self, hits: Sequence[Hit], measurements: Measurements | None = None, *,
                 agree: bool = True) -> list[Diagnosis]:
        """Every code some neighbour carries, and every measured statement its measurement points to (positive
        evidence), most probable first. A measured statement takes its measurement where the calibration has a map
        for it and the measurement is there; otherwise its vote alone, as every other code. With `agree` (served),
        the present decisions then agree with the measurements (:func:`reconcile`); without, they are the
        calibration's alone (PTB-XL's labelling conventions, for the evaluation's comparison)."""
        cal = self.calibration
        votes = neighbour_votes(hits, self.k, cal.temperature if cal else UNCALIBRATED_TEMPERATURE)
        scored = {code: (cal.probability(code, vote), cal.threshold(code)) if cal else (vote, 0.5)
                  for code, vote in votes.items()}
        if cal is not None and cal.measured and measurements is not None:
            for code, model in cal.measured.items():
                statement = MEASURED_STATEMENTS.get(code)
                evidence = statement.evidence_of(measurements) if statement else None
                vote = votes.get(code, 0.0)
                if evidence is None or (vote == 0.0 and evidence <= 0.0):
                    continue
                scored[code] = (model.probability(vote, evidence), model.threshold)
        out = []
        for code, (probability, threshold) in scored.items():
            statement = self.statements.get(code)
            out.append(Diagnosis(
                code=code, description=statement.description if statement else "",
                superclass=statement.superclass if statement else "", probability=round(probability, 4),
                present=round(probability, 4) >= threshold, threshold=threshold,
            ))
        out = reconcile(out, measurements, self.statements, self.threshold) if agree else out
        return sorted(out, key=lambda d: (-d.probability, d.code))

    def threshold(self, code: str) -> float:
        """The present threshold `code` is served with: its measured map's, its own or its band's; 0.5 uncalibrated."""
        cal = self.calibration
        if cal is None:
            return 0.5
        if cal.measured and code in cal.measured:
            return cal.measured[code].threshold
        return cal.threshold(code)

    def measurement_note(self, measurements: Measurements | None) -> str:
        """The warning of an answer whose measurements the diagnoses could have used but did not: the calibration
        predates them. "" otherwise (no calibration and a failed measurement have warnings of their own)."""
        cal = self.calibration
        return MEASUREMENTS_UNUSED if cal is not None and cal.measured is None and measurements is not None else ""


# SCP codes whose meaning a measurement defines (:mod:`ecgregen.measure.findings`): a present one the measurements
# contradict is not present.
CODE_FINDINGS: dict[str, Finding] = {
    "SR": Finding.SINUS_RHYTHM, "SBRAD": Finding.SINUS_BRADYCARDIA, "STACH": Finding.SINUS_TACHYCARDIA,
    "SARRH": Finding.SINUS_ARRHYTHMIA, "AFIB": Finding.ATRIAL_FIBRILLATION, "AFLT": Finding.ATRIAL_FLUTTER,
    "1AVB": Finding.AV_BLOCK_1, "LPR": Finding.AV_BLOCK_1, "CLBBB": Finding.BBB_COMPLETE,
    "CRBBB": Finding.BBB_COMPLETE, "ILBBB": Finding.BBB_INCOMPLETE, "IRBBB": Finding.BBB_INCOMPLETE,
    "IVCD": Finding.IVCD, "LAFB": Finding.LAFB, "LPFB": Finding.LPFB, "LNGQT": Finding.QT_PROLONGED,
    "PVC": Finding.PREMATURE_BEATS, "PAC": Finding.PREMATURE_BEATS, "NORM": Finding.NORMAL_ECG,
}
# One rhythm: the codes of the measured rhythm by the clinical definitions; a measured one makes the others absent.
RHYTHM_CODES: dict[Finding, str] = {
    Finding.SINUS_RHYTHM: "SR", Finding.SINUS_BRADYCARDIA: "SBRAD", Finding.SINUS_TACHYCARDIA: "STACH",
    Finding.ATRIAL_FIBRILLATION: "AFIB", Finding.ATRIAL_FLUTTER: "AFLT",
}
# Pairs that exclude each other where the QRS duration decides which one holds.
_EXCLUSIVE_QRS = (("CRBBB", "IRBBB"), ("CLBBB", "ILBBB"))


def reconcile(diagnoses: Sequence[Diagnosis], m: Measurements | None,
              statements: Mapping[str, Statement] | None = None,
              threshold: Callable[[str], float] = lambda code: 0.5) -> list[Diagnosis]:
    """The diagnoses with every present decision agreeing with the measurements (probabilities unchanged; a decision
    a measurement made says so in `decided_by`):

    * one rhythm: where the measured rhythm is determined (a sinus rhythm with P waves, or atrial fibrillation),
      its code by the clinical definitions (SR 60-100 bpm, SBRAD < 60, STACH > 100, AFIB, AFLT) is present - listed
      if no neighbour carried it - and SR, SBRAD, STACH, AFIB and AFLT other than it are not, each decided by the
      measurement;
    * a code a measurement contradicts beyond its margin (:func:`ecgregen.measure.findings.check`) is not present,
      and says so even where its probability left it absent (the answers then follow the measurement too);
    * of a complete and an incomplete bundle branch block of one side, the one the QRS duration contradicts goes.

    A measured rhythm code no neighbour carried is listed with probability 0 (nothing voted for it) and the
    `threshold` its code is served with, present by the measurement.
    """
    if m is None:
        return list(diagnoses)
    rhythm = clinical_rhythm(m)
    rhythm_code = RHYTHM_CODES.get(rhythm) if rhythm is not None else None
    words = ""
    if rhythm_code is not None:
        rate = f"rate {m.heart_rate_bpm:.0f} bpm, " if m.heart_rate_bpm is not None else ""
        how = {"AFIB": "irregular without P waves", "AFLT": "atrial activity twice per QRS"}.get(rhythm_code,
                                                                                                 "P waves present")
        words = f"measured {rate}{how}: {rhythm.value.replace('_', ' ')}"
    out: list[Diagnosis] = []
    for d in diagnoses:
        if rhythm_code is not None and d.code in RHYTHM_CODES.values():
            out.append(replace(d, present=d.code == rhythm_code, decided_by=words))
            continue
        finding = CODE_FINDINGS.get(d.code)
        verdict = check(finding, m) if finding is not None else None
        out.append(replace(d, present=False, decided_by=verdict.reason) if verdict and verdict.contradicted else d)
    qrs = m.qrs_duration_ms
    present = {d.code for d in out if d.present}
    for complete, incomplete in _EXCLUSIVE_QRS:
        if qrs is not None and {complete, incomplete} <= present:
            drop = incomplete if qrs >= QRS_COMPLETE_MS else complete
            why = f"measured QRS {qrs:.0f} ms: {'complete' if drop == incomplete else 'incomplete'} block"
            out = [replace(d, present=False, decided_by=why) if d.code == drop else d for d in out]
    if rhythm_code is not None and all(d.code != rhythm_code for d in out):
        statement = (statements or {}).get(rhythm_code)
        out.append(Diagnosis(rhythm_code, statement.description if statement else "",
                             statement.superclass if statement else "", 0.0, True, threshold(rhythm_code), words))
    return out


def present_codes(diagnoses: Sequence[Diagnosis]) -> frozenset[str]:
    return frozenset(d.code for d in diagnoses if d.present)


def agreement(hit: Hit, present: frozenset[str]) -> float:
    """How well a neighbour's codes agree with the present diagnoses: Jaccard (0 when neither has any)."""
    codes = set(hit.scp_codes)
    union = codes | present
    return len(codes & present) / len(union) if union else 0.0


def select_report(hits: Sequence[Hit], diagnoses: Sequence[Diagnosis], mode: str, pool: int) -> Hit | None:
    """The neighbour whose report is served.

    ``top1``: the closest (the paper's). ``consensus``: among the top `pool`, the one whose codes agree best with
    the present diagnoses (Jaccard; ties by similarity), so the wording matches what the answer diagnoses.
    """
    if not hits:
        return None
    if mode == "top1":
        return hits[0]
    if mode != "consensus":
        raise ValueError(f"{mode!r} does not choose a neighbour's report; one of {', '.join(NEIGHBOUR_REPORT_MODES)}")
    present = present_codes(diagnoses)
    if not present:
        return hits[0]
    candidates = list(hits[:pool])
    best = max(agreement(h, present) for h in candidates)
    return next(h for h in candidates if agreement(h, present) == best)


# --- fitting ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationCase:
    """One validation ECG: its neighbours in the served corpus (own patient left out) and its true codes/report."""

    hits: list[Hit]
    codes: frozenset[str]
    report: str
    measurements: Measurements | None = None  # None: not measured (its measured statements take the vote alone)


def _f1(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Micro and macro F1 over (cases x codes) boolean matrices; macro over codes with a true case."""
    tp = (truth & predicted).sum(0)
    fp = (~truth & predicted).sum(0)
    fn = (truth & ~predicted).sum(0)
    denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / denominator) if denominator else 0.0
    seen = truth.sum(0) > 0
    macro = float(np.mean(2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen]))) if seen.any() else 0.0
    return micro, macro


def _platt(votes: np.ndarray, truth: np.ndarray) -> tuple[float, float] | None:
    """Logistic fit of truth on vote; None when it cannot be fitted or is not increasing."""
    from sklearn.linear_model import LogisticRegression

    if len(votes) < 10 or truth.all() or not truth.any():
        return None
    model = LogisticRegression(C=100.0).fit(votes[:, None], truth)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    return (slope, intercept) if slope > 0 else None


def _vote_matrix(cases: Sequence[ValidationCase], codes: list[str], k: int, temperature: float) -> np.ndarray:
    index = {c: j for j, c in enumerate(codes)}
    votes = np.zeros((len(cases), len(codes)))
    for i, case in enumerate(cases):
        for code, vote in neighbour_votes(case.hits, k, temperature).items():
            votes[i, index[code]] = vote
    return votes


def _objective(truth: np.ndarray, predicted: np.ndarray, macro_weight: float) -> float:
    micro, macro = _f1(truth, predicted)
    return micro + macro_weight * macro


def _fit_thresholds(votes: np.ndarray, truth: np.ndarray, bands: np.ndarray, own: np.ndarray,
                    macro_weight: float) -> np.ndarray:
    """Vote thresholds per code (one per band, and their own for `own` codes) maximising micro-F1 +
    `macro_weight` x macro-F1 on the validation cases: coordinate ascent, twice round, from 0.5."""
    thresholds = np.full(votes.shape[1], 0.5)
    groups = [bands == b for b in range(len(BAND_NAMES))]
    groups = [g & ~own for g in groups] + [np.arange(len(own)) == j for j in np.flatnonzero(own)]
    for _ in range(2):
        for group in groups:
            if not group.any():
                continue
            best, best_score = thresholds[group][0], -1.0
            for t in _THRESHOLD_GRID:
                trial = thresholds.copy()
                trial[group] = t
                score = _objective(truth, (votes >= trial) & (votes > 0), macro_weight)
                if score > best_score + 1e-12:
                    best, best_score = t, score
            thresholds[group] = best
    return thresholds


def _map_logistic(x: np.ndarray, y: np.ndarray, prior: np.ndarray, precision: float) -> np.ndarray:
    """Logistic regression of `y` on the columns of `x` (no intercept added) with a Gaussian prior of mean `prior`
    and `precision` on every coefficient: the maximum a posteriori coefficients, by Newton's method. The prior keeps
    a statement with a handful of positives near what is known without them, and a separable set finite."""
    theta = prior.astype(float).copy()
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -50.0, 50.0)))
        gradient = x.T @ (p - y) + precision * (theta - prior)
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + precision * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-9:
            break
    return theta


def _fit_measured(
    cases: Sequence[ValidationCase], codes: list[str], truth: np.ndarray, votes: np.ndarray, predicted: np.ndarray,
    maps: Sequence[BandMap], bands: np.ndarray, *, macro_weight: float, precision: float, own_positives: int,
) -> tuple[dict[str, MeasuredMap], dict]:
    """Maps of the measured statements, and what the fit found, from the validation cases that were measured.

    A statement's log-odds is modelled as ``alpha * L + beta * e + gamma``, where ``L`` is its band's vote logit
    (the vote-only calibration) and ``e`` the evidence of its measurement. (alpha, beta, gamma) are fitted for all
    measured statements together with the prior (1, 1, 0) - the evidence added to the vote's log-odds, as if the two
    were independent - and again for a statement of its own where it has `own_positives` positive (and negative)
    ECGs, with the shared fit as prior. One present threshold for them all maximises the objective of the vote-only
    thresholds, every other code keeping its vote-only decision. With fewer than MEASURED_MIN_POSITIVES positives
    outside the commonest statement (SR's many positives say nothing of the rare statements' threshold), the prior
    serves at threshold MEASURED_PRIOR_THRESHOLD.
    """
    rows: list[tuple[int, int, float, float]] = []  # (case, code column, vote logit, evidence)
    for i, case in enumerate(cases):
        if case.measurements is None:
            continue
        for j, code in enumerate(codes):
            statement = MEASURED_STATEMENTS.get(code)
            evidence = statement.evidence_of(case.measurements) if statement else None
            if evidence is not None:
                rows.append((i, j, maps[bands[j]].logit(float(votes[i, j])), evidence))
    prior = np.array([1.0, 1.0, 0.0])
    columns = np.array([r[1] for r in rows], dtype=int)
    y = np.array([truth[r[0], r[1]] for r in rows], dtype=float)
    x = np.array([[r[2], r[3], 1.0] for r in rows]).reshape(-1, 3)
    measured = [j for j, code in enumerate(codes) if code in MEASURED_STATEMENTS]
    positives = {codes[j]: int(y[columns == j].sum()) for j in measured}
    fitted = sum(positives.values()) - max(positives.values()) >= MEASURED_MIN_POSITIVES
    shared = _map_logistic(x, y, prior, precision) if fitted else prior
    per_code = dict.fromkeys(measured, shared)
    own = []
    for j in per_code:
        mine = columns == j
        if fitted and min(y[mine].sum(), (1.0 - y[mine]).sum()) >= own_positives:
            per_code[j] = _map_logistic(x[mine], y[mine], shared, precision)
            own.append(codes[j])

    threshold, micro, macro = MEASURED_PRIOR_THRESHOLD, *_f1(truth, predicted)
    if rows:
        theta = np.array([per_code[j] for j in columns])
        p = 1.0 / (1.0 + np.exp(-np.clip((x * theta).sum(1), -50.0, 50.0)))
        shown = (votes[[r[0] for r in rows], columns] > 0) | (x[:, 1] > 0)  # as Diagnoser.diagnose lists them
        cells = ([r[0] for r in rows], columns)

        def with_threshold(t: float) -> np.ndarray:
            trial = predicted.copy()
            trial[cells] = shown & (p >= t)
            return trial

        if fitted:
            threshold = max(_THRESHOLD_GRID, key=lambda t: (_objective(truth, with_threshold(t), macro_weight), -t))
        micro, macro = _f1(truth, with_threshold(threshold))
    out = {}
    for j, (alpha, beta, gamma) in per_code.items():
        band = maps[bands[j]]
        out[codes[j]] = MeasuredMap(round(float(alpha * band.slope), 6), round(float(beta), 6),
                                    round(float(alpha * band.intercept + gamma), 6), float(threshold))
    return out, {
        "f1_micro_measured": round(micro, 4), "f1_macro_measured": round(macro, 4),
        "measured_fit": {"model": "fitted" if fitted else "prior (too few positives)",
                         "shared": [round(float(v), 4) for v in shared], "own": sorted(own),
                         "threshold": float(threshold), "measured_cases": len({r[0] for r in rows}),
                         "positives": positives},
    }


def fit_calibration(
    cases: Sequence[ValidationCase], prevalence: Mapping[str, float], *, encoder_id: str, corpus_points: int,
    fitted_on: Mapping | None = None, k_grid: Sequence[int] = K_GRID,
    temperature_grid: Sequence[float] = TEMPERATURE_GRID, macro_weight: float = MACRO_WEIGHT,
    own_positives: int = OWN_THRESHOLD_POSITIVES, measured_precision: float = MEASURED_PRIOR_PRECISION,
    measured_own_positives: int = MEASURED_OWN_POSITIVES,
) -> Calibration:
    """Fit vote -> probability maps, thresholds, (k, temperature), the measured statements' maps and the report
    mode on validation cases."""
    cases = [c for c in cases if c.hits and c.codes]
    if len(cases) < 20:
        raise CalibrationError(f"{len(cases)} usable validation ECGs (with codes and neighbours); at least 20 needed")
    # The measured statements always have a column: a measurement may imply one that no record carries.
    codes = sorted(set(prevalence) | {c for case in cases for c in case.codes}
                   | {c for case in cases for h in case.hits for c in h.scp_codes} | set(MEASURED_STATEMENTS))
    truth = np.array([[code in case.codes for code in codes] for case in cases])
    bands = np.digitize([prevalence.get(c, 0.0) for c in codes], BAND_EDGES)
    own = truth.sum(0) >= own_positives

    best: tuple | None = None
    for k in k_grid:
        for temperature in temperature_grid:
            votes = _vote_matrix(cases, codes, k, temperature)
            thresholds = _fit_thresholds(votes, truth, bands, own, macro_weight)
            predicted = (votes >= thresholds) & (votes > 0)
            score = _objective(truth, predicted, macro_weight)
            if best is None or score > best[0] + 1e-12:
                best = (score, k, temperature, votes, thresholds, *_f1(truth, predicted))
    assert best is not None
    _, k, temperature, votes, thresholds, micro, macro = best

    # Probability maps per band, fitted where a neighbour carried the code (the only codes ever reported).
    carried = votes > 0
    pooled = _platt(votes[carried], truth[carried]) or (4.0, -2.0)
    maps = []
    for b in range(len(BAND_NAMES)):
        cells = carried & (bands == b)[None, :]
        slope, intercept = _platt(votes[cells], truth[cells]) or pooled
        band_codes = (bands == b) & ~own
        vote_threshold = float(thresholds[band_codes][0]) if band_codes.any() else 0.5
        maps.append(BandMap(slope, intercept, round(BandMap(slope, intercept, 0.0).probability(vote_threshold), 4)))
    code_thresholds = {
        codes[j]: round(maps[bands[j]].probability(float(thresholds[j])), 4) for j in np.flatnonzero(own)
    }
    calibration = Calibration(
        encoder_id=encoder_id, k=k, temperature=temperature, corpus_points=corpus_points,
        prevalence={c: round(float(p), 6) for c, p in prevalence.items()}, bands=maps, code_thresholds=code_thresholds,
        fitted_on={**(fitted_on or {}), "cases": len(cases), "created_at": datetime.now(UTC).isoformat(timespec="seconds")},
    )
    probabilities = np.vectorize(lambda j, v: calibration.probability(codes[j], v), otypes=[float])(
        np.broadcast_to(np.arange(len(codes)), votes.shape), votes
    )
    calibration.scores = {
        "f1_micro": round(micro, 4), "f1_macro": round(macro, 4),
        "brier_vote": round(float(np.mean((votes[carried] - truth[carried]) ** 2)), 4),
        "brier_calibrated": round(float(np.mean((probabilities[carried] - truth[carried]) ** 2)), 4),
    }
    calibration.measured, measured_scores = _fit_measured(
        cases, codes, truth, votes, (votes >= thresholds) & (votes > 0), maps, bands, macro_weight=macro_weight,
        precision=measured_precision, own_positives=measured_own_positives,
    )
    calibration.scores.update(measured_scores)
    calibration.report_mode, calibration.scores["bleu4_by_mode"] = _best_report_mode(cases, calibration)
    return calibration


def _best_report_mode(cases: Sequence[ValidationCase], calibration: Calibration) -> tuple[str, dict[str, float]]:
    """The report mode with the highest BLEU-4 against the validation ECGs' own reports (top1 on a tie), scored in
    English - the language served by default: references and neighbours' reports through the glossary, the
    statements report as written."""
    from ecgregen.evaluate.text_metrics import corpus_bleu4  # the evaluation and reports import this module
    from ecgregen.reports import translate
    from ecgregen.reports.select import serve_report

    diagnoser = Diagnoser(load_statements(), calibration)  # the statements report words them by description
    scored = [c for c in cases if c.report.strip()]
    if not scored:
        return "top1", {}
    bleu = {}
    references = [translate(c.report).text_en for c in scored]
    for mode in REPORT_MODES:
        served = []
        for c in scored:
            report = serve_report(mode, c.hits, diagnoser.diagnose(c.hits, c.measurements), c.measurements,
                                  calibration.k)
            served.append(report.text_en if report else "")  # as served: the stored translation
        bleu[mode] = round(corpus_bleu4(references, served), 4)
    return max(REPORT_MODES, key=lambda m: (bleu[m], m == "top1")), bleu
