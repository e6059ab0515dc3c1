"""The evaluation harness end to end on real records: Table I (report generation) and Table II (ECG-QA)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from ecgregen.answer import SHIPPED_SETTINGS
from ecgregen.encoders.checkpoint import SHIPPED_CHECKPOINT, load_encoder
from ecgregen.evaluate.corpus import open_eval_index
from ecgregen.evaluate.qa import attribute_group, fit_measured_settings, split_by_patient
from ecgregen.evaluate.report import retrieve_top1
from ecgregen.preprocess import resample
from ecgregen.pretrain.provenance import label_folds, read_training
from ecgregen.records import MIMIC_SOURCE, load_mimic_ecg, load_ptbxl
from ecgregen.store import SearchFilter
from tests.conftest import DEMO_PTBXL, REPO, shared_ptbxl
from tests.scripted_llm import ScriptedLlm
from tests.test_cli import run

METRICS = {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "bertscore_f1", "scp_f1_micro", "scp_f1_macro"}
ECGQA_SAMPLE = REPO.parent / "shared" / "data" / "ecgqa" / "ptbxl" / "single_sample.json"


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One evaluation cache for the module: later runs reuse the index the first one built."""
    return tmp_path_factory.mktemp("eval")


def make_mimic_layout(root: Path, n: int) -> list[str]:
    """A tiny folder in MIMIC-IV-ECG's exact layout, from real PTB-XL signals resampled to MIMIC's 500 Hz."""
    sources = load_ptbxl(DEMO_PTBXL, [9])[:n]
    rows, measurements = [], []
    for i, record in enumerate(sources):
        subject, study = 10000000 + i, 40000000 + i
        rel = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ecg = record.load_ecg()
        signal = resample(ecg.signal.astype(np.float64), 100, 500).T
        wfdb.wrsamp(str(study), fs=500, units=["mV"] * 12,
                    sig_name=["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"],
                    p_signal=signal[:, [0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]], fmt=["16"] * 12,
                    write_dir=str((root / rel).parent))
        rows.append({"subject_id": subject, "study_id": study, "file_name": study,
                     "ecg_time": "2180-07-23 08:44:00", "path": rel})
        lines = {f"report_{j}": None for j in range(18)}
        lines.update(report_0="Sinus rhythm", report_1="Normal ECG" if i % 2 else "Borderline ECG")
        measurements.append({"subject_id": subject, "study_id": study, "cart_id": 6848296, **lines})
    pd.DataFrame(rows).to_csv(root / "record_list.csv", index=False)
    pd.DataFrame(measurements).to_csv(root / "machine_measurements.csv", index=False)
    return [str(r["study_id"]) for r in rows]


def test_mimic_reader_joins_report_lines(tmp_path: Path) -> None:
    ids = make_mimic_layout(tmp_path, 4)
    records = load_mimic_ecg(tmp_path)
    assert [r.ecg_id for r in records] == ids
    assert records[0].report == "Sinus rhythm Borderline ECG" and records[1].report == "Sinus rhythm Normal ECG"
    assert records[0].source == MIMIC_SOURCE and records[0].scp_codes == {} and records[0].patient_id == "10000000"
    ecg = records[0].load_ecg()
    assert ecg.sampling_rate_hz == 500 and ecg.signal.shape == (12, 5000)
    assert len(load_mimic_ecg(tmp_path, limit=2)) == 2


def test_patient_filter_keeps_the_query_out_of_its_own_neighbours(eval_dir: Path) -> None:
    """Index = all demo folds, queries included: unfiltered the query finds itself; the harness never does."""
    index = load_ptbxl(DEMO_PTBXL)
    queries = load_ptbxl(DEMO_PTBXL, [9])[:8]
    pipeline = open_eval_index(index, data_dir=eval_dir, progress=False)
    try:
        unfiltered = [pipeline.search(q.load_ecg(), 1, None, exact=True).hits[0] for q in queries]
        assert [h.ecg_id for h in unfiltered] == [q.ecg_id for q in queries]
        predictions = retrieve_top1(pipeline, queries, progress=False)
        for query, prediction in zip(queries, predictions):
            assert prediction.patient_id != query.patient_id and prediction.ecg_id != query.ecg_id
        own = pipeline.search(queries[0].load_ecg(), 5, SearchFilter(exclude_patient_id=queries[0].patient_id)).hits
        assert all(h.patient_id != queries[0].patient_id for h in own)
    finally:
        pipeline.store.close()


