"""`ecgregen calibrate`: fit the diagnosis calibration of a served corpus on validation ECGs.

Each validation ECG is searched against the corpus exactly as a request would be, with its own patient left out
(so neither it nor a sibling recording can vote for itself), and the votes of its neighbours are compared with
its true SCP codes; each is also measured (:mod:`ecgregen.measure`, as every request is), so the statements a
measurement defines are fitted on its evidence too; :func:`ecgregen.diagnoses.fit_calibration` does the fitting.
The validation ECGs must not be the ECGs you report quality on, and should not be ones the encoder was trained on
with their labels (the neighbours of a training ECG agree with it more than a new ECG's would): with the shipped
label-aware encoder (trained on PTB-XL folds 1-7, epoch chosen on fold 8), calibrate on fold 8 for a fold 1-8
corpus, on fold 9 for a fold 1-9 corpus.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tqdm import tqdm

from ecgregen.diagnoses import K_GRID, Calibration, ValidationCase, fit_calibration
from ecgregen.pipeline import RetrievalPipeline
from ecgregen.records import EcgRecord
from ecgregen.store import SearchFilter


def corpus_prevalence(pipeline: RetrievalPipeline) -> tuple[dict[str, float], int]:
    """Share of corpus records carrying each SCP code, and the number of records (one scroll of the payloads)."""
    counts: Counter[str] = Counter()
    points = 0
    for record in pipeline.store.scroll(with_vectors=False):
        points += 1
        counts.update(record.scp_codes)
    return {code: n / max(1, points) for code, n in counts.items()}, points


def validation_cases(
    pipeline: RetrievalPipeline, records: Sequence[EcgRecord], *, k: int = max(K_GRID), progress: bool = True
) -> list[ValidationCase]:
    """`k` neighbours (own patient left out, exact search) and the measurements of each record that has codes and
    a patient id."""
    usable = [r for r in records if r.scp_codes]
    missing_patient = [r.ecg_id for r in usable if not r.patient_id]
    if missing_patient:
        raise ValueError(
            f"{len(missing_patient)} validation records have no patient id (e.g. {missing_patient[:3]}): their own "
            "recordings could not be kept out of their neighbours"
        )
    cases = []
    for record in tqdm(usable, desc="calibration ECGs", unit="ecg", disable=not progress, dynamic_ncols=True):
        retrieval = pipeline.search(record.load_ecg(), k, SearchFilter(exclude_patient_id=record.patient_id), exact=True)
        cases.append(ValidationCase(retrieval.pool, frozenset(record.scp_codes), record.report, retrieval.measurements))
    return cases


def calibrate_records(
    pipeline: RetrievalPipeline, records: Sequence[EcgRecord], *, description: str = "", progress: bool = True
) -> Calibration:
    """Fit a calibration of `pipeline`'s corpus and encoder on `records` (not saved: see :func:`save`)."""
    prevalence, points = corpus_prevalence(pipeline)
    cases = validation_cases(pipeline, records, progress=progress)
    return fit_calibration(
        cases, prevalence, encoder_id=pipeline.encoder.encoder_id, corpus_points=points,
        fitted_on={"description": description or f"{len(records)} records"},
    )


def save(pipeline: RetrievalPipeline, calibration: Calibration) -> None:
    """Keep `calibration` with the corpus (refused for another encoder) and serve it from now on."""
    pipeline.use_calibration(calibration)
    pipeline.store.save_calibration(calibration.to_json())


def summary(calibration: Calibration) -> str:
    """What an operator reads after calibrating: the settings chosen and the scores on the validation ECGs."""
    from ecgregen.diagnoses import BAND_NAMES

    s = calibration.scores
    lines = [
        f"calibrated {calibration.encoder_id} on {calibration.fitted_on.get('description')} "
        f"({calibration.fitted_on.get('cases')} ECGs) for a corpus of {calibration.corpus_points} records",
        f"neighbours k={calibration.k}, temperature {calibration.temperature}",
        f"on the validation ECGs: diagnoses micro-F1 {s.get('f1_micro')}, macro-F1 {s.get('f1_macro')}; "
        f"Brier {s.get('brier_vote')} (votes) -> {s.get('brier_calibrated')} (calibrated)",
        "present thresholds by code prevalence: " + ", ".join(
            f"{name}: {band.threshold:.2f}" for name, band in zip(BAND_NAMES, calibration.bands)),
    ]
    if calibration.code_thresholds:
        lines.append("own thresholds: " + ", ".join(f"{c} {t:.2f}" for c, t in sorted(calibration.code_thresholds.items())))
    fit = s.get("measured_fit")
    if calibration.measured is None or fit is None:
        lines.append("measured statements: not fitted (a calibration from before the measurements): votes only")
    else:
        alpha, beta, gamma = fit["shared"]
        lines.append(
            f"measured statements ({', '.join(sorted(calibration.measured))}): {fit['model']} on "
            f"{fit['measured_cases']} measured ECGs, vote logit x {alpha:.2f} + evidence x {beta:.2f} + {gamma:.2f}"
            + (f", own fits: {', '.join(fit['own'])}" if fit["own"] else "")
            + f", present from p {fit['threshold']:.2f}; "
            f"micro-F1 {s.get('f1_micro_measured')}, macro-F1 {s.get('f1_macro_measured')} with them")
    bleu = s.get("bleu4_by_mode", {})
    lines.append(f"report mode served by default: {calibration.report_mode} (BLEU-4 on the validation ECGs: "
                 + ", ".join(f"{m} {v}" for m, v in bleu.items()) + ")")
    return "\n".join(lines)
