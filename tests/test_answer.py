"""The label-vote answerer on real SCP statements and real ECG-QA question wording, and its answers from the ECG's
measurements (numeric features, heart axis, noise, extra systoles)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ecgregen.answer import (
    DEFAULT_SETTINGS,
    SHIPPED_SETTINGS,
    AnswerSettings,
    LabelVocabulary,
    LabelVoteAnswerer,
    default_scp_statements,
    load_settings,
)
from ecgregen.answer_measured import MEASURED_TYPES, attribute_type
from ecgregen.diagnoses import Diagnosis
from ecgregen.ecg import STANDARD_LEADS
from ecgregen.encoders.factory import open_encoder
from ecgregen.evaluate.ecgqa import answer_options, load_questions
from ecgregen.measure import BeatOrigin, Measurements, PrematureBeat, QualityFlag, measure
from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.settings import DEMO_PTBXL
from ecgregen.store import Hit
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto
from tests.conftest import REPO, ServerProcess, shared_ptbxl

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


def test_settings_round_trip_and_unknown_fields_are_ignored() -> None:
    assert AnswerSettings.from_json(json.loads(json.dumps(BANDS.to_json()))) == BANDS
    assert AnswerSettings.from_json({"verify_yes": 0.7, "unknown": 1}).verify_yes == 0.7


def test_the_served_answerer_decides_at_every_edge_of_the_shipped_settings(tmp_path) -> None:  # noqa: ANN001
    """The answerer a served pipeline builds runs with the shipped file, every field of it: each band edge, group
    edge, choose/query edge, the lead share and the measured-attribute counts of
    ``ecgregen/models/answer-settings.json`` is where that answer changes - at the edge one answer, just below it
    another. (A pipeline that answered with the code's defaults, or a loader that dropped a field, fails here.)"""
    from ecgregen.pipeline import open_pipeline

    shipped = json.loads(SHIPPED_SETTINGS.read_text())
    assert shipped != AnswerSettings().to_json()  # fitted: not the code's defaults
    pipeline = open_pipeline(checkpoint=None, qdrant_url=":memory:", data_dir=tmp_path, encoder_runtime="torch")
    try:
        served = pipeline.answerer
    finally:
        pipeline.store.close()
    s = shipped
    three, two = ["no", "not sure", "yes"], ["no", "yes"]

    def say(question: str, options: list[str], *diagnoses: Diagnosis, m: Measurements | None = None) -> list[str]:
        return served.answer(question, options, [hit({"NORM": 100})] * 3, diagnoses=list(diagnoses),
                             measurements=m).answer

    below = 0.005  # the fitted edges lie on a grid of 0.02
    ndt = "Does this ECG show symptoms of non-diagnostic t abnormalities?"
    assert say(ndt, three, dx("NDT", s["verify_yes"])) == ["yes"]
    assert say(ndt, three, dx("NDT", s["verify_yes"] - below)) == (
        ["not sure"] if s["verify_yes"] - below >= s["verify_not_sure"] else ["no"])
    assert say(ndt, three, dx("NDT", s["verify_not_sure"] - below)) == ["no"]
    normal = "Is this a normal ECG?"
    assert say(normal, two, dx("NORM", s["verify_binary"])) == ["yes"]
    assert say(normal, two, dx("NORM", s["verify_binary"] - below)) == ["no"]
    groups = {"any form related symptoms": ("Does this ECG show any form-related symptoms?", "NDT"),
              "any rhythm related symptoms": ("Does this ECG show any rhythm-related symptoms?", "AFIB")}
    for group, (question, code) in groups.items():
        edge = s["group_thresholds"].get(group, s["verify_group"])
        assert say(question, two, dx(code, edge)) == ["yes"], group
        assert say(question, two, dx(code, edge - below)) == ["no"], group
    lead = "Does this ECG show symptoms of non-diagnostic t abnormalities in lead V5?"
    assert say(lead, two, dx("NDT", 1.0)) == (["yes"] if s["lead_share"] >= s["verify_binary"] else ["no"])
    choose = "Which symptom does this ECG show, st/t change or myocardial infarction?"
    options = ["st/t change", "myocardial infarction", "none"]
    if s["choose"] is not None:
        assert say(choose, options, dx("NDT", s["choose"]), dx("IMI", s["choose"] - below)) == ["st/t change"]
        assert say(choose, options, dx("NDT", s["choose"] - below), dx("IMI", s["choose"] - 2 * below)) == ["none"]
    query = "What rhythm-related symptoms does this ECG show?"
    rhythms = ["atrial fibrillation", "sinus rhythm", "sinus arrhythmia", "sinus tachycardia", "none"]
    if s["query"] is not None:
        assert say(query, rhythms, dx("SR", s["query"]), dx("AFIB", s["query"] - below)) == ["sinus rhythm"]
    noisy = {lead: (QualityFlag.STATIC_NOISE,) if i < s["noise_min_leads"] else ()
             for i, lead in enumerate(STANDARD_LEADS)}
    one_fewer = {lead: (QualityFlag.STATIC_NOISE,) if i < s["noise_min_leads"] - 1 else ()
                 for i, lead in enumerate(STANDARD_LEADS)}
    static = "Does this ECG show static noise?"
    assert say(static, two, m=measured(lead_quality=noisy)) == ["yes"]
    assert say(static, two, m=measured(lead_quality=one_fewer)) == ["no"]
    beats = tuple(PrematureBeat(1.0 + i, BeatOrigin.VENTRICULAR, 480.0) for i in range(s["premature_min_beats"]))
    extra = "Does this ECG show ventricular extrasystoles?"
    assert say(extra, two, m=measured(premature_beats=beats)) == ["yes"]
    assert say(extra, two, m=measured(premature_beats=beats[:-1])) == ["no"]


# --- answers from the ECG's measurements ---------------------------------------------------------------------


def measured(**values: object) -> Measurements:
    """Measurements of a plain sinus ECG (every lead fine), with `values` changed."""
    base = dict(heart_rate_bpm=72.0, rr_interval_ms=833.0, pr_interval_ms=160.0, p_duration_ms=100.0,
                qrs_duration_ms=90.0, qt_interval_ms=380.0, qtc_bazett_ms=416.0, qrs_axis_deg=40.0, beat_count=12,
                lead_quality={lead: () for lead in STANDARD_LEADS})
    return Measurements(**{**base, **values})


def test_numeric_features_use_ecgqa_ranges(answerer: LabelVoteAnswerer) -> None:
    ranges = ["above the normal range", "below the normal range", "within the normal range"]
    q = "What range does the qrs duration of this ECG fall in?"
    for qrs, expected in ((58.0, "below"), (60.0, "within"), (110.0, "within"), (111.0, "above")):
        result = answerer.answer(q, ranges, [], measurements=measured(qrs_duration_ms=qrs))
        assert result.answer == [f"{expected} the normal range"] and "qrs duration measured" in result.rationale
    # Verify, choose (the range is not offered: none), and the query by range over the offered features.
    verify = "Does the rr interval of this ECG fall above the normal range?"
    assert answerer.answer(verify, ["no", "yes"], [], measurements=measured(rr_interval_ms=1100.0)).answer == ["yes"]
    assert answerer.answer(verify, ["no", "yes"], [], measurements=measured()).answer == ["no"]
    choose = "Which range does the rr interval of this ECG fall in, below the normal range or above the normal range?"
    assert answerer.answer(choose, ["below the normal range", "above the normal range", "none"], [],
                           measurements=measured()).answer == ["none"]
    features = ["none", "p duration", "pr interval", "qrs duration", "qt corrected", "qt interval", "rr interval"]
    query = "What numeric features of this ECG fall above the normal range?"
    result = answerer.answer(query, features, [], measurements=measured(pr_interval_ms=230.0, qtc_bazett_ms=560.0))
    assert result.answer == ["pr interval", "qt corrected"]
    assert answerer.answer(query, features, [], measurements=measured()).answer == ["none"]
    # P duration has no lower edge in ECG-QA; QTc's upper edge is 430 / sqrt(0.6) ms.
    assert answerer.answer("Does the p duration of this ECG fall below the normal range?", ["no", "yes"], [],
                           measurements=measured(p_duration_ms=40.0)).answer == ["no"]
    assert answerer.answer("Does the qt corrected of this ECG fall within the normal range?", ["no", "yes"], [],
                           measurements=measured(qtc_bazett_ms=555.0)).answer == ["yes"]
    # A long QT as an SCP statement is not a numeric-feature question.
    assert attribute_type("Does this ECG show symptoms of long qt-interval?", ["no", "not sure", "yes"]) is None


def test_heart_axis_classes(answerer: LabelVoteAnswerer) -> None:
    axes = ["extreme axis deviation", "left axis deviation", "normal heart axis", "right axis deviation"]
    q = "What direction is this ECG deviated to?"
    for degrees, expected in ((-30.0, "normal heart axis"), (89.0, "normal heart axis"), (-31.0, "left axis deviation"),
                              (-90.0, "left axis deviation"), (90.0, "right axis deviation"),
                              (180.0, "right axis deviation"), (-100.0, "extreme axis deviation")):
        result = answerer.answer(q, axes, [], measurements=measured(qrs_axis_deg=degrees))
        assert result.answer == [expected] and f"QRS axis measured {degrees:.0f} deg" in result.rationale
    verify = "Does this ECG show left axis deviation?"
    assert answerer.answer(verify, ["no", "yes"], [], measurements=measured(qrs_axis_deg=-45.0)).answer == ["yes"]
    choose = "Which cardiac axis does this ECG show, extreme axis deviation or right axis deviation?"
    assert answerer.answer(choose, ["extreme axis deviation", "right axis deviation", "none"], [],
                           measurements=measured()).answer == ["none"]


def test_noise_from_lead_quality_flags(answerer: LabelVoteAnswerer) -> None:
    answerer = LabelVoteAnswerer(answerer.vocabulary, DEFAULT_SETTINGS.but(noise_min_leads=1))
    quality = {lead: () for lead in STANDARD_LEADS} | {
        "V1": (QualityFlag.STATIC_NOISE,), "V2": (QualityFlag.STATIC_NOISE, QualityFlag.BURST_NOISE),
        "aVL": (QualityFlag.FLAT, QualityFlag.LEAD_OFF)}
    m = measured(lead_quality=quality)
    assert answerer.answer("Does this ECG show static noise in lead V2?", ["no", "yes"], [], measurements=m
                           ).answer == ["yes"]
    assert answerer.answer("Does this ECG show static noise in lead V3?", ["no", "yes"], [], measurements=m
                           ).answer == ["no"]
    assert answerer.answer("Does this ECG show any kind of noises in lead aVL?", ["no", "yes"], [], measurements=m
                           ).answer == ["yes"]  # a lead off is an electrode problem
    # ECG-QA's paraphrases: other words, the lead named elsewhere.
    for lead, expected in (("V1", "yes"), ("V3", "no")):
        assert answerer.answer(f"Is lead {lead} on this ECG showing any signs of interference or distortion?",
                               ["no", "yes"], [], measurements=m).answer == [expected]
    kinds = ["baseline drift", "burst noise", "electrodes problems", "none", "static noise"]
    result = answerer.answer("What kind of noises does this ECG show?", kinds, [], measurements=m)
    assert result.answer == ["burst noise", "electrodes problems", "static noise"]
    assert "static noise in V1, V2" in result.rationale
    leads = [f"lead {lead}" for lead in STANDARD_LEADS] + ["none"]
    assert answerer.answer("What leads are showing static noise in this ECG?", leads, [], measurements=m
                           ).answer == ["lead V1", "lead V2"]
    # For the whole ECG a kind needs noise_min_leads flagged leads.
    strict = LabelVoteAnswerer(answerer.vocabulary, DEFAULT_SETTINGS.but(noise_min_leads=2))
    assert strict.answer("Does this ECG show static noise?", ["no", "yes"], [], measurements=m).answer == ["yes"]
    assert strict.answer("Does this ECG show burst noise?", ["no", "yes"], [], measurements=m).answer == ["no"]


def test_extra_systoles_from_premature_beats(answerer: LabelVoteAnswerer) -> None:
    answerer = LabelVoteAnswerer(answerer.vocabulary, DEFAULT_SETTINGS.but(premature_min_beats=1))
    beats = (PrematureBeat(2.0, BeatOrigin.VENTRICULAR, 480.0), PrematureBeat(6.1, BeatOrigin.VENTRICULAR, 500.0))
    m = measured(premature_beats=beats)
    kinds = ["extrasystoles", "none", "supraventricular extrasystoles", "ventricular extrasystoles"]
    result = answerer.answer("What kind of extra systole does this ECG show?", kinds, [], measurements=m)
    assert result.answer == ["ventricular extrasystoles"] and "2 ventricular, 0 supraventricular" in result.rationale
    assert answerer.answer("Does this ECG show any kind of extra systoles?", ["no", "yes"], [], measurements=m
                           ).answer == ["yes"]
    assert answerer.answer("Does this ECG show supraventricular extrasystoles?", ["no", "yes"], [], measurements=m
                           ).answer == ["no"]
    # The unnamed kind stands for beats of no kind offered.
    choose = "Which kind of extra systoles does this ECG show, extrasystoles or supraventricular extrasystoles?"
    assert answerer.answer(choose, ["extrasystoles", "supraventricular extrasystoles", "none"], [], measurements=m
                           ).answer == ["extrasystoles"]
    assert answerer.answer(choose, ["extrasystoles", "supraventricular extrasystoles", "none"], [],
                           measurements=measured()).answer == ["none"]
    strict = LabelVoteAnswerer(answerer.vocabulary, DEFAULT_SETTINGS.but(premature_min_beats=3))
    assert strict.answer("Does this ECG show ventricular extrasystoles?", ["no", "yes"], [], measurements=m
                         ).answer == ["no"]


def test_an_absent_measurement_falls_back_and_says_why(answerer: LabelVoteAnswerer) -> None:
    m = measured(pr_interval_ms=None, missing={"pr_interval_ms": "no P waves (irregular rhythm)"})
    result = answerer.answer("Does the pr interval of this ECG fall above the normal range?", ["no", "yes"],
                             [hit({"AFIB": 100})], measurements=m)
    assert result.answer == ["no"]  # the label vote's default: no statement named
    assert result.rationale.startswith("pr interval not measured: no P waves (irregular rhythm), so answered as "
                                       "without measurements: no SCP statement recognised")
    # Statement questions are not answered from measurements even when given.
    q = "Does this ECG show symptoms of non-diagnostic t abnormalities?"
    assert answerer.answer(q, ["no", "not sure", "yes"], [hit({"NDT": 100})] * 3, measurements=m).answer == ["yes"]


def test_measured_attribute_types_of_real_ecgqa_questions_are_recognised() -> None:
    """Every published question (sample and noise chunk, as templated and as paraphrased) is recognised as the
    measured attribute type it is, and no statement or infarction-stage question is taken for one."""
    paths = [ECGQA / "single_sample.json", ECGQA / "template" / "train" / "120000.json",
             ECGQA / "paraphrased" / "train" / "120000.json"]
    if not all(p.exists() for p in paths):
        pytest.skip(f"ECG-QA not found at {ECGQA}")
    questions = load_questions(paths)
    seen = Counter()
    for q in questions:
        expected = q["attribute_type"] if q["attribute_type"] in MEASURED_TYPES else None
        assert attribute_type(q["question"], answer_options(q["template_id"], q["attribute"])) == expected, q
        seen[expected] += 1
    assert all(seen[t] > 50 for t in MEASURED_TYPES) and seen[None] > 600


# One published ECG-QA question per measured attribute type about a real PTB-XL record whose answer the measurements
# give (ecg_id, template, question start, the measurement its rationale names): demo-corpus records where ECG-QA asks
# about one, shared fold-8 ones otherwise.
REAL_QUESTIONS = {
    "heart_axis": ("4636", 22, "What direction is this ECG deviated to?", "QRS axis measured"),
    "noise": ("5882", 26, "Does this ECG show static noise in lead aVF?", "lead quality flags: static noise in"),
    "numeric_feature": ("14022", 40, "Which range does the rr interval of this ECG fall in",
                        "rr interval measured"),
    "extra_systole": ("13651", 37, "Which kind of extra systoles does this ECG show", "premature beats among"),
}


def real_question(kind: str) -> tuple[EcgRecord, dict]:
    """The record and the published question of :data:`REAL_QUESTIONS` for this attribute type."""
    ecg_id, template_id, text, _ = REAL_QUESTIONS[kind]
    paths = [ECGQA / "single_sample.json", ECGQA / "template" / "train" / "120000.json"]
    if not all(p.exists() for p in paths):
        pytest.skip(f"ECG-QA not found at {ECGQA}")
    records = {r.ecg_id: r for r in load_ptbxl(DEMO_PTBXL)}
    if ecg_id not in records:
        records = {r.ecg_id: r for r in load_ptbxl(shared_ptbxl(), [8])}
    question = next(q for q in load_questions(paths) if q["ecg_id"] == [int(ecg_id)]
                    and q["template_id"] == template_id and q["question"].startswith(text))
    return records[ecg_id], question


@pytest.mark.parametrize("kind", MEASURED_TYPES)
def test_real_records_are_answered_from_their_measurements(kind: str, answerer: LabelVoteAnswerer) -> None:
    """ECG-QA's own answer, from the measurements of the real recording (the neighbours, none here, play no part);
    the rationale names the measurement. One premature beat is enough here, whatever the shipped settings say."""
    record, q = real_question(kind)
    one_beat = LabelVoteAnswerer(answerer.vocabulary, DEFAULT_SETTINGS.but(premature_min_beats=1))
    result = one_beat.answer(q["question"], answer_options(q["template_id"], q["attribute"]), [],
                             measurements=measure(record.load_ecg()))
    assert sorted(result.answer) == sorted(q["answer"]), result.rationale
    assert result.rationale.startswith("from the ECG's measurements: ") and REAL_QUESTIONS[kind][3] in result.rationale


def test_axis_question_over_grpc_is_answered_from_the_measurements(client_server: ServerProcess) -> None:
    """Through a real server: the label answerer answers ECG-QA's axis query on a real record from the ECG's
    measurements, which the response carries, and says so."""
    record, q = real_question("heart_axis")
    options = answer_options(q["template_id"], q["attribute"])
    response = client_server.stub().AnswerQuestion(pb.AnswerQuestionRequest(
        ecg=ecg_to_proto(record.load_ecg()), question=q["question"], options=options, answerer="labels"), timeout=60)
    assert list(response.answer) == q["answer"] == ["left axis deviation"]
    assert response.answerer == "labels" and "QRS axis measured" in response.rationale
    assert response.measurements.qrs_axis_deg < -30


def test_shipped_settings_name_the_shipped_encoder() -> None:
    """The shipped band edges were fitted for the encoder the server loads by default (read as the server reads
    it), not for the one before."""
    assert DEFAULT_SETTINGS.encoder_id == open_encoder(None, "torch").encoder_id
    assert load_settings(SHIPPED_SETTINGS) == DEFAULT_SETTINGS and "fold 8" in DEFAULT_SETTINGS.fitted_on
