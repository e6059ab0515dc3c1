"""Predicted diagnoses: votes, calibration on real demo records, storage with the corpus, refusal, staleness,
report selection, and `ecgregen calibrate`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecgregen.calibrate import calibrate_records, save
from ecgregen.diagnoses import (
    BAND_NAMES,
    Calibration,
    CalibrationError,
    Diagnoser,
    load_statements,
    neighbour_votes,
    present_codes,
    select_report,
)
from ecgregen.evaluate.corpus import open_eval_index
from ecgregen.pipeline import RetrievalPipeline, open_pipeline
from ecgregen.records import load_ptbxl
from ecgregen.settings import DEMO_PTBXL
from ecgregen.store import Hit, open_store
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


def test_calibrated_probabilities_and_present_follow_the_thresholds(
    demo_pipeline: RetrievalPipeline,
) -> None:
    calibration = demo_pipeline.diagnoser.calibration
    assert calibration is not None and calibration.fitted_on["cases"] == 32 and len(calibration.bands) == len(BAND_NAMES)
    assert set(calibration.scores) >= {"f1_micro", "f1_macro", "brier_vote", "brier_calibrated", "bleu4_by_mode"}
    for record in load_ptbxl(DEMO_PTBXL, [9])[:10]:
        retrieval = demo_pipeline.search(record.load_ecg(), 3)
        assert len(retrieval.hits) == 3 and len(retrieval.pool) == calibration.k
        assert retrieval.diagnoses
        for d in retrieval.diagnoses:
            assert 0.0 <= d.probability <= 1.0
            assert d.threshold == calibration.threshold(d.code)
            assert d.present == (d.probability >= d.threshold)
            assert any(d.code in h.scp_codes for h in retrieval.pool[:calibration.k])


def test_consensus_picks_the_neighbour_agreeing_best_with_the_diagnoses() -> None:
    hits = [hit(0, 0.99, ["NORM"]), hit(1, 0.98, ["AFIB", "LVH"]), hit(2, 0.97, ["AFIB", "LVH", "PVC"]),
            hit(3, 0.96, ["AFIB", "LVH"])]
    diagnoses = Diagnoser(load_statements()).diagnose(hits)  # AFIB and LVH 3/4 present, NORM and PVC not
    assert present_codes(diagnoses) == {"AFIB", "LVH"}
    assert select_report(hits, diagnoses, "top1", 4) is hits[0]
    assert select_report(hits, diagnoses, "consensus", 4) is hits[1]  # ties with hits[3]: the closer wins
    assert select_report(hits, diagnoses, "consensus", 1) is hits[0]  # only the pool is considered
    with pytest.raises(ValueError, match="unknown report mode"):
        select_report(hits, diagnoses, "longest", 4)


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


def test_calibrate_command_fits_installs_and_refuses(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "var")
    run("index", "--ptbxl", str(DEMO_PTBXL), "--folds", "1-8", "--data-dir", data_dir)
    out = run("calibrate", "--ptbxl", str(DEMO_PTBXL), "--folds", "8", "--data-dir", data_dir,
              "--out", str(tmp_path / "cal.json"))
    assert "calibrated" in out.stdout and "report mode served by default" in out.stdout
    assert "kept with the corpus" in out.stdout
    fitted = json.loads((tmp_path / "cal.json").read_text())
    with open_store(tmp_path / "var") as store:
        assert store.calibration() == fitted
    fitted["encoder_id"] = "small-other-000000000000"
    (tmp_path / "other.json").write_text(json.dumps(fitted))
    refused = run("calibrate", "--from-file", str(tmp_path / "other.json"), "--data-dir", data_dir, check=False)
    assert refused.returncode != 0 and "fitted for encoder 'small-other-000000000000'" in refused.stderr
