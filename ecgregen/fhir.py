"""FHIR R4 resources for the service's answers, so a hospital EHR can file a report or an answer with its evidence.

:func:`report_bundle` and :func:`answer_bundle` return plain JSON-ready dicts (a ``Bundle`` of type
``collection``): no pydantic or FHIR library runs here, and this imports only numpy and :mod:`ecgregen.ecg`.
The shapes validate against the R4B models of ``fhir.resources`` (8.x ships R5, R4B and STU3, no plain R4; every
element used here is the same in R4 and R4B).

Judgement calls, and why:

* **Status "preliminary"** on the DiagnosticReport and on every Observation computed by the service: the text and
  the probabilities come from nearest-neighbour retrieval (optionally reworded by an LLM) with no clinician in the
  loop. FHIR's "final" means the result is complete and verified; an automated read awaiting over-read is what
  "preliminary" is for. Neighbours are "final": each is a corpus ECG with its cardiologist's filed report.
* **SCP-ECG statements** (PTB-XL's acronyms: NORM, IMI, AFIB, ...) have no FHIR code system, and no OID for these
  acronyms could be confirmed, so they use the project system :data:`SCP_SYSTEM` under the reserved ``.invalid``
  domain: clearly local, never mistaken for a registered terminology, and easy to map once a site has one.
* **Leads** use ISO/IEEE 11073-10101 (MDC) under FHIR's canonical URI ``urn:iso:std:iso:11073:10101`` (the HL7 v3
  OID ``urn:oid:2.16.840.1.113883.6.24`` names the same system): the waveform is ``MDC_ECG_ELEC_POTL`` (131328),
  each lead its ``MDC_ECG_ELEC_POTL_<lead>`` code, as in the HL7 Point-of-Care Device IG's ECG example.
  (131073... are ``MDC_ECG_LEAD_*``, the lead *names*, not the potentials a SampledData carries.)
* **Samples** are integers with ``factor`` :data:`SAMPLE_STEP_MV` (1 µV): compact, and within 0.5 µV of the signal,
  far below any ECG recorder's resolution. Origin 0 mV, ``period`` = 1000 / rate in ms. The ECG is taken to be mV.
* **Evidence**: R4 DiagnosticReport has no ``supportingInfo`` (R5 only) and no ``note``. Each retrieved neighbour is
  an Observation (identifier = its ecg_id under a per-source system, value = its report, components = similarity,
  rank and its SCP codes with PTB-XL likelihoods, in %), and each diagnosis Observation lists them in ``derivedFrom``
  (a probability is a similarity-weighted vote of exactly these neighbours). Neighbours carry no subject and not
  their patient_id: they are other people, and ecg_id + source is enough to trace them in the corpus.
* **Device**: R4 ``DiagnosticReport.performer`` cannot reference a Device, so the encoder + corpus Device is the
  ``device`` of every Observation the service computed; the recording device (from the file) is the ECG's.
* **Machine statements** of the recording are an Observation of their own (method = who made them; "final" once
  over-read or confirmed), so the device's read and the retrieval read stay side by side and distinguishable.
* **Report edits** (``result["report_edits"]``, a ``verified`` report's changes to the chosen neighbour's report):
  one Observation per edit, in ``DiagnosticReport.result`` beside the diagnoses, so each sentence the service
  removed or added is filed with what decided it. ``code`` is the project concept ``report-edit`` (text "report
  edit"), ``valueString`` the sentence removed or added, ``method`` the action, ``note`` the reason in words; its
  components are the action (coded in :data:`REPORT_EDIT_SYSTEM`: ``removed`` / ``added``) and the deciding
  measurement, coded as the bundle codes it (:data:`MEASUREMENT_CODES`; the rhythm and what its Observation
  carries - RR values, premature beats - under the project's concepts) with its value (none for the rhythm);
  ``derivedFrom`` is the Observation holding that measurement. R4's DiagnosticReport has no note, and an extension
  is what a receiver would not read; an Observation per edit is filed and linked like every other result. The text ``presentedForm`` lists the edits under the report too. A diagnosis a measurement decided
  (``decided_by``: present or absent whatever its probability) says so in its Observation's ``method``, since its
  POS/NEG then does not follow from its value and ``referenceRange``.
* **Warnings** go where a reader of the numbers will see them: ``note`` on the diagnosis (and answer) Observations,
  and the DiagnosticReport's ``presentedForm``, the full text as issued with its provenance.
* **Measurements** (``result["measurements"]``, as :func:`ecgregen.messages.measurements_to_dict` gives them: the
  proto's field names, an unmeasured value null) are one Observation per value, coded as
  :data:`MEASUREMENT_CODES` says, in UCUM units (``/min``, ``ms``, ``deg``); the heart rate also carries the
  ``vital-signs`` category, as R4 asks of every 8867-4 Observation. A value that could not be measured keeps its
  Observation with no value and a ``dataAbsentReason`` of ``unknown`` whose text is the stage's reason (a reader
  sees that PR was looked for and why it is not there; the stage gives its reasons in words only, so a finer code
  would be a guess). Values with no code that could be confirmed (RR min/max, RR irregularity) are components of
  the rhythm Observation under the project's concepts; rhythm and per-lead signal quality are one Observation
  each, the rhythm with its SNOMED CT finding where one exists.
* **Identifiers** only when asked for (``include_patient``, the CLI's ``--include-patient``): the Patient (id, name,
  birth date, and gender from the file's ``demographics``), the recorder's serial number and the acquisition
  date-time (an exact time of a recording finds the person in any schedule). By default none of these is in the
  bundle; a caller's own ``subject`` reference is used as given either way.
* **Language**: the ``conclusion`` and the first ``presentedForm`` are in the language the report was served in
  (``result["report_language"]``, English by default: most corpus reports are German or Swedish cart text, put
  into English by the corpus glossary); where that is not how the neighbour's cart wrote it, the original is a
  second ``presentedForm`` (text/plain, with its ``language``), so the record keeps what its cardiologist filed.
  Each attachment says its language (BCP 47; "und" where the text is too short to tell). A neighbour's
  Observation has its report as filed as its value and the English as a note.
* **The printed page** (``pdf``, the CLI's ``--attach-pdf``): the standard 12-lead page and its evidence pages
  (:mod:`ecgregen.printout`) as one more ``presentedForm`` (``application/pdf``, base64), the form a hospital files
  beside the text; it follows the same identifier rule, being printed with the same ``include_patient``.
* **Ids** are uuid5 of each resource's content, so the same inputs give the same bundle, byte for byte.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import numpy as np

from ecgregen.ecg import STANDARD_LEADS, Ecg
from ecgregen.identifiers import shown_statements

_BASE = "https://ecgregen.invalid/fhir"
SCP_SYSTEM = f"{_BASE}/CodeSystem/ptbxl-scp"  # PTB-XL's SCP-ECG statement acronyms
SUPERCLASS_SYSTEM = f"{_BASE}/CodeSystem/ptbxl-superclass"
CONCEPT_SYSTEM = f"{_BASE}/CodeSystem/ecgregen"  # the project's own concepts (neighbour, similarity, ...)
RHYTHM_SYSTEM = f"{_BASE}/CodeSystem/ecgregen-rhythm"  # ecgregen.measure's rhythm names (sinus_rhythm, ...)
REPORT_EDIT_SYSTEM = f"{_BASE}/CodeSystem/ecgregen-report-edit"  # ecgregen.api_values.ReportEditAction (removed, ...)
ECG_ID_SYSTEM = f"{_BASE}/NamingSystem/ecg-id"  # + "/<source>": corpus ECG ids
_UCUM = "http://unitsofmeasure.org"
_LOINC = "http://loinc.org"
_MDC = "urn:iso:std:iso:11073:10101"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
_SNOMED = "http://snomed.info/sct"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, _BASE)

SAMPLE_STEP_MV = 0.001  # SampledData.factor: one data step is 1 µV
LEAD_CODES: dict[str, int] = dict(zip(  # MDC_ECG_ELEC_POTL_<lead>
    STANDARD_LEADS, (131329, 131330, 131389, 131390, 131391, 131392, *range(131331, 131337)), strict=True))

# Measurement field -> (system, code, display) codings, UCUM unit, and the text a reader sees. Every LOINC code was
# checked against LOINC's mod-10 check digit and a published listing: US Core's clinical test codes value set
# (8625-6, 8626-4, 8632-2, 8633-0, 8634-8, 8636-3, 8638-9 - T wave axis is 8638-9, not 8638-0), FHIR's vital
# signs (8867-4), FHIR profiles and OMOP's LOINC concepts (8637-1 "R-R interval by EKG", 76635-2 Bazett,
# 76634-5 Fridericia). No LOINC code for the global P wave duration could be confirmed (8626-4 is the P axis; 8631-2
# fails the check digit), so it carries ISO/IEEE 11073 MDC_ECG_TIME_PD_P_GL, 2:16184 as DICOM CID 3689 lists it,
# i.e. 147256 context-free. QTc by Bazett also carries the generic 8636-3: carts' QTc is Bazett's, and receivers
# that know only the generic code (US Core) find it.
MEASUREMENT_CODES: dict[str, tuple[tuple[tuple[str, str, str | None], ...], str, str]] = {
    "heart_rate_bpm": (((_LOINC, "8867-4", "Heart rate"),), "/min", "Heart rate (from the mean RR)"),
    "rr_interval_ms": (((_LOINC, "8637-1", "R-R interval by EKG"),), "ms", "RR interval (mean)"),
    "pr_interval_ms": (((_LOINC, "8625-6", "P-R Interval"),), "ms", "PR interval"),
    "p_duration_ms": (((_MDC, "147256", "MDC_ECG_TIME_PD_P_GL"),), "ms", "P wave duration"),
    "qrs_duration_ms": (((_LOINC, "8633-0", "QRS duration"),), "ms", "QRS duration"),
    "qt_interval_ms": (((_LOINC, "8634-8", "Q-T interval"),), "ms", "QT interval"),
    "qtc_bazett_ms": (((_LOINC, "76635-2", "Q-T interval corrected based on Bazett formula"),
                       (_LOINC, "8636-3", "Q-T interval corrected")), "ms", "QTc (Bazett)"),
    "qtc_fridericia_ms": (((_LOINC, "76634-5", None),), "ms", "QTc (Fridericia)"),
    "p_axis_deg": (((_LOINC, "8626-4", "P wave axis"),), "deg", "P axis (frontal plane)"),
    "qrs_axis_deg": (((_LOINC, "8632-2", "QRS axis"),), "deg", "QRS axis (frontal plane)"),
    "t_axis_deg": (((_LOINC, "8638-9", "T wave axis"),), "deg", "T axis (frontal plane)"),
}
# The rhythm Observation's code, and the measured values it carries as components (they have no Observation of
# their own): field -> (project concept, display, unit, UCUM code).
_RHYTHM_CODE = ("rhythm", "Rhythm read from rate, RR regularity and P waves")
_RHYTHM_PARTS: dict[str, tuple[str, str, str, str]] = {
    "rr_irregularity": ("rr-irregularity", "Median successive RR difference / median RR, premature beats left out",
                        "ratio", "1"),
    "rr_min_ms": ("rr-min", "Shortest RR interval", "ms", "ms"),
    "rr_max_ms": ("rr-max", "Longest RR interval", "ms", "ms"),
}
# What a report edit may quote from the rhythm Observation: those values, and the premature beats it counts per
# origin (an edit quotes their total).
_RHYTHM_QUOTED = {**_RHYTHM_PARTS, "premature_beats": ("premature-beats", "Premature beats, all origins", "beats",
                                                       "{beats}")}
# Rhythm (ecgregen.measure.types.Rhythm values) -> SNOMED CT finding, as the PhysioNet/CinC 2020-21 challenges map
# them; regular_without_p_waves and undetermined have no single finding and go as text.
RHYTHM_SNOMED: dict[str, tuple[str, str]] = {
    "sinus_rhythm": ("426783006", "Sinus rhythm"),
    "sinus_bradycardia": ("426177001", "Sinus bradycardia"),
    "sinus_tachycardia": ("427084000", "Sinus tachycardia"),
    "sinus_arrhythmia": ("427393009", "Sinus arrhythmia"),
    "atrial_fibrillation": ("164889003", "Atrial fibrillation"),
    "atrial_flutter": ("164890007", "Atrial flutter"),
}


def _concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": text}


def _quantity(value: float, unit: str, code: str) -> dict:
    return {"value": value, "unit": unit, "system": _UCUM, "code": code}


def _prune(value: object) -> object:
    """Drop None, "" and empty containers: FHIR forbids empty elements, and it keeps the builders flat."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in map(_prune, value) if v not in (None, "", [], {})]
    return value


