"""Predicted diagnoses: votes, calibration on real demo records, storage with the corpus, refusal, staleness,
report selection, `ecgregen calibrate`, the measured statements (evidence from real measured ECGs, old
calibrations without them) and their per-code F1 in the evaluation."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecgregen.calibrate import calibrate_records, save, validation_cases
from ecgregen.diagnoses import (
    BAND_NAMES,
    MEASURED_PRIOR_THRESHOLD,
    MEASURED_STATEMENTS,
    MEASUREMENTS_UNUSED,
    RHYTHM_CODES,
    BandMap,
    Calibration,
    CalibrationError,
    Diagnoser,
    MeasuredMap,
    fit_calibration,
    load_statements,
    neighbour_votes,
    present_codes,
    reconcile,
    select_report,
)
from ecgregen.evaluate.corpus import open_eval_index
from ecgregen.evaluate.report import diagnoses_by_code, diagnoses_table
from ecgregen.measure import Measurements, Rhythm, measure
from ecgregen.pipeline import RetrievalPipeline, open_pipeline
from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.settings import DEMO_PTBXL
from ecgregen.store import Hit, open_store
from tests.conftest import start_server
from tests.test_cli import run


def hit(rank: int, score: float, codes: list[str]) -> Hit:
    return Hit(f"p{rank}", score, str(rank), f"patient{rank}", f"report {rank}", {c: 100.0 for c in codes}, "t", "")


@pytest.fixture(scope="module")
def demo_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrievalPipeline]:
    """The demo corpus's folds 1-8 in an embedded store, calibrated on its fold 8 (own patient left out)."""
    pipeline = open_eval_index(load_ptbxl(DEMO_PTBXL, range(1, 9)), data_dir=tmp_path_factory.mktemp("diag"),
                               progress=False)
    save(pipeline, calibrate_records(pipeline, load_ptbxl(DEMO_PTBXL, [8]), description="demo fold 8", progress=False))
    yield pipeline
    pipeline.store.close()


def demo_record(ecg_id: str) -> EcgRecord:
    return next(r for r in load_ptbxl(DEMO_PTBXL) if r.ecg_id == ecg_id)


@pytest.fixture(scope="module")
def measured_af_and_sinus() -> tuple[Measurements, Measurements]:
    """Two real demo ECGs as the stage measures them: 11045 (labelled AFIB) in atrial fibrillation, 612 (SBRAD)
    in sinus bradycardia."""
    af, sinus = (measure(demo_record(i).load_ecg()) for i in ("11045", "612"))
    assert af.rhythm is Rhythm.ATRIAL_FIBRILLATION and af.p_waves_present is False and af.rr_irregular
    assert sinus.rhythm is Rhythm.SINUS_BRADYCARDIA and sinus.heart_rate_bpm < 50
    return af, sinus


def test_votes_weight_closer_neighbours_more() -> None:
    hits = [hit(0, 0.95, ["NORM", "SR"]), hit(1, 0.90, ["AFIB"]), hit(2, 0.90, ["AFIB"])]
    flat = neighbour_votes(hits, 3, temperature=100.0)
    assert flat["AFIB"] == pytest.approx(2 / 3, abs=1e-3) and flat["NORM"] == pytest.approx(1 / 3, abs=1e-3)
    sharp = neighbour_votes(hits, 3, temperature=0.02)  # exp(-0.05 / 0.02) = 0.082 per farther neighbour
    assert sharp["NORM"] == pytest.approx(1 / (1 + 2 * 0.0821), abs=1e-3) and sharp["NORM"] > sharp["AFIB"]
    assert neighbour_votes(hits, 1, 0.05) == {"NORM": 1.0, "SR": 1.0}


def test_uncalibrated_diagnoses_are_votes_with_threshold_one_half() -> None:
    hits = [hit(i, 0.9, ["SR", "NORM"] if i < 6 else ["SR", "AFIB"]) for i in range(10)]
    diagnoses = Diagnoser(load_statements()).diagnose(hits)
    assert [(d.code, d.probability, d.present) for d in diagnoses] == [
        ("SR", 1.0, True), ("NORM", 0.6, True), ("AFIB", 0.4, False)]
    assert {d.threshold for d in diagnoses} == {0.5}
    afib = diagnoses[2]
    assert afib.description == "atrial fibrillation" and afib.superclass == ""
    assert diagnoses[1].superclass == "NORM"


