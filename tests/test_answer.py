"""The label-vote answerer on real SCP statements and real ECG-QA question wording."""

from __future__ import annotations

import json

import pytest

from ecgregen.answer import DEFAULT_SETTINGS, AnswerSettings, LabelVocabulary, LabelVoteAnswerer, default_scp_statements
from ecgregen.diagnoses import Diagnosis
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


# --- answers from calibrated diagnoses ----------------------------------------------------------------------

BANDS = AnswerSettings(verify_yes=0.6, verify_not_sure=0.2, verify_binary=0.5, verify_group=0.4,
                       group_thresholds={"any form related symptoms": 0.3}, lead_share=0.5, choose=0.35, query=0.45)


def dx(code: str, probability: float, threshold: float = 0.5) -> Diagnosis:
    return Diagnosis(code, "", "", probability, probability >= threshold, threshold)


@pytest.fixture(scope="module")
def banded() -> LabelVoteAnswerer:
    return LabelVoteAnswerer(LabelVocabulary.from_scp_statements(default_scp_statements()), BANDS)


def test_verify_maps_probability_bands_to_yes_not_sure_no(banded: LabelVoteAnswerer) -> None:
    q = "Does this ECG show symptoms of non-diagnostic t abnormalities?"
    options = ["no", "not sure", "yes"]
    nothing = [hit({"NORM": 100})] * 3  # the neighbours would all say "no": the diagnoses decide
    for p, expected in ((0.95, "yes"), (0.6, "yes"), (0.59, "not sure"), (0.2, "not sure"), (0.19, "no")):
        result = banded.answer(q, options, nothing, diagnoses=[dx("NDT", p), dx("NORM", 0.9)])
        assert result.answer == [expected], (p, result.rationale)
    assert banded.answer(q, options, nothing, diagnoses=[dx("NORM", 0.9)]).answer == ["no"]  # not predicted: p = 0
    # Yes/no only (ECG-QA's "normal ecg"), and rhythm statements (listed at likelihood 0: never "not sure").
    assert banded.answer("Is this a normal ECG?", ["no", "yes"], nothing, diagnoses=[dx("NORM", 0.55)]).answer == ["yes"]
    assert banded.answer("Is this a normal ECG?", ["no", "yes"], nothing, diagnoses=[dx("NORM", 0.45)]).answer == ["no"]
    rhythm = "Does this ECG show symptoms of sinus arrhythmia?"
    assert banded.answer(rhythm, options, nothing, diagnoses=[dx("SARRH", 0.4)]).answer == ["no"]
    assert banded.answer(rhythm, options, nothing, diagnoses=[dx("SARRH", 0.5)]).answer == ["yes"]


def test_verify_superclass_groups_and_leads(banded: LabelVoteAnswerer) -> None:
    options = ["no", "not sure", "yes"]
    mi = "Does this ECG show symptoms of myocardial infarction?"  # a superclass: its likeliest code counts
    assert banded.answer(mi, options, [], diagnoses=[dx("IMI", 0.1), dx("ASMI", 0.7)]).answer == ["yes"]
    form = "Does this ECG show any form-related symptoms?"  # its own group edge, 0.3
    assert banded.answer(form, ["no", "yes"], [], diagnoses=[dx("NDT", 0.35)]).answer == ["yes"]
    assert banded.answer(form, ["no", "yes"], [], diagnoses=[dx("NDT", 0.25)]).answer == ["no"]
    rhythm = "Does this ECG show any rhythm-related symptoms?"  # no own edge: verify_group, 0.4
    assert banded.answer(rhythm, ["no", "yes"], [], diagnoses=[dx("AFIB", 0.35)]).answer == ["no"]
    # To ECG-QA sinus rhythm is rhythm-related, but not abnormal.
    assert banded.answer(rhythm, ["no", "yes"], [], diagnoses=[dx("SR", 0.9)]).answer == ["yes"]
    abnormal = "Does this ECG show any kind of abnormal symptoms?"
    assert banded.answer(abnormal, ["no", "yes"], [], diagnoses=[dx("SR", 0.9), dx("NORM", 0.9)]).answer == ["no"]
    # A lead-level question: the probability is scaled by lead_share (0.5) before the band.
    lead = "Does this ECG show symptoms of non-diagnostic t abnormalities in lead V5?"
    result = banded.answer(lead, ["no", "yes"], [], diagnoses=[dx("NDT", 0.9)])
    assert result.answer == ["no"] and "lead share 0.5" in result.rationale
    assert banded.answer(lead, ["no", "yes"], [], diagnoses=[dx("NDT", 1.0)]).answer == ["yes"]


