"""FHIR R4 output: bundles built from a real PTB-XL ECG and a result made of real PTB-XL rows (and measurements made
on real exports), validated against the R4B models of fhir.resources (8.x has no plain R4 package; these resources
are the same in R4 and R4B)."""

from __future__ import annotations

import ast
import base64
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from ecgregen.client import report_dict
from ecgregen.diagnoses import Diagnosis
from ecgregen.ecg import STANDARD_LEADS, Ecg
from ecgregen.ecg_files import read_ecg_bytes
from ecgregen.fhir import (
    CONCEPT_SYSTEM,
    LEAD_CODES,
    REPORT_EDIT_SYSTEM,
    SAMPLE_STEP_MV,
    SCP_SYSTEM,
    answer_bundle,
    report_bundle,
)
from ecgregen.measure import Measurements, measure
from ecgregen.messages import measurements_to_dict
from ecgregen.records import read_wfdb
from ecgregen.reports import translate
from ecgregen.reports.verify import ReportEdit
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import diagnosis_to_proto, measurements_to_proto, report_edits_to_proto
from tests.conftest import REPO, shared_ptbxl

QUERY_ID = "1"  # records100/00000/00001_lr
NEIGHBOUR_SCORES = {"2": 0.9312, "3": 0.9105, "8": 0.8871, "7": 0.8620}
SERVER = {"version": "0.1.0", "encoder_id": "ecg-fm-v1",
          "calibration": {"calibrated": True, "corpus_points": 17418, "created_at": "2026-11-30T10:00:00+00:00"}}
FORMATS = REPO.parent / "shared" / "data" / "formats"
SINUS = "muse_egm-muse-sinus_mv360_500hz.xml"  # a GE cart's sinus rhythm: every value measured
AF_LEADS_OFF = "edf_contec-ecg90a_0000050_12sig_800hz.edf"  # fast atrial fibrillation, chest leads off
LOINC = "http://loinc.org"
# Measurement field -> (LOINC code, UCUM unit), written out here so a changed code in the module fails a test.
MEASUREMENT_LOINC = {
    "heart_rate_bpm": ("8867-4", "/min"), "rr_interval_ms": ("8637-1", "ms"), "pr_interval_ms": ("8625-6", "ms"),
    "qrs_duration_ms": ("8633-0", "ms"), "qt_interval_ms": ("8634-8", "ms"), "qtc_bazett_ms": ("76635-2", "ms"),
    "qtc_fridericia_ms": ("76634-5", "ms"), "p_axis_deg": ("8626-4", "deg"), "qrs_axis_deg": ("8632-2", "deg"),
    "t_axis_deg": ("8638-9", "deg"),
}


@pytest.fixture(scope="module")
def ptbxl() -> Path:
    return shared_ptbxl()


@pytest.fixture(scope="module")
def ecg(ptbxl: Path) -> Ecg:
    return read_wfdb(ptbxl / "records100/00000/00001_lr")


@pytest.fixture(scope="module")
def result(ptbxl: Path) -> dict:
    """A report result shaped like client.report_dict: neighbours are real PTB-XL rows, diagnoses their
    similarity-weighted vote with PTB-XL's statement descriptions."""
    with (ptbxl / "ptbxl_database.csv").open() as f:
        rows = {r["ecg_id"]: r for r in csv.DictReader(f)}
    with (ptbxl / "scp_statements.csv").open() as f:
        statements = {r[""]: r for r in csv.DictReader(f)}
    neighbours = [{"ecg_id": i, "patient_id": rows[i]["patient_id"].removesuffix(".0"), "score": score,
                   "report": rows[i]["report"], "scp_codes": ast.literal_eval(rows[i]["scp_codes"]), "source": "ptbxl"}
                  for i, score in NEIGHBOUR_SCORES.items()]
    total = sum(NEIGHBOUR_SCORES.values())
    codes = sorted({c for n in neighbours for c in n["scp_codes"]})
    diagnoses = []
    for code in codes:
        probability = round(sum(n["score"] for n in neighbours if code in n["scp_codes"]) / total, 4)
        diagnoses.append({"code": code, "description": statements[code]["description"],
                          "superclass": statements[code]["diagnostic_class"], "probability": probability,
                          "present": probability >= 0.5, "threshold": 0.5})
    return {"report": neighbours[0]["report"], "report_mode": "nearest", "report_ecg_id": neighbours[0]["ecg_id"],
            "diagnoses": diagnoses, "neighbours": neighbours, "latency_ms": {"total": 12.5},
            "warnings": ["flat lead(s) aVF set to zero"], "encoder_id": "ecg-fm-v1"}