def test_calibration_fitted_on_real_demo_ecgs_serves_probabilities_for_the_neighbours_codes(
    demo_pipeline: RetrievalPipeline,
) -> None:
    calibration = demo_pipeline.diagnoser.calibration
    assert calibration is not None and calibration.fitted_on["cases"] == 32 and len(calibration.bands) == len(BAND_NAMES)
    assert set(calibration.scores) >= {"f1_micro", "f1_macro", "brier_vote", "brier_calibrated", "bleu4_by_mode"}
    for record in load_ptbxl(DEMO_PTBXL, [9])[:10]:
        retrieval = demo_pipeline.search(record.load_ecg(), 3)
        assert len(retrieval.hits) == 3 and len(retrieval.pool) == calibration.k
        assert retrieval.diagnoses and all(0.0 <= d.probability <= 1.0 for d in retrieval.diagnoses)
        assert {d.code for d in retrieval.diagnoses} <= {c for h in retrieval.pool for c in h.scp_codes} | set(
            MEASURED_STATEMENTS) | set(RHYTHM_CODES.values())  # the measured rhythm is listed where none voted


def test_calibrated_probabilities_and_thresholds_on_a_hand_made_calibration(
    measured_af_and_sinus: tuple[Measurements, Measurements],
) -> None:
    """Known answers, worked out by hand: four equally close neighbours (votes NORM 3/4, SR 4/4, AFIB 1/4, LVH
    1/4), each code mapped by its prevalence band's Platt map and judged by that band's threshold, NORM by its own
    (0.75, above its band's 0.5: so NORM is absent at p 0.731); a measured AF puts AFIB on its measured map."""
    bands = [BandMap(2.0, -3.0, 0.07), BandMap(3.0, -2.0, 0.3), BandMap(1.0, 0.0, 0.5), BandMap(4.0, -2.0, 0.5)]
    calibration = Calibration(encoder_id="x", k=4, temperature=0.1, corpus_points=100,
                              prevalence={"NORM": 0.4, "SR": 0.5, "AFIB": 0.01}, bands=bands,
                              code_thresholds={"NORM": 0.75})
    hits = [hit(0, 0.9, ["NORM", "SR"]), hit(1, 0.9, ["NORM", "SR"]), hit(2, 0.9, ["NORM", "SR", "AFIB"]),
            hit(3, 0.9, ["SR", "LVH"]), hit(4, 0.9, ["AFIB"])]  # the fifth is beyond k
    diagnoses = Diagnoser(load_statements(), calibration).diagnose(hits)
    assert [(d.code, d.probability, d.present, d.threshold) for d in diagnoses] == [
        ("SR", 0.8808, True, 0.5),      # sigmoid(4 x 1 - 2), band >= 10 %
        ("NORM", 0.7311, False, 0.75),  # sigmoid(4 x 0.75 - 2), its own threshold
        ("AFIB", 0.2227, False, 0.3),   # sigmoid(3 x 0.25 - 2), band 0.5-2 %
        ("LVH", 0.0759, True, 0.07),    # sigmoid(2 x 0.25 - 3): not in the corpus at calibration time, so rare
    ]
    # AFIB with a measured map and a measured AF: sigmoid(2 x 0.25 + 1 x evidence - 3), judged at 0.4.
    calibration.measured = {"AFIB": MeasuredMap(vote_slope=2.0, evidence_weight=1.0, intercept=-3.0, threshold=0.4)}
    af = measured_af_and_sinus[0]
    evidence = MEASURED_STATEMENTS["AFIB"].evidence[-1]  # the AF bin's log-likelihood ratio (5.22)
    with_af = {d.code: d for d in Diagnoser(load_statements(), calibration).diagnose(hits, af)}
    assert (with_af["AFIB"].probability, with_af["AFIB"].present, with_af["AFIB"].threshold) == (
        round(1 / (1 + math.exp(-(0.5 + evidence - 3.0))), 4), True, 0.4)
    # NORM's probability and decision are the votes' (it has no measured map); the measured AF, which speaks
    # against a normal ECG, is named as deciding it.
    assert dataclasses.replace(with_af["NORM"], decided_by="") == next(d for d in diagnoses if d.code == "NORM")
    assert not with_af["NORM"].present and "irregular without P waves" in with_af["NORM"].decided_by


