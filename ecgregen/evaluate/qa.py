"""Table II: ECG-QA exact match per question type, answered from retrieved neighbours.

For every single-ECG question whose ECG has a signal in the data folder (optionally only ECGs of ``test_folds``),
the ECG is embedded and its neighbours are retrieved (own patient excluded, so neither the ECG nor its siblings can
answer for themselves).

The `labels` answerer answers questions about SCP statements (ECG-QA's ``scp_code`` attribute type) from the
calibrated predicted diagnoses (:mod:`ecgregen.diagnoses`, band edges of :mod:`ecgregen.answer`): for a question
about an ECG of fold f, the diagnosis calibration was fitted on another fold that the encoder did not learn the labels
of (by default the highest index fold such, else the highest other fold: fold 8 for fold 9 with the shipped encoder,
fold 9 for fold 8; the encoder's training folds are read from its checkpoint, :mod:`ecgregen.pretrain.provenance`),
and the answerer's band edges as the shipped ones are - on that calibration fold split by patient - so no fitted
number has seen fold f or a fold whose labels trained the encoder. Other questions (noise, stage of infarction,
extra systoles) are answered as before: each of the top-k neighbours answers from its own PTB-XL metadata by the
rules that define ECG-QA's ground truth, and the majority wins (ties: the closer neighbour); templates the metadata
cannot answer (heart axis, numeric features) fall back to the SCP-statement vote. ``diagnoses=False`` answers every
question as before the diagnoses.

Questions about measured attributes - numeric features, heart axis, noise, extra systoles - are answered from the
ECG's own measurements (:func:`ecgregen.measure.measure`, :mod:`ecgregen.answer_measured`) as the server answers them,
and as before where the measurement is absent. They are also scored per attribute type against that type's majority
answer, leave-one-fold-out: for questions about fold f, the majority answer and the measurement settings (how many
flagged leads make a noise present, how many premature beats an extra systole) come from the questions about the
other folds (of every question file given, whatever ``test_folds`` selects).

The `llm` answerer is the paper's: the top-k reports and diagnoses, and the predicted diagnoses, go into its
zero-shot prompt with the question and the template's answer options, to whatever OpenAI-compatible endpoint is
configured (the local model by default); replies it cannot use are answered by the label answerer and counted under
``answered_from``.

The JSON records the folds: the encoder's training record from its checkpoint ("unknown" for a checkpoint written
before it was kept), the index, the questions, what the diagnosis calibration and the answerer's settings were fitted
on, with the calibration fold and settings per question fold, and for each question fold what was fitted or chosen
on it (nothing, for a clean one).
``settings_for_serving`` are the shipped answer settings (``--settings-out``): fitted on one fold the encoder did not
learn the labels of and that is not reported (fold 8 for the shipped encoder), split by patient - the diagnosis
calibration on one half, the band edges on questions generated about the other, both ways round - and the
measurement settings on the real questions about that fold.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ecgregen.answer import AnswerSettings, LabelVoteAnswerer
from ecgregen.answer_measured import (
    EXTRA_SYSTOLE,
    MEASURED_TYPES,
    NOISE,
    MeasuredAnswer,
    answer_from_measurements,
    attribute_type,
)
from ecgregen.diagnoses import K_GRID, Calibration, CalibrationError, Diagnoser, Diagnosis, load_statements
from ecgregen.evaluate.corpus import open_eval_index, retrieval_excluding_patient
from ecgregen.evaluate.ecgqa import (
    PtbxlMetadata,
    UnsupportedTemplate,
    answer_from_metadata,
    answer_options,
    generate_questions,
    lead_question_share,
    load_questions,
    load_templates,
    needs_lead,
)
from ecgregen.llm.answerer import LlmAnswerer
from ecgregen.llm.prompts import QUESTION_TYPES
from ecgregen.llm.settings import LlmConfig
from ecgregen.llm.stage import LlmStage
from ecgregen.measure import Measurements, measure
from ecgregen.pipeline import RetrievalPipeline
from ecgregen.qa_conventions import NONE, normalise, question_lead
from ecgregen.records import EcgRecord, folds_text, load_ptbxl
from ecgregen.store import Hit

# Templates whose questions are about SCP statements and that ECG-QA's rules answer from metadata: the questions
# generated to fit the answerer's band edges.
FIT_TEMPLATES = tuple(range(1, 17))
_GRID = tuple(round(float(t), 2) for t in np.arange(0.02, 1.0, 0.02))
# The counts the measurement settings are chosen from (ties: the smallest, the plain reading "one is enough").
MEASURED_GRIDS = {"noise_min_leads": (NOISE, tuple(range(1, 13))),
                  "premature_min_beats": (EXTRA_SYSTOLE, (1, 2, 3, 4, 5))}
OTHER = "other"  # the attribute types answered from labels (scp_code, stage_of_infarction)

# The paper's Table II (exact match, %): S-Verify / S-Choose / S-Query.
PAPER_TABLE_II = {
    "ECG-ReGen + GPT-4o mini (paper)": (72.79, 58.66, 30.56),
    "ECG-ReGen + Gemini Flash 1.5 (paper)": (72.54, 58.52, 32.57),
    "ECG-ReGen + Llama3-70B (paper)": (71.99, 54.83, 32.02),
    "M3AE supervised (paper)": (74.6, 57.1, 41.0),
    "per-type majority (paper)": (67.7, 31.2, 23.2),
}


def vote(answers: Sequence[frozenset[str]]) -> frozenset[str]:
    """Most frequent answer set; on a tie, the one given by the closest neighbour."""
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


def _exact(predicted: frozenset[str], truth: Sequence[str]) -> bool:
    return predicted == frozenset(truth)


def question_evidence(answerer: LabelVoteAnswerer, q: dict, diagnoses: Sequence[Diagnosis]) -> tuple | None:
    """What the answer from diagnoses to ECG-QA question `q` rests on, for fitting the band edges:
    ("verify", rule, p, truth) or (edge "choose"/"query", options, per-option evidence, truth); None when the
    diagnoses do not answer it (no statement named, or a lead-level question: lead_share is fitted apart)."""
    options = answer_options(q["template_id"], q["attribute"])
    truth = frozenset(q["answer"])
    if q["question_type"] == "single-verify":
        evidence = answerer.verify_evidence(q["question"], options, diagnoses)
        if evidence is None or evidence["lead"] is not None:
            return None
        return ("verify", evidence["rule"], evidence["p"], next(iter(truth)))
    evidence = answerer.choice_evidence(options, diagnoses)
    if not evidence:
        return None
    return ("query" if len(evidence) > 2 else "choose", options, evidence, truth)


def _right_edges(options: Sequence[str], evidence: dict[str, tuple[float, bool]], truth: frozenset[str]
                 ) -> tuple[float, float]:
    """The edges t with low < t <= high for which :meth:`LabelVoteAnswerer.choose_options` answers `truth` (an
    empty interval, low >= high, when none does)."""
    p = {o: v for o, (v, _) in evidence.items()}
    none = next((o for o in options if normalise(o) == NONE), None)
    top = max(p.values())
    if truth <= p.keys() and truth:
        low, high = max((v for o, v in p.items() if o not in truth), default=-1.0), min(p[o] for o in truth)
        if none is None and len(truth) == 1 and p[next(iter(truth))] == top and top > 0:
            high = 2.0  # over every p the likeliest is answered anyway
        return low, high
    if none is not None and truth == {none}:
        return top, 2.0
    return 0.0, 0.0


def fit_answer_settings(
    evidence: Sequence[tuple], *, lead_share: float | None = None, fitted_on: str = "",
) -> tuple[AnswerSettings, dict]:
    """Band edges maximising exact match on ECG-QA questions (their :func:`question_evidence`), each edge on the
    questions it decides: verify_yes/verify_not_sure jointly on three-option statement questions, verify_binary on
    yes/no statement questions, one edge per group on "any ..." questions, choose on two-statement choose questions,
    query on statement queries (a grid of 0.02-0.98, ties to the edge nearest 0.5; for choose/query also the
    diagnoses' own thresholds). `lead_share` is taken as given (:func:`ecgregen.evaluate.ecgqa.lead_question_share`).

    Returns the settings and, per edge, how many questions decided it and the exact match they reach there."""
    verify: dict[str, list[tuple[float, str]]] = defaultdict(list)
    chooses: dict[str, list[tuple[list[str], dict, frozenset[str]]]] = defaultdict(list)
    for item in evidence:
        if item[0] == "verify":
            verify[item[1]].append((item[2], item[3]))
        else:
            chooses[item[0]].append(item[1:])

    def best_edge(truth_yes: np.ndarray, p: np.ndarray) -> tuple[float, int]:
        scores = [int(((p >= t) == truth_yes).sum()) for t in _GRID]
        best = max(range(len(_GRID)), key=lambda i: (scores[i], -abs(_GRID[i] - 0.5)))
        return _GRID[best], scores[best]

    base = AnswerSettings()
    found: dict[str, object] = {}
    report: dict[str, dict] = {}
    groups: dict[str, float] = {}
    for rule, items in sorted(verify.items()):
        p = np.array([x for x, _ in items])
        truth = np.array([t for _, t in items])
        if rule == "binary" or rule.startswith("group:"):
            edge, right = best_edge(truth == "yes", p)
            name = "verify_binary" if rule == "binary" else rule
            if rule == "binary":
                found["verify_binary"] = edge
            else:
                groups[rule.partition(":")[2]] = edge
            report[name] = {"n": len(items), "exact_match": right}
        elif rule == "bands":
            best = (-1, 0.0, 0.0)
            for hi in _GRID:
                yes = p >= hi
                for lo in reversed([g for g in _GRID if g <= hi]):  # the narrowest "not sure" band wins ties
                    state = np.where(yes, "yes", np.where(p >= lo, "not sure", "no"))
                    right = int((state == truth).sum())
                    if right > best[0] or (right == best[0] and abs(hi - 0.5) < abs(best[2] - 0.5)):
                        best = (right, lo, hi)
            found.update(verify_not_sure=best[1], verify_yes=best[2])
            report["verify_bands"] = {"n": len(items), "exact_match": best[0]}
    if groups:
        found["group_thresholds"] = groups
    for name in ("choose", "query"):
        if not chooses[name]:
            continue

        cases = chooses[name]
        # A case is right for the edges t with low < t <= high (the options it must choose have p >= t, the others
        # p < t); scored for the whole grid at once, and the own thresholds (None) case by case.
        bounds = np.array([_right_edges(o, e, truth) for o, e, truth in cases]).reshape(-1, 2)
        grid = np.array(_GRID)
        scores = ((grid[None, :] > bounds[:, :1]) & (grid[None, :] <= bounds[:, 1:])).sum(0)
        own = sum(frozenset(LabelVoteAnswerer.choose_options(o, e, None)) == truth for o, e, truth in cases)
        best_i = max(range(len(_GRID)), key=lambda i: (scores[i], -abs(_GRID[i] - 0.5)))
        best, right = (None, own) if own >= scores[best_i] else (_GRID[best_i], int(scores[best_i]))
        found[name] = best
        report[name] = {"n": len(cases), "exact_match": right}
    if lead_share is not None:
        found["lead_share"] = round(lead_share, 4)
    for value in report.values():
        value["exact_match"] = round(value["exact_match"] / value["n"], 4)
    return base.but(**found, fitted_on=fitted_on), report


def fit_measured_settings(cases: Sequence[tuple[dict, Sequence[str], Measurements]]) -> tuple[dict, dict]:
    """``noise_min_leads`` and ``premature_min_beats`` maximising exact match on ECG-QA questions (question, its
    options, its ECG's measurements), each on the questions of its attribute type (:data:`MEASURED_GRIDS`).

    Returns the settings found (only those with questions) and, per setting, how many questions decided it and
    their exact match there."""
    found: dict[str, int] = {}
    report: dict[str, dict] = {}
    for name, (kind, grid) in MEASURED_GRIDS.items():
        decided = [(q, o, m) for q, o, m in cases if attribute_type(q["question"], o) == kind]
        if not decided:
            continue
        scores = [
            sum(isinstance(a := answer_from_measurements(q["question"], o, m, **{name: value}), MeasuredAnswer)
                and _exact(frozenset(a.answer), q["answer"]) for q, o, m in decided)
            for value in grid
        ]
        best = max(range(len(grid)), key=lambda i: (scores[i], -i))
        found[name] = grid[best]
        report[name] = {"n": len(decided), "exact_match": round(scores[best] / len(decided), 4)}
    return found, report


def attribute_group(q: dict) -> str:
    """The attribute type a question is scored under: one of :data:`MEASURED_TYPES`, or :data:`OTHER`."""
    return q["attribute_type"] if q.get("attribute_type") in MEASURED_TYPES else OTHER


def split_by_patient(records: Sequence[EcgRecord]) -> tuple[list[EcgRecord], list[EcgRecord]]:
    """Two halves of `records` with no patient in both (patients sorted by id, alternately), so one half's
    calibration never saw the other half's patients."""
    patients = sorted({r.patient_id for r in records}, key=lambda p: (len(p), p))
    first = set(patients[::2])
    return [r for r in records if r.patient_id in first], [r for r in records if r.patient_id not in first]


def _answer(
    q: dict, hits: Sequence[Hit], diagnoses: Sequence[Diagnosis], metadata: PtbxlMetadata, templates: dict,
    answerer: LabelVoteAnswerer, measurements: Measurements | None = None,
) -> tuple[frozenset[str], str]:
    """One question: measured attributes (numeric features, axis, noise, extra systoles) from the ECG's measurements
    when given; statement questions (ECG-QA's scp_code attribute type) from the diagnoses when there are any; the
    others, and measured ones whose measurement is absent, as before - each neighbour answers from its own PTB-XL
    metadata by ECG-QA's rules and the majority wins (ties: the closer neighbour), or the label vote for templates
    the metadata cannot answer."""
    options = answer_options(q["template_id"], q["attribute"], templates)
    unmeasured = ""
    if measurements is not None and q.get("attribute_type") in MEASURED_TYPES:
        measured = answerer.measured_answer(q["question"], options, measurements)
        if isinstance(measured, MeasuredAnswer):
            return frozenset(measured.answer), "measurements"
        unmeasured = "unmeasured:" if measured is not None else "unrecognised:"
    if diagnoses and q.get("attribute_type") == "scp_code":
        return frozenset(answerer.answer(q["question"], options, hits, diagnoses=diagnoses).answer), "diagnoses"
    lead = question_lead(q["question"]) if needs_lead(q["template_id"]) else None
    try:
        return vote([
            frozenset(answer_from_metadata(q["template_id"], q["attribute"], metadata.row(h.ecg_id), lead=lead))
            for h in hits
        ]), unmeasured + "metadata"
    except UnsupportedTemplate:
        return frozenset(answerer.answer(q["question"], options, hits).answer), unmeasured + "scp-vote"


async def _answer_with_llm(
    questions: list[dict], neighbours: dict[str, list[Hit]], templates: dict, fallbacks: dict[int, LabelVoteAnswerer],
    diagnoses: dict[str, list[Diagnosis]], fold_of: dict[str, int], config: LlmConfig, progress: bool,
    measured: dict[str, Measurements],
) -> tuple[list[tuple[dict, frozenset[str], str]], dict]:
    """The paper's zero-shot QA: the LLM reads the top-k reports and diagnoses, the predicted diagnoses and the
    ECG's measurements where measured, as the server sends them (the label answerer where it fails)."""
    stage = await LlmStage.start(config, next(iter(fallbacks.values())))
    if stage.answerer is None:
        raise ValueError(f"the LLM is not available: {stage.detail}")
    try:
        bar = tqdm(total=len(questions), desc=f"LLM {stage.model}", unit="q", disable=not progress, dynamic_ncols=True)

        pending = list(enumerate(questions))
        results: list[tuple[dict, frozenset[str], str]] = [None] * len(questions)  # type: ignore[list-item]
        # One answerer per fold, sharing the client, so a fallback uses the settings fitted without that fold.
        per_fold = {fold: LlmAnswerer(stage.answerer.client, fallback, stage.answerer.descriptions)
                    for fold, fallback in fallbacks.items()}

        async def worker() -> None:
            # As many workers as the client's concurrency limit, so no call waits in its queue past the timeout.
            while pending:
                i, q = pending.pop(0)
                ecg_id = str(q["ecg_id"][0])
                options = answer_options(q["template_id"], q["attribute"], templates)
                llm_answerer = per_fold.get(fold_of[ecg_id], stage.answerer)
                result = await llm_answerer.answer(q["question"], options, neighbours[ecg_id], q["question_type"],
                                                     diagnoses=diagnoses.get(ecg_id, ()),
                                                     measurements=measured.get(ecg_id))
                how = f"fallback:{result.fallback_reason}" if result.fallback_reason else "llm"
                results[i] = (q, frozenset(result.answer), how)
                bar.update()

        await asyncio.gather(*(worker() for _ in range(stage.answerer.client.settings.concurrency)))
        bar.close()
        settings = stage.answerer.client.settings
        summary = {"model": stage.model, "endpoint": stage.endpoint, "temperature": settings.temperature,
                   "max_tokens": settings.max_tokens, "json_mode": settings.json_mode}
    finally:
        await stage.close()
    return results, summary


def _calibrate(pipeline: RetrievalPipeline, records: list, fold: int, progress: bool) -> tuple[Calibration | None, dict]:
    """The diagnosis calibration fitted on one fold's records (None, and why, where it cannot be fitted)."""
    from ecgregen.calibrate import calibrate_records

    try:
        cal = calibrate_records(pipeline, records, description=f"fold {fold} ({len(records)} records)",
                                progress=progress)
    except CalibrationError as exc:
        return None, {"fold": fold, "records": len(records), "error": str(exc)}
    return cal, {"fold": fold, "records": len(records), "k": cal.k, "temperature": cal.temperature,
                 "scores": {k: v for k, v in cal.scores.items() if k != "bleu4_by_mode"}}


class FoldError(ValueError):
    """Folds an evaluation may not use as asked (a calibration on the question's fold, or on a fold whose labels
    trained the encoder), or cannot know (a checkpoint that records no training folds)."""


def encoder_training(checkpoint: Path | None) -> dict | None:
    """The training record of the checkpoint evaluated (the shipped one when None); None when it records none."""
    from ecgregen.encoders.checkpoint import SHIPPED_CHECKPOINT
    from ecgregen.pretrain.provenance import read_training

    path = checkpoint or SHIPPED_CHECKPOINT
    return read_training(path) if Path(path).exists() else None


def calibration_plan(question_folds: Sequence[int], label_folds: Sequence[int], *, index_folds: Sequence[int],
                     available: Sequence[int], candidates: Sequence[int] | None = None) -> dict[int, int]:
    """The fold whose ECGs fit the diagnosis calibration for the questions about each question fold: never the
    question's fold, never a fold whose SCP labels trained the encoder (its ECGs' neighbours agree with them too
    well, so a calibration fitted there is too confident elsewhere).

    `candidates` (in order of preference; the first allowed one is taken) is refused when it names a label-training
    fold; None (the default) prefers the highest index fold, then the highest other fold of `available`."""
    labelled = set(label_folds)
    if candidates is None:
        allowed = [f for f in available if f not in labelled]
        candidates = sorted(allowed, key=lambda f: (f not in set(index_folds), -f))
    else:
        refused = sorted(set(candidates) & labelled)
        if refused:
            raise FoldError(f"calibration fold(s) {folds_text(refused)}: the encoder learnt the labels of folds "
                            f"{folds_text(labelled)}, so a calibration fitted there is flattered; choose others")
    plan: dict[int, int] = {}
    for fold in question_folds:
        chosen = next((c for c in candidates if c != fold), None)
        if chosen is None:
            raise FoldError(f"no fold to calibrate on for the questions about fold {fold}: candidates "
                            f"{list(candidates) or 'none'} (the question's fold and the encoder's label-training "
                            f"folds {folds_text(labelled)} are never used)")
        plan[fold] = chosen
    return plan


def fold_notes(folds: Sequence[int], training: dict | None, calibration_of: dict[int, int],
               serving_fold: int | None) -> dict[str, list[str]]:
    """What was fitted or chosen on each fold, from the encoder's training record and this run: an empty list for a
    fold on which nothing was (a number measured there is clean)."""
    from ecgregen.pretrain.provenance import stages

    notes: dict[str, list[str]] = {str(f): [] for f in folds}
    chain = stages(training)
    for stage in chain or []:
        for f in stage.get("train_folds", []):
            if str(f) in notes:
                notes[str(f)].append(f"trained the encoder's {stage.get('recipe')} stage"
                                     + (" with its labels" if stage.get("labels") else " (no labels)"))
        for f in stage.get("validation_folds", []):
            if str(f) in notes:
                notes[str(f)].append(f"chose the {stage.get('recipe')} stage's epoch")
    if chain is None:
        for part in notes.values():
            part.append("the encoder's training folds are unknown")
    for question_fold, c in sorted(calibration_of.items()):
        if str(c) in notes:
            note = "fitted the diagnosis calibration and band edges for questions on other folds"
            if note not in notes[str(c)]:
                notes[str(c)].append(note)
    if serving_fold is not None and str(serving_fold) in notes:
        notes[str(serving_fold)].append("fitted the shipped answer settings")
    return notes


def evaluate_qa(
    ptbxl_dir: Path,
    question_paths: Sequence[Path],
    index_folds: Sequence[int],
    *,
    answerer: str = "labels",
    k: int = 3,
    limit: int | None = None,
    data_dir: Path,
    qdrant_url: str | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
    llm: LlmConfig | None = None,
    test_folds: Sequence[int] | None = None,
    diagnoses: bool = True,
    measurements: bool = True,
    calibration_folds: Sequence[int] | None = None,
    serving_fold: int = 8,
    encoder_label_folds: Sequence[int] | None = None,
    fit_seed: int = 0,
) -> dict:
    """Exact match per question type, and per attribute type against its leave-one-fold-out majority, on the
    single-ECG questions about ECGs of `test_folds` (all when None).

    With `diagnoses` (the default), statement questions are answered from calibrated diagnoses: for the questions
    about fold f, the diagnosis calibration is fitted (``calibrate_records``) on the fold :func:`calibration_plan`
    gives - never f, never a fold whose labels trained the encoder (read from the checkpoint's training record;
    `encoder_label_folds` names them for a checkpoint without one, which is refused otherwise) - and the answerer's
    band edges (:func:`fit_answer_settings`) as the shipped ones are: on that calibration fold split by patient, the
    calibration fitted on one half and the edges on ECG-QA questions generated about the other, both ways round, and
    ``lead_share`` on the published lead questions (template 17) about it. So no fitted number has seen fold f, nor a
    label-training fold. Without `diagnoses`, today's neighbour vote answers.

    With `measurements` (the default), measured attributes are answered from the ECG's measurements, with the
    measurement settings fitted (:func:`fit_measured_settings`) on the questions about the other folds.

    ``settings_for_serving`` (with `diagnoses`): the settings fitted on `serving_fold` alone the same way, for the
    encoder that ran.
    """
    from ecgregen.pretrain.provenance import UNKNOWN, describe, label_folds, selection_folds

    if answerer not in ("labels", "llm"):
        raise ValueError(f"unknown answerer {answerer!r}; labels or llm")
    start = time.perf_counter()
    training = encoder_training(checkpoint)
    labelled = label_folds(training)
    if encoder_label_folds is not None:
        if labelled is not None and sorted(set(encoder_label_folds)) != labelled:
            raise FoldError(f"the checkpoint records label-training folds {folds_text(labelled)}, not "
                            f"{folds_text(encoder_label_folds)}")
        labelled = sorted(set(encoder_label_folds))
    records = load_ptbxl(ptbxl_dir)
    with_signal = {r.ecg_id: r for r in records}
    fold_of = {r.ecg_id: int(r.fold) if r.fold is not None else 0 for r in records}
    all_questions = load_questions(question_paths)
    # Every single-ECG question with a signal here, whatever `test_folds` selects: what the majorities and the
    # measurement settings of the other folds are taken from.
    signal_questions = [q for q in all_questions
                        if q["question_type"] in QUESTION_TYPES and str(q["ecg_id"][0]) in with_signal]
    questions = [q for q in signal_questions
                 if test_folds is None or fold_of[str(q["ecg_id"][0])] in test_folds][:limit]
    if not questions:
        raise ValueError(f"no single-ECG question refers to an ECG with a signal in {ptbxl_dir}"
                         + (f" in folds {list(test_folds)}" if test_folds is not None else ""))
    question_folds = sorted({fold_of[str(q["ecg_id"][0])] for q in questions})
    all_folds = sorted(set(fold_of.values()))
    calibration_of: dict[int, int] = {}
    if diagnoses:
        if labelled is None:
            raise FoldError(
                f"{checkpoint or 'the shipped checkpoint'} records no training folds (written before they were kept), "
                "so the calibration cannot be kept off the folds whose labels trained it: name them with "
                "--encoder-folds (e.g. 1-7, or none for an encoder that learnt no labels)")
        calibration_of = calibration_plan(question_folds, labelled, index_folds=index_folds,
                                          available=[f for f in all_folds if f], candidates=calibration_folds)
        if serving_fold in labelled:
            raise FoldError(f"--serving-fold {serving_fold}: the encoder learnt the labels of folds "
                            f"{folds_text(labelled)}; fit the shipped settings on another fold")
    metadata = PtbxlMetadata.from_ptbxl(ptbxl_dir)
    all_reports = Path(ptbxl_dir) / "ptbxl_database_all_reports.csv"
    lead_metadata = PtbxlMetadata.from_csv(all_reports) if all_reports.exists() else metadata
    templates = load_templates()
    index = load_ptbxl(ptbxl_dir, index_folds)
    pipeline = open_eval_index(index, data_dir=data_dir, qdrant_url=qdrant_url, checkpoint=checkpoint, progress=progress)
    base = pipeline.answerer
    pool_k = max(k, *K_GRID)
    pools: dict[str, list[Hit]] = {}
    calibrations: dict[int, Calibration | None] = {}
    calibration_info: dict[int, dict] = {}
    answerers: dict[int, LabelVoteAnswerer] = {}
    settings_info: dict[str, dict] = {}
    serving: dict | None = None
    fit_time = 0.0

    # Each ECG's measurements as its search made them: the diagnoses take them as evidence, as served.
    searched_measurements: dict[str, Measurements | None] = {}

    def pool_of(ecg_id: str) -> list[Hit]:
        if ecg_id not in pools:
            retrieval = retrieval_excluding_patient(pipeline, with_signal[ecg_id], pool_k)
            pools[ecg_id], searched_measurements[ecg_id] = retrieval.hits, retrieval.measurements
        return pools[ecg_id]

    measured: dict[str, Measurements] = {}
    measured_cases: list[tuple[int, tuple[dict, list[str], Measurements]]] = []
    if measurements:
        asked = sorted({str(q["ecg_id"][0]) for q in signal_questions if q["attribute_type"] in MEASURED_TYPES},
                       key=int)
        for ecg_id in tqdm(asked, desc="measure", unit="ecg", disable=not progress, dynamic_ncols=True):
            measured[ecg_id] = measure(with_signal[ecg_id].load_ecg())
        measured_cases = [
            (fold_of[e], (q, answer_options(q["template_id"], q["attribute"], templates), measured[e]))
            for q in signal_questions if (e := str(q["ecg_id"][0])) in measured
        ]

    def measured_fit(folds: Sequence[int]) -> tuple[dict, dict]:
        """The measurement settings fitted on the questions about `folds`."""
        return fit_measured_settings([case for fold, case in measured_cases if fold in folds]) if measurements \
            else ({}, {})

    try:
        needed = sorted({str(q["ecg_id"][0]) for q in questions}, key=int)
        fitting_folds = sorted({*calibration_of.values(), serving_fold}) if diagnoses else []
        fold_records = {f: [r for r in records if fold_of[r.ecg_id] == f] for f in fitting_folds}
        needed = sorted({*needed, *(r.ecg_id for f in fitting_folds for r in fold_records[f])}, key=int)
        for ecg_id in tqdm(needed, desc="neighbours", unit="ecg", disable=not progress, dynamic_ncols=True):
            pool_of(ecg_id)
        diagnosed: dict[int, dict[str, list[Diagnosis]]] = {}
        if diagnoses:
            fit_start = time.perf_counter()
            statements = load_statements()
            for fold in sorted(set(calibration_of.values())):
                calibrations[fold], calibration_info[fold] = _calibrate(pipeline, fold_records[fold], fold, progress)
                diagnoser = Diagnoser(statements, calibrations[fold])
                diagnosed[fold] = {e: diagnoser.diagnose(pools[e], searched_measurements[e])
                                   for e in needed if fold_of[e] != fold}

            halves_fit: dict[int, tuple[AnswerSettings, dict]] = {}

            def fit_on_halves(fold: int) -> tuple[AnswerSettings, dict]:
                """Band edges on questions generated about one half of `fold` (split by patient), diagnosed with the
                other half's calibration, both ways round; lead_share on the published lead questions about it."""
                if fold not in halves_fit:
                    halves = split_by_patient(fold_records[fold])
                    half_calibrations = [_calibrate(pipeline, half, fold, progress) for half in halves]
                    half_of = {r.ecg_id: i for i, half in enumerate(halves) for r in half}
                    other_half = [Diagnoser(statements, half_calibrations[1 - i][0]) for i in range(2)]
                    generated = generate_questions(metadata, [int(r.ecg_id) for r in fold_records[fold]],
                                                   templates=FIT_TEMPLATES, seed=fit_seed)
                    evidence = [
                        item for q in generated if (e := str(q["ecg_id"][0])) in half_of
                        and (item := question_evidence(base, q, other_half[half_of[e]].diagnose(
                            pools[e], searched_measurements[e]))) is not None
                    ]
                    share, lead_n = lead_question_share(all_questions, lead_metadata, [fold])
                    fitted, report = fit_answer_settings(evidence, lead_share=share, fitted_on=(
                        f"fold {fold} split by patient ({len(halves[0])} + {len(halves[1])} ECGs), diagnosis "
                        "calibration on one half, band edges on ECG-QA questions generated about the other (both "
                        f"ways round); lead_share on the {lead_n} published lead questions about fold {fold}"))
                    halves_fit[fold] = fitted, {
                        "fold": fold, "halves": [len(h) for h in halves], "generated_questions": len(evidence),
                        "calibrations": [info for _, info in half_calibrations], "lead_questions": lead_n,
                        "fit": report}
                return halves_fit[fold]

            for fold in question_folds:
                cal_fold = calibration_of[fold]
                fitted, info = fit_on_halves(cal_fold)
                answerers[fold] = LabelVoteAnswerer(base.vocabulary, fitted)
                settings_info[str(fold)] = {"calibration_fold": cal_fold, "calibration": calibration_info[cal_fold],
                                            "band_edges": info, "settings": fitted.to_json()}

            # The shipped settings: the same fit on the serving fold, and the measurement settings on its real
            # questions.
            fitted, info = fit_on_halves(serving_fold)
            found, measured_report = measured_fit([serving_fold])
            encoder_id = pipeline.encoder.encoder_id
            serving_settings = fitted.but(**found, encoder_id=encoder_id, fitted_on=(
                f"evaluate qa {time.strftime('%Y-%m-%d')}, encoder {encoder_id}: {fitted.fitted_on}; measurement "
                f"settings on its {sum(f == serving_fold for f, _ in measured_cases)} published measured-attribute "
                "questions"))
            serving = {**info, "settings": serving_settings.to_json(), "fit": {**info["fit"], **measured_report}}
            fit_time = time.perf_counter() - fit_start

        measured_info: dict[str, dict] = {}
        for fold in question_folds:
            others = [f for f in all_folds if f != fold]
            found, report = measured_fit(others)
            answerers[fold] = LabelVoteAnswerer(base.vocabulary, answerers.get(fold, base).settings.but(**found))
            measured_info[str(fold)] = {"fit_folds": others, "settings": found, "fit": report}

        def diagnoses_of(ecg_id: str) -> list[Diagnosis]:
            return diagnosed[calibration_of[fold_of[ecg_id]]][ecg_id] if diagnoses else []

        neighbours = {str(q["ecg_id"][0]): pools[str(q["ecg_id"][0])][:k] for q in questions}
        if answerer == "llm":
            results, llm_summary = asyncio.run(_answer_with_llm(
                questions, neighbours, templates, answerers or {0: base},
                {e: diagnoses_of(e) for e in neighbours}, fold_of, llm or LlmConfig(), progress, measured,
            ))
        else:
            results, llm_summary = [], None
            for q in questions:
                ecg_id = str(q["ecg_id"][0])
                predicted, how = _answer(q, neighbours[ecg_id], diagnoses_of(ecg_id), metadata, templates,
                                         answerers.get(fold_of[ecg_id], base), measured.get(ecg_id))
                results.append((q, predicted, how))
    finally:
        pipeline.store.close()

    def summary(scores: dict) -> dict:
        return {key: {"n": len(v), "exact_match": round(sum(v) / len(v), 4)} for key, v in sorted(scores.items())}

    def scored(part: list[tuple[dict, frozenset[str], str]]) -> tuple[dict, dict]:
        by_type: dict[str, list[bool]] = defaultdict(list)
        for q, predicted, _ in part:
            by_type[q["question_type"]].append(_exact(predicted, q["answer"]))
        # Majority baseline (as in the paper's Table II): each question type's most frequent answer set among the
        # evaluated questions. It sees the test answers, so it is an optimistic baseline.
        type_majority = {
            t: Counter(frozenset(q["answer"]) for q, _, _ in part if q["question_type"] == t).most_common(1)[0][0]
            for t in by_type
        }
        majority: dict[str, list[bool]] = defaultdict(list)
        for q, _, _ in part:
            majority[q["question_type"]].append(_exact(type_majority[q["question_type"]], q["answer"]))
        return summary(by_type), summary(majority)

    by_template: dict[int, list[bool]] = defaultdict(list)
    for q, predicted, _ in results:
        by_template[q["template_id"]].append(_exact(predicted, q["answer"]))
    by_type, majority = scored(results)
    by_fold = {}
    for fold in question_folds:
        ours, base_rate = scored([r for r in results if fold_of[str(r[0]["ecg_id"][0])] == fold])
        by_fold[str(fold)] = {"by_type": ours, "majority": base_rate}
    by_attribute = score_by_attribute(results, signal_questions, fold_of)
    notes = fold_notes(question_folds, training, calibration_of, serving_fold if diagnoses else None)
    selected = selection_folds(training)

    return {
        "answerer": answerer,
        "k": k,
        "n": len(results),
        "generated": any(q.get("generated") for q, _, _ in results),
        "questions": [str(p) for p in question_paths],
        "index_folds": list(index_folds),
        "test_folds": list(test_folds) if test_folds is not None else question_folds,
        "encoder": pipeline.encoder.encoder_id,
        "checkpoint": str(checkpoint) if checkpoint else "shipped",
        "folds": {
            "encoder_trained_on": describe(training) if training is not None else UNKNOWN,
            "encoder_training": training if training is not None else UNKNOWN,
            "encoder_label_folds": labelled if labelled is not None else UNKNOWN,
            "encoder_selection_folds": selected if selected is not None else UNKNOWN,
            "index": list(index_folds),
            "questions": question_folds,
            "diagnosis_calibration": (
                {"rule": "per question fold, the highest index fold (else the highest other fold) that is neither "
                         "the question's fold nor one whose labels trained the encoder"
                         if calibration_folds is None else
                         f"per question fold, the first of {list(calibration_folds)} that is not the question's fold",
                 "by_question_fold": {str(f): c for f, c in calibration_of.items()},
                 "fitted": [calibration_info[c] for c in sorted(set(calibration_of.values()))]}
                if diagnoses else None),
            "answerer_settings": (
                {"rule": "the question's calibration fold split by patient: calibration on one half, band edges on "
                         "questions generated by ECG-QA's rules about the other, both ways round"}
                if diagnoses else None),
            "measurement_settings": (
                {"rule": f"the published questions about the other folds of {all_folds}", "by_fold": measured_info}
                if measurements else None),
            "serving_settings": (
                {"rule": f"fold {serving_fold} split by patient (calibration on one half, band edges on the "
                         "other, both ways round); measurement settings on its published questions"}
                if diagnoses else None),
            "fitted_or_chosen_on_question_folds": notes,
            "untouched_question_folds": [int(f) for f, part in notes.items() if not part],
        },
        "diagnoses": diagnoses,
        "measurements": measurements,
        "by_type": by_type,
        "majority": majority,
        "by_attribute_type": by_attribute,
        "by_fold": by_fold,
        "by_template": summary(by_template),
        "answered_from": dict(Counter(how for _, _, how in results)),
        "answers": [
            {"question_id": q.get("question_id"), "template_id": q["template_id"], "ecg_id": q["ecg_id"][0],
             "fold": fold_of[str(q["ecg_id"][0])], "predicted": sorted(predicted), "answer": list(q["answer"]),
             "how": how, "calibration_fold": calibration_of.get(fold_of[str(q["ecg_id"][0])])}
            for q, predicted, how in results
        ] if not any(q.get("generated") for q, _, _ in results) else [],
        "answerer_settings_by_fold": settings_info,
        "settings_for_serving": serving,
        "fit_time_s": round(fit_time, 1),
        "llm": llm_summary,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }


def score_by_attribute(results: Sequence[tuple[dict, frozenset[str], str]], signal_questions: Sequence[dict],
                       fold_of: dict[str, int]) -> dict[str, dict]:
    """Exact match per attribute type (:func:`attribute_group`) beside that type's majority answer set,
    leave-one-fold-out: a question about fold f is compared with the most frequent answer set among the
    `signal_questions` of its type about the other folds (none there: counted wrong). A stricter baseline beside it
    takes the majority of the question's own template on the other folds (of its type where the template has none
    there): the templates of one type answer in different words. Each type lists its question folds and the folds
    each majority came from."""
    def fold(q: dict) -> int:
        return fold_of[str(q["ecg_id"][0])]

    def most_common(qs: Sequence[dict]) -> frozenset[str] | None:
        counts = Counter(frozenset(q["answer"]) for q in qs)
        return counts.most_common(1)[0][0] if counts else None

    out: dict[str, dict] = {}
    for group in (*MEASURED_TYPES, OTHER):
        part = [(q, predicted) for q, predicted, _ in results if attribute_group(q) == group]
        if not part:
            continue
        folds = sorted({fold(q) for q, _ in part})
        majority_of: dict[int, frozenset[str]] = {}
        majority_folds: dict[int, list[int]] = {}
        by_template: dict[tuple[int, int], frozenset[str]] = {}
        for f in folds:
            others = [q for q in signal_questions if attribute_group(q) == group and fold(q) != f]
            majority_of[f] = most_common(others) or frozenset()
            majority_folds[f] = sorted({fold(q) for q in others})
            for template in {q["template_id"] for q, _ in part if fold(q) == f}:
                by_template[f, template] = most_common(
                    [q for q in others if q["template_id"] == template]) or majority_of[f]
        ours = [_exact(predicted, q["answer"]) for q, predicted in part]
        base = [_exact(majority_of[fold(q)], q["answer"]) for q, _ in part]
        per_template = [_exact(by_template[fold(q), q["template_id"]], q["answer"]) for q, _ in part]
        out[group] = {
            "n": len(part), "folds": folds, "exact_match": round(sum(ours) / len(ours), 4),
            "majority": round(sum(base) / len(base), 4),
            "template_majority": round(sum(per_template) / len(per_template), 4),
            "majority_answers": {str(f): sorted(a) for f, a in majority_of.items()},
            "majority_folds": {str(f): fs for f, fs in majority_folds.items()},
        }
    return out


def format_qa(result: dict) -> str:
    """Markdown table of exact match (%) per type, beside the paper's Table II."""
    kind = "generated" if result["generated"] else "ECG-QA"
    lines = ["| method | S-Verify | S-Choose | S-Query |", "|---|---|---|---|"]
    method = f"LLM {result['llm']['model']}" if result.get("llm") else result["answerer"]
    fold_info = result.get("folds") or {}
    asked = f"question folds {folds_text(fold_info.get('questions') or result.get('test_folds') or [])}"
    for name, scores in ((f"retrieval + {method} (ours), {asked}", result["by_type"]),
                         (f"per-type majority (ours), {asked}", result["majority"])):
        cells = [f"{100 * scores[t]['exact_match']:.2f} (n={scores[t]['n']})" if t in scores else "-" for t in QUESTION_TYPES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, values in PAPER_TABLE_II.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    by_fold = result.get("by_fold") or {}
    if len(by_fold) > 1:
        lines += ["", "| question fold | S-Verify ours / majority | S-Choose ours / majority | S-Query ours / majority |",
                  "|---|---|---|---|"]
        for fold, part in by_fold.items():
            cells = [
                f"{100 * part['by_type'][t]['exact_match']:.1f} / {100 * part['majority'][t]['exact_match']:.1f} "
                f"(n={part['by_type'][t]['n']})" if t in part["by_type"] else "-" for t in QUESTION_TYPES
            ]
            lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    by_attribute = result.get("by_attribute_type") or {}
    if by_attribute:
        lines += ["", "| attribute type | ours | type majority of the other folds | ours - type majority | "
                      "template majority of the other folds | n |", "|---|---|---|---|---|---|"]
        for group, part in by_attribute.items():
            folds = f"(folds {folds_text(part['folds'])})"
            lines.append(f"| {group} | {100 * part['exact_match']:.1f} {folds} | "
                         f"{100 * part['majority']:.1f} {folds} | "
                         f"{100 * (part['exact_match'] - part['majority']):+.1f} {folds} | "
                         f"{100 * part['template_majority']:.1f} {folds} | {part['n']} |")
        lines.append("\nEach question about fold f is compared with the majority answer of its type (or template) "
                     "among the questions about the other folds; the measurement settings are fitted there too.")
    notes = fold_info.get("fitted_or_chosen_on_question_folds") or {}
    if notes:
        lines += ["", "| question fold | what was fitted or chosen on it |", "|---|---|"]
        for fold, part in notes.items():
            lines.append(f"| {fold} | {'; '.join(part) if part else '**nothing** (a clean fold)'} |")
    calibration = fold_info.get("diagnosis_calibration") or {}
    how = ("statement questions from calibrated diagnoses (calibration fold per question fold: "
           + ", ".join(f"{f} -> {c}" for f, c in (calibration.get("by_question_fold") or {}).items())
           + "; band edges on the calibration fold split by patient)" if result.get("diagnoses") else "neighbour vote")
    if result.get("measurements"):
        how += (", measured attributes from the ECG's measurements (measurement settings and majorities from the "
                "other folds)")
    return "\n".join(lines) + (
        f"\n\n{result['n']} {kind} questions on folds {result.get('test_folds')}, k = {result['k']}, index folds "
        f"{result['index_folds']}, encoder `{result['encoder']}` ({fold_info.get('encoder_trained_on')}), "
        f"{how}, answered from {result['answered_from']}, wall time {result['wall_time_s']} s.\n"
    )
