"""`ecgregen evaluate consistency` (issue 32) on real demo records, the real pipeline and store, and a real StreamECG
call: the default modes serve nothing the measurements contradict, and a mode that states the opposite of what was
measured is caught and trips the gate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ecgregen.evaluate.consistency import (
    OPTIONS,
    QUESTIONS,
    clinical_codes,
    contradicted_answer,
    contradicted_diagnoses,
    evaluate_consistency,
    gate,
)
from ecgregen.measure.findings import Finding
from ecgregen.measure.types import BeatOrigin, Measurements, PrematureBeat, QualityFlag, Rhythm
from ecgregen.messages import measurements_to_dict
from ecgregen.pipeline import Retrieval
from ecgregen.records import load_ptbxl
from ecgregen.wire import measurements_from_proto, measurements_to_proto
from tests.conftest import DEMO_PTBXL
from tests.test_cli import run

QUERIES = 6  # demo fold-9 records judged; the first of them is also streamed
SINUS_72 = Measurements(heart_rate_bpm=72.0, rr_interval_ms=833.0, rr_min_ms=820.0, rr_max_ms=850.0,
                        pr_interval_ms=160.0, qrs_duration_ms=90.0, qtc_bazett_ms=420.0, qrs_axis_deg=40.0,
                        beat_count=12, rr_irregular=False, p_waves_present=True, rhythm=Rhythm.SINUS)


def opposite_of_measured(retrieval: Retrieval) -> str:
    """A report stating the opposite of the measured rate and axis: what a wrong neighbour's report looks like."""
    m = retrieval.measurements
    if m is None:
        return ""
    rhythm = "sinus tachycardia" if m.heart_rate_bpm is not None and m.heart_rate_bpm < 90 else "sinus bradycardia"
    axis = "left axis deviation" if m.qrs_axis_deg is None or m.qrs_axis_deg > -20 else "right axis deviation"
    return f"{rhythm}. {axis}."


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One evaluation cache for the module: the CLI run reuses the index the first evaluation built."""
    return tmp_path_factory.mktemp("consistency")


@pytest.fixture(scope="module")
def result(eval_dir: Path) -> dict:
    """The evaluation of the first demo fold-9 records (the first also streamed), with the opposite mode added."""
    queries = sorted(load_ptbxl(DEMO_PTBXL, [9]), key=lambda r: int(r.ecg_id))[:QUERIES]
    return evaluate_consistency(load_ptbxl(DEMO_PTBXL, range(1, 9)), queries,
                                calibration=load_ptbxl(DEMO_PTBXL, [8]), stream_records=1,
                                extra_modes={"opposite": opposite_of_measured}, data_dir=eval_dir, progress=False)


def test_verified_and_statements_reports_are_never_contradicted_on_demo_fold_9(result: dict) -> None:
    ptbxl, stream = result["sources"]["ptbxl"], result["sources"]["stream"]
    assert ptbxl["n"] == QUERIES and stream["n"] == 1
    for source in (ptbxl, stream):
        for mode in ("verified", "statements"):
            assert source["modes"][mode]["contradicted"] == 0, source["modes"][mode]["examples"]
    assert gate(result, 0.0) == []
    assert "opposite" not in stream["modes"]  # no server serves an extra mode


def test_a_mode_stating_the_opposite_of_the_measured_rate_and_axis_is_caught_and_trips_the_gate(result: dict) -> None:
    opposite = result["sources"]["ptbxl"]["modes"]["opposite"]
    assert opposite["n"] == QUERIES and opposite["contradicted"] > 0 and opposite["share"] > 0
    assert 0 < len(opposite["examples"]) <= 3
    for example in opposite["examples"]:
        assert example["record"].startswith("ptbxl ") and "measured" in example["reason"]
        assert example["statement"] in ("sinus tachycardia", "sinus bradycardia", "left axis deviation",
                                        "right axis deviation")
    failures = gate(result, 0.0, modes=("opposite",))
    assert len(failures) == 1 and failures[0].startswith("PTB-XL test folds, opposite:")


def test_served_diagnoses_and_answers_agree_with_the_measurements_while_bleu_and_f1_are_scored(result: dict) -> None:
    """The served diagnoses are reconciled with the measurements; the answers to measured questions follow them;
    every mode keeps its BLEU-4 and the served micro-F1 beside its count."""
    ptbxl = result["sources"]["ptbxl"]
    assert ptbxl["diagnoses"]["served"]["n"] > 0 and ptbxl["diagnoses"]["served"]["contradicted"] == 0
    assert ptbxl["answers"]["n"] == QUERIES * len(QUESTIONS) and ptbxl["answers"]["contradicted"] == 0
    assert result["sources"]["stream"]["answers"]["n"] == len(QUESTIONS)
    f1 = {row["f1_micro"] for row in ptbxl["modes"].values()}
    assert len(f1) == 1 and 0.0 < f1.pop() <= 1.0  # one set of diagnoses whatever the report mode
    assert all(0.0 <= row["bleu4"] <= 1.0 for row in ptbxl["modes"].values())
    rhythm = ptbxl["rhythm_f1"]
    assert [row["code"] for row in rhythm["clinical"]["codes"]] == ["SR", "SBRAD", "STACH", "AFIB", "SARRH"]
    assert result["served_rhythm_reading"] == "clinical" and result["calibration"]["folds"] == [8]
    assert result["encoder_training"]["test_folds_that_chose_an_epoch"] == [9]


def test_a_present_code_the_measurements_refute_and_two_rhythms_at_once_are_contradicted() -> None:
    wrong = dict(contradicted_diagnoses(frozenset({"SR", "AFIB", "CLBBB", "NORM"}), SINUS_72))
    assert set(wrong) == {"AFIB", "CLBBB"}  # SR is the measured rhythm; NORM holds: nothing out of range
    assert "QRS 90 ms" in wrong["CLBBB"]
    varying = replace(SINUS_72, rr_min_ms=700.0, rr_max_ms=1000.0)
    assert contradicted_diagnoses(frozenset({"SR", "SARRH"}), varying) == []  # SARRH qualifies the sinus rhythm
    assert dict(contradicted_diagnoses(frozenset({"SR", "SARRH"}), SINUS_72))["SARRH"].startswith("measured RR")
    assert dict(contradicted_diagnoses(frozenset({"SR", "STACH"}), Measurements()))["STACH"].startswith("one rhythm")
    assert contradicted_diagnoses(frozenset({"AFIB"}), None) == []


def test_an_answer_is_contradicted_by_yes_to_a_refuted_finding_or_no_to_the_measured_rhythm() -> None:
    assert set(QUESTIONS.values()) >= {Finding.SINUS_RHYTHM, Finding.ATRIAL_FIBRILLATION} and "not sure" in OPTIONS
    assert contradicted_answer(Finding.ATRIAL_FIBRILLATION, ["yes"], SINUS_72).startswith("answered yes")
    assert contradicted_answer(Finding.SINUS_RHYTHM, ["no"], SINUS_72).startswith("answered no")
    assert contradicted_answer(Finding.SINUS_BRADYCARDIA, ["no"], SINUS_72) is None
    assert contradicted_answer(Finding.AV_BLOCK_1, ["not sure"], SINUS_72) is None


def test_clinical_truth_rereads_sinus_labels_by_the_measured_rate() -> None:
    slow = Measurements(heart_rate_bpm=52.0)
    assert clinical_codes(frozenset({"SR", "NORM"}), slow) == {"SBRAD", "NORM"}
    assert clinical_codes(frozenset({"SARRH"}), Measurements(heart_rate_bpm=110.0)) == {"SARRH", "STACH"}
    assert clinical_codes(frozenset({"AFIB"}), slow) == {"AFIB"}
    assert clinical_codes(frozenset({"SBRAD"}), Measurements()) == {"SBRAD"}


def test_the_measurements_a_stream_client_receives_read_back_as_sent() -> None:
    sent = replace(SINUS_72, premature_beats=(PrematureBeat(4.2, BeatOrigin.VENTRICULAR, 510.0),),
                   lead_quality={"I": (), "II": (QualityFlag.BASELINE_DRIFT,)},
                   missing={"p_duration_ms": "P wave edges not found"}, not_recorded=("V1",))
    assert measurements_from_proto(measurements_to_proto(sent)) == sent


def test_the_client_says_which_leads_were_not_recorded_beside_the_quality_of_the_recorded_ones() -> None:
    """A 2-lead monitor's absent leads are neither flagged nor hidden: the printed quality line names them."""
    from ecgregen.client import format_measurements

    recorded = ("I", "II", "III", "aVR", "aVL", "aVF")
    m = Measurements(lead_quality={lead: () for lead in recorded}, not_recorded=("V1", "V2", "V3", "V4", "V5", "V6"))
    as_dict = measurements_to_dict(measurements_to_proto(m))
    assert as_dict["not_recorded"] == ["V1", "V2", "V3", "V4", "V5", "V6"]
    assert format_measurements(as_dict).rstrip().splitlines()[-1] == (
        "Quality: all recorded leads ok; not recorded: V1, V2, V3, V4, V5, V6")


def test_cli_consistency_prints_the_table_writes_json_and_gates(eval_dir: Path, tmp_path: Path) -> None:
    args = ["evaluate", "consistency", "--ptbxl", str(DEMO_PTBXL), "--limit", "2", "--stream-records", "0",
            "--formats", "none", "--data-dir", str(eval_dir)]
    out = run(*args, "--json", str(tmp_path / "c.json"), "--max-contradicted", "0")
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["n"] == 2 and set(saved["sources"]) == {"ptbxl"} and saved["test"].endswith("folds 9")
    assert "| PTB-XL test folds | verified | 0/2 (0.0 %) |" in out.stdout
    assert "F1 by the clinical definitions" in out.stdout and "calibrated on 32 records of fold(s) 8" in out.stdout
    refused = run(*args, "--test-folds", "10", check=False)
    assert refused.returncode != 0 and "nothing to evaluate" in refused.stderr