def test_consensus_picks_the_neighbour_agreeing_best_with_the_diagnoses() -> None:
    hits = [hit(0, 0.99, ["NORM"]), hit(1, 0.98, ["AFIB", "LVH"]), hit(2, 0.97, ["AFIB", "LVH", "PVC"]),
            hit(3, 0.96, ["AFIB", "LVH"])]
    diagnoses = Diagnoser(load_statements()).diagnose(hits)  # AFIB and LVH 3/4 present, NORM and PVC not
    assert present_codes(diagnoses) == {"AFIB", "LVH"}
    assert select_report(hits, diagnoses, "top1", 4) is hits[0]
    assert select_report(hits, diagnoses, "consensus", 4) is hits[1]  # ties with hits[3]: the closer wins
    assert select_report(hits, diagnoses, "consensus", 1) is hits[0]  # only the pool is considered
    for mode in ("longest", "statements"):  # statements is written, not chosen among the neighbours
        with pytest.raises(ValueError, match="does not choose a neighbour's report"):
            select_report(hits, diagnoses, mode, 4)


def test_calibration_is_kept_with_the_corpus_and_refused_for_another_encoder(
    demo_pipeline: RetrievalPipeline, tmp_path: Path
) -> None:
    stored = demo_pipeline.store.calibration()
    assert stored is not None and Calibration.from_json(stored) == demo_pipeline.diagnoser.calibration
    foreign = dataclasses.replace(demo_pipeline.diagnoser.calibration, encoder_id="small-other-000000000000")
    with pytest.raises(CalibrationError, match="fitted for encoder 'small-other-000000000000'"):
        demo_pipeline.use_calibration(foreign)

    # A store holding another encoder's calibration is refused when it is opened, with the way out named.
    data_dir = tmp_path / "var"
    pipeline = open_pipeline(data_dir, None, None)
    pipeline.store.save_calibration(foreign.to_json())
    pipeline.store.close()
    with pytest.raises(CalibrationError, match="run `ecgregen calibrate` for this encoder"):
        open_pipeline(data_dir, None, None)
    # Re-creating the collection drops its calibration with its points.
    with open_store(data_dir) as store:
        store.ensure_collection(256, "x", recreate=True)
        assert store.calibration() is None


def test_calibration_round_trips_through_qdrant_client_metadata(demo_pipeline: RetrievalPipeline, tmp_path: Path) -> None:
    """qdrant-client keeps it in the collection's metadata (local mode here; the same calls on a server)."""
    url = f"local:{tmp_path / 'qdrant'}"
    pipeline = open_pipeline(tmp_path, url, None)
    pipeline.store.save_calibration(demo_pipeline.diagnoser.calibration.to_json())
    pipeline.store.close()
    reopened = open_pipeline(tmp_path, url, None)
    try:
        assert reopened.diagnoser.calibration == demo_pipeline.diagnoser.calibration
        assert reopened.store.stats().encoder_id == reopened.encoder.encoder_id  # metadata merged, not replaced
    finally:
        reopened.store.close()


