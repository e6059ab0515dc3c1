"""ECG-QA (Oh et al., NeurIPS 2023) single-ECG questions: read the published files, answer them from PTB-XL metadata,
and generate more of them.

ECG-QA built its single-ECG questions (templates 1-42) from PTB-XL's metadata table, so for most templates the true
answer is a function of one ``ptbxl_database.csv`` row. :func:`answer_from_metadata` is that function, with rules
read off the published questions and checked against them by :func:`check_against_real` (a rule's comment says what
the data showed). It lets us (1) score an answerer on questions for any PTB-XL record whose signal we hold, not only
the few ECG-QA happens to ask about, and (2) validate the generator on real questions before trusting it.

Out of reach of the metadata, and so raising :class:`UnsupportedTemplate`:

- 17-19 (scp code *in a lead*): ECG-QA read the leads from the free-text report, not from any column;
- 20-22 (heart axis): the answers disagree with the ``heart_axis`` column (e.g. "right axis deviation: yes" for
  ``MID`` and for empty axes), so ECG-QA took the axis from elsewhere (the signal);
- 39-42 (numeric features such as QRS duration): measured on the signal.

The vocabulary (which SCP statements ECG-QA asks about and how it words them) is ECG-QA's own and fixed, so it lives
here rather than being re-derived from ``scp_statements.csv``; the tests check it against that file and against the
published ``templates.csv``.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ecgregen.ecg import STANDARD_LEADS

LEADS = STANDARD_LEADS  # ECG-QA names leads as PTB-XL does

# ECG-QA's wording of the PTB-XL SCP statements it asks about, in scp_statements.csv order (the order of a query
# question's attribute list). Lower-cased descriptions, except: "X myocardial infarction" -> "myocardial infarction
# in X leads", "digitalis-effect" -> "digitalis effect", "low amplitude T-waves" -> "low amplitude t-wave", and
# BIGU's "SV" spelled out. Statements ECG-QA never asks about (NORM aside) are absent: diagnostic RVH, ANEUR, EL, WPW,
# SEHYP, 2AVB, 3AVB; form PRC(S); rhythm SVARR, PSVT, TRIGU.
DIAGNOSTIC_CODES: dict[str, str] = {
    "NDT": "non-diagnostic t abnormalities",
    "NST_": "non-specific st changes",
    "DIG": "digitalis effect",
    "LNGQT": "long qt-interval",
    "IMI": "myocardial infarction in inferior leads",
    "ASMI": "myocardial infarction in anteroseptal leads",
    "LVH": "left ventricular hypertrophy",
    "LAFB": "left anterior fascicular block",
    "ISC_": "non-specific ischemic",
    "IRBBB": "incomplete right bundle branch block",
    "1AVB": "first degree av block",
    "IVCD": "non-specific intraventricular conduction disturbance (block)",
    "ISCAL": "ischemic in anterolateral leads",
    "CRBBB": "complete right bundle branch block",
    "CLBBB": "complete left bundle branch block",
    "ILMI": "myocardial infarction in inferolateral leads",
    "LAO/LAE": "left atrial overload/enlargement",
    "AMI": "myocardial infarction in anterior leads",
    "ALMI": "myocardial infarction in anterolateral leads",
    "ISCIN": "ischemic in inferior leads",
    "INJAS": "subendocardial injury in anteroseptal leads",
    "LMI": "myocardial infarction in lateral leads",
    "ISCIL": "ischemic in inferolateral leads",
    "LPFB": "left posterior fascicular block",
    "ISCAS": "ischemic in anteroseptal leads",
    "INJAL": "subendocardial injury in anterolateral leads",
    "ISCLA": "ischemic in lateral leads",
    "RAO/RAE": "right atrial overload/enlargement",
    "ILBBB": "incomplete left bundle branch block",
    "IPLMI": "myocardial infarction in inferoposterolateral leads",
    "ISCAN": "ischemic in anterior leads",
    "IPMI": "myocardial infarction in inferoposterior leads",
    "INJIN": "subendocardial injury in inferior leads",
    "INJLA": "subendocardial injury in lateral leads",
    "PMI": "myocardial infarction in posterior leads",
    "INJIL": "subendocardial injury in inferolateral leads",
}
FORM_CODES: dict[str, str] = {
    "NDT": "non-diagnostic t abnormalities",
    "NST_": "non-specific st changes",
    "DIG": "digitalis effect",
    "LNGQT": "long qt-interval",
    "ABQRS": "abnormal qrs",
    "PVC": "ventricular premature complex",
    "STD_": "non-specific st depression",
    "VCLVH": "voltage criteria (qrs) for left ventricular hypertrophy",
    "QWAVE": "q waves present",
    "LOWT": "low amplitude t-wave",
    "NT_": "non-specific t-wave changes",
    "PAC": "atrial premature complex",
    "LPR": "prolonged pr interval",
    "INVT": "inverted t-waves",
    "LVOLT": "low qrs voltages in the frontal and horizontal leads",
    "HVOLT": "high qrs voltage",
    "TAB_": "t-wave abnormality",
    "STE_": "non-specific st elevation",
}
RHYTHM_CODES: dict[str, str] = {
    "SR": "sinus rhythm",
    "AFIB": "atrial fibrillation",
    "STACH": "sinus tachycardia",
    "SARRH": "sinus arrhythmia",
    "SBRAD": "sinus bradycardia",
    "PACE": "normal functioning artificial pacemaker",
    "BIGU": "bigeminal pattern (unknown origin, supraventricular, or ventricular)",
    "AFLT": "atrial flutter",
    "SVTAC": "supraventricular tachycardia",
}
# Form statements template 18 asks about per lead (those a report can place in a lead).
FORM_IN_LEAD_CODES = ("NDT", "NST_", "DIG", "STD_", "VCLVH", "QWAVE", "LOWT", "NT_", "INVT", "LVOLT", "HVOLT",
                      "TAB_", "STE_")
CODE_NAMES: dict[str, str] = {**DIAGNOSTIC_CODES, **FORM_CODES, **RHYTHM_CODES}
NAME_CODES: dict[str, str] = {name: code for code, name in CODE_NAMES.items()}

# PTB-XL's diagnostic superclasses (scp_statements.csv diagnostic_class), as ECG-QA names them. Statements outside
# ECG-QA's vocabulary still count (ANEUR at 50 made "st/t change" true), but "hypertrophy" leaves out LAO/LAE (seen at
# 100 and at 50: "no") and, by the same token (unseen), RAO/RAE.
SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "conduction disturbance": ("LAFB", "IRBBB", "1AVB", "IVCD", "CRBBB", "CLBBB", "LPFB", "WPW", "ILBBB", "3AVB",
                               "2AVB"),
    "hypertrophy": ("LVH", "RVH", "SEHYP"),
    "myocardial infarction": ("IMI", "ASMI", "ILMI", "AMI", "ALMI", "INJAS", "LMI", "INJAL", "IPLMI", "IPMI",
                              "INJIN", "INJLA", "PMI", "INJIL"),
    "st/t change": ("NDT", "NST_", "DIG", "LNGQT", "ISC_", "ISCAL", "ISCIN", "ISCIL", "ISCAS", "ISCLA", "ANEUR", "EL",
                    "ISCAN"),
}
# Every PTB-XL statement of a kind, in or out of ECG-QA's vocabulary, for the "any ... symptoms" templates (out-of-
# vocabulary statements count as they do for the superclasses).
_ALL_DIAGNOSTIC = frozenset(code for codes in SUPERCLASSES.values() for code in codes) | {"LAO/LAE", "RAO/RAE"}
_ALL_FORM = frozenset(FORM_CODES) | {"PRC(S)"}
_ALL_RHYTHM = frozenset(RHYTHM_CODES) | {"SVARR", "PSVT", "TRIGU"}

HEART_AXES = ("left axis deviation", "right axis deviation", "extreme axis deviation", "normal heart axis")
STAGES = ("early stage of myocardial infarction", "middle stage of myocardial infarction",
          "old stage of myocardial infarction")
NO_INFARCTION = "none of myocardial infarction"
UNKNOWN_STAGE = "unknown stage of myocardial infarction"
STAGE_ANSWERS = (NO_INFARCTION, UNKNOWN_STAGE, *STAGES)
NOISE_COLUMNS: dict[str, str] = {
    "baseline drift": "baseline_drift",
    "static noise": "static_noise",
    "burst noise": "burst_noise",
    "electrodes problems": "electrodes_problems",
}
NOISES = tuple(NOISE_COLUMNS)
EXTRA_SYSTOLES = ("extrasystoles", "ventricular extrasystoles", "supraventricular extrasystoles")
RANGES = ("below the normal range", "within the normal range", "above the normal range")
NUMERIC_FEATURES = ("rr interval", "p duration", "pr interval", "qrs duration", "qt interval", "qt corrected")

YES, NO, NOT_SURE, NONE = "yes", "no", "not sure", "none"
SEXES = {0: "Male", 1: "Female"}  # PTB-XL's sex column, as the published questions spell it


class UnsupportedTemplate(ValueError):
    """The template's answer cannot be derived from PTB-XL metadata (see the module docstring for which and why)."""


