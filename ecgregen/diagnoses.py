"""Predicted diagnoses: a calibrated probability per SCP statement from the neighbours' labels.

Retrieval returns k neighbours, each with its cardiologist's SCP codes. A code's *vote* is the similarity-weighted
share of the top ``k`` neighbours carrying it (weights ``exp((cos_i - cos_1) / temperature)``, so a much closer
neighbour counts more). Votes are not probabilities: how often a 0.6 vote is right depends on the encoder, the
corpus and how common the code is. A :class:`Calibration`, fitted on validation ECGs that were searched against the
very corpus being served (own patient left out), turns votes into probabilities with one logistic (Platt) map per
prevalence band of codes, and sets the ``present`` decision: a threshold per band, and per code for codes common
enough in the validation set to have their own. It belongs to one encoder and one corpus: it is stored with the
corpus, refused for another encoder, and flagged stale when the corpus has grown or shrunk by a quarter.

Without a calibration the votes are served as they are, with a 0.5 threshold, and every answer says so.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

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
# encoder, 2026-12-01 (`scripts/calibration_cv.py`): searching k in 5-30 and the temperature in 0.02-0.1 on ~100
# validation ECGs overfitted them (micro-F1 0.668 on the other half, against 0.696 with k 10 and T 0.1 fixed), and
# so did thresholds of their own for codes with 10-30 positives; a code needs OWN_THRESHOLD_POSITIVES (a large
# validation set, e.g. fold 9 of the full PTB-XL) before it gets one. The thresholds maximise micro-F1 +
# MACRO_WEIGHT x macro-F1: weight 1 bought macro-F1 at micro-F1's expense (0.653 / 0.247 against 0.696 / 0.248).
K_GRID = (10,)
TEMPERATURE_GRID = (0.1,)
OWN_THRESHOLD_POSITIVES = 200
MACRO_WEIGHT = 0.5
_THRESHOLD_GRID = np.round(np.arange(0.02, 0.96, 0.02), 2)

REPORT_MODES = ("top1", "consensus")


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
    threshold: float  # present = probability >= threshold


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
        return 1.0 / (1.0 + math.exp(-(self.slope * vote + self.intercept)))


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

    def diagnose(self, hits: Sequence[Hit]) -> list[Diagnosis]:
        """Every code some neighbour carries, most probable first."""
        cal = self.calibration
        votes = neighbour_votes(hits, self.k, cal.temperature if cal else UNCALIBRATED_TEMPERATURE)
        out = []
        for code, vote in votes.items():
            probability = cal.probability(code, vote) if cal else vote
            threshold = cal.threshold(code) if cal else 0.5
            statement = self.statements.get(code)
            out.append(Diagnosis(
                code=code, description=statement.description if statement else "",
                superclass=statement.superclass if statement else "", probability=round(probability, 4),
                present=round(probability, 4) >= threshold, threshold=threshold,
            ))
        return sorted(out, key=lambda d: (-d.probability, d.code))


def present_codes(diagnoses: Sequence[Diagnosis]) -> frozenset[str]:
    return frozenset(d.code for d in diagnoses if d.present)


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
        raise ValueError(f"unknown report mode {mode!r}; one of {', '.join(REPORT_MODES)}")
    present = present_codes(diagnoses)
    if not present:
        return hits[0]

    def agreement(hit: Hit) -> float:
        codes = set(hit.scp_codes)
        return len(codes & present) / len(codes | present)

    candidates = list(hits[:pool])
    best = max(agreement(h) for h in candidates)
    return next(h for h in candidates if agreement(h) == best)


# --- fitting ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationCase:
    """One validation ECG: its neighbours in the served corpus (own patient left out) and its true codes/report."""

    hits: list[Hit]
    codes: frozenset[str]
    report: str


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


def fit_calibration(
    cases: Sequence[ValidationCase], prevalence: Mapping[str, float], *, encoder_id: str, corpus_points: int,
    fitted_on: Mapping | None = None, k_grid: Sequence[int] = K_GRID,
    temperature_grid: Sequence[float] = TEMPERATURE_GRID, macro_weight: float = MACRO_WEIGHT,
    own_positives: int = OWN_THRESHOLD_POSITIVES,
) -> Calibration:
    """Fit vote -> probability maps, thresholds, (k, temperature) and the report mode on validation cases."""
    cases = [c for c in cases if c.hits and c.codes]
    if len(cases) < 20:
        raise CalibrationError(f"{len(cases)} usable validation ECGs (with codes and neighbours); at least 20 needed")
    codes = sorted(set(prevalence) | {c for case in cases for c in case.codes}
                   | {c for case in cases for h in case.hits for c in h.scp_codes})
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
    calibration.report_mode, calibration.scores["bleu4_by_mode"] = _best_report_mode(cases, calibration)
    return calibration


def _best_report_mode(cases: Sequence[ValidationCase], calibration: Calibration) -> tuple[str, dict[str, float]]:
    """The report mode with the highest BLEU-4 against the validation ECGs' own reports (top1 on a tie)."""
    from ecgregen.evaluate.text_metrics import corpus_bleu4

    diagnoser = Diagnoser({}, calibration)
    scored = [c for c in cases if c.report.strip()]
    if not scored:
        return "top1", {}
    bleu = {}
    for mode in REPORT_MODES:
        chosen = [select_report(c.hits, diagnoser.diagnose(c.hits), mode, calibration.k) for c in scored]
        bleu[mode] = round(corpus_bleu4([c.report for c in scored], [h.report if h else "" for h in chosen]), 4)
    return max(REPORT_MODES, key=lambda m: (bleu[m], m == "top1")), bleu
