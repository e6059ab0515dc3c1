"""The ``statements`` report: an English report written from the calibrated diagnoses and the measurements.

A neighbour's report (``top1``, ``consensus``) is another patient's text, in its cart's language; this one says only
what this ECG's own answer holds, in the order a cart prints it - rhythm and rate; ectopic beats; conduction; axis;
hypertrophy; infarction; ST-T; a closing "normal ECG" / "borderline ECG" / "abnormal ECG". Every sentence keeps its
evidence (the present SCP codes with their probabilities, and the measured values it quotes), so a reader can trace
it, and nothing is said that the diagnoses or the measurements do not hold:

* a statement for each present diagnosis (grouped by section, in a fixed order), worded from PTB-XL's English
  statement descriptions;
* measured values quoted where a finding rests on them (the rate with a rate-defined rhythm, PR with AV block, QRS
  with a bundle branch block, QTc with long QT), or alone when outside their normal range with no finding to
  carry them; a deviated QRS axis. Values within their ranges stay on the measurement line, as carts print them;
* a rate-defined rhythm code that the measured rate contradicts (sinus bradycardia at 75 bpm) is not stated; it is
  listed in ``withheld`` with the reason, as is an axis statement the measured axis contradicts;
* "normal ECG" only when the NORM diagnosis is present and no abnormal statement is; "borderline ECG" when every
  abnormal statement is one of the minor findings of :data:`BORDERLINE`; with neither, :data:`NO_FINDING`.

Pure functions of (diagnoses, measurements): no I/O, so the server, the evaluation and the tests share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ecgregen.diagnoses import Diagnosis
from ecgregen.measure.codes import PTBXL_BRADYCARDIA_BPM, PTBXL_TACHYCARDIA_BPM, axis_class
from ecgregen.measure.findings import PR_LONG_MS, QRS_COMPLETE_MS, axis_words
from ecgregen.measure.types import BeatOrigin, Measurements, Rhythm

# Sections in the order carts print them, and the SCP codes each one states.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rhythm", ("SR", "SBRAD", "STACH", "SARRH", "AFIB", "AFLT", "SVTAC", "PSVT", "SVARR", "PACE", "BIGU", "TRIGU")),
    ("ectopy", ("PVC", "PAC", "PRC(S)")),
    ("conduction", ("1AVB", "2AVB", "3AVB", "LPR", "WPW", "CLBBB", "ILBBB", "CRBBB", "IRBBB", "LAFB", "LPFB", "IVCD")),
    ("axis", ()),
    ("hypertrophy", ("LVH", "VCLVH", "RVH", "SEHYP", "LAO/LAE", "RAO/RAE", "HVOLT", "LVOLT")),
    ("infarction", ("AMI", "ASMI", "ALMI", "LMI", "IMI", "ILMI", "IPMI", "IPLMI", "PMI", "INJAS", "INJAL", "INJLA",
                    "INJIN", "INJIL", "QWAVE", "ABQRS")),
    ("st_t", ("ISC_", "ISCAL", "ISCAS", "ISCAN", "ISCLA", "ISCIN", "ISCIL", "STD_", "STE_", "NST_", "NDT", "NT_",
              "INVT", "LOWT", "TAB_", "DIG", "EL", "ANEUR", "LNGQT")),
)
# Minor findings: an ECG whose only abnormal statements are these is "borderline", not "abnormal".
BORDERLINE = frozenset({"SARRH", "SBRAD", "PAC", "LPR", "IRBBB", "NDT", "NT_", "LOWT", "LAO/LAE"})
# Codes that are not abnormal findings themselves.
NORMAL_CODES = frozenset({"NORM", "SR"})
# Wording where PTB-XL's description is not how a report says it.
WORDING = {
    "SR": "sinus rhythm",
    "PACE": "pacemaker rhythm",
    "EL": "ST-T changes suggesting electrolyte disturbance or drug effect",
    "DIG": "ST-T changes suggesting digitalis effect",
    "WPW": "Wolff-Parkinson-White pattern",
    "LVOLT": "low QRS voltages",
    "PRC(S)": "premature complexes",
    "ABQRS": "abnormal QRS",
    "QWAVE": "Q waves present",
}
NO_FINDING = "no abnormality stated; normal ECG not confirmed"
# A measured value is quoted beside the finding it rests on, or alone when it is outside these limits.
# (PR and QRS at the definitions' limits, ecgregen.measure.findings; QTc is quoted from 470 ms, above the 460 ms
# that defines a prolonged QT there, as it was written before those definitions.)
QTC_QUOTED_MS = 470.0
RATE_CODES = frozenset({"SBRAD", "STACH", "AFIB", "AFLT", "SVTAC", "PSVT"})
PR_CODES = frozenset({"1AVB", "LPR", "WPW"})
QRS_CODES = frozenset({"CLBBB", "ILBBB", "CRBBB", "IRBBB", "IVCD", "WPW"})


@dataclass(frozen=True)
class Statement:
    """One sentence of the report and what it rests on."""

    section: str
    text: str
    codes: dict[str, float] = field(default_factory=dict)  # present SCP code -> its probability
    measured: dict[str, float] = field(default_factory=dict)  # measurement (or premature_* count) -> value quoted


@dataclass(frozen=True)
class StatementReport:
    """The report text, its statements in order, and what was left out because a measurement contradicts it."""

    text: str
    statements: tuple[Statement, ...]
    withheld: dict[str, str]  # SCP code -> why it is not stated
    closing: str  # normal ECG | borderline ECG | abnormal ECG | NO_FINDING


def statement_report(diagnoses: Sequence[Diagnosis], measurements: Measurements | None) -> StatementReport:
    """The report of the present `diagnoses` and the `measurements` (None: not measured; then the diagnoses alone)."""
    present = {d.code: d for d in diagnoses if d.present}
    withheld = _contradicted(present, measurements)
    stated = {code: d for code, d in present.items() if code not in withheld}
    out: list[Statement] = []
    for section, codes in SECTIONS:
        if section == "axis":
            out.extend(_axis(measurements))
            continue
        chosen = [stated[c] for c in codes if c in stated]
        out.extend(_section(section, chosen, measurements))
    closing = _closing(stated)
    evidence = {c: round(d.probability, 3) for c, d in stated.items() if c == "NORM"}
    out.append(Statement("summary", closing, evidence))
    text = " ".join(_sentence(s.text) for s in out)
    return StatementReport(text, tuple(out), withheld, closing)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _words(d: Diagnosis) -> str:
    return WORDING.get(d.code) or d.description or d.code


def _contradicted(present: dict[str, Diagnosis], m: Measurements | None) -> dict[str, str]:
    """Present codes the measurements contradict (by PTB-XL's rate conventions), with the reason."""
    if m is None:
        return {}
    out: dict[str, str] = {}
    rate = m.heart_rate_bpm
    if rate is not None:
        if "SBRAD" in present and rate >= PTBXL_BRADYCARDIA_BPM + 10:
            out["SBRAD"] = f"measured rate {rate:.0f} bpm is not bradycardic"
        if "STACH" in present and rate <= PTBXL_TACHYCARDIA_BPM - 10:
            out["STACH"] = f"measured rate {rate:.0f} bpm is not tachycardic"
    if m.rhythm is Rhythm.ATRIAL_FIBRILLATION:
        for code in ("SR", "SBRAD", "STACH", "SARRH"):
            if code in present and code not in out:
                out[code] = "measured rhythm is irregular without P waves"
    elif m.p_waves_present and m.rr_irregular is False and "AFIB" in present:
        out["AFIB"] = "measured rhythm is regular with P waves"
    axis = axis_class(m.qrs_axis_deg)
    if axis is not None and axis != "left" and "LAFB" in present:
        out["LAFB"] = f"measured QRS axis {m.qrs_axis_deg:+.0f} degrees is not leftward"
    if axis is not None and axis != "right" and "LPFB" in present:
        out["LPFB"] = f"measured QRS axis {m.qrs_axis_deg:+.0f} degrees is not rightward"
    return out


def _codes(ds: Sequence[Diagnosis]) -> dict[str, float]:
    return {d.code: round(d.probability, 3) for d in ds}


def _section(section: str, chosen: list[Diagnosis], m: Measurements | None) -> list[Statement]:
    """The section's sentence: its present codes, quoting the measured values a finding rests on (as carts do:
    the values themselves are on the measurement line). A value outside its normal range with no code to carry it is
    stated on its own."""
    stated = {d.code for d in chosen}
    quoted: list[tuple[str, float, str]] = []  # (field, value, words)
    if m is not None:
        rate, pr, qrs, qtc = m.heart_rate_bpm, m.pr_interval_ms, m.qrs_duration_ms, m.qtc_bazett_ms
        if section == "rhythm" and rate is not None and (not 60 <= rate <= 100 or stated & RATE_CODES):
            quoted.append(("heart_rate_bpm", rate, f"rate {rate:.0f} bpm"))
        if section == "ectopy":
            for origin in (BeatOrigin.VENTRICULAR, BeatOrigin.SUPRAVENTRICULAR):
                count = m.premature_counts[origin]
                if count:
                    quoted.append((f"premature_{origin.value}", float(count),
                                   f"{count} {origin.value} premature beat{'s' if count > 1 else ''} in "
                                   f"{m.beat_count}"))
        if section == "conduction":
            if pr is not None and (pr > PR_LONG_MS or stated & PR_CODES):
                quoted.append(("pr_interval_ms", pr, f"PR {pr:.0f} ms"))
            if qrs is not None and (qrs >= QRS_COMPLETE_MS or stated & QRS_CODES):
                quoted.append(("qrs_duration_ms", qrs, f"QRS {qrs:.0f} ms"))
        if section == "st_t" and qtc is not None and (qtc >= QTC_QUOTED_MS or "LNGQT" in stated):
            quoted.append(("qtc_bazett_ms", qtc, f"QTc {qtc:.0f} ms (Bazett)"))
    if not chosen and not quoted:
        return []
    measured = {name: value for name, value, _ in quoted}
    values = "; ".join(words for _, _, words in quoted)
    if not chosen:  # measured only: the values, no finding
        return [Statement(section, values, {}, measured)]
    text = ", ".join(_words(d) for d in chosen) + (f" ({values})" if values else "")
    return [Statement(section, text, _codes(chosen), measured)]


def _axis(m: Measurements | None) -> list[Statement]:
    """An axis outside -30..+90, in the corpus's classes (:func:`ecgregen.measure.findings.axis_words`: +90..+120
    is a "rightward axis", right axis deviation is beyond +120); a normal one is on the measurement line, and the
    fascicular blocks are stated under conduction, where they belong."""
    if m is None or m.qrs_axis_deg is None or axis_words(m.qrs_axis_deg) == "normal axis":
        return []
    words = axis_words(m.qrs_axis_deg)
    return [Statement("axis", f"{words} ({m.qrs_axis_deg:+.0f} degrees)", {}, {"qrs_axis_deg": m.qrs_axis_deg})]


def _closing(stated: dict[str, Diagnosis]) -> str:
    abnormal = {c for c in stated if c not in NORMAL_CODES}
    if not abnormal:
        return "normal ECG" if "NORM" in stated else NO_FINDING
    return "borderline ECG" if abnormal <= BORDERLINE else "abnormal ECG"
