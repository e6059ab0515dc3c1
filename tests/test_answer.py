"""The label-vote answerer on real SCP statements and real ECG-QA question wording."""

from __future__ import annotations

import json

import pytest

from ecgregen.answer import LabelVocabulary, LabelVoteAnswerer, default_scp_statements
from ecgregen.store import Hit
from tests.conftest import REPO

ECGQA = REPO.parent / "shared" / "data" / "ecgqa" / "ptbxl"


@pytest.fixture(scope="module")
def answerer() -> LabelVoteAnswerer:
    return LabelVoteAnswerer(LabelVocabulary.from_scp_statements(default_scp_statements()))


def hit(codes: dict[str, float]) -> Hit:
    return Hit(point_id="p", score=0.9, ecg_id="1", patient_id="2", report="r", scp_codes=codes, source="ptbxl",
               inserted_at="2026-01-01T00:00:00+00:00")


def test_verify_yes_no_not_sure_follow_the_majority(answerer: LabelVoteAnswerer) -> None:
    q = "Does this ECG show symptoms of non-diagnostic t abnormalities?"
    options = ["yes", "no", "not sure"]
    assert answerer.answer(q, options, [hit({"NDT": 100}), hit({"NDT": 100}), hit({"NORM": 100})]).answer == ["yes"]
    assert answerer.answer(q, options, [hit({"NDT": 50}), hit({"NDT": 35}), hit({"NORM": 100})]).answer == ["not sure"]
    assert answerer.answer(q, options, [hit({"NDT": 100}), hit({"SR": 0}), hit({"NORM": 100})]).answer == ["no"]


def test_verify_tie_goes_to_the_closest_neighbour(answerer: LabelVoteAnswerer) -> None:
    q = "Does this ECG show atrial fibrillation?"
    neighbours = [hit({"AFIB": 100}), hit({"SR": 0})]
    assert answerer.answer(q, ["yes", "no"], neighbours).answer == ["yes"]
    assert answerer.answer(q, ["yes", "no"], neighbours[::-1]).answer == ["no"]


def test_mi_location_wording_of_ecgqa_maps_to_ptbxl_codes(answerer: LabelVoteAnswerer) -> None:
    q = "Does this ECG show symptoms of myocardial infarction in inferior leads?"
    result = answerer.answer(q, ["yes", "no", "not sure"], [hit({"IMI": 100})] * 2 + [hit({"ASMI": 100})])
    assert result.answer == ["yes"] and "IMI" in result.rationale


def test_choose_picks_supported_options_or_none(answerer: LabelVoteAnswerer) -> None:
    q = "Which symptom does this ECG show, st/t change or myocardial infarction?"
    options = ["st/t change", "myocardial infarction", "none"]
    mi = [hit({"IMI": 100}), hit({"ASMI": 100, "NDT": 100}), hit({"NORM": 100})]
    assert answerer.answer(q, options, mi).answer == ["myocardial infarction"]
    normal = [hit({"NORM": 100})] * 3
    assert answerer.answer(q, options, normal).answer == ["none"]


def test_superclass_hypertrophy_leaves_out_atrial_overload(answerer: LabelVoteAnswerer) -> None:
    options = ["hypertrophy", "none"]
    assert answerer.answer("Which?", options, [hit({"LAO/LAE": 100})] * 3).answer == ["none"]
    assert answerer.answer("Which?", options, [hit({"LVH": 100})] * 3).answer == ["hypertrophy"]


def test_open_question_returns_majority_codes(answerer: LabelVoteAnswerer) -> None:
    result = answerer.answer("What does this ECG show?", [], [hit({"NORM": 100, "SR": 0})] * 2 + [hit({"AFIB": 100})])
    assert result.answer == ["NORM", "SR"]


def test_unrecognised_question_says_so(answerer: LabelVoteAnswerer) -> None:
    result = answerer.answer("Is the heart axis normal?", ["yes", "no"], [hit({"NORM": 100})])
    assert result.answer == ["no"] and "no SCP statement recognised" in result.rationale


def test_every_scp_attribute_of_real_ecgqa_questions_is_recognised(answerer: LabelVoteAnswerer) -> None:
    """Each scp_code attribute in the obtained ECG-QA questions names a statement the vocabulary knows."""
    path = ECGQA / "single_sample.json"
    if not path.exists():
        pytest.skip(f"ECG-QA not found at {path}")
    questions = [q for q in json.loads(path.read_text()) if q["attribute_type"] == "scp_code"]
    attributes = {a for q in questions for a in q["attribute"]}
    unknown = sorted(a for a in attributes if answerer.vocabulary.codes_of(a) is None)
    assert len(attributes) > 30 and unknown == []
