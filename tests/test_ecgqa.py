"""ECG-QA questions from PTB-XL metadata: the rules against the real published answers, and the generator.

Real data only: the ECG-QA files and PTB-XL metadata under the shared data folder (skipped when it is absent).
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from ecgregen.answer import LabelVocabulary, LabelVoteAnswerer, default_scp_statements
from ecgregen.diagnoses import Diagnosis
from ecgregen.evaluate.ecgqa import (
    CODE_NAMES,
    LEADS,
    SUPERCLASSES,
    TEMPLATES,
    EcgMetadata,
    PtbxlMetadata,
    UnsupportedTemplate,
    answer_from_metadata,
    answer_options,
    check_against_real,
    generate_questions,
    lead_question_share,
    load_questions,
    load_templates,
    parse_extra_systoles,
    parse_noise_leads,
    supported_templates,
    write_generated,
)
from ecgregen.evaluate.qa import FIT_TEMPLATES, fit_answer_settings, question_evidence
from ecgregen.llm.prompts import infer_question_type
from ecgregen.qa_conventions import is_verify, question_lead

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
ECGQA = SHARED / "data" / "ecgqa" / "ptbxl"
PTBXL = SHARED / "data" / "ptbxl"

pytestmark = pytest.mark.skipif(
    not (ECGQA / "single_sample.json").exists() or not (PTBXL / "ptbxl_database_all_reports.csv").exists(),
    reason=f"ECG-QA / PTB-XL data not found under {SHARED}",
)

UNSUPPORTED = {17, 18, 19, 20, 21, 22, 39, 40, 41, 42}
PUBLISHED_KEYS = {"template_id", "question_id", "sample_id", "question_type", "attribute_type", "question", "answer",
                  "ecg_id", "attribute"}


@pytest.fixture(scope="module")
def all_metadata() -> PtbxlMetadata:
    return PtbxlMetadata.from_csv(PTBXL / "ptbxl_database_all_reports.csv")


@pytest.fixture(scope="module")
def signal_metadata() -> PtbxlMetadata:
    return PtbxlMetadata.from_ptbxl(PTBXL)


@pytest.fixture(scope="module")
def real_sample() -> list[dict]:
    return load_questions([ECGQA / "single_sample.json"])


@pytest.fixture(scope="module")
def generated(signal_metadata: PtbxlMetadata) -> list[dict]:
    return generate_questions(signal_metadata, signal_metadata.ecg_ids()[:150], seed=0)


# --- the rules against the real answers --------------------------------------------------------------------------


def test_every_supported_template_agrees_with_the_real_answers(real_sample, all_metadata):
    result = check_against_real(real_sample, all_metadata)
    assert set(result["per_template"]) == supported_templates()  # every supported template is checked
    assert set(result["unsupported"]) == UNSUPPORTED
    disagreeing = {t: v for t, v in result["per_template"].items() if v["agree"] != v["n"]}
    assert not disagreeing, result["disagreements"]
    assert result["n"] == 997 and result["agreement"] == 1.0


def test_lead_level_noise_rules_agree_on_the_large_noise_chunk(all_metadata):
    """train/120000.json: 10,000 real noise questions (templates 26-28), mostly about one lead."""
    result = check_against_real(load_questions([ECGQA / "template" / "train" / "120000.json"]), all_metadata)
    assert result["n"] > 8000
    assert result["agreement"] == 1.0, result["disagreements"]


def test_check_reports_disagreements(real_sample, all_metadata):
    flipped = [dict(q, answer=["no"] if q["answer"] == ["yes"] else q["answer"]) for q in real_sample]
    result = check_against_real(flipped, all_metadata, max_examples=3)
    assert result["agreement"] < 1.0
    assert len(result["disagreements"]) == 3
    example = result["disagreements"][0]
    assert example["answer"] == ["no"] and example["predicted"] == ["yes"]


def test_unsupported_templates_raise(all_metadata):
    meta = all_metadata.row(1)
    for template_id in UNSUPPORTED:
        with pytest.raises(UnsupportedTemplate):
            answer_from_metadata(template_id, ["right axis deviation"], meta)
    with pytest.raises(ValueError, match="needs a lead"):
        answer_from_metadata(26, ["static noise"], meta)


# --- hand-checked rows -------------------------------------------------------------------------------------------


def test_sinus_bradycardia_otherwise_normal(all_metadata):
    """ecg_id 2: {'NORM': 80, 'SBRAD': 0}, report "sinusbradykardie sonst normales ekg"."""
    meta = all_metadata.row(2)
    assert dict(meta.scp_codes) == {"NORM": 80.0, "SBRAD": 0.0}
    assert answer_from_metadata(2, ["normal ecg"], meta) == ["yes"]
    assert answer_from_metadata(12, ["any kind of abnormal symptoms"], meta) == ["yes"]  # SBRAD is not SR
    assert answer_from_metadata(13, ["any diagnostic symptoms"], meta) == ["no"]  # NORM is no diagnostic symptom
    assert answer_from_metadata(16, ["any rhythm-related symptoms"], meta) == ["yes"]
    assert answer_from_metadata(1, ["sinus bradycardia"], meta) == ["yes"]  # likelihood 0 = given, not uncertain
    rhythms = ["sinus rhythm", "atrial fibrillation", "sinus bradycardia"]
    assert answer_from_metadata(10, rhythms, meta) == ["sinus bradycardia"]
    assert meta.patient_suffix() == " Given that patient is Male and is 19.0 years old."


def test_uncertain_statements_and_superclasses():
    row = {"ecg_id": 7, "age": 70.0, "sex": 1, "scp_codes": "{'IMI': 50.0, 'LVH': 100.0, 'LAO/LAE': 100.0}"}
    assert answer_from_metadata(1, ["myocardial infarction in inferior leads"], row) == ["not sure"]
    assert answer_from_metadata(1, ["left ventricular hypertrophy"], row) == ["yes"]
    assert answer_from_metadata(1, ["hypertrophy"], row) == ["yes"]
    assert answer_from_metadata(1, ["myocardial infarction"], row) == ["not sure"]
    assert answer_from_metadata(1, ["atrial fibrillation"], row) == ["no"]
    mi, lvh = "myocardial infarction in inferior leads", "left ventricular hypertrophy"
    assert answer_from_metadata(4, [mi, lvh], row) == [mi, lvh]  # including uncertain
    assert answer_from_metadata(5, [mi, lvh], row) == [lvh]  # excluding uncertain
    assert answer_from_metadata(3, ["myocardial infarction", "conduction disturbance"], row) == [
        "myocardial infarction"]
    only_lae = {"ecg_id": 8, "scp_codes": {"LAO/LAE": 100.0, "SR": 0.0}}
    assert answer_from_metadata(1, ["hypertrophy"], only_lae) == ["no"]  # ECG-QA leaves LAO/LAE out
    assert answer_from_metadata(2, ["normal ecg"], only_lae) == ["no"]
    assert answer_from_metadata(14, ["any diagnostic symptoms"], only_lae) == ["yes"]


def test_noise_columns(all_metadata):
    meta = all_metadata.row(1)  # static_noise " , I-V1,  "
    assert meta.noise["static noise"] == frozenset(LEADS[:7])
    assert answer_from_metadata(34, ["static noise"], meta) == [
        "lead I", "lead II", "lead III", "lead aVR", "lead aVL", "lead aVF", "lead V1"]
    assert answer_from_metadata(26, ["static noise"], meta, lead="V1") == ["yes"]
    assert answer_from_metadata(26, ["static noise"], meta, lead="V2") == ["no"]
    assert answer_from_metadata(32, ["baseline drift", "static noise"], meta) == ["static noise"]
    assert answer_from_metadata(33, ["baseline drift", "static noise"], meta, lead="V6") == ["none"]


@pytest.mark.parametrize("text, leads", [
    (" , I-AVF,  ", LEADS[:6]),
    (" , alles,  ", LEADS),
    ("alle Abl.,  ", LEADS),
    (" , V1,3,4,6", ("V1", "V3", "V4", "V6")),
    ("v5-6,  ", ("V5", "V6")),
    (" , 2", ("V2",)),
    ("I-ALF", LEADS[:6]),
    ("Kontaktprobleme aVL ???", ("aVL",)),
    (" , II,III.AVF,V3", ("II", "III", "aVF", "V3")),
    (" , leicht,  ", ()),
    (" , noisy recording,", ()),
    (float("nan"), ()),
])
def test_parse_noise_leads(text, leads):
    assert parse_noise_leads(text) == frozenset(leads)


@pytest.mark.parametrize("text, kinds", [
    ("SVES", {"supraventricular extrasystoles"}),
    ("VES1,alles", {"ventricular extrasystoles"}),
    ("VES,SVES", {"ventricular extrasystoles", "supraventricular extrasystoles"}),
    ("1ES", {"extrasystoles"}),
    ("2,V1", {"extrasystoles"}),
    ("1ES,SVES", {"extrasystoles", "supraventricular extrasystoles"}),
    ("SVES;alles", {"supraventricular extrasystoles"}),
    ("2ES(2Typen)", {"extrasystoles"}),
    ("period.", {"extrasystoles"}),
    (None, set()),
])
def test_parse_extra_systoles(text, kinds):
    assert parse_extra_systoles(text) == kinds


def test_infarction_stage_prefers_the_later_assessment():
    row = {"ecg_id": 9, "scp_codes": {"IMI": 100.0}, "infarction_stadium1": "Stadium I",
           "infarction_stadium2": "Stadium III"}
    assert answer_from_metadata(25, [], row) == ["old stage of myocardial infarction"]
    assert answer_from_metadata(25, [], {**row, "infarction_stadium2": None,
                                         "infarction_stadium1": "Stadium II-III"}) == [
        "middle stage of myocardial infarction"]
    assert answer_from_metadata(25, [], {"ecg_id": 10, "scp_codes": {}}) == ["none of myocardial infarction"]


# --- vocabulary and templates against the published files --------------------------------------------------------


def test_templates_match_the_published_templates():
    published = load_templates(ECGQA / "templates.csv")
    assert load_templates() == TEMPLATES
    per_template = pd.read_csv(ECGQA / "answers_for_each_template.csv")
    classes = {int(r.template_id): set(ast.literal_eval(r.classes)) for r in per_template.itertuples()}
    for template_id in range(1, 43):
        ours, theirs = TEMPLATES[template_id], published[template_id]
        assert (ours.question_type, ours.attribute_type, ours.wording) == (
            theirs.question_type, theirs.attribute_type, theirs.wording)
        assert set(ours.answer_classes) == set(theirs.answer_classes) == classes[template_id]


def test_vocabulary_follows_scp_statements():
    statements = pd.read_csv(PTBXL / "scp_statements.csv", index_col=0)
    for code, name in CODE_NAMES.items():
        description = statements.loc[code, "description"].lower().replace("digitalis-effect", "digitalis effect")
        description = description.replace("low amplitude t-waves", "low amplitude t-wave")
        description = description.replace(", sv or", ", supraventricular, or")
        if description.endswith(" myocardial infarction"):
            description = f"myocardial infarction in {description.removesuffix(' myocardial infarction')} leads"
        assert name == description, code
    classes = {"CD": "conduction disturbance", "HYP": "hypertrophy", "MI": "myocardial infarction",
               "STTC": "st/t change"}
    for short, name in classes.items():
        members = set(statements.index[statements["diagnostic_class"] == short]) - {"LAO/LAE", "RAO/RAE"}
        assert set(SUPERCLASSES[name]) == members


def test_answer_options():
    assert answer_options(1, ["sinus rhythm"]) == ["no", "not sure", "yes"]
    assert answer_options(30, ["burst noise", "static noise"]) == ["burst noise", "static noise", "none"]
    assert answer_options(38, []) == ["extrasystoles", "none", "supraventricular extrasystoles",
                                      "ventricular extrasystoles"]
    published = load_templates(ECGQA / "templates.csv")
    assert set(answer_options(8, [], published)) == set(published[8].answer_classes)


def test_question_lead():
    assert question_lead("Does this ECG show static noise in lead aVL?") == "aVL"
    assert question_lead("Which noise does this ECG show in lead II, static noise or baseline drift? Given") == "II"
    assert question_lead("Does this ECG show baseline drift?") is None


def test_question_types_of_the_real_questions(real_sample):
    """Serving tells a verify question by its options (and a choose question by "X or Y"): right on every published
    question of each type and on the paraphrased verify wordings ("Is", "Can", "Are ..."), offered what an evaluation
    offers (the answer classes, or a choose question's attributes and "none"), also typed by hand ("Yes.")."""
    paraphrased = load_questions([ECGQA / "paraphrased" / "train" / "120000.json"])
    seen = Counter()
    for q in [*real_sample, *paraphrased]:
        options = answer_options(q["template_id"], q["attribute"])
        verify = q["question_type"] == "single-verify"
        assert is_verify(options) == verify, q["question"]
        assert is_verify([f"{o.capitalize()}." for o in options]) == verify, q["question"]
        assert infer_question_type(q["question"], options) == q["question_type"], q["question"]
        seen[q["question"].split()[0], q["question_type"]] += 1
    assert {t for _, t in seen} == {"single-verify", "single-choose", "single-query"}
    assert {w for w, t in seen if t == "single-verify"} == {"Does", "Is", "Can", "Are"}


# --- generation ----------------------------------------------------------------------------------------------------


def test_generated_questions_have_the_published_shape(generated, signal_metadata):
    assert {q["template_id"] for q in generated} == supported_templates()
    assert [q["question_id"] for q in generated] == list(range(len(generated)))
    for q in generated:
        assert set(q) == PUBLISHED_KEYS | {"generated"} and q["generated"] is True
        template = TEMPLATES[q["template_id"]]
        assert (q["question_type"], q["attribute_type"]) == (template.question_type, template.attribute_type)
        assert q["answer"] and set(q["answer"]) <= set(template.answer_classes), q
        if q["question_type"] == "single-choose":
            assert len(q["attribute"]) == 2 and q["attribute"][0] != q["attribute"][1]
            assert set(q["answer"]) <= {*q["attribute"], "none"}
            assert f"{q['attribute'][0]} or {q['attribute'][1]}" in q["question"]
        meta = signal_metadata.row(q["ecg_id"][0])
        assert q["question"].endswith(meta.patient_suffix())
        assert "{" not in q["question"]


def test_generated_answers_pass_the_check(generated, signal_metadata):
    """Regenerating each answer from the question text (lead included) gives the stored answer."""
    result = check_against_real(generated, signal_metadata)
    assert result["n"] == len(generated) and result["agreement"] == 1.0


def test_generated_answers_are_balanced(generated):
    """Not all "no"/"none": verify and choose questions also ask about what the ECG shows."""
    for template_id in (1, 4, 6, 26, 30):
        answers = [q["answer"] for q in generated if q["template_id"] == template_id]
        assert any(a not in (["no"], ["none"]) for a in answers), template_id
        assert any(a in (["no"], ["none"]) for a in answers), template_id


def test_generation_is_deterministic(signal_metadata):
    ids = signal_metadata.ecg_ids()[:40]
    first = generate_questions(signal_metadata, ids, seed=3, per_template=10)
    assert first == generate_questions(signal_metadata, ids, seed=3, per_template=10)
    assert first != generate_questions(signal_metadata, ids, seed=4, per_template=10)
    assert len(first) == 10 * len(supported_templates())
    with pytest.raises(UnsupportedTemplate):
        generate_questions(signal_metadata, ids, templates=[1, 20])


def test_write_generated(tmp_path):
    out = tmp_path / "qa" / "generated.json"
    summary = write_generated(PTBXL, out, folds=[9], seed=0)
    questions = load_questions([tmp_path])  # directory, searched recursively
    fold9 = pd.read_csv(PTBXL / "ptbxl_database.csv").query("strat_fold == 9")
    assert summary["ecgs"] == len(fold9)
    assert summary["n"] == len(questions) == len(fold9) * len(supported_templates())
    assert sum(summary["by_type"].values()) == summary["n"]
    assert set(summary["templates"]) == {str(t) for t in supported_templates()}
    assert {q["ecg_id"][0] for q in questions} == set(fold9["ecg_id"])
    assert json.loads(out.read_text()) == questions


def test_metadata_row_parsing(all_metadata):
    meta = all_metadata.row(1)
    assert isinstance(meta, EcgMetadata) and meta.ecg_id == 1 and meta.sex == 1 and meta.age == 56.0
    assert all_metadata.row("1") is meta  # record ids are strings elsewhere in the package
    assert 1 in all_metadata and "1" in all_metadata and 10**7 not in all_metadata and "x" not in all_metadata
    assert len(all_metadata.ecg_ids([9])) < len(all_metadata)


# --- fitting the answerer from diagnoses ---------------------------------------------------------------------


def test_lead_question_share_on_the_real_lead_questions(real_sample, all_metadata):
    """Every published "... in lead X?" statement question (template 17) here is about an ECG that carries the
    statement, and every one is answered "no": the labels cannot tell the lead, so the fitted share is 0."""
    share, n = lead_question_share(real_sample, all_metadata, range(1, 10))
    assert n == sum(q["template_id"] == 17 for q in real_sample) > 20 and share == 0.0
    assert lead_question_share(real_sample, all_metadata, [])[1] == 0
    assert lead_question_share(real_sample, all_metadata, []) == (None, 0)


def test_band_edges_fitted_on_generated_questions(signal_metadata):
    """Diagnoses that repeat the ECG's own codes (0.8 if listed, 0.1 for a few that are not): the fitted edges put
    yes above 0.1 and at or below 0.8, and the answers from them reach ECG-QA's own answers almost always."""
    ids = signal_metadata.ecg_ids([1])[:120]
    questions = generate_questions(signal_metadata, ids, templates=FIT_TEMPLATES, seed=1)
    answerer = LabelVoteAnswerer(LabelVocabulary.from_scp_statements(default_scp_statements()))

    def diagnoses(ecg_id: int) -> list[Diagnosis]:
        codes = signal_metadata.row(ecg_id).scp_codes
        decoys = [c for c in ("AFIB", "IMI", "LVH", "STACH") if c not in codes]
        return [Diagnosis(c, "", "", 0.8, True, 0.5) for c in codes] + [Diagnosis(c, "", "", 0.1, False, 0.5)
                                                                          for c in decoys]

    evidence = [e for q in questions if (e := question_evidence(answerer, q, diagnoses(q["ecg_id"][0]))) is not None]
    assert {e[0] for e in evidence} == {"verify", "choose", "query"}
    settings, report = fit_answer_settings(evidence, lead_share=0.0, fitted_on="test")
    assert 0.1 < settings.verify_binary <= 0.8 and 0.1 < settings.verify_yes <= 0.8
    assert settings.choose is None or 0.1 < settings.choose <= 0.8
    assert settings.lead_share == 0.0 and settings.fitted_on == "test"
    assert set(settings.group_thresholds) == {"any kind of abnormal symptoms", "any diagnostic symptoms",
                                              "any diagnostic symptoms excluding uncertain",
                                              "any form related symptoms", "any rhythm related symptoms"}
    # Likelihoods below 100 ("not sure"), "excluding uncertain" and SR in the rhythm group are beyond these
    # diagnoses; the rest is right.
    assert report["verify_binary"]["exact_match"] > 0.9 and report["choose"]["exact_match"] > 0.8
    assert all(r["n"] > 0 for r in report.values())