@pytest.fixture(scope="module")
def source(ptbxl: Path) -> dict:
    """File metadata as the reader gives it, without patient identifiers."""
    return {"format": "GE MUSE XML", "acquired_at": "1984-11-09T09:17:34+01:00",
            "device": {"manufacturer": "Schiller", "model": "CS-12", "serial_number": "A123", "software_version": "E"},
            "statements": ["Sinus rhythm", "Low QRS voltage"], "statements_source": "machine",
            "leads_derived": ["III", "aVR", "aVL", "aVF"], "duration_s": 10.0, "sampling_rate_hz": 100.0}


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[Measurements, dict]]:
    """Each recording's measurements, and the dict the CLI makes of them (through the wire, as a client gets them)."""
    if not FORMATS.is_dir():
        pytest.skip(f"format samples not found at {FORMATS}")
    out = {}
    for name in (SINUS, AF_LEADS_OFF):
        m = measure(read_ecg_bytes((FORMATS / name).read_bytes(), name=name).ecg)
        out[name] = m, measurements_to_dict(measurements_to_proto(m))
    return out


def verified_result(base: dict, ecg: Ecg) -> dict:
    """`base` turned into a verified report of `ecg` as a client receives it: `ecg`'s real measurements, three edits
    quoting them (a sentence removed because of a value, a measured finding added, a rhythm removed) and atrial
    fibrillation ruled out by the measured regular RR, sent through the wire helpers into a GenerateReportResponse
    and read back by the client's report_dict - the dict the CLI, the printed page and FHIR take. `ecg` must
    measure a regular rhythm and a QRS axis of at most +90 degrees (the edits say so)."""
    m = measure(ecg)
    rate, axis, rhythm = m.heart_rate_bpm, m.qrs_axis_deg, m.rhythm.replace("_", " ")
    assert rate is not None and axis is not None and axis <= 90 and m.rr_irregular is False
    edits = (
        ReportEdit("removed", "right axis deviation.", "qrs_axis_deg", axis,
                   f"measured QRS axis {axis:+.0f} degrees is not beyond +90"),
        ReportEdit("added", f"Rate {rate:.0f} bpm.", "heart_rate_bpm", rate,
                   f"measured rate {rate:.0f} bpm, out of range (60-100) and not stated"),
        ReportEdit("removed", "atrial fibrillation.", "rhythm", None, f"measured RR regular: {rhythm}"),
    )
    ruled_out = Diagnosis("AFIB", "atrial fibrillation", "", 0.62, False, 0.5,
                          decided_by=f"measured RR regular ({rhythm}): not atrial fibrillation")
    response = pb.GenerateReportResponse(
        report=f"Rate {rate:.0f} bpm. Otherwise normal ECG.", report_mode="verified",
        report_ecg_id=base["report_ecg_id"], report_edits=report_edits_to_proto(edits),
        diagnoses=[diagnosis_to_proto(ruled_out)], measurements=measurements_to_proto(m))
    verified = report_dict(response)
    return {**base, "report": verified["report"], "report_mode": "verified", "report_edits": verified["report_edits"],
            "diagnoses": [*base["diagnoses"], *verified["diagnoses"]], "measurements": verified["measurements"]}


def resources(bundle: dict, kind: str | None = None) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if kind in (None, e["resource"]["resourceType"])]


def by_url(bundle: dict) -> dict[str, dict]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def code_of(resource: dict, system: str) -> str | None:
    return next((c["code"] for c in resource["code"].get("coding", []) if c["system"] == system), None)