@dataclass(frozen=True)
class Template:
    template_id: int
    question_type: str  # single-verify | single-choose | single-query
    attribute_type: str  # scp_code | heart_axis | stage_of_infarction | noise | extra_systole | numeric_feature
    wording: str  # with {attribute}, {attribute_a}/{attribute_b}, {lead}, ... placeholders
    answer_classes: tuple[str, ...]


_WORDING: dict[int, tuple[str, str, str]] = {
    1: ("single-verify", "scp_code", "Does this ECG show symptoms of {attribute}?"),
    2: ("single-verify", "scp_code", "Is this a normal ECG?"),
    3: ("single-choose", "scp_code", "Which symptom does this ECG show, {attribute_a} or {attribute_b}?"),
    4: ("single-choose", "scp_code",
        "Which diagnostic symptom does this ECG show, {attribute_a} or {attribute_b}, including uncertain symptoms?"),
    5: ("single-choose", "scp_code",
        "Which diagnostic symptom does this ECG show, {attribute_a} or {attribute_b}, excluding uncertain symptoms?"),
    6: ("single-choose", "scp_code", "Which form-related symptom does this ECG show, {attribute_a} or {attribute_b}?"),
    7: ("single-choose", "scp_code",
        "Which rhythm-related symptom does this ECG show, {attribute_a} or {attribute_b}?"),
    8: ("single-query", "scp_code", "What diagnostic symptoms does this ECG show, including uncertain symptoms?"),
    9: ("single-query", "scp_code", "What diagnostic symptoms does this ECG show, excluding uncertain symptoms?"),
    10: ("single-query", "scp_code", "What rhythm-related symptoms does this ECG show?"),
    11: ("single-query", "scp_code", "What form-related symptoms does this ECG show?"),
    12: ("single-verify", "scp_code", "Does this ECG show any kind of abnormal symptoms?"),
    13: ("single-verify", "scp_code", "Does this ECG show any diagnostic symptoms, including uncertain symptoms?"),
    14: ("single-verify", "scp_code", "Does this ECG show any diagnostic symptoms, excluding uncertain symptoms?"),
    15: ("single-verify", "scp_code", "Does this ECG show any form-related symptoms?"),
    16: ("single-verify", "scp_code", "Does this ECG show any rhythm-related symptoms?"),
    17: ("single-verify", "scp_code", "Does this ECG show symptoms of {attribute} in {lead}?"),
    18: ("single-query", "scp_code", "What form-related symptoms does this ECG show in {lead}?"),
    19: ("single-query", "scp_code", "What leads are showing symptoms of {attribute} in this ECG?"),
    20: ("single-verify", "heart_axis", "Does this ECG show {attribute}?"),
    21: ("single-choose", "heart_axis", "Which cardiac axis does this ECG show, {attribute_a} or {attribute_b}?"),
    22: ("single-query", "heart_axis", "What direction is this ECG deviated to?"),
    23: ("single-verify", "stage_of_infarction", "Does this ECG show {attribute}?"),
    24: ("single-choose", "stage_of_infarction",
         "Which stage of infarction is this ECG at, {attribute_a} or {attribute_b}?"),
    25: ("single-query", "stage_of_infarction", "What stage of infarction is this ECG at?"),
    26: ("single-verify", "noise", "Does this ECG show {attribute} in {lead}?"),
    27: ("single-verify", "noise", "Does this ECG show {attribute}?"),
    28: ("single-verify", "noise", "Does this ECG show any kind of noises in {lead}?"),
    29: ("single-verify", "noise", "Does this ECG show any kind of noises?"),
    30: ("single-choose", "noise", "Which noise does this ECG show, {attribute_a} or {attribute_b}?"),
    31: ("single-choose", "noise", "Which noise does this ECG show in {lead}, {attribute_a} or {attribute_b}?"),
    32: ("single-query", "noise", "What kind of noises does this ECG show?"),
    33: ("single-query", "noise", "What kind of noises does this ECG show in {lead}?"),
    34: ("single-query", "noise", "What leads are showing {attribute} in this ECG?"),
    35: ("single-verify", "extra_systole", "Does this ECG show any kind of extra systoles?"),
    36: ("single-verify", "extra_systole", "Does this ECG show {attribute}?"),
    37: ("single-choose", "extra_systole",
         "Which kind of extra systoles does this ECG show, {attribute_a} or {attribute_b}?"),
    38: ("single-query", "extra_systole", "What kind of extra systole does this ECG show?"),
    39: ("single-verify", "numeric_feature", "Does the {numeric_feature} of this ECG fall {range}?"),
    40: ("single-choose", "numeric_feature",
         "Which range does the {numeric_feature} of this ECG fall in, {range_a} or {range_b}?"),
    41: ("single-query", "numeric_feature", "What range does the {numeric_feature} of this ECG fall in?"),
    42: ("single-query", "numeric_feature", "What numeric features of this ECG fall {range}?"),
}

