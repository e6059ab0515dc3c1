"""The statements report (issue 26): cart order, evidence per sentence, nothing said against a measurement."""

from __future__ import annotations

from ecgregen.diagnoses import Diagnosis, load_statements
from ecgregen.measure.types import Measurements, Rhythm
from ecgregen.reports.statements import BORDERLINE, NO_FINDING, SECTIONS, statement_report


def diagnoses(**probabilities: float) -> list[Diagnosis]:
    """Diagnoses with PTB-XL's own descriptions; present at probability >= 0.5."""
    statements = load_statements()
    return [Diagnosis(code, statements[code].description, statements[code].superclass, p, p >= 0.5, 0.5)
            for code, p in probabilities.items()]


def test_every_ptbxl_statement_has_a_section() -> None:
    """Each of PTB-XL's 71 SCP statements but NORM (the closing line's evidence) is stated in exactly one section:
    a present diagnosis is never silently dropped."""
    placed = [code for _, codes in SECTIONS for code in codes]
    assert len(placed) == len(set(placed))
    assert set(load_statements()) - {"NORM"} == set(placed)
    assert BORDERLINE <= set(placed)


def test_sentences_follow_cart_order_and_carry_their_evidence() -> None:
    """Rhythm, conduction, a deviated axis, ST-T and the closing line, in that order; each sentence names its codes
    and probabilities and quotes the values its finding rests on (PR with the AV block, a long QTc even without
    a code); values within their ranges (rate 72, QRS 96) stay on the measurement line."""
    m = Measurements(heart_rate_bpm=72.0, pr_interval_ms=232.0, qrs_duration_ms=96.0, qtc_bazett_ms=492.0,
                     qrs_axis_deg=-45.0, rhythm=Rhythm.SINUS)
    report = statement_report(diagnoses(SR=0.9, **{"1AVB": 0.7}, LAFB=0.6, NDT=0.55, NORM=0.2), m)
    assert [s.section for s in report.statements] == ["rhythm", "conduction", "axis", "st_t", "summary"]
    rhythm, conduction, axis, st_t, summary = report.statements
    assert rhythm.text == "sinus rhythm" and rhythm.codes == {"SR": 0.9} and not rhythm.measured
    assert conduction.codes == {"1AVB": 0.7, "LAFB": 0.6} and conduction.measured == {"pr_interval_ms": 232.0}
    assert conduction.text.endswith("(PR 232 ms)") and "QRS" not in conduction.text
    assert axis.text == "left axis deviation (-45 degrees)" and axis.measured == {"qrs_axis_deg": -45.0}
    assert st_t.codes == {"NDT": 0.55} and st_t.measured == {"qtc_bazett_ms": 492.0} and "QTc 492 ms" in st_t.text
    assert summary.text == "abnormal ECG" and report.closing == "abnormal ECG"
    assert report.text.startswith("Sinus rhythm. First degree AV block, left anterior fascicular block (PR 232")
    normal = statement_report(diagnoses(SR=0.9, NORM=0.8), Measurements(heart_rate_bpm=72.0, qrs_axis_deg=40.0,
                                                                          rhythm=Rhythm.SINUS))
    assert normal.text == "Sinus rhythm. Normal ECG."


def test_a_rhythm_the_measured_rate_contradicts_is_withheld() -> None:
    """Sinus bradycardia at a measured 75 bpm is not said (withheld with the reason); at 45 bpm it is."""
    fast = statement_report(diagnoses(SBRAD=0.6), Measurements(heart_rate_bpm=75.0, rhythm=Rhythm.SINUS))
    assert "SBRAD" in fast.withheld and "75 bpm" in fast.withheld["SBRAD"]
    assert not any("SBRAD" in s.codes for s in fast.statements) and "bradycardia" not in fast.text
    slow = statement_report(diagnoses(SBRAD=0.6), Measurements(heart_rate_bpm=45.0,
                                                                 rhythm=Rhythm.SINUS_BRADYCARDIA))
    assert not slow.withheld and slow.statements[0].text == "sinus bradycardia (rate 45 bpm)"


def test_normal_only_with_norm_and_nothing_abnormal() -> None:
    """NORM + SR -> normal; NORM beside a minor finding -> borderline; a major one -> abnormal; no NORM and
    nothing else -> not confirmed normal."""
    m = Measurements(heart_rate_bpm=70.0, rhythm=Rhythm.SINUS)
    assert statement_report(diagnoses(NORM=0.8, SR=0.9), m).closing == "normal ECG"
    assert statement_report(diagnoses(NORM=0.8, SR=0.9, SARRH=0.6), m).closing == "borderline ECG"
    assert statement_report(diagnoses(NORM=0.8, SR=0.9, CLBBB=0.7), m).closing == "abnormal ECG"
    assert statement_report(diagnoses(SR=0.9, NORM=0.3), m).closing == NO_FINDING


def test_without_measurements_the_diagnoses_alone_are_stated() -> None:
    """Measuring failed: the present codes are stated, no value is quoted, nothing is withheld."""
    report = statement_report(diagnoses(AFIB=0.8, CRBBB=0.7), None)
    assert [s.section for s in report.statements] == ["rhythm", "conduction", "summary"]
    assert all(not s.measured for s in report.statements) and not report.withheld
    assert report.text == "Atrial fibrillation. Complete right bundle branch block. Abnormal ECG."