def assert_valid(bundle: dict) -> None:
    """The Bundle and each resource validate against R4B, fullUrls are unique, every urn:uuid reference resolves,
    and every status is one of R4's codes (fhir.resources checks types and cardinality, not code bindings)."""
    Bundle.model_validate(bundle)
    for resource in resources(bundle):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert resource.get("status", "final") in {"preliminary", "final"}
    urls = set(by_url(bundle))
    assert len(urls) == len(bundle["entry"])
    text = json.dumps(bundle)
    referenced = {part.split('"')[0] for part in text.split('"reference": "')[1:]}
    assert {r for r in referenced if r.startswith("urn:uuid:")} <= urls


def test_report_bundle_and_every_resource_validate_as_r4b(result: dict, ecg: Ecg, source: dict) -> None:
    """The full report bundle (ECG, file metadata, server info) validates and its references resolve."""
    bundle = report_bundle(result, ecg=ecg, source=source, server=SERVER)
    assert bundle["type"] == "collection"
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    assert_valid(bundle)
    assert_valid(report_bundle(result))  # the bare result alone, too


def test_report_carries_conclusion_present_codes_and_every_probability(result: dict) -> None:
    """Conclusion is the report text, one conclusionCode per present diagnosis, one result per diagnosis."""
    bundle = report_bundle(result)
    report = bundle["entry"][0]["resource"]
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["conclusion"] == result["report"]
    present = [d["code"] for d in result["diagnoses"] if d["present"]]
    assert [c["coding"][0]["code"] for c in report["conclusionCode"]] == present and present
    results = [by_url(bundle)[r["reference"]] for r in report["result"]]
    assert [code_of(o, SCP_SYSTEM) for o in results] == [d["code"] for d in result["diagnoses"]]
    for o, d in zip(results, result["diagnoses"], strict=True):
        assert o["valueQuantity"]["value"] == d["probability"]
        assert o["referenceRange"][0]["low"]["value"] == d["threshold"]
        assert o["interpretation"][0]["coding"][0]["code"] == ("POS" if d["present"] else "NEG")
        assert o["note"] == [{"text": "warning: flat lead(s) aVF set to zero"}]
    assert "flat lead(s) aVF" in base64.b64decode(report["presentedForm"][0]["data"]).decode()


def test_neighbours_are_evidence_with_ecg_id_score_and_report(result: dict) -> None:
    """Each diagnosis is derivedFrom every neighbour, which carries its ecg_id, similarity and report."""
    bundle = report_bundle(result)
    urls = by_url(bundle)
    diagnosis = urls[bundle["entry"][0]["resource"]["result"][0]["reference"]]
    evidence = [urls[r["reference"]] for r in diagnosis["derivedFrom"]]
    assert [e["identifier"][0]["value"] for e in evidence] == list(NEIGHBOUR_SCORES)
    for e, n in zip(evidence, result["neighbours"], strict=True):
        assert e["valueString"] == n["report"] and "subject" not in e
        assert e["component"][0]["valueQuantity"]["value"] == n["score"]
        assert {c["code"]["coding"][0]["code"] for c in e["component"][2:]} == set(n["scp_codes"])
    text = json.dumps(evidence)
    assert not [n["patient_id"] for n in result["neighbours"] if n["patient_id"] in text]  # other people's ids


def test_conclusion_is_in_the_served_language_and_the_original_a_second_form(result: dict) -> None:
    """Served in English (the default): the conclusion and the first presentedForm are the English report (language
    en) and the cart's German original is a second text/plain presentedForm with language de; each German
    neighbour keeps its filed report as value, with the English as a note. Served as written: the German is the
    conclusion and the only form, in its language."""
    neighbours = [{**n, "report_en": translate(n["report"]).text_en, "language": translate(n["report"]).language}
                  for n in result["neighbours"]]
    german = neighbours[0]["report"]
    english = {**result, "neighbours": neighbours, "report": neighbours[0]["report_en"], "report_language": "en",
               "original_report": german, "original_language": "de"}
    bundle = report_bundle(english)
    assert_valid(bundle)
    report = bundle["entry"][0]["resource"]
    assert german == "sinusbradykardie sonst normales ekg"
    assert report["conclusion"] == "sinus bradycardia. otherwise normal ecg."
    forms = report["presentedForm"]
    assert [(f["contentType"], f["language"]) for f in forms] == [("text/plain", "en"), ("text/plain", "de")]
    assert base64.b64decode(forms[0]["data"]).decode().startswith(report["conclusion"] + "\n")
    assert base64.b64decode(forms[1]["data"]).decode() == german and forms[1]["size"] == len(german.encode())
    evidence = [e for e in resources(bundle, "Observation") if e.get("identifier")]
    assert [(e["valueString"], e["note"]) for e in evidence] == [
        (n["report"], [{"text": f"In English: {n['report_en']}"}]) for n in neighbours]

    as_written = report_bundle({**english, "report": german, "report_language": "de"})["entry"][0]["resource"]
    assert as_written["conclusion"] == german
    assert [(f["language"], base64.b64decode(f["data"]).decode().split("\n")[0])
            for f in as_written["presentedForm"]] == [("de", german)]