_LEAD_ANSWERS = tuple(f"lead {lead}" for lead in LEADS)
# Attribute pools: what a choose question picks its two attributes from, and the attribute list of a query question
# (published queries carry the whole pool, in this order). Verify templates pick one attribute from their pool.
_POOLS: dict[int, tuple[str, ...]] = {
    1: (*dict.fromkeys(CODE_NAMES.values()), *SUPERCLASSES),
    3: tuple(SUPERCLASSES),
    **{t: tuple(DIAGNOSTIC_CODES.values()) for t in (4, 5, 8, 9)},
    **{t: tuple(FORM_CODES.values()) for t in (6, 11)},
    **{t: tuple(RHYTHM_CODES.values()) for t in (7, 10)},
    18: tuple(FORM_CODES[c] for c in FORM_IN_LEAD_CODES),
    21: HEART_AXES,
    22: HEART_AXES,
    23: STAGES,
    24: STAGES,
    25: STAGE_ANSWERS,
    **{t: NOISES for t in (26, 27, 30, 31, 32, 33, 34)},
    **{t: EXTRA_SYSTOLES for t in (36, 37, 38)},
}
# Verify templates with a fixed attribute (the published attribute list holds this one phrase).
_FIXED_ATTRIBUTE: dict[int, str] = {
    2: "normal ecg",
    12: "any kind of abnormal symptoms",
    13: "any diagnostic symptoms",
    14: "any diagnostic symptoms",
    15: "any form-related symptoms",
    16: "any rhythm-related symptoms",
    28: "any kind of noises",
    29: "any kind of noises",
    35: "any kind of extra systoles",
}
_LEAD_TEMPLATES = frozenset({17, 18, 26, 28, 31, 33})