def test_evaluate_report_end_to_end(eval_dir: Path, tmp_path: Path) -> None:
    """`evaluate report` on 12 demo fold-9 records: every method scored on every metric in [0, 1]; the JSON's
    bookkeeping is right (n, the index size, the folds, the examples pair each query's own report with a neighbour
    from the index that is not the query's patient and whose report is the one served); both report modes serve
    the same diagnoses; calibration came from fold 8; every method scored in English (through the glossary) and as
    written; the learning curve's sizes; the markdown, the plots, and a second run's identical numbers."""
    args = ["evaluate", "report", "--ptbxl", str(DEMO_PTBXL), "--index-folds", "1-8", "--test-folds", "9",
            "--limit", "12", "--data-dir", str(eval_dir)]
    out = run(*args, "--json", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.md"),
              "--plot", str(tmp_path / "a.png"), "--index-sizes", "100,all", "--curve-plot", str(tmp_path / "c.png"))
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["n"] == 12 and result["index_folds"] == list(range(1, 9)) and result["test_folds"] == [9]
    queries = [q for q in sorted(load_ptbxl(DEMO_PTBXL, [9]), key=lambda r: int(r.ecg_id))[:12] if q.report.strip()]
    index = {r.ecg_id: r for r in load_ptbxl(DEMO_PTBXL, list(range(1, 9)))}
    assert len(queries) == 12 and result["n_index"] == len(index)
    assert [e["ecg_id"] for e in result["examples"]] == [q.ecg_id for q in queries[:5]]
    for example, query in zip(result["examples"], queries):
        assert example["truth"] == query.report
        if result["served_report_mode"] == "statements":  # written, not retrieved: no neighbour
            assert not example["retrieved_ecg_id"] and example["retrieved"].endswith("ECG.")
            continue
        neighbour = index[example["retrieved_ecg_id"]]
        assert example["retrieved"] == neighbour.report and neighbour.patient_id != query.patient_id
    assert result["encoder"] == load_encoder(None).encoder_id and "MiniLM" in result["bertscore_model"]
    names = {"retrieval-top1", "retrieval-consensus", "retrieval-statements", "retrieval-verified", "random", "common",
             "raw_knn"}
    assert result["language"] == "en" and set(result["methods_by_language"]) == {"en", "original"}
    assert result["methods"] == result["methods_by_language"]["en"]
    for methods in result["methods_by_language"].values():
        assert set(methods) == names
        for scores in methods.values():
            assert set(scores) >= METRICS
            assert all(0.0 <= scores[m] <= 1.0 for m in METRICS)
    # The demo corpus's German reports score differently once both sides are English; the codes do not change.
    english, written = (result["methods_by_language"][lang]["retrieval-top1"] for lang in ("en", "original"))
    assert english["bleu4"] != written["bleu4"] and english["scp_f1_micro"] == written["scp_f1_micro"]
    # Every report mode serves the same diagnoses; the calibration came from the highest index fold (8), not 9.
    modes = [result["methods"][f"retrieval-{m}"] for m in ("top1", "consensus", "statements")]
    assert modes[0]["scp_f1_micro"] == modes[1]["scp_f1_micro"] == modes[2]["scp_f1_micro"]
    curve = result["learning_curve"]["rows"]
    assert [r["index_records"] for r in curve] == [100, result["n_index"]]
    assert curve[-1]["f1_micro"] == result["methods"][f"retrieval-{curve[-1]['served_mode']}"]["scp_f1_micro"]
    assert "| index records |" in out.stdout and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert result["calibration_folds"] == [8] and result["calibration"]["records"] == 32
    assert result["served_report_mode"] == result["calibration"]["report_mode_chosen"]
    assert result["encoder_training"]["test_folds_that_chose_an_epoch"] == [9]  # said beside the numbers
    assert "| retrieval-top1 |" in out.stdout and "| retrieval-consensus |" in out.stdout
    assert "ECG-ReGen (paper)" in out.stdout and "calibrated on 32 records" in out.stdout
    assert (tmp_path / "a.md").read_text().startswith("Reports scored in English")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"

    run(*args, "--json", str(tmp_path / "b.json"))  # deterministic: same index (reused), same numbers
    assert json.loads((tmp_path / "b.json").read_text())["methods"] == result["methods"]


