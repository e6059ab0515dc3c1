"""ECG-QA's vocabulary: the SCP statements it asks about and how it words them, its superclasses, and the words of
its other attributes (infarction stage here; heart axis, noise, extra systoles and numeric ranges in
:mod:`ecgregen.qa_conventions`, which serving shares).

The vocabulary is ECG-QA's own and fixed, so it is written out here rather than re-derived from
``scp_statements.csv``; the tests check it against that file and against the published ``templates.csv``.
"""

from __future__ import annotations

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
ALL_DIAGNOSTIC = frozenset(code for codes in SUPERCLASSES.values() for code in codes) | {"LAO/LAE", "RAO/RAE"}
ALL_FORM = frozenset(FORM_CODES) | {"PRC(S)"}
ALL_RHYTHM = frozenset(RHYTHM_CODES) | {"SVARR", "PSVT", "TRIGU"}

STAGES = ("early stage of myocardial infarction", "middle stage of myocardial infarction",
          "old stage of myocardial infarction")
NO_INFARCTION = "none of myocardial infarction"
UNKNOWN_STAGE = "unknown stage of myocardial infarction"
STAGE_ANSWERS = (NO_INFARCTION, UNKNOWN_STAGE, *STAGES)

SEXES = {0: "Male", 1: "Female"}  # PTB-XL's sex column, as the published questions spell it
