"""`ecgregen evaluate measurements`: the tolerance verdicts, the PTB-XL annotations as parsed (rows checked by hand
in the csv), and the command on the real formats folder and a slice of the demo corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecgregen.ecg import STANDARD_LEADS
from ecgregen.ecg_files import read_ecg_file
from ecgregen.evaluate.measurement_tables import fold_heading
from ecgregen.evaluate.measurements import (
    CART_COMPARISONS,
    EXTREME,
    LEFT,
    NORMAL,
    RIGHT,
    ExtraBeats,
    axis_class,
    binary_scores,
    difference,
    evaluate_measurements,
    load_annotated,
    parse_leads,
    within_tolerance,
)
from tests.conftest import DEMO_PTBXL, REPO, shared_ptbxl
from tests.test_cli import run

FORMATS = REPO.parent / "shared" / "data" / "formats"
BY_LABEL = {c.label: c for c in CART_COMPARISONS}


def test_tolerance_verdicts_on_values_from_the_readme_cart_table() -> None:
    rate, qrs_axis, t_axis, qt = BY_LABEL["rate"], BY_LABEL["QRS axis"], BY_LABEL["T axis"], BY_LABEL["QT"]
    # GE MUSE states rate 90 bpm, QT 402 ms, QRS axis 0, T axis 111.
    assert within_tolerance(92, 90, rate) and within_tolerance(93, 90, rate)
    assert not within_tolerance(95, 90, rate) and not within_tolerance(None, 90, rate)
    assert within_tolerance(430, 402, qt) and not within_tolerance(440, 402, qt)
    assert within_tolerance(-19, 0, qrs_axis) and not within_tolerance(-25, 0, qrs_axis)
    # Angles on the circle: 179 and -179 are 2 degrees apart, either way round.
    assert difference(179, -179, circular=True) == pytest.approx(-2)
    assert difference(-179, 179, circular=True) == pytest.approx(2)
    assert within_tolerance(179, -179, qrs_axis)
    assert not within_tolerance(-150, 111, t_axis)  # 99 degrees the short way
    assert difference(95, 90) == 5 and difference(-61, 44) == -105  # not circular: plain differences


def test_axis_classes_and_scores() -> None:
    assert [axis_class(a) for a in (-30, -31, 90, 91, 180, -91, 270, None)] == [
        NORMAL, LEFT, NORMAL, RIGHT, RIGHT, EXTREME, LEFT, None]
    s = binary_scores([True, True, False, False, False], [True, False, True, False, False])
    assert (s.precision, s.recall, s.f1, s.accuracy) == (0.5, 0.5, 0.5, 0.6)
    assert s.majority_accuracy == 0.6 and s.always_present_f1 == pytest.approx(2 * 2 / 7)
    assert "held out" in fold_heading([9]) and "in-sample" in fold_heading(range(1, 9))


def test_lead_notes_as_parsed() -> None:
    assert parse_leads(float("nan")) == frozenset() and parse_leads(" , ") == frozenset()
    assert parse_leads(" , I-AVR,  ") == {"I", "II", "III", "aVR"}
    assert parse_leads(" , alles, noisy recording,") == set(STANDARD_LEADS)
    assert parse_leads(" , leicht,  ") is None and parse_leads(" , noisy recording,") is None


def test_demo_corpus_annotations_as_in_its_csv() -> None:
    """Fold 9 rows of ecgregen/demo_corpus/ptbxl/ptbxl_database.csv, read by hand."""
    rows = {a.ecg_id: a for a in load_annotated(DEMO_PTBXL, [9])}
    assert rows["11362"].noise["static_noise"] is None  # " , noisy recording,": noted, leads not named
    assert rows["11362"].noise["baseline_drift"] == {"III", "aVF"}  # " , III,AVF"
    assert rows["11362"].rhythm_codes == {"SARRH"}
    assert rows["9584"].noise["static_noise"] == {"I", "II", "III", "aVR", "aVL", "aVF"}  # " , I-AVF,  "
    assert rows["11045"].noise["static_noise"] == set(STANDARD_LEADS)  # " , alles,  "
    assert rows["11045"].axis == ("ARAD", RIGHT) and rows["11045"].rhythm_codes == {"AFIB"}
    assert rows["11045"].extra_beats == ExtraBeats(True, None, None)  # "2ES": kind not said
    assert rows["3337"].extra_beats == ExtraBeats(True, None, None)  # "ES"
    assert rows["143"].pacemaker  # "ja, pacemaker", SCP PACE
    assert rows["17"].rhythm_codes == {"AFLT", "AFIB"} and rows["17"].axis == ("ALAD", LEFT)
    assert rows["18"].axis == ("LAD (Linkstyp)", NORMAL)  # report: "... linkstyp st-senkung ..."
    assert rows["5161"].axis == ("MID", NORMAL) and rows["5161"].noise["burst_noise"] == frozenset()
    assert rows["368"].extra_beats == ExtraBeats(False, False, False) and not rows["368"].pacemaker


def test_shared_ptbxl_annotations_as_in_its_csv() -> None:
    """The odd spellings of the shared ptbxl_database.csv, rows read by hand."""
    rows = {a.ecg_id: a for a in load_annotated(shared_ptbxl(), range(1, 10))}
    assert rows["475"].noise["burst_noise"] == {"V2", "V3"}  # "V2,3"
    assert rows["3019"].noise["burst_noise"] == {"V3", "V6"}  # "v3,6"
    assert rows["16471"].noise["burst_noise"] == set(STANDARD_LEADS)  # "alle Abl."
    assert rows["283"].noise["baseline_drift"] == {"V5", "V6"}  # "v5-6,  "
    assert rows["199"].noise["baseline_drift"] == {"V1", "V6"}  # " , V1V6"
    assert rows["200"].noise["baseline_drift"] == set(STANDARD_LEADS) - {"I"}  # " , II-V6"
    assert rows["412"].noise["static_noise"] == {"I", "II", "aVR", "aVL", "aVF", "V1"}  # " , I,II,AVR,AVL.AVF,V1,  "
    assert rows["10457"].noise["static_noise"] == {"I", "II", "III", "aVR"}  # " , I - AVR,  "
    assert rows["211"].noise["static_noise"] is None  # " , leicht,  "
    assert rows["19299"].noise["electrodes_problems"] == {"V3", "V4", "V5", "V6"}  # "V3,V4-V6"
    assert rows["8238"].extra_beats == ExtraBeats(True, True, True)  # "VES,SVES"
    assert rows["118"].extra_beats == ExtraBeats(True, False, True)  # "SVES"
    assert rows["15"].extra_beats == ExtraBeats(True, None, None)  # "1ES"
    assert rows["6448"].extra_beats == ExtraBeats(True, None, None)  # "1,V1": V1 is where, not which kind
    assert rows["9574"].pacemaker  # "ja, nan"
    assert rows["7"].axis == ("LAD (Linkstyp)", NORMAL)  # "sinusrhythmus linkstyp t abnormal, ..."


def test_unknown_section_is_refused() -> None:
    with pytest.raises(ValueError, match="--sections"):
        evaluate_measurements(["carts", "rhythm"], formats_dir=FORMATS, ptbxl=DEMO_PTBXL, folds=[9])


def test_command_carts_table_on_the_real_formats_folder(tmp_path: Path) -> None:
    if not FORMATS.is_dir():
        pytest.skip(f"no formats folder at {FORMATS}")
    stating = {p.name for p in FORMATS.iterdir() if p.suffix != ".md"
               and {c.cart_key for c in CART_COMPARISONS} & read_ecg_file(p).metadata.measurements.keys()}
    assert len(stating) == 6  # the README's table
    out = run("evaluate", "measurements", "--sections", "carts", "--formats", str(FORMATS),
              "--json", str(tmp_path / "m.json"))
    result = json.loads((tmp_path / "m.json").read_text())["carts"]
    tables = {f["file"] for f in result["files"] if f["rows"]}
    assert tables == stating
    for name in stating:
        assert f"### {name} (" in out.stdout
    same = {f["file"]: f["ecg"] for f in result["files"]}
    copies = ("hl7aecg_hl7-2003-example_mortara_12lead_500hz.xml", "scp_ecgtoolkit-example_12lead_500hz.scp",
              "dicom_ecgtoolkit-example_12lead_500hz_padding0.dcm")
    assert len({same[name] for name in copies}) == 1 and result["summary"]["ecgs"] == 4
    # The aECG states PR, QRS, QT and three axes; its copies add nothing new: 6 pairs for that ECG, not 12.
    assert sum(p["ecg"] == same[copies[0]] for p in result["pairs"]) == 6
    for f in result["files"]:
        for row in f["rows"]:
            tolerance = BY_LABEL[row["measurement"]].tolerance
            assert row["within"] == (row["difference"] is not None and abs(row["difference"]) <= tolerance)
    assert "Within tolerance:" in out.stdout and "Max rate error:" in out.stdout
    rr_rate = next(r for f in result["files"] if f["file"].startswith("dicom_pydicom") for r in f["rows"]
                   if r["measurement"] == "rate")
    assert rr_rate["cart"] == pytest.approx(60000 / 982) and "RR 982" in rr_rate["cart_source"]


def test_command_ptbxl_section_on_a_demo_slice(tmp_path: Path) -> None:
    out = run("evaluate", "measurements", "--sections", "ptbxl", "--ptbxl", str(DEMO_PTBXL), "--folds", "9",
              "--limit", "12", "--json", str(tmp_path / "m.json"))
    result = json.loads((tmp_path / "m.json").read_text())["ptbxl"]
    assert result["records"] == 12 and len(result["per_record"]) == 12
    assert [int(r["ecg_id"]) for r in result["per_record"]] == sorted(int(r["ecg_id"]) for r in result["per_record"])
    assert not result["failed"], result["failed"]
    for heading in ("### Heart axis", "### Signal quality", "### Extra beats", "### Rhythm"):
        line = next(line for line in out.stdout.splitlines() if line.startswith(heading))
        assert "fold 9, held out" in line
    assert "units NU" in out.stdout and "Nothing in the measurement stage was fitted on these records" in out.stdout
    assert "measuring" in out.stderr  # the progress line
    assert set(result["rhythm"]["per_code"]) >= {"SR", "SBRAD", "STACH", "SARRH", "AFIB"}