def _answer_classes(template_id: int, question_type: str) -> tuple[str, ...]:
    if template_id == 1:
        return (NO, NOT_SURE, YES)
    if question_type == "single-verify":
        return (NO, YES)
    pool = {19: _LEAD_ANSWERS, 34: _LEAD_ANSWERS, 40: RANGES, 41: RANGES, 42: NUMERIC_FEATURES}.get(
        template_id, _POOLS.get(template_id, ()))
    if question_type == "single-query" and template_id in (22, 25, 41):  # these always have an answer
        return tuple(sorted(pool))
    return tuple(sorted({*pool, NONE}))


TEMPLATES: dict[int, Template] = {
    tid: Template(tid, qtype, atype, wording, _answer_classes(tid, qtype))
    for tid, (qtype, atype, wording) in _WORDING.items()
}


def load_templates(path: Path | None = None) -> dict[int, Template]:
    """The published ``templates.csv`` (template_id, question_type, attribute_type, template, answer_classes), or
    without a path the built-in :data:`TEMPLATES` (templates 1-42, equal to the published ones)."""
    if path is None:
        return dict(TEMPLATES)
    table = pd.read_csv(path)
    return {
        int(row.template_id): Template(int(row.template_id), row.question_type, row.attribute_type, row.template,
                                       tuple(json.loads(row.answer_classes)))
        for row in table.itertuples()
    }


# ---------------------------------------------------------------------------------------------------------------
# Metadata


_LEAD_TOKEN = r"(avr|avl|avf|iii|ii|i|v\s*\d|\d)"
_LEAD_SPAN = re.compile(rf"(?<![a-z]){_LEAD_TOKEN}(?:\s*-\s*{_LEAD_TOKEN})?(?![a-z])")
_LIMB_INDEX = {"i": 0, "ii": 1, "iii": 2, "avr": 3, "avl": 4, "avf": 5}


def _lead_index(token: str) -> int | None:
    token = re.sub(r"\s", "", token)
    if token in _LIMB_INDEX:
        return _LIMB_INDEX[token]
    number = int(token.removeprefix("v"))
    return 5 + number if 1 <= number <= 6 else None


def parse_noise_leads(text: object) -> frozenset[str]:
    """The leads a PTB-XL noise column names, e.g. ``" , I-AVF,  "`` -> I, II, III, aVR, aVL, aVF.

    The columns are free text by the annotators; these rules reproduce ECG-QA's answers on every published noise
    question we hold whose ECG is in folds 1-9 (8,498 in train/120000.json, 7,609 of them about one lead, and the
    sample's 204):
    - ranges run in the standard order I, II, III, aVR, aVL, aVF, V1-V6 ("I-V1" = the six limb leads and V1);
    - "alles"/"alle" (German "all") = all twelve leads;
    - a bare digit is a chest lead ("V1,3,4,6", "v5-6", and even " , 2" alone = V2);
    - "ALF" is a typo for aVF ("I-ALF" -> I..aVF); "?", "." and words ("stark", "Kontaktprobleme aVL ???") are noise;
    - a column with words but no lead ("leicht", "mittel", "noisy recording") counts as no noise at all.
    """
    if not isinstance(text, str):
        return frozenset()
    text = text.lower().replace("alf", "avf")
    if re.search(r"(?<![a-z])alle", text):
        return frozenset(LEADS)
    leads: set[str] = set()
    for match in _LEAD_SPAN.finditer(text):
        start = _lead_index(match.group(1))
        if start is None:
            continue
        end = _lead_index(match.group(2)) if match.group(2) else None
        end = start if end is None else end
        leads.update(LEADS[min(start, end): max(start, end) + 1])
    return frozenset(leads)