def test_ecg_observation_decodes_to_the_signal_within_half_a_microvolt(result: dict, ecg: Ecg, source: dict) -> None:
    """12 MDC-coded leads whose data * factor + origin equals the signal within 0.5 µV, period 1000/rate ms."""
    bundle = report_bundle(result, ecg=ecg, source=source, include_patient=True)
    waveform = next(o for o in resources(bundle, "Observation") if "component" in o and "valueSampledData"
                    in o["component"][0])
    assert waveform["effectiveDateTime"] == "1984-11-09T09:17:34+01:00"
    assert [c["code"]["coding"][0]["code"] for c in waveform["component"]] == [str(LEAD_CODES[x]) for x in
                                                                               STANDARD_LEADS]
    for component, lead in zip(waveform["component"], ecg.signal, strict=True):
        sampled = component["valueSampledData"]
        assert sampled["period"] == pytest.approx(1000.0 / ecg.sampling_rate_hz) == 10.0
        decoded = np.array(sampled["data"].split(), dtype=float) * sampled["factor"] + sampled["origin"]["value"]
        assert decoded.shape == lead.shape
        np.testing.assert_allclose(decoded, lead, rtol=0, atol=SAMPLE_STEP_MV / 2 + 1e-6)


def test_no_patient_or_identifiers_without_source_patient(result: dict, ecg: Ecg, source: dict) -> None:
    """Without source.patient or a subject reference, no Patient, subject or patient identifier is emitted, even
    with include_patient."""
    bundle = report_bundle(result, ecg=ecg, source=source, server=SERVER, include_patient=True)
    assert not resources(bundle, "Patient")
    assert all("subject" not in r for r in resources(bundle))


# Elements that identify a person or one recording of them: none may be in a bundle made without include_patient.
IDENTIFYING_ELEMENTS = {"subject", "patient", "serialNumber", "effectiveDateTime", "effectiveInstant",
                        "effectivePeriod", "issued", "birthDate", "gender", "address", "telecom", "deceasedDateTime"}
IDENTIFYING_RESOURCES = {"Patient", "Person", "RelatedPerson"}


@pytest.fixture(scope="module")
def muse() -> dict:
    """Everything the reader gives of a GE MUSE export read with its identifiers: id, name, birth date, sex (in
    demographics), the cart's serial number and the acquisition date-time."""
    if not FORMATS.is_dir():
        pytest.skip(f"format samples not found at {FORMATS}")
    read = read_ecg_bytes((FORMATS / SINUS).read_bytes(), name=SINUS, include_patient=True)
    source = read.metadata.to_dict()
    assert source["patient"]["patient_id"] and source["demographics"]["sex"] == "M"
    assert source["device"]["serial_number"] and source["acquired_at"]
    return {"ecg": read.ecg, "source": source}