def test_calibration_is_flagged_stale_when_the_corpus_grows_a_lot(demo_pipeline: RetrievalPipeline) -> None:
    calibration = demo_pipeline.diagnoser.calibration
    points = demo_pipeline.store.count()
    assert calibration.stale_reason(int(points * 1.2)) == ""
    small = dataclasses.replace(calibration, corpus_points=points // 2)
    try:
        demo_pipeline.use_calibration(small)
        assert "stale" in demo_pipeline.calibration_note and str(points) in demo_pipeline.calibration_note
        warnings = demo_pipeline.search(load_ptbxl(DEMO_PTBXL, [9])[0].load_ecg(), 3).warnings
        assert any("diagnosis calibration is stale" in w for w in warnings)
    finally:
        demo_pipeline.use_calibration(calibration)
    assert demo_pipeline.calibration_note == ""


def test_too_few_validation_ecgs_are_refused(demo_pipeline: RetrievalPipeline) -> None:
    with pytest.raises(CalibrationError, match="at least 20 needed"):
        calibrate_records(demo_pipeline, load_ptbxl(DEMO_PTBXL, [8])[:10], progress=False)


@pytest.fixture(scope="module")
def calibrated_by_command(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo folds 1-8 indexed by `ecgregen index` into a store and calibrated by `ecgregen calibrate` on fold 8
    (--out cal.json beside the store): the folder and what calibrate printed."""
    tmp = tmp_path_factory.mktemp("calibrate-command")
    data_dir = str(tmp / "var")
    run("index", "--ptbxl", str(DEMO_PTBXL), "--folds", "1-8", "--data-dir", data_dir)
    out = run("calibrate", "--ptbxl", str(DEMO_PTBXL), "--folds", "8", "--data-dir", data_dir,
              "--out", str(tmp / "cal.json"))
    return tmp, out.stdout


def test_calibrate_command_fits_installs_and_refuses(calibrated_by_command: tuple[Path, str], tmp_path: Path) -> None:
    """`ecgregen calibrate` fits on the folds given, keeps the calibration with the corpus (the same as --out
    writes), and refuses to install (--from-file) a calibration fitted for another encoder."""
    tmp_path, stdout = calibrated_by_command[0], calibrated_by_command[1]
    data_dir = str(tmp_path / "var")
    assert "calibrated" in stdout and "report mode served by default" in stdout
    assert "kept with the corpus" in stdout
    fitted = json.loads((tmp_path / "cal.json").read_text())
    with open_store(tmp_path / "var") as store:
        assert store.calibration() == fitted
    fitted["encoder_id"] = "small-other-000000000000"
    (tmp_path / "other.json").write_text(json.dumps(fitted))
    refused = run("calibrate", "--from-file", str(tmp_path / "other.json"), "--data-dir", data_dir, check=False)
    assert refused.returncode != 0 and "fitted for encoder 'small-other-000000000000'" in refused.stderr


def test_calibrate_command_replaces_another_encoders_calibration_and_the_server_then_serves(
    calibrated_by_command: tuple[Path, str], tmp_path: Path
) -> None:
    """A store holding a calibration fitted for another encoder (written straight into the store) is refused by
    the server with `ecgregen calibrate` as the remedy; `ecgregen calibrate` then runs on that store, keeps a
    calibration for this encoder, and a server started on the store serves calibrated diagnoses."""
    data_dir = tmp_path / "var"
    shutil.copytree(calibrated_by_command[0] / "var", data_dir)
    other = json.loads((calibrated_by_command[0] / "cal.json").read_text())
    own_encoder = other["encoder_id"]
    other["encoder_id"] = "small-other-000000000000"
    with open_store(data_dir) as store:
        store.save_calibration(other)
    refused = run("serve", "--data-dir", str(data_dir), "--no-llm", "--port", "0", check=False)
    assert refused.returncode != 0 and "run `ecgregen calibrate` for this encoder" in refused.stderr

    out = run("calibrate", "--ptbxl", str(DEMO_PTBXL), "--folds", "8", "--data-dir", str(data_dir))
    assert "kept with the corpus" in out.stdout
    with open_store(data_dir) as store:
        assert store.calibration()["encoder_id"] == own_encoder
    server = start_server(tmp_path, "--data-dir", str(data_dir), "--no-llm")
    try:
        record = load_ptbxl(DEMO_PTBXL, [9])[0]
        report = json.loads(run("client", "report", str(record.path), "--server", server.address, "--json").stdout)
        assert report["diagnoses"] and not any("calibrat" in w for w in report.get("warnings", [])), report
    finally:
        server.stop()


def test_a_measured_af_is_diagnosed_although_no_neighbour_carries_it(
    demo_pipeline: RetrievalPipeline, measured_af_and_sinus: tuple[Measurements, Measurements]
) -> None:
    calibration = demo_pipeline.diagnoser.calibration
    assert calibration.measured is not None and set(calibration.measured) == set(MEASURED_STATEMENTS)
    fit = calibration.scores["measured_fit"]  # 32 measured ECGs, 14 positives besides SR's: the prior serves
    assert fit["measured_cases"] == 32 and fit["model"].startswith("prior") and fit["threshold"] == 0.5
    af, sinus = measured_af_and_sinus
    hits = [hit(i, 0.9 - i / 100, ["NORM", "SR"]) for i in range(10)]  # ten sinus neighbours, none with AFIB
    diagnoser = Diagnoser(load_statements(), calibration)

    with_af = {d.code: d for d in diagnoser.diagnose(hits, af)}
    assert with_af["AFIB"].present and with_af["AFIB"].description == "atrial fibrillation"
    assert with_af["AFIB"].threshold == calibration.measured["AFIB"].threshold
    votes_alone = {d.code: d for d in diagnoser.diagnose(hits)}
    assert with_af["SR"].probability < votes_alone["SR"].probability  # measured not sinus: SR less likely

    with_sinus = {d.code: d for d in diagnoser.diagnose(hits, sinus)}
    assert "AFIB" not in with_sinus and with_sinus["SBRAD"].present  # SBRAD: measured below 50 bpm, no vote
    assert "AFIB" not in {d.code for d in diagnoser.diagnose(hits)}  # not measured: the votes alone

    # Through the pipeline: the fold-9 AF ECG's own measurement makes AFIB present whatever its neighbours say.
    retrieval = demo_pipeline.search(demo_record("11045").load_ecg(), 3)
    assert retrieval.measurements.rhythm is Rhythm.ATRIAL_FIBRILLATION
    assert "AFIB" in present_codes(retrieval.diagnoses)
    assert not any(MEASUREMENTS_UNUSED in w for w in retrieval.warnings)


def test_a_calibration_without_measured_statements_serves_votes_and_says_so(
    demo_pipeline: RetrievalPipeline, measured_af_and_sinus: tuple[Measurements, Measurements]
) -> None:
    """The probabilities are the votes alone; the present decisions are still reconciled with the measurements."""
    calibration = demo_pipeline.diagnoser.calibration
    old = calibration.to_json()
    del old["measured"]  # as written before the measurements were used
    for key in ("f1_micro_measured", "f1_macro_measured", "measured_fit"):
        del old["scores"][key]
    loaded = Calibration.from_json(json.loads(json.dumps(old)))
    assert loaded.measured is None and loaded.bands == calibration.bands

    hits = [hit(i, 0.9 - i / 100, ["NORM", "SR"]) for i in range(10)]
    diagnoser = Diagnoser(load_statements(), loaded)
    assert diagnoser.diagnose(hits, measured_af_and_sinus[0], agree=False) == diagnoser.diagnose(hits)
    served = diagnoser.diagnose(hits, measured_af_and_sinus[0])
    assert served == sorted(reconcile(diagnoser.diagnose(hits), measured_af_and_sinus[0], load_statements(),
                                      diagnoser.threshold), key=lambda d: (-d.probability, d.code))
    assert "AFIB" in present_codes(served) and not {"SR", "NORM"} & present_codes(served)  # measured AF decides
    assert diagnoser.measurement_note(measured_af_and_sinus[0]) == MEASUREMENTS_UNUSED
    assert diagnoser.measurement_note(None) == ""  # a failed measurement has its own warning
    try:
        demo_pipeline.use_calibration(loaded)
        retrieval = demo_pipeline.search(demo_record("11045").load_ecg(), 3)
        assert MEASUREMENTS_UNUSED in retrieval.warnings
        assert retrieval.diagnoses == diagnoser.diagnose(retrieval.pool, retrieval.measurements)
        assert [(d.code, d.probability) for d in retrieval.diagnoses if d.probability] == [
            (d.code, d.probability) for d in diagnoser.diagnose(retrieval.pool)]  # votes only, nothing measured
        assert {d.code for d in retrieval.diagnoses if not d.decided_by} <= {
            c for h in retrieval.pool[:loaded.k] for c in h.scp_codes}
    finally:
        demo_pipeline.use_calibration(calibration)


def test_a_calibration_with_measured_statements_round_trips_through_json(demo_pipeline: RetrievalPipeline) -> None:
    calibration = demo_pipeline.diagnoser.calibration
    text = json.dumps(calibration.to_json())
    assert '"measured": {' in text and '"evidence_weight"' in text
    assert Calibration.from_json(json.loads(text)) == calibration
    broken = json.loads(text)
    del broken["measured"]["AFIB"]["threshold"]
    with pytest.raises(CalibrationError, match="not a usable calibration"):
        Calibration.from_json(broken)


def test_measured_statements_fall_back_to_the_prior_without_measured_validation_ecgs(
    demo_pipeline: RetrievalPipeline, measured_af_and_sinus: tuple[Measurements, Measurements]
) -> None:
    """Unmeasured validation ECGs: nothing to fit, so the evidence is added to the vote's log-odds (the prior) and
    a statement is present from p 0.5 - a measured AF still shows."""
    cases = [dataclasses.replace(c, measurements=None)
             for c in validation_cases(demo_pipeline, load_ptbxl(DEMO_PTBXL, [8]), progress=False)]
    calibration = fit_calibration(cases, {}, encoder_id="x", corpus_points=240)
    fit = calibration.scores["measured_fit"]
    assert fit["model"].startswith("prior") and fit["shared"] == [1.0, 1.0, 0.0] and fit["measured_cases"] == 0
    rare = calibration.bands[0]  # every code is rare in an empty prevalence table
    afib = calibration.measured["AFIB"]
    assert (afib.vote_slope, afib.evidence_weight, afib.intercept) == pytest.approx((rare.slope, 1.0, rare.intercept))
    assert afib.threshold == MEASURED_PRIOR_THRESHOLD
    hits = [hit(i, 0.9, ["NORM", "SR"]) for i in range(10)]
    assert "AFIB" in present_codes(Diagnoser(load_statements(), calibration).diagnose(hits, measured_af_and_sinus[0]))


def test_per_code_f1_before_and_after_matches_a_hand_count(
    measured_af_and_sinus: tuple[Measurements, Measurements],
) -> None:
    """Four ECGs: AFIB true on 1 and 2; votes said it on 1 and 3; votes + measurements on 1 and 2 (the real AF
    measurement of ECG 2, the sinus one of ECG 3)."""
    af, sinus = measured_af_and_sinus
    truth = [{"AFIB", "NORM"}, {"AFIB"}, {"SBRAD"}, {"NORM", "SR"}]
    calibration_free = Diagnoser(load_statements())  # votes with threshold 0.5: the "before"
    votes = [[hit(0, 0.9, ["AFIB", "NORM"])], [hit(0, 0.9, ["SR"])], [hit(0, 0.9, ["AFIB"])], [hit(0, 0.9, ["NORM"])]]
    before = [present_codes(calibration_free.diagnose(v)) for v in votes]
    assert before == [{"AFIB", "NORM"}, {"SR"}, {"AFIB"}, {"NORM"}]
    after = [before[0], {"AFIB"} if af.rhythm is Rhythm.ATRIAL_FIBRILLATION else set(),
             {"SBRAD"} if sinus.heart_rate_bpm < 50 else set(), before[3]]
    result = diagnoses_by_code(truth, before, after, codes=("AFIB", "SBRAD", "SR", "LNGQT"))
    rows = {r["code"]: r for r in result["codes"]}
    # AFIB: 2 positives of 4. Before: tp 1 (ECG 1), fp 1 (ECG 3), fn 1 (ECG 2) -> 2/4. After: tp 2 -> 1.
    assert rows["AFIB"]["positives"] == 2 and rows["AFIB"]["prevalence"] == 0.5
    assert rows["AFIB"]["before"] == {"f1": 0.5, "tp": 1, "fp": 1, "fn": 1}
    assert rows["AFIB"]["after"] == {"f1": 1.0, "tp": 2, "fp": 0, "fn": 0}
    assert rows["AFIB"]["f1_always_absent"] == 0.0 and rows["AFIB"]["f1_always_present"] == pytest.approx(2 * 2 / 6)
    # SBRAD: 1 positive; missed before (0), found after (1); always present 2/5.
    assert rows["SBRAD"]["before"]["f1"] == 0.0 and rows["SBRAD"]["after"]["f1"] == 1.0
    assert rows["SBRAD"]["f1_always_present"] == pytest.approx(0.4)
    # SR: 1 positive (ECG 4), said only for ECG 2 before: tp 0, fp 1, fn 1 -> 0; after: never said -> 0.
    assert rows["SR"]["before"] == {"f1": 0.0, "tp": 0, "fp": 1, "fn": 1} and rows["SR"]["after"]["f1"] == 0.0
    # LNGQT: no positive, never said: undefined, and so is always-absent; always-present has 4 false positives.
    assert rows["LNGQT"]["before"]["f1"] is None and rows["LNGQT"]["f1_always_absent"] is None
    assert rows["LNGQT"]["f1_always_present"] == 0.0
    # All codes: before tp 3 (AFIB, NORM, NORM) fp 2 (SR, AFIB) fn 3 (AFIB, SBRAD, SR) -> 6 / 11; after tp 5 fp 0 fn 1.
    assert result["all_codes"]["before"]["micro"] == pytest.approx(6 / 11)
    assert result["all_codes"]["after"]["micro"] == pytest.approx(10 / 11)
    # macro over AFIB, NORM, SBRAD, SR: before (0.5 + 1 + 0 + 0) / 4, after (1 + 1 + 1 + 0) / 4.
    assert result["all_codes"]["before"]["macro"] == pytest.approx(0.375)
    assert result["all_codes"]["after"]["macro"] == pytest.approx(0.75)
    table = diagnoses_table(result)
    assert "| AFIB | rhythm (irregular RR, no P waves) | 2 (50.0 %) | 0.00 | 0.67 | 0.50 | 1.00 |" in table
    assert "micro-F1 0.545 -> 0.909" in table
    with pytest.raises(ValueError, match="one of each per ECG"):
        diagnoses_by_code(truth, before, after[:3])