def parse_extra_systoles(text: object) -> frozenset[str]:
    """The kinds of extra systole PTB-XL's ``extra_beats`` column records.

    Entries are comma/semicolon lists such as "SVES", "VES2,alles", "VES,SVES1,alles", "1ES", "2,V1": a kind with an
    optional count, then leads. "SVES" = supraventricular, "VES" = ventricular; "ES" or a bare count = extrasystoles of
    unstated kind, as is an entry naming no kind ("period."). ECG-QA keeps the kinds apart: "VES,SVES" is *not*
    "extrasystoles".
    """
    if not isinstance(text, str) or not text.strip():
        return frozenset()
    kinds = set()
    for token in re.split(r"[,;]", text.upper()):
        token = token.strip()
        if re.fullmatch(r"\d*SVES\d*", token):
            kinds.add("supraventricular extrasystoles")
        elif re.fullmatch(r"\d*VES\d*", token):
            kinds.add("ventricular extrasystoles")
        elif re.fullmatch(r"\d*ES\d*(\(.*\))?", token):
            kinds.add("extrasystoles")
    return frozenset(kinds or {"extrasystoles"})


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


@dataclass(frozen=True)
class EcgMetadata:
    """What ECG-QA's single-ECG answers depend on, parsed from one PTB-XL metadata row."""

    ecg_id: int
    age: float | None
    sex: int | None
    scp_codes: Mapping[str, float]
    infarction_stadium1: str | None
    infarction_stadium2: str | None
    noise: Mapping[str, frozenset[str]]  # ECG-QA noise name -> leads
    extra_beats: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EcgMetadata:
        codes = row["scp_codes"]
        if isinstance(codes, str):
            codes = ast.literal_eval(codes)
        age, sex = row.get("age"), row.get("sex")
        return cls(
            ecg_id=int(row["ecg_id"]),
            age=None if age is None or pd.isna(age) else float(age),
            sex=None if sex is None or pd.isna(sex) else int(sex),
            scp_codes={str(k): float(v) for k, v in dict(codes).items()},
            infarction_stadium1=_text(row.get("infarction_stadium1")),
            infarction_stadium2=_text(row.get("infarction_stadium2")),
            noise={name: parse_noise_leads(row.get(column)) for name, column in NOISE_COLUMNS.items()},
            extra_beats=_text(row.get("extra_beats")),
        )

    def patient_suffix(self) -> str:
        """The sentence the published questions end with; age prints as the CSV's float ("81.0", or "nan")."""
        age = math.nan if self.age is None else self.age
        return f" Given that patient is {SEXES.get(self.sex, 'Unknown')} and is {age} years old."