def _fhir_datetime(text: str | None) -> str | None:
    """ISO 8601 as a FHIR dateTime. A time without a UTC offset is not valid FHIR and no timezone is guessed:
    such a local time keeps only its date."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment.isoformat() if moment.tzinfo else moment.date().isoformat()


class _Bundle:
    """Entries with content-derived urn:uuid fullUrls; `add` returns the Reference to use elsewhere."""

    def __init__(self) -> None:
        self.entries: list[dict] = []

    def add(self, resource: dict, *, first: bool = False) -> dict:
        resource = _prune(resource)
        rid = str(uuid.uuid5(_NAMESPACE, json.dumps(resource, sort_keys=True, separators=(",", ":"))))
        entry = {"fullUrl": f"urn:uuid:{rid}", "resource": {"resourceType": resource["resourceType"], "id": rid,
                                                            **resource}}
        self.entries.insert(0 if first else len(self.entries), entry)
        return {"reference": entry["fullUrl"]}

    def as_dict(self) -> dict:
        rid = uuid.uuid5(_NAMESPACE, " ".join(e["fullUrl"] for e in self.entries))
        return {"resourceType": "Bundle", "id": str(rid), "type": "collection", "entry": self.entries}


@dataclass
class _Evidence:
    """References to what both bundles share, for the report or the answer to point at."""

    subject: dict | None
    effective: str | None
    encoder: dict
    ecg: dict | None
    statements: dict | None
    neighbours: list[dict]
    diagnoses: list[dict]  # one reference per result["diagnoses"] item, same order
    measurements: dict[str, dict]  # by measurement field name, "rhythm" and "lead_quality"
    edits: list[dict]  # one reference per result["report_edits"] item (a verified report's), same order

    def observations(self) -> list[dict]:
        return [*self.diagnoses, *self.measurements.values(), *(r for r in (self.ecg, self.statements) if r),
                *self.edits]


def _encoder_device(encoder_id: str, server: dict) -> dict:
    calibration = server.get("calibration") or {}
    versions = [("service", server.get("version")), ("encoder", encoder_id),
                ("corpus-points", calibration.get("corpus_points")), ("calibrated", calibration.get("calibrated")),
                ("calibration-created-at", calibration.get("created_at"))]
    return {"resourceType": "Device", "manufacturer": "ecgregen",
            "deviceName": [{"name": encoder_id or "ecgregen", "type": "model-name"}],
            "type": {"text": "ECG retrieval, diagnosis and report-generation software (encoder + corpus)"},
            "version": [{"type": {"text": kind}, "value": str(v)} for kind, v in versions if v not in (None, "")]}


def _recording_device(device: dict, include_patient: bool) -> dict:
    """The electrocardiograph; its serial number (which names one machine, and with a time one recording) only
    with the identifiers."""
    return {"resourceType": "Device", "manufacturer": device.get("manufacturer"),
            "deviceName": [{"name": str(device["model"]), "type": "model-name"}] if device.get("model") else None,
            "serialNumber": device.get("serial_number") if include_patient else None,
            "type": {"text": "Electrocardiograph"},
            "version": [{"type": {"text": "software"}, "value": str(device["software_version"])}]
            if device.get("software_version") else None}


def _patient(patient: dict, demographics: dict) -> dict:
    """The Patient from the file's identifiers (``source["patient"]``) and its ``demographics`` (sex), as the reader
    (:class:`ecgregen.ecg_files.FileMetadata`) gives them."""
    sex = str(demographics.get("sex") or "").strip()[:1].lower()
    return {"resourceType": "Patient",
            "identifier": [{"value": str(patient["patient_id"])}] if patient.get("patient_id") else None,
            "name": [{"family": patient.get("last_name"),
                      "given": [patient["first_name"]] if patient.get("first_name") else None}],
            "birthDate": str(patient["birth_date"]) if patient.get("birth_date") else None,
            "gender": {"m": "male", "f": "female"}.get(sex, "unknown") if sex else None}


def _ecg_observation(ecg: Ecg, source: dict, context: dict) -> dict:
    steps = np.rint(ecg.signal.astype(np.float64) / SAMPLE_STEP_MV).astype(np.int64)
    components = [{
        "code": _concept(_MDC, str(LEAD_CODES[lead]), f"MDC_ECG_ELEC_POTL_{lead.upper()}", lead),
        "valueSampledData": {"origin": _quantity(0, "mV", "mV"), "period": 1000.0 / ecg.sampling_rate_hz,
                             "factor": SAMPLE_STEP_MV, "dimensions": 1, "data": " ".join(map(str, row.tolist()))},
    } for lead, row in zip(STANDARD_LEADS, steps, strict=True)]
    notes = [f"Read from a {source['format']} file." if source.get("format") else None,
             f"Leads computed from the stored limb leads when the file was read, not recorded: "
             f"{', '.join(source['leads_derived'])}."
             if source.get("leads_derived") else None]
    return {"resourceType": "Observation", "status": "final", **context,
            "code": _concept(_MDC, "131328", "MDC_ECG_ELEC_POTL", "12-lead ECG waveform"),
            "component": components, "note": [{"text": n} for n in notes if n]}


def _neighbour(rank: int, n: dict, encoder: dict) -> dict:
    system = f"{ECG_ID_SYSTEM}/{quote(n['source'], safe='')}" if n.get("source") else ECG_ID_SYSTEM
    return {"resourceType": "Observation", "status": "final", "device": encoder,
            "code": _concept(CONCEPT_SYSTEM, "retrieved-neighbour", "Similar ECG retrieved from the corpus"),
            "identifier": [{"system": system, "value": str(n["ecg_id"])}], "valueString": n.get("report"),
            "note": [{"text": f"In English: {n['report_en']}"}] if n.get("report_en") not in (None, n.get("report"))
            else None,
            "component": [
                {"code": _concept(CONCEPT_SYSTEM, "similarity", "Similarity score"),
                 "valueQuantity": _quantity(n["score"], "score", "1")},
                {"code": _concept(CONCEPT_SYSTEM, "rank", "Retrieval rank"), "valueInteger": rank},
                *({"code": _concept(SCP_SYSTEM, code), "valueQuantity": _quantity(likelihood, "%", "%")}
                  for code, likelihood in sorted(n.get("scp_codes", {}).items())),
            ]}


def _diagnosis(d: dict, context: dict, derived_from: list[dict], notes: list[dict]) -> dict:
    threshold = _quantity(d["threshold"], "probability", "1")
    return {"resourceType": "Observation", "status": "preliminary", **context,
            "category": [*context["category"], _concept(SUPERCLASS_SYSTEM, d["superclass"])]
            if d.get("superclass") else context["category"],
            "code": _concept(SCP_SYSTEM, d["code"], d.get("description")),
            "valueQuantity": _quantity(d["probability"], "probability", "1"),
            "interpretation": [_concept(_INTERPRETATION, "POS", "Positive") if d["present"]
                               else _concept(_INTERPRETATION, "NEG", "Negative")],
            "referenceRange": [{"low": threshold, "text": "calibrated decision threshold: the statement is reported "
                                                          "present (POS) at or above this probability"}],
            "method": {"text": f"decided by the ECG's measurement, not by the probability: {d['decided_by']}"}
            if d.get("decided_by") else None,
            "derivedFrom": derived_from, "note": notes}


def _measurement_values(m: dict, context: dict) -> dict[str, dict]:
    """One Observation per coded value, by field name: the number in its UCUM unit, or no number and the reason it
    is absent."""
    observations = {}
    for name, (codings, unit, text) in MEASUREMENT_CODES.items():
        value = m[name]
        category = context["category"]
        if name == "heart_rate_bpm":
            category = [*category, _concept(_OBSERVATION_CATEGORY, "vital-signs", "Vital Signs")]
        observations[name] = {
            "resourceType": "Observation", "status": "preliminary", **context, "category": category,
            "code": {"coding": [{"system": system, "code": code, "display": display}
                                for system, code, display in codings], "text": text},
            "valueQuantity": None if value is None else _quantity(value, unit, unit),
            "dataAbsentReason": None if value is not None else {
                **_concept(_DATA_ABSENT, "unknown", "Unknown"), "text": m["missing"].get(name, "not measured")},
        }
    return observations


def _rhythm(m: dict, context: dict) -> dict:
    """The rhythm, with what it was read from (beats, P waves, RR regularity, premature beats) as components."""
    snomed = RHYTHM_SNOMED.get(m["rhythm"])
    origins = [b["origin"] for b in m["premature_beats"]]

    def part(code: str, display: str, kind: str, value: object) -> dict | None:
        return None if value is None else {"code": _concept(CONCEPT_SYSTEM, code, display), kind: value}

    def measured(name: str) -> dict | None:
        code, display, unit, ucum = _RHYTHM_PARTS[name]
        return part(code, display, "valueQuantity", None if m[name] is None else _quantity(m[name], unit, ucum))

    return {
        "resourceType": "Observation", "status": "preliminary", **context,
        "code": _concept(CONCEPT_SYSTEM, *_RHYTHM_CODE),
        "valueCodeableConcept": {
            "coding": [*([{"system": _SNOMED, "code": snomed[0], "display": snomed[1]}] if snomed else []),
                       {"system": RHYTHM_SYSTEM, "code": m["rhythm"]}],
            "text": m["rhythm"].replace("_", " ")},
        "component": [
            part("beat-count", "Beats detected", "valueInteger", m["beat_count"]),
            part("p-waves-present", "P waves present", "valueBoolean", m["p_waves_present"]),
            part("rr-irregular", "RR intervals irregular", "valueBoolean", m["rr_irregular"]),
            *(measured(name) for name in _RHYTHM_PARTS),
            *(part(f"premature-beats-{origin}", f"Premature beats, {origin}", "valueInteger", origins.count(origin))
              for origin in sorted(set(origins))),
        ],
    }


def _lead_quality(m: dict, context: dict) -> dict:
    """Signal quality: a summary value and one component per lead (its MDC lead code, its flags or "ok")."""
    leads = [(q["lead"], q["flags"]) for q in m["lead_quality"]]
    return {
        "resourceType": "Observation", "status": "preliminary", **context,
        "code": _concept(CONCEPT_SYSTEM, "lead-quality", "Signal quality per lead"),
        "valueString": "; ".join(f"{lead}: {', '.join(flags)}" for lead, flags in leads if flags) or "all leads ok",
        "component": [{"code": _concept(_MDC, str(LEAD_CODES[lead]), f"MDC_ECG_ELEC_POTL_{lead.upper()}", lead),
                       "valueString": ", ".join(flags) or "ok"} for lead, flags in leads],
        "note": [{"text": "suspected left/right arm electrode reversal"}] if m["limb_lead_reversal"] else None,
    }


def _add_measurements(bundle: _Bundle, m: dict | None, context: dict) -> dict[str, dict]:
    """The measurement Observations of ``result["measurements"]`` by name (the coded values' field names, "rhythm",
    "lead_quality"), so a report edit can point at the one that decided it; none when the ECG was not measured."""
    if m is None:
        return {}
    resources = {**_measurement_values(m, context), "rhythm": _rhythm(m, context)}
    if m["lead_quality"]:
        resources["lead_quality"] = _lead_quality(m, context)
    return {name: bundle.add(r) for name, r in resources.items()}


def _edit_measurement(name: str, value: float | None) -> dict:
    """The component naming the measurement that decided an edit, coded as the bundle codes it (its Observation, or
    its part of the rhythm Observation), with its value (none for the rhythm itself)."""
    unit = ucum = ""  # a value the bundle has no unit for (a field added since) goes bare
    if name in MEASUREMENT_CODES:
        codings, unit, text = MEASUREMENT_CODES[name]
        ucum = unit
        code = {"coding": [{"system": system, "code": c, "display": display} for system, c, display in codings],
                "text": text}
    elif name in _RHYTHM_QUOTED:
        concept, display, unit, ucum = _RHYTHM_QUOTED[name]
        code = _concept(CONCEPT_SYSTEM, concept, display)
    else:
        code = _concept(CONCEPT_SYSTEM, *_RHYTHM_CODE) if name == "rhythm" else _concept(CONCEPT_SYSTEM, name)
    if value is None:
        return {"code": code}
    return {"code": code, "valueQuantity": _quantity(value, unit, ucum) if unit else {"value": value}}


def _report_edit(edit: dict, context: dict, measurements: dict[str, dict]) -> dict:
    """One edit of a verified report (see the module's notes), derived from the measurement that decided it."""
    name = edit["measurement"]
    decided_by = measurements.get("rhythm" if name in _RHYTHM_QUOTED else name)
    return {
        "resourceType": "Observation", "status": "preliminary", **context,
        "code": _concept(CONCEPT_SYSTEM, "report-edit", "Sentence removed from or added to the served report "
                                                        "because of the ECG's measurements", "report edit"),
        "valueString": edit["sentence"],
        "method": {"text": f"{edit['action']} against the ECG's measurements"},
        "component": [
            {"code": _concept(CONCEPT_SYSTEM, "report-edit-action", "Edit made to the report"),
             "valueCodeableConcept": _concept(REPORT_EDIT_SYSTEM, edit["action"], text=edit["action"])},
            _edit_measurement(edit["measurement"], edit["value"]),
        ],
        "derivedFrom": [decided_by] if decided_by else None,
        "note": [{"text": edit["reason"]}],
    }


def _add_evidence(bundle: _Bundle, result: dict, ecg: Ecg | None, source: dict | None, server: dict | None,
                  subject: str | None, include_patient: bool) -> _Evidence:
    """Devices, patient, ECG, machine statements, neighbours, diagnoses, measurements and a verified report's edits:
    everything but the report/answer. The file's identifying elements only with `include_patient`."""
    source, server = source or {}, server or {}
    encoder = bundle.add(_encoder_device(result.get("encoder_id") or server.get("encoder_id") or "", server))
    recorder = bundle.add(_recording_device(source["device"], include_patient)) if source.get("device") else None
    if subject:
        subject_ref: dict | None = {"reference": subject}
    elif include_patient and source.get("patient"):
        subject_ref = bundle.add(_patient(source["patient"], source.get("demographics") or {}))
    else:
        subject_ref = None
    effective = _fhir_datetime(source.get("acquired_at")) if include_patient else None
    context = {"subject": subject_ref, "effectiveDateTime": effective,
               "category": [_concept(_OBSERVATION_CATEGORY, "procedure", "Procedure")]}
    ecg_ref = bundle.add(_ecg_observation(ecg, source, {**context, "device": recorder})) if ecg is not None else None
    statements = None
    if source.get("statements"):
        made_by = source.get("statements_source") or "machine"
        statements = bundle.add({
            "resourceType": "Observation", "status": "final" if made_by in ("overread", "confirmed") else "preliminary",
            **context, "device": recorder, "derivedFrom": [ecg_ref],
            "code": _concept(CONCEPT_SYSTEM, "recording-statements", "Interpretation statements of the recording"),
            "valueString": "\n".join(shown_statements(source["statements"], include_patient)),
            "method": {"text": f"statements made by: {made_by}"}})
    neighbours = [bundle.add(_neighbour(rank, n, encoder)) for rank, n in enumerate(result["neighbours"], 1)]
    notes = [{"text": f"warning: {w}"} for w in result.get("warnings", [])]
    diagnoses = [bundle.add(_diagnosis(d, {**context, "device": encoder}, [r for r in (ecg_ref, *neighbours) if r],
                                       notes)) for d in result["diagnoses"]]
    measurements = _add_measurements(bundle, result.get("measurements"), {
        **context, "device": encoder, "derivedFrom": [ecg_ref] if ecg_ref else None})
    edits = [bundle.add(_report_edit(e, {**context, "device": encoder}, measurements))
             for e in result.get("report_edits", [])]
    return _Evidence(subject_ref, effective, encoder, ecg_ref, statements, neighbours, diagnoses, measurements, edits)


def _edits_text(edits: list[dict]) -> list[str]:
    """The presentedForm's lines on a verified report's edits (none when it needed none)."""
    if not edits:
        return []
    return ["Edited against the ECG's measurements:",
            *(f'- {e["action"]} "{e["sentence"]}": {e["reason"]}' for e in edits)]


def _report_text(result: dict) -> str:
    """The report as issued, with where it came from: the presentedForm a clinician opens."""
    lines = [result["report"], "", f"Retrieved from corpus ECG {result['report_ecg_id']} "
                                   f"(report mode {result['report_mode']}); not reviewed by a clinician.",
             *_edits_text(result.get("report_edits", []))]
    if result.get("refined"):
        lines.append(f"Reworded by {result['llm_model']}; the retrieved report was: {result['retrieved_report']}")
    elif result.get("fallback_reason"):
        lines.append(f"Not reworded ({result['fallback_reason']}): this is the retrieved report.")
    return "\n".join([*lines, *(f"Warning: {w}" for w in result.get("warnings", []))])


def report_bundle(result: dict, *, ecg: Ecg | None = None, source: dict | None = None, server: dict | None = None,
                  subject: str | None = None, include_patient: bool = False, pdf: bytes | None = None) -> dict:
    """A Bundle whose first entry is the DiagnosticReport for a :func:`ecgregen.client.report_dict` result.

    `source` is the file's metadata (:meth:`ecgregen.ecg_files.FileMetadata.to_dict`). Without `include_patient`
    nothing in the bundle identifies anyone (no Patient, subject, serial number or acquisition time); with it,
    ``source["patient"]`` becomes the Patient (gender from ``source["demographics"]``), and the recorder's serial
    number and the acquisition time are kept. `subject` (a reference
    such as "Patient/123") is used as given and wins over ``source["patient"]``. `pdf`, the printed page
    (:mod:`ecgregen.printout`, made with the same `include_patient`), is attached as the last ``presentedForm``.
    """
    bundle = _Bundle()
    evidence = _add_evidence(bundle, result, ecg, source, server, subject, include_patient)
    text = _report_text(result).encode()
    forms = [{"contentType": "text/plain", "language": result.get("report_language") or None,
              "data": base64.b64encode(text).decode(), "size": len(text),
              "title": "ECG report (automated retrieval, preliminary)"}]
    original = result.get("original_report", "")
    if original and original != result["report"]:
        data = original.encode()
        forms.append({"contentType": "text/plain", "language": result.get("original_language") or None,
                      "data": base64.b64encode(data).decode(), "size": len(data),
                      "title": f"Report of corpus ECG {result['report_ecg_id']} as its cart wrote it"})
    if pdf is not None:
        forms.append({"contentType": "application/pdf", "data": base64.b64encode(pdf).decode(), "size": len(pdf),
                      "title": "12-lead ECG page with the report (computer-generated, not confirmed)"})
    bundle.add({
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "category": [_concept(_DIAGNOSTIC_SERVICE, "EC", "Electrocardiac")],
        "code": _concept(_LOINC, "11524-6", "EKG study"), "subject": evidence.subject,
        "effectiveDateTime": evidence.effective, "result": evidence.observations(), "conclusion": result["report"],
        "conclusionCode": [_concept(SCP_SYSTEM, d["code"], d.get("description"))
                           for d in result["diagnoses"] if d["present"]],
        "presentedForm": forms,
    }, first=True)
    return bundle.as_dict()


def answer_bundle(result: dict, question: str, *, ecg: Ecg | None = None, source: dict | None = None,
                  server: dict | None = None, subject: str | None = None, include_patient: bool = False) -> dict:
    """A Bundle whose first entry is the answer Observation for an :func:`ecgregen.client.ask` result:
    code = the question as text, value = the answer(s), method = the answerer, notes = rationale and warnings.
    Identifiers as in :func:`report_bundle`."""
    bundle = _Bundle()
    evidence = _add_evidence(bundle, result, ecg, source, server, subject, include_patient)
    answer = "; ".join(result["answer"])
    answerer = result["answerer"] + (f" ({result['llm_model']})" if result.get("llm_model") else "")
    notes = [f"rationale: {result['rationale']}" if result.get("rationale") else None,
             f"LLM answer unusable ({result['fallback_reason']}); retrieval-only answer given"
             if result.get("fallback_reason") else None, *(f"warning: {w}" for w in result.get("warnings", []))]
    bundle.add({
        "resourceType": "Observation", "status": "preliminary", "subject": evidence.subject,
        "effectiveDateTime": evidence.effective, "code": {"text": question}, "valueString": answer,
        "dataAbsentReason": None if answer else _concept(_DATA_ABSENT, "unknown", "Unknown"),
        "method": {"text": f"answerer: {answerer}"}, "device": evidence.encoder,
        "derivedFrom": [*evidence.observations(), *evidence.neighbours], "note": [{"text": n} for n in notes if n],
    }, first=True)
    return bundle.as_dict()