def keys_in(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_in(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_in(v)}
    return set()


def texts_in(value: object) -> list[str]:
    """Every string in a bundle but encoded data (base64 text, sample values), which is read separately."""
    if isinstance(value, dict):
        return [t for k, v in value.items() if k != "data" for t in texts_in(v)]
    if isinstance(value, list):
        return [t for v in value for t in texts_in(v)]
    return [value] if isinstance(value, str) else []


def test_default_bundles_of_a_real_file_hold_no_identifying_element(result: dict, muse: dict) -> None:
    """Without include_patient, report and answer bundles of a file read with all its identifiers hold no Patient,
    subject, serial number or acquisition time, and none of the file's identifying values anywhere (the issued
    text included) - nor the date and time of the earlier ECG its cart's statements compare with; the statements'
    clinical content stays."""
    source = muse["source"]
    answer = {**result, "answer": ["NORM"], "answerer": "labels", "rationale": "", "fallback_reason": ""}
    assert "When compared with ECG of 30-MAR-2023 09:09," in source["statements"]  # the file's own, as read
    identifying = [source["patient"]["patient_id"], source["patient"]["last_name"], source["patient"]["first_name"],
                   source["patient"]["birth_date"], source["device"]["serial_number"], source["acquired_at"][:10],
                   source["acquired_at"][11:16], "30-MAR-2023", "09:09"]
    for bundle in (report_bundle(result, ecg=muse["ecg"], source=source, server=SERVER),
                   answer_bundle(answer, "Normal ECG?", ecg=muse["ecg"], source=source, server=SERVER)):
        assert_valid(bundle)
        assert not {r["resourceType"] for r in resources(bundle)} & IDENTIFYING_RESOURCES
        assert not keys_in(bundle) & IDENTIFYING_ELEMENTS, keys_in(bundle) & IDENTIFYING_ELEMENTS
        issued = [base64.b64decode(f["data"]).decode() for r in resources(bundle) for f in r.get("presentedForm", [])]
        text = "\n".join([*texts_in(bundle), *issued])
        assert not [value for value in identifying if value in text]
        assert "When compared with ECG of [date not shown] [time not shown]," in text
        assert "Anterior infarct , age undetermined" in text
    kept = report_bundle(result, ecg=muse["ecg"], source=source, server=SERVER, include_patient=True)
    assert "30-MAR-2023 09:09" in "\n".join(texts_in(kept))  # identifiers asked for: the statements as written


def test_include_patient_gives_the_files_patient_with_gender_serial_number_and_time(result: dict, muse: dict) -> None:
    """With include_patient, a real file's identifiers become the Patient - gender from the reader's demographics -
    and the recorder's serial number and the acquisition time are kept."""
    source = muse["source"]
    bundle = report_bundle(result, ecg=muse["ecg"], source=source, server=SERVER, include_patient=True)
    assert_valid(bundle)
    [person] = resources(bundle, "Patient")
    assert person["identifier"] == [{"value": source["patient"]["patient_id"]}] and person["gender"] == "male"
    assert person["birthDate"] == source["patient"]["birth_date"]
    [recorder] = [d for d in resources(bundle, "Device") if d["type"]["text"] == "Electrocardiograph"]
    assert recorder["serialNumber"] == source["device"]["serial_number"]
    report = bundle["entry"][0]["resource"]
    assert report["effectiveDateTime"] == source["acquired_at"][:10]  # a local time without offset: its date
    assert by_url(bundle)[report["subject"]["reference"]] is person


def test_source_patient_becomes_subject_of_report_and_its_observations(result: dict, source: dict) -> None:
    """With include_patient, source.patient (and the sex of source.demographics, where the reader puts it) gives
    one Patient (identifier, name, birthDate, gender) that report and diagnoses point at."""
    patient = {"patient_id": "15709", "first_name": "Anna", "last_name": "Muster", "birth_date": "1928-03-01"}
    bundle = report_bundle(result, source={**source, "patient": patient, "demographics": {"sex": "F", "age": 56}},
                           include_patient=True)
    assert_valid(bundle)
    [person] = resources(bundle, "Patient")
    assert person["identifier"] == [{"value": "15709"}] and person["gender"] == "female"
    assert person["name"] == [{"family": "Muster", "given": ["Anna"]}] and person["birthDate"] == "1928-03-01"
    url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is person)
    report = bundle["entry"][0]["resource"]
    assert report["subject"] == {"reference": url}
    assert all(by_url(bundle)[r["reference"]]["subject"] == {"reference": url} for r in report["result"])