def test_choose_and_query_use_the_thresholds(banded: LabelVoteAnswerer) -> None:
    q = "Which symptom does this ECG show, st/t change or myocardial infarction?"
    options = ["st/t change", "myocardial infarction", "none"]
    assert banded.answer(q, options, [], diagnoses=[dx("NDT", 0.4), dx("IMI", 0.3)]).answer == ["st/t change"]
    both = [dx("NDT", 0.4), dx("IMI", 0.36)]
    assert banded.answer(q, options, [], diagnoses=both).answer == ["st/t change", "myocardial infarction"]
    assert banded.answer(q, options, [], diagnoses=[dx("NDT", 0.3), dx("IMI", 0.3)]).answer == ["none"]
    # choose=None: each diagnosis's own present threshold decides.
    own = LabelVoteAnswerer(banded.vocabulary, BANDS.but(choose=None))
    assert own.answer(q, options, [], diagnoses=[dx("NDT", 0.3, threshold=0.25), dx("IMI", 0.9, threshold=0.95)]
                      ).answer == ["st/t change"]
    # A query (more than two statement options) uses the query edge, 0.45.
    query = "What rhythm-related symptoms does this ECG show?"
    rhythms = ["atrial fibrillation", "sinus rhythm", "sinus arrhythmia", "sinus tachycardia", "none"]
    result = banded.answer(query, rhythms, [], diagnoses=[dx("SR", 0.9), dx("SARRH", 0.44), dx("STACH", 0.46)])
    assert result.answer == ["sinus rhythm", "sinus tachycardia"] and "query" in result.rationale
    assert banded.answer(query, rhythms, [], diagnoses=[dx("SR", 0.3)]).answer == ["none"]
    # Without options: the asked-about codes at or over the query edge.
    assert banded.answer("What does this ECG show?", [], [], diagnoses=[dx("SR", 0.9), dx("NORM", 0.4)]).answer == ["SR"]


def test_without_diagnoses_or_statements_the_neighbours_vote_as_before(answerer: LabelVoteAnswerer,
                                                                          banded: LabelVoteAnswerer) -> None:
    q = "Does this ECG show symptoms of non-diagnostic t abnormalities?"
    options = ["yes", "no", "not sure"]
    neighbours = [hit({"NDT": 50}), hit({"NDT": 35}), hit({"NORM": 100})]
    assert banded.answer(q, options, neighbours).answer == answerer.answer(q, options, neighbours).answer == ["not sure"]
    assert banded.answer(q, options, neighbours, diagnoses=()).answer == ["not sure"]
    # A question about no SCP statement (heart axis, noise, ...) is not answered from the diagnoses.
    axis = "Is the heart axis normal?"
    result = banded.answer(axis, ["yes", "no"], [hit({"NORM": 100})], diagnoses=[dx("NORM", 0.99)])
    assert result.answer == ["no"] and "no SCP statement recognised" in result.rationale
    choose = banded.answer("Which noise?", ["baseline drift", "static noise", "none"], [hit({"NORM": 100})] * 3,
                           diagnoses=[dx("NORM", 0.99)])
    assert choose.answer == ["none"] and "votes of 3 neighbours" in choose.rationale


def test_default_settings_are_shipped_and_round_trip() -> None:
    assert DEFAULT_SETTINGS.fitted_on and 0 < DEFAULT_SETTINGS.verify_binary < 1
    assert AnswerSettings.from_json(json.loads(json.dumps(BANDS.to_json()))) == BANDS
    assert AnswerSettings.from_json({"verify_yes": 0.7, "unknown": 1}).verify_yes == 0.7