class PtbxlMetadata:
    """A PTB-XL metadata table (``ptbxl_database.csv`` layout: any CSV with its columns), looked up by ecg_id."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.table = table.set_index("ecg_id", drop=False)
        self._parsed: dict[int, EcgMetadata] = {}

    @classmethod
    def from_csv(cls, path: Path) -> PtbxlMetadata:
        return cls(pd.read_csv(path))

    @classmethod
    def from_ptbxl(cls, ptbxl_dir: Path) -> PtbxlMetadata:
        return cls.from_csv(Path(ptbxl_dir) / "ptbxl_database.csv")

    def __contains__(self, ecg_id: object) -> bool:
        return str(ecg_id).isdigit() and int(str(ecg_id)) in self.table.index

    def __len__(self) -> int:
        return len(self.table)

    def ecg_ids(self, folds: Iterable[int] | None = None) -> list[int]:
        table = self.table if folds is None else self.table[self.table["strat_fold"].isin(list(folds))]
        return sorted(int(i) for i in table["ecg_id"])

    def row(self, ecg_id: int | str) -> EcgMetadata:
        """The parsed row of this ECG (ids as ints or as the digit strings records use); KeyError if absent."""
        key = int(ecg_id)
        if key not in self._parsed:
            self._parsed[key] = EcgMetadata.from_row(self.table.loc[key].to_dict())
        return self._parsed[key]


# ---------------------------------------------------------------------------------------------------------------
# Answers


def _certain(likelihood: float) -> bool:
    """PTB-XL likelihood 100 = certain; 0 = "not given" (form and rhythm statements always are): ECG-QA says yes."""
    return likelihood == 100 or likelihood == 0


def _code_state(codes: Mapping[str, float], members: Iterable[str]) -> str:
    """yes / not sure / no for a statement (or a superclass: its members' best state)."""
    present = [codes[c] for c in members if c in codes]
    if any(_certain(v) for v in present):
        return YES
    return NOT_SURE if present else NO


def _codes_of(attribute: str) -> tuple[str, ...]:
    if attribute in SUPERCLASSES:
        return SUPERCLASSES[attribute]
    if attribute in NAME_CODES:
        return (NAME_CODES[attribute],)
    raise ValueError(f"unknown scp_code attribute {attribute!r}")


def _shown(codes: Mapping[str, float], names: Iterable[str], *, uncertain: bool) -> list[str]:
    """The named statements (or superclasses) the ECG shows, in the order given."""
    wanted = {YES, NOT_SURE} if uncertain else {YES}
    return [name for name in names if _code_state(codes, _codes_of(name)) in wanted]


def _stage(meta: EcgMetadata) -> str:
    """ECG-QA's infarction stage: the later assessment (stadium2) wins; a range "II-III" reads as its first stage.

    Seen: stadium1 "Stadium I" + stadium2 "Stadium III" -> old only; "Stadium II-III" -> middle, not old.
    """
    text = meta.infarction_stadium2 or meta.infarction_stadium1
    if text is None:
        return NO_INFARCTION
    match = re.match(r"stadium\s+(i{1,3})", text.lower())
    if match is None:
        return UNKNOWN_STAGE
    return STAGES[len(match.group(1)) - 1]


def _verify(flag: bool) -> list[str]:
    return [YES if flag else NO]


def _or_none(answers: list[str]) -> list[str]:
    return answers or [NONE]


def supported_templates() -> set[int]:
    """Templates :func:`answer_from_metadata` can answer."""
    return set(range(1, 17)) | set(range(23, 39))


def needs_lead(template_id: int) -> bool:
    """Whether the question names a lead (which the published attribute list does not carry)."""
    return template_id in _LEAD_TEMPLATES


def question_lead(question: str) -> str | None:
    """The lead a published question names ("... in lead aVF?")."""
    match = re.search(r"\bin lead (\w+)", question)
    return match.group(1) if match else None


def answer_from_metadata(
    template_id: int, attribute: Sequence[str], row: EcgMetadata | Mapping[str, Any], *, lead: str | None = None,
) -> list[str]:
    """The answer ECG-QA gives for this template and attribute list on an ECG with this metadata.

    ``row`` is a PTB-XL metadata row (a mapping such as a pandas Series) or an :class:`EcgMetadata`. Choose and
    query answers list what holds in the order of ``attribute``; "none" when nothing does. Lead-level templates
    (:func:`needs_lead`) need ``lead`` ("aVF"; see :func:`question_lead`).
    """
    if template_id not in supported_templates():
        raise UnsupportedTemplate(f"template {template_id} ({_WORDING.get(template_id, ('', '', '?'))[2]}) "
                                  "cannot be answered from PTB-XL metadata")
    meta = row if isinstance(row, EcgMetadata) else EcgMetadata.from_row(row)
    if needs_lead(template_id) and lead not in LEADS:
        raise ValueError(f"template {template_id} needs a lead (one of {', '.join(LEADS)}), got {lead!r}")
    codes = meta.scp_codes
    attribute = list(attribute)

    match template_id:
        # scp_code: likelihood 100 or 0 = yes, 0 < likelihood < 100 = not sure, absent = no (exact on template 1).
        case 1:
            return [_code_state(codes, _codes_of(attribute[0]))]
        # "normal ecg" is the NORM statement with the uncertainty collapsed (the template has no "not sure"): NORM at
        # any likelihood = yes, as template 12 treats {'NORM': 50, 'SR': 0} as not abnormal. The published sample
        # only has "no" answers (all without NORM), so the "yes" side is this reading, not an observation.
        case 2:
            return _verify("NORM" in codes)
        # Choose/query without "excluding uncertain" count uncertain statements: {'IMI': 15} shows "myocardial
        # infarction", {'DIG': 35} shows "digitalis effect" as a form-related symptom.
        case 3 | 4 | 6 | 7 | 8 | 10 | 11:
            return _or_none(_shown(codes, attribute, uncertain=True))
        case 5 | 9:
            return _or_none(_shown(codes, attribute, uncertain=False))
        # Abnormal = anything listed but NORM and SR: all 29 "no" ECGs are exactly NORM (50-100) + SR, though 23% of
        # PTB-XL's NORM ECGs list more (e.g. SARRH).
        case 12:
            return _verify(any(c not in ("NORM", "SR") for c in codes))
        # NORM is not a diagnostic symptom ({'NORM': 35, 'SR': 0} -> no).
        case 13:
            return _verify(any(c in _ALL_DIAGNOSTIC for c in codes))
        case 14:
            return _verify(any(c in _ALL_DIAGNOSTIC and _certain(v) for c, v in codes.items()))
        case 15:
            return _verify(any(c in _ALL_FORM for c in codes))
        # SR counts as rhythm-related: all 31 "no" ECGs list no rhythm statement at all, though 77% of PTB-XL lists SR
        # as its only one.
        case 16:
            return _verify(any(c in _ALL_RHYTHM for c in codes))
        # Stage: see _stage. The sample's template-23 answers are all "no" and template 25 only shows "none of" and
        # "unknown stage of myocardial infarction" (stadium1 empty / "unknown"); template 24 pins the rest.
        case 23:
            return _verify(_stage(meta) == attribute[0])
        case 24:
            return _or_none([a for a in attribute if a == _stage(meta)])
        case 25:
            return [_stage(meta)]
        # Noise: a kind is present where its column names a lead (see parse_noise_leads; exact on 8,498 published
        # noise questions, 7,609 of them about one lead).
        case 26:
            return _verify(lead in meta.noise[attribute[0]])
        case 27:
            return _verify(bool(meta.noise[attribute[0]]))
        case 28:
            return _verify(any(lead in leads for leads in meta.noise.values()))
        case 29:
            return _verify(any(meta.noise.values()))
        case 30 | 32:
            return _or_none([a for a in attribute if meta.noise[a]])
        case 31 | 33:
            return _or_none([a for a in attribute if lead in meta.noise[a]])
        case 34:
            return _or_none([f"lead {lead}" for lead in LEADS if lead in meta.noise[attribute[0]]])
        # Extra systoles: any entry in extra_beats (all 18 sampled template-35 answers are "yes"; "1,V3" counts),
        # kinds as parse_extra_systoles (template 37 pins them; 36 and 38 were only sampled with "no"/"none").
        case 35:
            return _verify(meta.extra_beats is not None)
        case 36:
            return _verify(attribute[0] in parse_extra_systoles(meta.extra_beats))
        case 37 | 38:
            kinds = parse_extra_systoles(meta.extra_beats)
            return _or_none([a for a in attribute if a in kinds])
    raise AssertionError(f"template {template_id} is listed as supported but has no rule")


def answer_options(template_id: int, attribute: Sequence[str],
                   templates: Mapping[int, Template] | None = None) -> list[str]:
    """The answers an answerer should be offered: a choose question's two attributes and "none" (published
    answers may hold both attributes); otherwise the template's answer classes."""
    template = (templates or TEMPLATES)[template_id]
    if template.question_type == "single-choose":
        return [*attribute, NONE]
    return list(template.answer_classes)


# ---------------------------------------------------------------------------------------------------------------
# Published questions and the check against them


def load_questions(paths: Sequence[Path]) -> list[dict]:
    """ECG-QA question files as published (a JSON list of questions per file); a directory is searched recursively."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    questions: list[dict] = []
    for file in files:
        data = json.loads(file.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{file}: expected a JSON list of ECG-QA questions")  # noqa: TRY004 - bad file, not arg
        questions.extend(data)
    return questions


def _same(a: Sequence[str], b: Sequence[str]) -> bool:
    return sorted(a) == sorted(b)


def check_against_real(real_questions: Iterable[Mapping[str, Any]], metadata: PtbxlMetadata,
                       *, max_examples: int = 10) -> dict:
    """Agreement of :func:`answer_from_metadata` with published answers (order-free set equality).

    Only single-ECG questions whose ECG is in ``metadata`` count; those of unsupported templates are tallied apart.
    """
    per_template: dict[int, dict[str, int]] = {}
    unsupported: Counter[int] = Counter()
    skipped = Counter()
    disagreements: list[dict] = []
    for q in real_questions:
        template_id = int(q["template_id"])
        if not str(q.get("question_type", "")).startswith("single") or len(q["ecg_id"]) != 1:
            skipped["not single-ECG"] += 1
            continue
        ecg_id = int(q["ecg_id"][0])
        if ecg_id not in metadata:
            skipped["ECG not in metadata"] += 1
            continue
        if template_id not in supported_templates():
            unsupported[template_id] += 1
            continue
        predicted = answer_from_metadata(template_id, q["attribute"], metadata.row(ecg_id),
                                         lead=question_lead(q["question"]))
        tally = per_template.setdefault(template_id, {"n": 0, "agree": 0})
        tally["n"] += 1
        if _same(predicted, q["answer"]):
            tally["agree"] += 1
        elif len(disagreements) < max_examples:
            disagreements.append({"template_id": template_id, "ecg_id": ecg_id, "question": q["question"],
                                  "answer": list(q["answer"]), "predicted": predicted})
    n = sum(t["n"] for t in per_template.values())
    agree = sum(t["agree"] for t in per_template.values())
    return {
        "n": n,
        "agree": agree,
        "agreement": agree / n if n else float("nan"),
        "per_template": dict(sorted(per_template.items())),
        "unsupported": dict(sorted(unsupported.items())),
        "skipped": dict(skipped),
        "disagreements": disagreements,
    }


# ---------------------------------------------------------------------------------------------------------------
# Generation


_VERIFY_SHOWN, _CHOOSE_SHOWN = 0.5, 0.75


def _holds(template_id: int, attribute: str, meta: EcgMetadata, lead: str | None) -> bool:
    """Whether the ECG shows ``attribute`` in the sense of this template (for picking informative attributes)."""
    answer = answer_from_metadata(template_id, [attribute], meta, lead=lead)
    return answer not in ([NO], [NONE])


def _pick_lead(meta: EcgMetadata, rng: random.Random) -> str:
    """Half the time a lead where some noise is (so that lead questions are not almost always "no")."""
    noisy = sorted({lead for leads in meta.noise.values() for lead in leads}, key=LEADS.index)
    return rng.choice(noisy) if noisy and rng.random() < 0.5 else rng.choice(LEADS)


def _pick_attributes(template_id: int, question_type: str, meta: EcgMetadata, lead: str | None,
                     rng: random.Random) -> list[str]:
    if template_id in _FIXED_ATTRIBUTE:
        return [_FIXED_ATTRIBUTE[template_id]]
    pool = _POOLS[template_id]
    if question_type == "single-query" and template_id != 34:
        return list(pool)
    shown = [a for a in pool if _holds(template_id, a, meta, lead)]
    # Mimic ECG-QA's answer balance (published sample): verify questions ask about something the ECG shows about
    # half the time (template 1: 107 yes + 14 not sure of 256), choose questions more often (about 30% "none"); the
    # rest draw from the whole pool.
    p_shown = _CHOOSE_SHOWN if question_type == "single-choose" else _VERIFY_SHOWN
    first = rng.choice(shown) if shown and rng.random() < p_shown else rng.choice(pool)
    if question_type != "single-choose":
        return [first]
    second = rng.choice([a for a in pool if a != first])
    return rng.sample([first, second], 2)


def _fill(wording: str, attribute: Sequence[str], lead: str | None) -> str:
    values = {"lead": f"lead {lead}" if lead else ""}
    if len(attribute) == 1:
        values["attribute"] = attribute[0]
    elif len(attribute) == 2:
        values["attribute_a"], values["attribute_b"] = attribute
    return wording.format(**values)


def generate_questions(
    metadata: PtbxlMetadata, ecg_ids: Iterable[int], *, templates: Iterable[int] | None = None, seed: int = 0,
    per_template: int | None = None,
) -> list[dict]:
    """ECG-QA-style questions on these ECGs, in the published JSON shape plus ``"generated": true``.

    Every requested template (default: all supported) is asked once per ECG, or of ``per_template`` ECGs drawn at
    random. Answers come from :func:`answer_from_metadata`. Deterministic for a seed. The wording is the template's
    with the attributes in question order; ECG-QA's own slip of printing "suprasupraventricular extrasystoles" for
    "ventricular extrasystoles" when that comes second (template 37) is not reproduced.
    """
    template_ids = sorted(supported_templates() if templates is None else set(templates))
    unsupported = [t for t in template_ids if t not in supported_templates()]
    if unsupported:
        raise UnsupportedTemplate(f"cannot generate templates {unsupported}: not derivable from PTB-XL metadata")
    ecg_ids = list(ecg_ids)
    rng = random.Random(seed)
    questions: list[dict] = []
    for template_id in template_ids:
        template = TEMPLATES[template_id]
        chosen = ecg_ids if per_template is None or per_template >= len(ecg_ids) else sorted(
            rng.sample(ecg_ids, per_template))
        for ecg_id in chosen:
            meta = metadata.row(ecg_id)
            lead = _pick_lead(meta, rng) if needs_lead(template_id) else None
            attribute = _pick_attributes(template_id, template.question_type, meta, lead, rng)
            questions.append({
                "template_id": template_id,
                "question_id": len(questions),
                "sample_id": len(questions),
                "question_type": template.question_type,
                "attribute_type": template.attribute_type,
                "question": _fill(template.wording, attribute, lead) + meta.patient_suffix(),
                "answer": answer_from_metadata(template_id, attribute, meta, lead=lead),
                "ecg_id": [ecg_id],
                "attribute": attribute,
                "generated": True,
            })
    return questions


def write_generated(ptbxl_dir: Path, out: Path, *, folds: Sequence[int] | None = None, seed: int = 0,
                    per_template: int | None = None) -> dict:
    """Generate questions on the records of ``ptbxl_dir/ptbxl_database.csv`` (optionally only these folds), write
    them to ``out`` as a JSON list, and return a summary {n, by_type, templates, ...}."""
    metadata = PtbxlMetadata.from_ptbxl(Path(ptbxl_dir))
    ecg_ids = metadata.ecg_ids(folds)
    questions = generate_questions(metadata, ecg_ids, seed=seed, per_template=per_template)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(questions))
    return {
        "out": str(out),
        "n": len(questions),
        "ecgs": len(ecg_ids),
        "folds": sorted(folds) if folds is not None else None,
        "seed": seed,
        "by_type": dict(sorted(Counter(q["question_type"] for q in questions).items())),
        "templates": {str(t): n for t, n in sorted(Counter(q["template_id"] for q in questions).items())},
    }


# ---------------------------------------------------------------------------------------------------------------
# Fitting the answerer


def lead_question_share(questions: Iterable[Mapping[str, Any]], metadata: PtbxlMetadata,
                        folds: Iterable[int]) -> tuple[float | None, int]:
    """Of ECG-QA's lead-level statement questions (template 17, "... in lead X?") about ECGs of `folds` whose ECG
    carries the statement, the share answered yes, and how many there were (share None when there were none).

    The SCP labels cannot place a statement in a lead (ECG-QA read the leads from the free-text report), so an
    answerer from labels can at best scale the statement's probability by this share."""
    folds = set(folds)
    present = yes = 0
    for q in questions:
        if int(q["template_id"]) != 17:
            continue
        ecg_id = q["ecg_id"][0]
        if ecg_id not in metadata or int(metadata.table.loc[int(ecg_id), "strat_fold"]) not in folds:
            continue
        codes = metadata.row(ecg_id).scp_codes
        if any(c in codes for c in _codes_of(q["attribute"][0])):
            present += 1
            yes += list(q["answer"]) == [YES]
    return (yes / present if present else None), present