def test_subject_reference_is_used_without_a_patient_resource(result: dict) -> None:
    """A caller's subject reference is used as is and no Patient resource is added."""
    bundle = report_bundle(result, subject="Patient/abc-123")
    assert bundle["entry"][0]["resource"]["subject"] == {"reference": "Patient/abc-123"}
    assert not resources(bundle, "Patient")
    assert_valid(bundle)


def test_devices_carry_encoder_corpus_and_recorder(result: dict, ecg: Ecg, source: dict) -> None:
    """The encoder Device names the encoder and corpus version; the recorder Device is the ECG's device (its serial
    number only with include_patient)."""
    bundle = report_bundle(result, ecg=ecg, source=source, server=SERVER, include_patient=True)
    urls = by_url(bundle)
    encoder = urls[urls[bundle["entry"][0]["resource"]["result"][0]["reference"]]["device"]["reference"]]
    assert encoder["deviceName"][0]["name"] == "ecg-fm-v1"
    versions = {v["type"]["text"]: v["value"] for v in encoder["version"]}
    assert versions["service"] == "0.1.0" and versions["corpus-points"] == "17418"
    assert versions["calibration-created-at"] == SERVER["calibration"]["created_at"]
    recorder = next(d for d in resources(bundle, "Device") if d is not encoder)
    assert recorder["manufacturer"] == "Schiller" and recorder["serialNumber"] == "A123"


def test_machine_statements_are_kept_as_their_own_observation(result: dict, source: dict) -> None:
    """The recording's own statements are one preliminary Observation listed in the report's results."""
    bundle = report_bundle(result, source=source)
    urls = by_url(bundle)
    observations = [urls[r["reference"]] for r in bundle["entry"][0]["resource"]["result"]]
    [statements] = [o for o in observations if o.get("valueString")]
    assert statements["valueString"] == "Sinus rhythm\nLow QRS voltage"
    assert statements["status"] == "preliminary" and "machine" in statements["method"]["text"]


def test_local_time_without_offset_keeps_only_the_date(result: dict, source: dict) -> None:
    """An acquisition time without a UTC offset (invalid as a FHIR dateTime) is reduced to its date."""
    bundle = report_bundle(result, source={**source, "acquired_at": "1984-11-09T09:17:34"}, include_patient=True)
    assert bundle["entry"][0]["resource"]["effectiveDateTime"] == "1984-11-09"
    assert_valid(bundle)


def test_answer_bundle_carries_question_answer_and_evidence(result: dict, ecg: Ecg, source: dict) -> None:
    """The answer Observation has the question as code, the answers as value, answerer and rationale."""
    answer = {"answer": ["IMI", "NORM"], "answerer": "labels", "rationale": "majority of 4 neighbours",
              "diagnoses": result["diagnoses"], "neighbours": result["neighbours"], "latency_ms": {"total": 9.0},
              "warnings": [], "fallback_reason": "", "llm_model": ""}
    question = "Which diagnostic statements does this ECG show?"
    bundle = answer_bundle(answer, question, ecg=ecg, source=source, server=SERVER)
    assert_valid(bundle)
    observation = bundle["entry"][0]["resource"]
    assert observation["code"] == {"text": question} and observation["valueString"] == "IMI; NORM"
    assert observation["method"] == {"text": "answerer: labels"}
    assert observation["note"] == [{"text": "rationale: majority of 4 neighbours"}]
    derived = {by_url(bundle)[r["reference"]]["resourceType"] for r in observation["derivedFrom"]}
    assert derived == {"Observation"} and len(observation["derivedFrom"]) == len(answer["diagnoses"]) + 2 + 4
    assert not resources(bundle, "DiagnosticReport")


def test_bundles_are_deterministic(result: dict, ecg: Ecg, source: dict) -> None:
    """Two builds from the same inputs give identical bundles (content-derived uuid5 ids)."""
    assert report_bundle(result, ecg=ecg, source=source) == report_bundle(result, ecg=ecg, source=source)