def test_evaluate_report_cross_domain_on_mimic_layout(eval_dir: Path, tmp_path: Path) -> None:
    """PTB-XL index, MIMIC-IV-ECG-layout queries: 6 queries scored against their own MIMIC reports (the examples
    carry them, with retrieved neighbours from the PTB-XL index), text metrics only (MIMIC has no SCP codes)."""
    ids = make_mimic_layout(tmp_path / "mimic", 6)
    run("evaluate", "report", "--ptbxl", str(DEMO_PTBXL), "--index-folds", "1-8", "--mimic", str(tmp_path / "mimic"),
        "--no-bertscore", "--calibration-folds", "none", "--data-dir", str(eval_dir), "--json", str(tmp_path / "m.json"))
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["n"] == 6 and "MIMIC" in result["test"]
    index = {r.ecg_id: r.report for r in load_ptbxl(DEMO_PTBXL, list(range(1, 9)))}
    assert result["n_index"] == len(index)
    assert [e["ecg_id"] for e in result["examples"]] == ids[:5]
    for i, example in enumerate(result["examples"]):
        assert example["truth"] == ("Sinus rhythm Normal ECG" if i % 2 else "Sinus rhythm Borderline ECG")
        assert example["retrieved"] == index[example["retrieved_ecg_id"]]
    for scores in result["methods"].values():  # MIMIC has no SCP codes: text metrics only
        assert "scp_f1_micro" not in scores and 0 <= scores["bleu1"] <= 1


