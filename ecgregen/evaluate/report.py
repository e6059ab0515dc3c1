"""Table I: report generation by retrieval, scored against the ground-truth reports, beside its baselines.

Retrieval goes through :class:`~ecgregen.pipeline.RetrievalPipeline` - the code path the server uses - with exact
search (numbers comparable with the paper's FAISS flat index) and the query's own patient excluded (the folds are
patient-disjoint, but a user may overlap them; one patient's ECGs would leak the answer). The baselines are
computed on the same test set in the same run: Random (a random index report), Common (the most frequent index
report) and raw-signal nearest neighbour (the preprocessed signal itself as the embedding).

Each report mode of the server is a row (``retrieval-top1``: the paper's closest-neighbour report;
``retrieval-consensus``: the neighbour agreeing best with the predicted diagnoses); their SCP F1 is that of the
*served diagnoses* (the calibrated ``present`` codes), while a baseline's is that of the codes of the record it
returns. The F1 of the top-1 neighbour's own codes (what the paper's system would diagnose) is kept beside them.
The diagnosis calibration is fitted in the same run on the calibration folds (searched against the same index,
own patient excluded), which must not overlap the test folds. The statements a measurement defines are scored one by
one before (the votes alone: the same calibration with its measured statements left out) and after (votes and
measurements, as served), beside their prevalence and the always-absent / always-present baselines.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ecgregen.calibrate import calibrate_records
from ecgregen.diagnoses import MEASURED_STATEMENTS, REPORT_MODES, Diagnoser, present_codes
from ecgregen.evaluate.corpus import neighbours_excluding_patient, open_eval_index, retrieval_excluding_patient
from ecgregen.evaluate.text_metrics import BERTSCORE_MODEL_NAME, meteor_session, score_reports, scp_f1
from ecgregen.pipeline import RetrievalPipeline
from ecgregen.preprocess import preprocess
from ecgregen.records import EcgRecord, folds_text
from ecgregen.reports import translate
from ecgregen.reports.select import serve_report

RETRIEVAL_METHODS = tuple(f"retrieval-{mode}" for mode in REPORT_MODES)
LANGUAGES = ("en", "original")  # the languages reports are scored in (the first is the headline)
LANGUAGE_NAMES = {"en": "in English (through the glossary)", "original": "as written (mostly German)"}
BASELINES = ("random", "common", "raw_knn")
RAW_KNN_DECIMATION = 4  # 100 Hz -> 25 Hz: keeps the waveform's shape, 3,000 numbers per ECG

# The paper's Table I (PTB-XL, in-domain); split and report language are not stated there.
PAPER_TABLE_I = {
    "ECG-ReGen (paper)": {"bleu1": 0.801, "bleu2": 0.768, "bleu3": 0.737, "bleu4": 0.700, "meteor": 0.836,
                          "rouge_l": 0.836, "bertscore_f1": 0.920},
    "Random (paper)": {"bleu1": 0.152, "bleu2": 0.091, "bleu3": 0.060, "bleu4": 0.049},
    "Common (paper)": {"bleu1": 0.212, "bleu2": 0.150, "bleu3": 0.134, "bleu4": 0.132},
}


@dataclass(frozen=True)
class Prediction:
    report: str
    scp_codes: frozenset[str]
    ecg_id: str
    patient_id: str
    english: str | None = None  # as served in English (a hit's stored translation); None: translated when scored

    def text(self, language: str) -> str:
        """The prediction as scored in `language` (``en``: what the server serves in English)."""
        if language == "en" and self.english is not None:
            return self.english
        return in_language(self.report, language)


def retrieve_top1(pipeline: RetrievalPipeline, queries: Sequence[EcgRecord], progress: bool = True) -> list[Prediction]:
    predictions = []
    for record in tqdm(queries, desc="retrieval", unit="ecg", disable=not progress, dynamic_ncols=True):
        top = neighbours_excluding_patient(pipeline, record, 1)[0]
        predictions.append(Prediction(top.report, frozenset(top.scp_codes), top.ecg_id, top.patient_id,
                                      top.english.text_en))
    return predictions


def retrieve_modes(
    pipeline: RetrievalPipeline, queries: Sequence[EcgRecord], progress: bool = True
) -> tuple[dict[str, list[Prediction]], list[frozenset[str]], list[frozenset[str]]]:
    """Per report mode, the served report with the served diagnoses' present codes; the top-1 neighbour's codes; and
    the present codes of the votes alone (the served calibration without its measured statements)."""
    calibration = pipeline.diagnoser.calibration
    votes_only = Diagnoser(pipeline.diagnoser.statements,
                           dataclasses.replace(calibration, measured=None) if calibration else None)
    by_mode: dict[str, list[Prediction]] = {m: [] for m in RETRIEVAL_METHODS}
    top1_codes, vote_codes = [], []
    for record in tqdm(queries, desc="retrieval", unit="ecg", disable=not progress, dynamic_ncols=True):
        retrieval = retrieval_excluding_patient(pipeline, record, 1)
        codes = present_codes(retrieval.diagnoses)
        top1_codes.append(frozenset(retrieval.pool[0].scp_codes))
        vote_codes.append(present_codes(votes_only.diagnose(retrieval.pool)))
        for mode in REPORT_MODES:
            served = serve_report(mode, retrieval.pool, retrieval.diagnoses, retrieval.measurements,
                                  pipeline.diagnoser.k)
            assert served is not None  # the index is not empty and the patient filter leaves others
            hit = served.hit
            by_mode[f"retrieval-{mode}"].append(Prediction(hit.report if hit else served.text_en, codes,
                                                           hit.ecg_id if hit else "", hit.patient_id if hit else "",
                                                           served.text_en))
    return by_mode, top1_codes, vote_codes


def training_folds(checkpoint: Path | None, calibration: Sequence[EcgRecord], queries: Sequence[EcgRecord]) -> dict:
    """What trained the encoder and chose its epochs (from its checkpoint's training record), refusing a calibration
    on folds whose labels it learnt (its neighbours' votes would be flattered there), and which test folds carry one
    of its choices - said beside the numbers, not hidden."""
    from ecgregen.evaluate.qa import encoder_training
    from ecgregen.pretrain.provenance import UNKNOWN, describe, folds_of, label_folds, selection_folds

    training = encoder_training(checkpoint)
    labelled, chose = label_folds(training), selection_folds(training)
    refused = sorted(set(folds_of(calibration)) & set(labelled or ()))
    if refused:
        raise ValueError(f"calibration fold(s) {folds_text(refused)}: the encoder learnt the labels of "
                         f"folds {folds_text(labelled)}; calibrate on another fold")
    tested = set(folds_of(queries))
    return {"description": describe(training), "label_folds": labelled if labelled is not None else UNKNOWN,
            "selection_folds": chose if chose is not None else UNKNOWN,
            "test_folds_trained_on": sorted(tested & set(labelled or ())),
            "test_folds_that_chose_an_epoch": sorted(tested & set(chose or ()))}


def _f1(tp: int, fp: int, fn: int) -> float | None:
    """None where it is undefined: no positive, none predicted."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None


def diagnoses_by_code(
    true_codes: Sequence[Collection[str]], before: Sequence[Collection[str]], after: Sequence[Collection[str]],
    codes: Sequence[str] = tuple(MEASURED_STATEMENTS),
) -> dict:
    """F1 of each of `codes` before (votes alone) and after (votes and measurements), with its positives, prevalence
    and the F1 of always saying absent / present; and micro / macro F1 over every code, before and after."""
    if not (len(true_codes) == len(before) == len(after)) or not true_codes:
        raise ValueError(f"{len(true_codes)} true, {len(before)} before, {len(after)} after: one of each per ECG")
    n = len(true_codes)
    rows = []
    for code in codes:
        truth = [code in t for t in true_codes]
        positives = sum(truth)
        row: dict = {"code": code, "positives": positives, "prevalence": round(positives / n, 4),
                     "f1_always_absent": _f1(0, 0, positives), "f1_always_present": _f1(positives, n - positives, 0)}
        for name, predicted in (("before", before), ("after", after)):
            said = [code in p for p in predicted]
            tp = sum(t and p for t, p in zip(truth, said))
            fp, fn = sum(said) - tp, positives - tp
            row[name] = {"f1": _f1(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn}
        rows.append(row)
    all_codes = {"before": scp_f1(true_codes, before), "after": scp_f1(true_codes, after)}
    return {"n": n, "codes": rows, "all_codes": all_codes}


def _raw_features(pipeline: RetrievalPipeline, records: Sequence[EcgRecord]) -> np.ndarray:
    config = pipeline.encoder.preprocess_config
    rows = []
    for record in records:
        x = preprocess(record.load_ecg(), config).first_window  # a PTB-XL record: its one 10 s window
        n = x.shape[1] // RAW_KNN_DECIMATION * RAW_KNN_DECIMATION
        x = x[:, :n].reshape(12, -1, RAW_KNN_DECIMATION).mean(axis=2)
        padded = np.zeros((12, config.window_samples // RAW_KNN_DECIMATION), np.float32)
        padded[:, : x.shape[1]] = x
        rows.append(padded.ravel())
    features = np.stack(rows)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def raw_knn(pipeline: RetrievalPipeline, index: Sequence[EcgRecord], queries: Sequence[EcgRecord]) -> list[Prediction]:
    """Nearest neighbour by cosine on the preprocessed, decimated signal (no encoder), same patient excluded."""
    index_features = _raw_features(pipeline, index)
    query_features = _raw_features(pipeline, queries)
    index_patients = np.array([r.patient_id for r in index])
    predictions = []
    for record, q in zip(queries, query_features):
        scores = index_features @ q
        if record.patient_id:
            scores[index_patients == record.patient_id] = -np.inf
        best = index[int(np.argmax(scores))]
        predictions.append(Prediction(best.report, frozenset(best.scp_codes), best.ecg_id, best.patient_id))
    return predictions


def random_baseline(index: Sequence[EcgRecord], n: int, seed: int = 0) -> list[Prediction]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(index), size=n)
    return [Prediction(index[i].report, frozenset(index[i].scp_codes), index[i].ecg_id, index[i].patient_id) for i in picks]


def common_baseline(index: Sequence[EcgRecord], n: int) -> list[Prediction]:
    """The most frequent index report for every query; its codes are the commonest code set among its records."""
    report, _ = Counter(r.report for r in index).most_common(1)[0]
    codes, _ = Counter(frozenset(r.scp_codes) for r in index if r.report == report).most_common(1)[0]
    return [Prediction(report, codes, "", "")] * n


def evaluate_reports(
    index: Sequence[EcgRecord],
    queries: Sequence[EcgRecord],
    *,
    calibration: Sequence[EcgRecord] = (),
    data_dir: Path,
    qdrant_url: str | None = None,
    checkpoint: Path | None = None,
    bertscore: bool = True,
    progress: bool = True,
    languages: Sequence[str] = LANGUAGES,
) -> dict:
    """Index (or reuse), calibrate the diagnoses on `calibration` records (none: raw votes), retrieve, score every
    method in each of `languages` (``en``: references and reports through the glossary, as served by default;
    ``original``: as the carts wrote them); returns the JSON-ready result, ``methods`` in the first language."""
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown or not languages:
        raise ValueError(f"languages must be some of {', '.join(LANGUAGES)}; got {', '.join(languages) or 'none'}")
    start = time.perf_counter()
    queries = [q for q in queries if q.report.strip()]  # a record without a report cannot be scored
    if not queries:
        raise ValueError("no test record with a report")
    overlap = {r.ecg_id for r in calibration} & {q.ecg_id for q in queries}
    if overlap:
        raise ValueError(f"{len(overlap)} test records are also calibration records: calibrate on other folds")
    encoder_folds = training_folds(checkpoint, calibration, queries)
    pipeline = open_eval_index(index, data_dir=data_dir, qdrant_url=qdrant_url, checkpoint=checkpoint, progress=progress)
    try:
        encoder_id = pipeline.encoder.encoder_id
        fitted = calibrate_records(pipeline, calibration, progress=progress) if calibration else None
        pipeline.use_calibration(fitted)
        by_mode, top1_codes, vote_codes = retrieve_modes(pipeline, queries, progress)
        predictions = {
            **by_mode,
            "random": random_baseline(index, len(queries)),
            "common": common_baseline(index, len(queries)),
            "raw_knn": raw_knn(pipeline, index, queries),
        }
    finally:
        pipeline.store.close()
    leaks = [
        (q.ecg_id, p.ecg_id) for q, p in zip(queries, predictions["raw_knn"]) if q.patient_id and p.patient_id == q.patient_id
    ]
    methods_order = (*RETRIEVAL_METHODS, *BASELINES)
    if leaks:  # raw_knn masks the patient itself (retrieval is checked by neighbours_excluding_patient)
        raise RuntimeError(f"raw kNN retrieved the query's own patient: {leaks[:5]}")
    has_codes = any(q.scp_codes for q in queries)
    true_codes = [frozenset(q.scp_codes) for q in queries] if has_codes else None
    by_language: dict[str, dict] = {}
    with meteor_session():
        for language in languages:
            references = [in_language(q.report, language) for q in queries]
            methods = by_language[language] = {}
            for name in methods_order:
                hypotheses = [p.text(language) for p in predictions[name]]
                predicted = [p.scp_codes for p in predictions[name]] if has_codes else None
                methods[name] = score_reports(references, hypotheses, true_codes, predicted, bertscore=bertscore)
    return {
        "n": len(queries),
        "n_index": len(index),
        "encoder": encoder_id,
        "bertscore_model": BERTSCORE_MODEL_NAME if bertscore else None,
        "language": languages[0],
        "methods": by_language[languages[0]],
        "methods_by_language": by_language,
        "glossary_version": translate("").glossary_version,
        "top1_neighbour_codes": scp_f1(true_codes, top1_codes) if true_codes else None,
        "diagnoses_by_code": diagnoses_by_code(
            true_codes, vote_codes, [p.scp_codes for p in predictions[RETRIEVAL_METHODS[0]]]) if true_codes else None,
        "calibration": {
            "records": len(calibration), "k": fitted.k, "temperature": fitted.temperature,
            "report_mode_chosen": fitted.report_mode, "validation_scores": fitted.scores,
            "measured": fitted.measured is not None,
        } if fitted else None,
        "served_report_mode": pipeline.resolved_report_mode(),
        "encoder_training": encoder_folds,
        "examples": [
            {"ecg_id": q.ecg_id, "truth": q.report, "retrieved_ecg_id": p.ecg_id, "retrieved": p.report}
            for q, p in list(zip(queries, predictions[f"retrieval-{pipeline.resolved_report_mode()}"]))[:5]
        ],
        "wall_time_s": round(time.perf_counter() - start, 1),
    }


def in_language(report: str, language: str) -> str:
    """`report` as scored in `language`: through the glossary (en; English passes unchanged) or as written."""
    return translate(report).text_en if language == "en" else report


def markdown_table(result: dict) -> str:
    """Our methods beside the paper's Table I rows, one table per language scored."""
    keys = ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "bertscore_f1", "scp_f1_micro", "scp_f1_macro"]
    tables = []
    for language, methods in result.get("methods_by_language", {"original": result["methods"]}).items():
        header = (f"Reports scored {LANGUAGE_NAMES[language]}:\n\n| method | " + " | ".join(keys) + " |\n|---|"
                  + "---|" * len(keys) + "\n")
        rows = []
        for name, scores in [*methods.items(), *PAPER_TABLE_I.items()]:
            cells = [f"{scores[k]:.3f}" if scores.get(k) is not None else "-" for k in keys]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        tables.append(header + "\n".join(rows))
    top1 = result.get("top1_neighbour_codes")
    cal = result.get("calibration")
    notes = (
        f"\nn = {result['n']} test records ({result.get('test', '?')}), index = {result['n_index']} records "
        f"({result.get('index', '?')}), encoder `{result['encoder']}`, BERTScore model: {result['bertscore_model']}, "
        f"wall time {result['wall_time_s']} s. Retrieval rows: SCP F1 of the served diagnoses "
        + (f"(calibrated on {cal['records']} records of {result.get('calibration_source', '?')}: k {cal['k']}, "
           f"report mode chosen there: {cal['report_mode_chosen']})" if cal else "(uncalibrated votes)")
        + (f"; the top-1 neighbour's own codes score micro {top1['micro']:.3f} / macro {top1['macro']:.3f}" if top1 else "")
        + ". Baseline rows: the codes of the record they return. Paper rows are copied from its Table I (PTB-XL, "
        "split and report language not stated there; its reports were PTB-XL's machine-translated to English)."
        + (f" English: the glossary {result['glossary_version']} applied to references and reports alike; the "
           "statements mode writes English." if "glossary_version" in result else "") + "\n"
    )
    training = result.get("encoder_training")
    if training:
        notes += f"Encoder: {training['description']}."
        for key, what in (("test_folds_trained_on", "trained the encoder with their labels"),
                          ("test_folds_that_chose_an_epoch", "chose an epoch of the encoder")):
            if training[key]:
                notes += (f" **Test fold(s) {folds_text(training[key])} {what}: the numbers above carry "
                          "that choice.**")
        notes += "\n"
    by_code = result.get("diagnoses_by_code")
    return "\n\n".join(tables) + "\n" + notes + (f"\n{diagnoses_table(by_code)}" if by_code else "")


def diagnoses_table(by_code: dict) -> str:
    """The measured statements' F1 before / after the measurements, as markdown."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = ["| code | measured | positives (prevalence) | always absent | always present | votes only | "
             "votes + measurements |", "|---|---|---|---|---|---|---|"]
    for row in by_code["codes"]:
        lines.append(
            f"| {row['code']} | {MEASURED_STATEMENTS[row['code']].measured} | {row['positives']} "
            f"({100 * row['prevalence']:.1f} %) | {cell(row['f1_always_absent'])} | {cell(row['f1_always_present'])} | "
            f"{cell(row['before']['f1'])} | {cell(row['after']['f1'])} |")
    before, after = by_code["all_codes"]["before"], by_code["all_codes"]["after"]
    return ("\n".join(lines) + f"\n\nF1 per measured statement on the {by_code['n']} test ECGs (- : undefined, no "
            f"positive and none predicted). All codes: micro-F1 {before['micro']:.3f} -> {after['micro']:.3f}, "
            f"macro-F1 {before['macro']:.3f} -> {after['macro']:.3f} (votes only -> votes + measurements).\n")


def plot_scores(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("bleu1", "bleu4", "meteor", "rouge_l", "bertscore_f1", "scp_f1_micro", "scp_f1_macro")
            if all(k in m for m in result["methods"].values())]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(result["methods"])
    for i, (name, scores) in enumerate(result["methods"].items()):
        ax.bar(np.arange(len(keys)) + i * width, [scores[k] for k in keys], width, label=name)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys)
    ax.set_ylim(0, 1)
    language = LANGUAGE_NAMES.get(result.get("language", "original"), "")
    ax.set_title(f"Report generation, n = {result['n']} ({result['encoder']}), reports scored {language}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_outputs(result: dict, json_path: Path | None, markdown_path: Path | None, plot_path: Path | None) -> None:
    if json_path:
        json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    if markdown_path:
        markdown_path.write_text(markdown_table(result))
    if plot_path:
        plot_scores(result, plot_path)