def test_module_imports_no_heavy_libraries() -> None:
    """Importing ecgregen.fhir pulls in no torch, scipy, pandas, grpc or fhir.resources."""
    code = ("import sys, ecgregen.fhir; heavy = {'torch', 'scipy', 'pandas', 'grpc', 'fhir'} & "
            "{m.split('.')[0] for m in sys.modules}; print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def report_results(bundle: dict) -> list[dict]:
    urls = by_url(bundle)
    return [urls[r["reference"]] for r in bundle["entry"][0]["resource"]["result"]]


@pytest.mark.parametrize("name", [SINUS, AF_LEADS_OFF])
def test_measurements_are_loinc_coded_results_in_ucum_units(result: dict, source: dict, measured: dict,
                                                            name: str) -> None:
    """One result Observation per value (LOINC code, UCUM unit, the measured number) linked like the diagnoses;
    an unmeasured value has no number, only a dataAbsentReason carrying the stage's reason."""
    m, wire = measured[name]
    bundle = report_bundle({**result, "measurements": wire}, source=source, server=SERVER, subject="Patient/p7",
                           include_patient=True)
    assert_valid(bundle)
    assert_valid(answer_bundle({**result, "answer": ["yes"], "answerer": "labels", "measurements": wire}, "AF?"))
    results = report_results(bundle)
    diagnosis = results[0]
    by_loinc = {c["code"]: o for o in results for c in o["code"].get("coding", []) if c["system"] == LOINC}
    for field, (code, unit) in MEASUREMENT_LOINC.items():
        o = by_loinc[code]
        assert o["status"] == "preliminary"
        assert [o.get(k) for k in ("subject", "effectiveDateTime", "device")] == \
            [diagnosis[k] for k in ("subject", "effectiveDateTime", "device")]
        assert o["category"][0]["coding"][0]["code"] == "procedure"
        value = m.value(field)
        if value is None:
            assert not [key for key in o if key.startswith("value")]
            assert o["dataAbsentReason"]["coding"][0]["code"] == "unknown"
            assert o["dataAbsentReason"]["text"] == m.missing[field]
        else:
            assert "dataAbsentReason" not in o
            quantity = o["valueQuantity"]
            assert (quantity["system"], quantity["code"]) == ("http://unitsofmeasure.org", unit)
            assert quantity["value"] == pytest.approx(value, abs=1e-3)
    heart_rate = by_loinc["8867-4"]
    assert {c["coding"][0]["code"] for c in heart_rate["category"]} == {"procedure", "vital-signs"}
    assert by_loinc["76635-2"] is by_loinc["8636-3"]  # Bazett's QTc also carries the generic QTc code
    p_duration = next(o for o in results if o["code"].get("text") == "P wave duration")
    assert p_duration["code"]["coding"][0] == {"system": "urn:iso:std:iso:11073:10101", "code": "147256",
                                               "display": "MDC_ECG_TIME_PD_P_GL"}
    assert ("valueQuantity" in p_duration) == (m.p_duration_ms is not None)


def test_sinus_rhythm_fully_measured_on_a_cart_export(result: dict, measured: dict) -> None:
    """The GE export: every value has a number, rhythm is SNOMED CT sinus rhythm, every lead's quality is ok."""
    m, wire = measured[SINUS]
    assert not m.missing
    results = report_results(report_bundle({**result, "measurements": wire}))
    assert not [o for o in results if "dataAbsentReason" in o]
    [rhythm] = [o for o in results if o["code"]["coding"][0]["code"] == "rhythm"]
    assert rhythm["valueCodeableConcept"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "426783006",
                                                           "display": "Sinus rhythm"}
    [quality] = [o for o in results if o["code"]["coding"][0]["code"] == "lead-quality"]
    assert quality["valueString"] == "all leads ok"
    assert [c["code"]["text"] for c in quality["component"]] == list(STANDARD_LEADS)


def test_atrial_fibrillation_with_leads_off_gives_no_p_wave_numbers(result: dict, measured: dict) -> None:
    """The Contec EDF (fast AF, chest electrodes off): PR, P duration and P axis are absent with the reason, never
    0; the rhythm is SNOMED CT atrial fibrillation with its RR evidence; V1-V6 are flagged in the quality."""
    m, wire = measured[AF_LEADS_OFF]
    assert m.rhythm == "atrial_fibrillation" and {"pr_interval_ms", "p_axis_deg"} <= set(m.missing)
    results = report_results(report_bundle({**result, "measurements": wire}))
    absent = {o["code"]["text"]: o["dataAbsentReason"]["text"] for o in results if "dataAbsentReason" in o}
    assert absent["PR interval"] == m.missing["pr_interval_ms"]
    assert absent["P axis (frontal plane)"] == m.missing["p_axis_deg"]
    [rhythm] = [o for o in results if o["code"]["coding"][0]["code"] == "rhythm"]
    assert rhythm["valueCodeableConcept"]["coding"][0]["code"] == "164889003"
    parts = {c["code"]["coding"][0]["code"]: c for c in rhythm["component"]}
    assert parts["p-waves-present"]["valueBoolean"] is False and parts["rr-irregular"]["valueBoolean"] is True
    assert parts["beat-count"]["valueInteger"] == m.beat_count
    assert parts["rr-min"]["valueQuantity"]["value"] == pytest.approx(m.rr_min_ms, abs=1e-3)
    [quality] = [o for o in results if o["code"]["coding"][0]["code"] == "lead-quality"]
    flags = {c["code"]["text"]: c["valueString"] for c in quality["component"]}
    assert all("lead_off" in flags[lead] for lead in ("V1", "V2", "V3", "V4", "V5", "V6"))
    assert "V1: " in quality["valueString"]


def test_report_edits_are_result_observations_with_sentence_action_measurement_and_reason(result: dict,
                                                                                         ecg: Ecg) -> None:
    """A verified report's bundle validates; each edit is a "report edit" Observation among the report's results,
    in order: valueString the sentence, the action coded, the deciding measurement coded as its own Observation is
    with its value (none for the rhythm), the reason as a note, derivedFrom that measurement's Observation; the
    issued text lists the edits under the report."""
    verified = verified_result(result, ecg)
    bundle = report_bundle(verified, ecg=ecg, server=SERVER)
    assert_valid(bundle)
    urls = by_url(bundle)
    results = report_results(bundle)
    observed = [o for o in results if o["code"].get("text") == "report edit"]
    assert len(observed) == len(verified["report_edits"]) == 3
    for o, edit in zip(observed, verified["report_edits"], strict=True):
        assert o["status"] == "preliminary" and o["valueString"] == edit["sentence"]
        action, measurement = o["component"]
        assert action["valueCodeableConcept"]["coding"][0] == {"system": REPORT_EDIT_SYSTEM, "code": edit["action"]}
        assert o["note"] == [{"text": edit["reason"]}]
        [source] = [urls[r["reference"]] for r in o["derivedFrom"]]
        assert measurement["code"]["coding"] == source["code"]["coding"]  # coded as the measurement it quotes
        if edit["value"] is None:
            assert "valueQuantity" not in measurement and code_of(source, CONCEPT_SYSTEM) == "rhythm"
        else:
            assert measurement["valueQuantity"]["value"] == edit["value"] == source["valueQuantity"]["value"]
    assert [code_of(urls[o["derivedFrom"][0]["reference"]], LOINC) for o in observed[:2]] == ["8632-2", "8867-4"]
    text = base64.b64decode(bundle["entry"][0]["resource"]["presentedForm"][0]["data"]).decode()
    assert all(f'{e["action"]} "{e["sentence"]}": {e["reason"]}' in text for e in verified["report_edits"])


def test_a_diagnosis_decided_by_a_measurement_says_so_in_its_method(result: dict, ecg: Ecg) -> None:
    """The diagnosis a measurement ruled out is NEG whatever its probability and names the measurement as its
    method; diagnoses decided by their probability have no method."""
    verified = verified_result(result, ecg)
    results = report_results(report_bundle(verified))
    diagnoses = {code_of(o, SCP_SYSTEM): o for o in results if code_of(o, SCP_SYSTEM)}
    [decided] = [d for d in verified["diagnoses"] if d.get("decided_by")]
    observation = diagnoses.pop(decided["code"])
    assert observation["interpretation"][0]["coding"][0]["code"] == "NEG"
    assert observation["valueQuantity"]["value"] > observation["referenceRange"][0]["low"]["value"]
    assert decided["decided_by"] in observation["method"]["text"]
    assert not [o for o in diagnoses.values() if "method" in o]