@pytest.fixture(scope="module")
def shared_eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared PTB-XL folds 1-8 indexed once for the tests that evaluate on it."""
    return tmp_path_factory.mktemp("shared-eval")


def test_served_diagnoses_and_reports_beat_the_baselines_on_held_out_fold(shared_eval_dir: Path, tmp_path: Path) -> None:
    """Fold 9 of the shared PTB-XL (index 1-8: 1,773 records, 259 queries, calibration fitted on fold 8): the
    served diagnoses beat the constant most-common code set, a random record's codes and the raw-signal neighbour's
    codes on micro and macro F1 (micro by 0.2 over random's: README 0.659 vs 0.385), and the top-1 neighbour's own
    codes (the paper's); both retrieval modes' reports beat a random record's report on BLEU-1..4, METEOR and
    ROUGE-L (README: BLEU-1 0.205 vs 0.117)."""
    root = shared_ptbxl()
    run("evaluate", "report", "--ptbxl", str(root), "--index-folds", "1-8", "--test-folds", "9",
        "--calibration-folds", "8", "--no-bertscore", "--data-dir", str(shared_eval_dir),
        "--json", str(tmp_path / "r.json"))
    result = json.loads((tmp_path / "r.json").read_text())
    fold9 = [r for r in load_ptbxl(root, [9]) if r.report.strip()]
    assert result["n"] == len(fold9) == 259 and result["n_index"] == len(load_ptbxl(root, list(range(1, 9)))) == 1773
    assert result["calibration"]["records"] > 200 and result["test_folds"] == [9]
    served, methods = result["methods"]["retrieval-top1"], result["methods"]
    for baseline in ("common", "random", "raw_knn"):
        for f1 in ("scp_f1_micro", "scp_f1_macro"):
            assert served[f1] > methods[baseline][f1], (baseline, f1, served[f1])
    assert served["scp_f1_micro"] > methods["random"]["scp_f1_micro"] + 0.2, (served, methods["random"])
    assert served["scp_f1_micro"] > result["top1_neighbour_codes"]["micro"]
    for mode in ("retrieval-top1", "retrieval-consensus", "retrieval-verified"):
        for metric in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l"):
            assert methods[mode][metric] > methods["random"][metric], (mode, metric, methods[mode], methods["random"])


def test_qa_generate_then_evaluate_on_generated_questions(eval_dir: Path, tmp_path: Path) -> None:
    """Questions generated about the demo fold 9, answered by the labels answerer: every generated question is
    counted once (per type, per template, per answer source, for ours and the majority baseline alike), scores
    lie in [0, 1], and fold 9's split equals the whole (the only fold asked about); then by an LLM endpoint whose
    prompts carry the diagnoses, its out-of-options replies counted as label fallbacks."""
    out = tmp_path / "generated.json"
    run("qa-generate", "--ptbxl", str(DEMO_PTBXL), "--folds", "9", "--out", str(out))
    questions = json.loads(out.read_text())
    assert questions and all(q["generated"] and q["ecg_id"][0] for q in questions)
    run("evaluate", "qa", "--ptbxl", str(DEMO_PTBXL), "--questions", str(out), "--index-folds", "1-8",
        "--data-dir", str(eval_dir), "--json", str(tmp_path / "qa.json"))
    result = json.loads((tmp_path / "qa.json").read_text())
    assert result["generated"] is True and result["answerer"] == "labels"
    assert set(result["by_type"]) == {"single-verify", "single-choose", "single-query"}
    assert result["n"] == len(questions)
    for part in ("by_type", "majority"):
        for scores in result[part].values():
            assert scores["n"] > 0 and 0.0 <= scores["exact_match"] <= 1.0
    types = Counter(q["question_type"] for q in questions)
    assert {t: s["n"] for t, s in result["by_type"].items()} == types
    assert {t: s["n"] for t, s in result["majority"].items()} == types
    assert sum(s["n"] for s in result["by_template"].values()) == sum(result["answered_from"].values()) == len(questions)
    assert result["by_fold"] == {"9": {"by_type": result["by_type"], "majority": result["majority"]}}
    # Fold 9's questions: calibrated on demo fold 8 (the shipped encoder learnt the labels of folds 1-7).
    assert result["folds"]["diagnosis_calibration"]["by_question_fold"] == {"9": 8}
    assert result["answerer_settings_by_fold"]["9"]["calibration"]["records"] == len(load_ptbxl(DEMO_PTBXL, [8]))

    # The LLM answerer against an endpoint (scripted: it answers "yes" to everything), on the same cached index.
    with ScriptedLlm() as llm:
        run("evaluate", "qa", "--ptbxl", str(DEMO_PTBXL), "--questions", str(out), "--index-folds", "1-8",
            "--data-dir", str(eval_dir), "--json", str(tmp_path / "llm.json"), "--answerer", "llm",
            "--llm-base-url", llm.base_url, "--llm-model", "scripted")
        prompts = [r["messages"][1]["content"] for r in llm.requests]
    result = json.loads((tmp_path / "llm.json").read_text())
    n = len(questions)
    assert result["n"] == n and len(prompts) == n and result["llm"]["model"] == "scripted"
    # "yes" is an option of verify questions only; the others fall back to the label answer, and are counted.
    verify = result["by_type"]["single-verify"]["n"]
    assert result["answered_from"] == {"llm": verify, "fallback:out_of_options": n - verify}
    assert all(p.startswith("Question Specific Prompt: ") and "\nOptions: " in p for p in prompts)
    assert all("Predicted diagnoses" in p for p in prompts)


def test_evaluate_qa_on_real_ecgqa_questions(shared_eval_dir: Path, tmp_path: Path) -> None:
    """The real ECG-QA questions about fold 9, answered from diagnoses calibrated on fold 8 - neither the question's
    fold nor one whose labels trained the encoder (folds 1-7, read from its checkpoint) - with the band edges fitted
    on fold 8 split by patient, so they are the shipped settings' band edges; for measured attributes, from the ECG's
    measurements; scored per attribute type against the majority of the other folds, with the folds recorded; the
    serving settings fitted on fold 8 alone, for the encoder that ran (the LLM answerer is checked on generated
    questions, above)."""
    root = shared_ptbxl()
    if not ECGQA_SAMPLE.exists():
        pytest.skip(f"ECG-QA questions not found at {ECGQA_SAMPLE}")
    common = ["evaluate", "qa", "--ptbxl", str(root), "--questions", str(ECGQA_SAMPLE), "--index-folds", "1-8",
              "--test-folds", "9", "--data-dir", str(shared_eval_dir)]
    out = run(*common, "--json", str(tmp_path / "qa.json"), "--settings-out", str(tmp_path / "settings.json"))
    result = json.loads((tmp_path / "qa.json").read_text())
    assert result["generated"] is False and result["n"] == 22  # the real questions about fold 9 with a signal here
    assert result["folds"]["questions"] == [9] and result["folds"]["index"] == list(range(1, 9))
    # The settings per question fold: fold 9's questions were diagnosed with a calibration fitted on fold 8's 202
    # ECGs and answered with band edges fitted on fold 8's two halves - no ECG of fold 9 or of folds 1-7 in either.
    labelled = label_folds(read_training(SHIPPED_CHECKPOINT))
    assert labelled == list(range(1, 8)) and result["folds"]["encoder_label_folds"] == labelled
    assert result["folds"]["encoder_training"] == read_training(SHIPPED_CHECKPOINT)
    fold8 = load_ptbxl(root, [8])
    assert result["folds"]["diagnosis_calibration"]["by_question_fold"] == {"9": 8}
    assert result["folds"]["diagnosis_calibration"]["fitted"] == [
        {**result["folds"]["diagnosis_calibration"]["fitted"][0], "fold": 8, "records": len(fold8)}]
    per_fold = result["answerer_settings_by_fold"]["9"]
    assert per_fold["calibration_fold"] == 8 and per_fold["calibration"]["records"] == len(fold8) == 202
    assert per_fold["band_edges"]["fold"] == 8 and sum(per_fold["band_edges"]["halves"]) == len(fold8)
    assert [c["fold"] for c in per_fold["band_edges"]["calibrations"]] == [8, 8]
    assert [c["records"] for c in per_fold["band_edges"]["calibrations"]] == per_fold["band_edges"]["halves"]
    edges = ("verify_yes", "verify_not_sure", "verify_binary", "verify_group", "group_thresholds", "choose", "query")
    serving = result["settings_for_serving"]["settings"]
    assert {e: per_fold["settings"][e] for e in edges} == {e: serving[e] for e in edges}
    # ... and those are the shipped band edges: the shipped file is what this command fits for the shipped encoder.
    shipped = json.loads(SHIPPED_SETTINGS.read_text())
    assert {e: serving[e] for e in (*edges, "encoder_id")} == {e: shipped[e] for e in (*edges, "encoder_id")}
    assert {a["calibration_fold"] for a in result["answers"]} == {8}
    assert result["folds"]["fitted_or_chosen_on_question_folds"] == {
        "9": ["chose the paper+contrastive stage's epoch"]}  # the self-supervised stage's epoch: said, not hidden
    assert "S-Verify" in out.stdout and "ECG-ReGen + GPT-4o mini (paper)" in out.stdout
    # Each question's row: on fold 9, and the per-type scores are the exact-match rate of those rows.
    answers = result["answers"]
    assert len(answers) == 22 and {a["fold"] for a in answers} == {9}
    type_of = {(q["question_id"], q["ecg_id"][0]): q["question_type"] for q in json.loads(ECGQA_SAMPLE.read_text())}
    rows_of = Counter(type_of[a["question_id"], a["ecg_id"]] for a in answers)
    right_of = Counter(type_of[a["question_id"], a["ecg_id"]] for a in answers if set(a["predicted"]) == set(a["answer"]))
    assert result["by_type"] == {t: {"n": n, "exact_match": round(right_of[t] / n, 4)} for t, n in sorted(rows_of.items())}

    # Per attribute type: the fold-9 rows, each against the majority of the questions about folds 1-8.
    group_of = {(q["question_id"], q["ecg_id"][0]): attribute_group(q) for q in json.loads(ECGQA_SAMPLE.read_text())}
    groups = Counter(group_of[a["question_id"], a["ecg_id"]] for a in answers)
    by_attribute = result["by_attribute_type"]
    assert {g: part["n"] for g, part in by_attribute.items()} == groups and {"heart_axis", "other"} <= groups.keys()
    for part in by_attribute.values():
        assert part["folds"] == [9] and part["majority_folds"]["9"] and 9 not in part["majority_folds"]["9"]
        assert 0 <= part["majority"] <= 1 and 0 <= part["template_majority"] <= 1
    measured = [a for a in answers if group_of[a["question_id"], a["ecg_id"]] != "other"]
    assert measured and all(a["how"] in ("measurements", "unmeasured:metadata", "unmeasured:scp-vote")
                            for a in measured)
    assert "measurements" in result["answered_from"] and "| attribute type |" in out.stdout
    assert result["folds"]["measurement_settings"]["by_fold"]["9"]["fit_folds"] == list(range(1, 9))
    # The serving settings: fold 8 only, for this encoder, as written to --settings-out.
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings == result["settings_for_serving"]["settings"] and settings["encoder_id"] == result["encoder"]
    assert result["settings_for_serving"]["fold"] == 8 and sum(result["settings_for_serving"]["halves"]) == len(
        load_ptbxl(root, [8]))



def test_evaluate_report_refuses_a_label_training_calibration_fold_and_names_the_encoders_folds(
        tmp_path: Path) -> None:
    """`evaluate report` reads the checkpoint's training record: a calibration on a fold whose labels trained the
    encoder is refused before anything is indexed; the shipped encoder's record is described, and the test fold that
    chose its self-supervised epoch (9) is named beside the numbers."""
    from ecgregen.evaluate.report import markdown_table, training_folds

    refused = run("evaluate", "report", "--ptbxl", str(DEMO_PTBXL), "--index-folds", "1-8", "--test-folds", "9",
                  "--calibration-folds", "7", "--data-dir", str(tmp_path / "eval"), check=False)
    assert refused.returncode != 0 and "calibration fold(s) 7" in refused.stderr and "labels" in refused.stderr
    assert not (tmp_path / "eval").exists()
    folds = training_folds(None, load_ptbxl(DEMO_PTBXL, [8]), load_ptbxl(DEMO_PTBXL, [9]))
    assert folds["label_folds"] == list(range(1, 8)) and folds["selection_folds"] == [8, 9]
    assert folds["test_folds_trained_on"] == [] and folds["test_folds_that_chose_an_epoch"] == [9]
    table = markdown_table({"n": 1, "n_index": 1, "encoder": "e", "bertscore_model": None, "wall_time_s": 0,
                            "methods": {}, "encoder_training": folds})
    assert "Test fold(s) 9 chose an epoch of the encoder" in table and "trained on folds 1-7" in table


def test_evaluate_qa_refuses_calibrating_on_label_training_folds_or_for_an_unknown_encoder(tmp_path: Path) -> None:
    """Calibration folds the shipped encoder learnt the labels of are refused, and so is an encoder whose checkpoint
    does not say which folds trained it, unless they are named; the plan per question fold never takes the
    question's fold (before any index is built)."""
    from ecgregen.evaluate.qa import FoldError, calibration_plan
    from ecgregen.pretrain.train import TrainSettings, build_model, save_serving

    questions = tmp_path / "q.json"
    run("qa-generate", "--ptbxl", str(DEMO_PTBXL), "--folds", "9", "--out", str(questions))
    common = ["evaluate", "qa", "--ptbxl", str(DEMO_PTBXL), "--questions", str(questions), "--index-folds", "1-8",
              "--data-dir", str(tmp_path / "eval")]
    refused = run(*common, "--calibration-folds", "7,8", check=False)
    assert refused.returncode != 0 and "calibration fold(s) 7" in refused.stderr and "folds 1-7" in refused.stderr
    model, _ = build_model(TrainSettings(recipe="mem-only"))
    save_serving(model, TrainSettings(recipe="mem-only"), tmp_path / "old.pt")  # no training record
    unknown = run(*common, "--checkpoint", str(tmp_path / "old.pt"), check=False)
    assert unknown.returncode != 0 and "records no training folds" in unknown.stderr
    assert "--encoder-folds" in unknown.stderr
    assert not (tmp_path / "eval").exists()  # refused before anything was indexed
    # The plan: the highest index fold that is allowed, else the highest other fold; never the question's fold.
    plan = calibration_plan([1, 7, 8, 9], list(range(1, 8)), index_folds=range(1, 9), available=range(1, 10))
    assert plan == {1: 8, 7: 8, 8: 9, 9: 8}
    assert calibration_plan([8, 9], [], index_folds=range(1, 9), available=range(1, 10), candidates=[9, 8]) == {
        8: 9, 9: 8}
    with pytest.raises(FoldError, match="no fold to calibrate on for the questions about fold 8"):
        calibration_plan([8], list(range(1, 8)), index_folds=range(1, 9), available=range(1, 9))


def test_split_by_patient_keeps_each_patient_in_one_half() -> None:
    records = load_ptbxl(DEMO_PTBXL)
    first, second = split_by_patient(records)
    assert len(first) + len(second) == len(records) and abs(len(first) - len(second)) <= len(records) // 5
    assert not {r.patient_id for r in first} & {r.patient_id for r in second}


def test_measurement_settings_are_fitted_on_the_questions_they_decide() -> None:
    """Whole-ECG noise questions whose "yes" ECGs have noise in 3+ leads and whose "no" ECGs in 1: at least 2 (the
    smallest that is right); extra-systole questions answered yes only with 2+ premature beats: at least 2."""
    from ecgregen.ecg import STANDARD_LEADS
    from ecgregen.measure import BeatOrigin, Measurements, PrematureBeat, QualityFlag

    def ecg(noisy: int, premature: int) -> Measurements:
        quality = {lead: (QualityFlag.STATIC_NOISE,) if i < noisy else () for i, lead in enumerate(STANDARD_LEADS)}
        beats = tuple(PrematureBeat(float(i), BeatOrigin.VENTRICULAR, 500.0) for i in range(premature))
        return Measurements(rr_interval_ms=800.0, beat_count=12, lead_quality=quality, premature_beats=beats)

    noise = "Does this ECG show static noise?"
    extra = "Does this ECG show any kind of extra systoles?"
    cases = [({"question": noise, "answer": ["yes"]}, ["no", "yes"], ecg(3, 0)),
             ({"question": noise, "answer": ["no"]}, ["no", "yes"], ecg(1, 0)),
             ({"question": extra, "answer": ["yes"]}, ["no", "yes"], ecg(0, 2)),
             ({"question": extra, "answer": ["no"]}, ["no", "yes"], ecg(0, 1))]
    found, report = fit_measured_settings(cases)
    assert found == {"noise_min_leads": 2, "premature_min_beats": 2}
    assert report["noise_min_leads"] == {"n": 2, "exact_match": 1.0}
    assert fit_measured_settings(cases[:2])[0] == {"noise_min_leads": 2}
