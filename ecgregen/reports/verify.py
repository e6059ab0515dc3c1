"""A report that never contradicts the ECG's own measurements: checked statement by statement, edited where needed.

A neighbour's report describes another patient's ECG. Its statements that a measurement defines (rhythm, rate,
axis, AV and intraventricular conduction, QT, ectopy, "normal ECG": :mod:`ecgregen.reports.claims`) are checked
against this ECG's measurements with the definitions and margins of :mod:`ecgregen.measure.findings`. The
``verified`` report mode (:func:`choose_verified`) serves, among the diagnosis neighbours, the report that agrees
best with the present diagnoses and has no contradicted statement; when none qualifies, the best one is edited
(:func:`verify_text`): a contradicted sentence is removed and what was measured is stated in its place ("normal
axis (+79 degrees)"), and a measured finding clearly out of range that the report does not state (atrial
fibrillation, sinus bradycardia or tachycardia, PR, QRS >= 120 ms, a deviated axis, QTc) is added. Every edit is a
:class:`ReportEdit` with the measurement that decided it, so a reader sees what the service changed and why.

:func:`contradictions` is the check alone: the evaluation (``ecgregen evaluate consistency``) and the refined
(LLM) report's fallback use it. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ecgregen.api_values import ReportEditAction
from ecgregen.measure.findings import (
    AXIS_RANGES,
    RATE_FINDINGS,
    Finding,
    MeasuredFinding,
    Verdict,
    axis_words,
    check,
    clinical_rhythm,
    measured_findings,
)
from ecgregen.measure.types import Measurements
from ecgregen.reports.claims import Claim, read_claims, sentences

F = Finding


@dataclass(frozen=True)
class ReportEdit:
    """One change made to a served report because of what the ECG measures.

    ``action`` is ``removed`` (a sentence the measurements contradict) or ``added`` (a measured finding out of range
    that the report did not state, or the measured value stated in place of a removed sentence); ``sentence`` is the
    text removed or added; ``measurement`` names the value that decided it (a field of
    :data:`ecgregen.measure.types.VALUE_FIELDS`, ``rhythm`` or ``premature_beats``), ``value`` its number (None for
    the rhythm) and ``reason`` says it in words ("measured QRS axis +79 degrees is normal axis, not ...").
    """

    action: str
    sentence: str
    measurement: str
    value: float | None
    reason: str


@dataclass(frozen=True)
class Contradiction:
    """A statement of a report and the measurement that contradicts it."""

    claim: Claim
    verdict: Verdict


# Which statements state a measured out-of-range finding (so it is not added again).
_COVERS: dict[Finding, frozenset[Finding]] = {
    F.ATRIAL_FIBRILLATION: frozenset({F.ATRIAL_FIBRILLATION, F.ATRIAL_FLUTTER, F.WITHOUT_P_WAVES}),
    F.ATRIAL_FLUTTER: frozenset({F.ATRIAL_FIBRILLATION, F.ATRIAL_FLUTTER, F.WITHOUT_P_WAVES, F.TACHYCARDIA}),
    F.SINUS_BRADYCARDIA: frozenset({F.SINUS_BRADYCARDIA, F.BRADYCARDIA}),
    F.SINUS_TACHYCARDIA: frozenset({F.SINUS_TACHYCARDIA, F.TACHYCARDIA}),
    F.AV_BLOCK_1: frozenset({F.AV_BLOCK_1}),
    F.IVCD: frozenset({F.BBB_COMPLETE, F.IVCD}),
    F.AXIS_LEFT_DEVIATION: frozenset({F.AXIS_LEFT_DEVIATION, F.LAFB, F.AXIS_EXTREME}),
    F.AXIS_RIGHTWARD: frozenset({F.AXIS_RIGHTWARD, F.AXIS_RIGHT_DEVIATION, F.LPFB}),
    F.AXIS_RIGHT_DEVIATION: frozenset({F.AXIS_RIGHT_DEVIATION, F.AXIS_RIGHTWARD, F.LPFB, F.AXIS_EXTREME}),
    F.AXIS_EXTREME: frozenset({F.AXIS_EXTREME, F.AXIS_RIGHT_DEVIATION}),
    F.QT_PROLONGED: frozenset({F.QT_PROLONGED}),
}
# Statements without a finding of their own that still account for a wide QRS or a deviated axis.
_WIDE_QRS_WORDS = ("pace", "wpw", "wolff", "pre-excitation", "preexcitation", "aberrant", "bundle branch")
_AXIS_WORDS = ("borderline left axis deviation",)
# A quoted measured value ("QRS 140 ms") states the finding of that value.
_QUOTED = {F.IVCD: "qrs ", F.AV_BLOCK_1: "pr ", F.QT_PROLONGED: "qtc", F.SINUS_BRADYCARDIA: "rate ",
           F.SINUS_TACHYCARDIA: "rate "}


def contradictions(text: str, m: Measurements | None) -> list[Contradiction]:
    """The statements of `text` (English) that the measurements contradict, in order; none when not measured."""
    if m is None:
        return []
    claims = read_claims(text)
    out = [Contradiction(c, v) for c in claims if c.finding is not None and c.finding is not F.NORMAL_ECG
           for v in [check(c.finding, m)] if v is not None and v.contradicted]
    wrong = {x.claim for x in out}
    kept = [c for c in claims if c not in wrong]
    for claim in claims:
        if claim.finding is F.NORMAL_ECG:
            unstated = [f for f in _missing(kept, m) if f.finding not in RATE_FINDINGS]
            if unstated:
                out.append(Contradiction(claim, Verdict(True, unstated[0].measurement, unstated[0].value,
                                                        f"not a normal ECG: {unstated[0].reason}")))
    return sorted(out, key=lambda x: x.claim.start)


def _covered(finding: MeasuredFinding, claims: Sequence[Claim]) -> bool:
    covers = _COVERS.get(finding.finding, frozenset({finding.finding}))
    for claim in claims:
        if claim.finding in covers:
            return True
        phrase = claim.phrase.lower()
        if claim.section == "measured" and phrase.startswith(_QUOTED.get(finding.finding, "-")):
            return True  # the value itself is stated ("QRS 140 ms")
        if finding.finding is F.IVCD and any(w in phrase for w in _WIDE_QRS_WORDS):
            return True
        if finding.finding is F.AXIS_LEFT_DEVIATION and phrase in _AXIS_WORDS:
            return True
    return False


def _missing(claims: Sequence[Claim], m: Measurements) -> list[MeasuredFinding]:
    """The clear out-of-range measured findings no statement of `claims` states."""
    return [f for f in measured_findings(m) if f.clear and not _covered(f, claims)]


def _stated_instead(claim: Claim, m: Measurements) -> tuple[str, str, float | None, str] | None:
    """What was measured, said in place of a removed statement: (sentence, measurement, value, reason)."""
    finding = claim.finding
    if finding in AXIS_RANGES or finding in (F.LAFB, F.LPFB):
        axis = m.qrs_axis_deg
        if axis is None:
            return None
        words = axis_words(axis)
        return f"{words} ({axis:+.0f} degrees)", "qrs_axis_deg", axis, f"measured QRS axis {axis:+.0f} degrees"
    if claim.section in ("rhythm", "rate"):
        rhythm, rate = clinical_rhythm(m), m.heart_rate_bpm
        rate_words = f"rate {rate:.0f} bpm" if rate is not None else ""
        if rhythm is None:
            return (rate_words, "heart_rate_bpm", rate, f"measured rate {rate:.0f} bpm") if rate is not None else None
        words = rhythm.value.replace("_", " ")
        return (f"{words} ({rate_words})" if rate_words else words, "rhythm", None, f"measured rhythm: {words}")
    value_of: dict[Finding, tuple[str, str, float | None]] = {
        F.AV_BLOCK_1: ("PR", "pr_interval_ms", m.pr_interval_ms),
        F.PR_NORMAL: ("PR", "pr_interval_ms", m.pr_interval_ms),
        F.BBB_COMPLETE: ("QRS", "qrs_duration_ms", m.qrs_duration_ms),
        F.BBB_INCOMPLETE: ("QRS", "qrs_duration_ms", m.qrs_duration_ms),
        F.IVCD: ("QRS", "qrs_duration_ms", m.qrs_duration_ms),
        F.QT_PROLONGED: ("QTc", "qtc_bazett_ms", m.qtc_bazett_ms),
    }
    if finding in value_of and value_of[finding][2] is not None:
        name, field, value = value_of[finding]
        return f"{name} {value:.0f} ms", field, value, f"measured {name} {value:.0f} ms"
    return None


@dataclass(frozen=True)
class VerifiedText:
    """A report after verification: its text and the edits that made it (none: served as it was)."""

    text: str
    edits: tuple[ReportEdit, ...]


def verify_text(text: str, m: Measurements | None) -> VerifiedText:
    """`text` (English) with every statement the measurements contradict removed - the measured finding stated in
    its place where a measurement says what it is - and the clear out-of-range findings it lacks added (the rhythm
    first, as carts print it; the others at the end)."""
    if m is None:
        return VerifiedText(text, ())
    wrong = {x.claim: x.verdict for x in contradictions(text, m)}
    if not wrong and not _missing(read_claims(text), m):
        return VerifiedText(text, ())
    by_sentence: dict[tuple[int, int], list[Claim]] = {}
    for claim in read_claims(text):
        by_sentence.setdefault((claim.sentence_start, claim.sentence_end), []).append(claim)
    edits: list[ReportEdit] = []
    replacements: list[tuple[int, int, str]] = []  # (start, end, new text)
    stated: set[str] = set()  # what was measured, said in place of removed statements
    for span in sentences(text):
        members = by_sentence.get(span, [])
        if any(c in wrong for c in members):
            replacements.extend(_edit_sentence(text, span, members, wrong, m, stated, edits))
    out = text
    for start, end, new in sorted(replacements, key=lambda r: (r[0], r[1]), reverse=True):
        out = out[:start] + new + out[end:]
    return _add_missing(" ".join(out.split()), m, stated, edits)


def _edit_sentence(text: str, span: tuple[int, int], members: Sequence[Claim], wrong: dict[Claim, Verdict],
                   m: Measurements, stated: set[str], edits: list[ReportEdit]) -> list[tuple[int, int, str]]:
    """The replacements that take one sentence's contradicted statements out (the whole sentence where nothing else
    it says is about the ECG, else the phrases) and state what was measured in their place; its edits are appended
    to `edits`."""
    bad = [c for c in members if c in wrong]
    whole = all(c in wrong or c.section in ("meta", "summary") for c in members)
    instead = []
    for claim in bad:
        said = _stated_instead(claim, m)
        if said is not None and said[0] not in stated:
            stated.add(said[0])
            instead.append(said)
    if whole:  # one edit for the sentence, with every reason
        reasons = "; ".join(dict.fromkeys(wrong[c].reason for c in bad))
        edits.append(ReportEdit(ReportEditAction.REMOVED, text[span[0]:span[1]].strip(), wrong[bad[0]].measurement,
                                wrong[bad[0]].value, reasons))
    else:
        edits.extend(ReportEdit(ReportEditAction.REMOVED, c.phrase, wrong[c].measurement, wrong[c].value,
                                wrong[c].reason) for c in bad)
    edits.extend(ReportEdit(ReportEditAction.ADDED, f"{sentence}.", field, value,
                            f"{reason}, stated in place of the removed statement")
                 for sentence, field, value, reason in instead)
    new = "".join(f"{sentence}. " for sentence, *_ in instead)
    if whole:
        end = span[1] + len(text[span[1]:]) - len(text[span[1]:].lstrip())
        return [(span[0], end, new)]
    out = [_phrase_span(text, c) for c in bad]
    if new:
        closed = text[:span[1]].rstrip().endswith((".", ";"))
        out.append((span[1], span[1], ("" if closed else ".") + " " + new))
    return out


def _add_missing(text: str, m: Measurements, stated: set[str], edits: list[ReportEdit]) -> VerifiedText:
    """`text` with the clear out-of-range measured findings it does not state added (the rhythm first)."""
    before, after = [], []
    for finding in _missing(read_claims(text), m):
        if finding.sentence in stated:
            continue
        (before if finding.finding in _RHYTHMS else after).append(finding)
        edits.append(ReportEdit(ReportEditAction.ADDED, finding.sentence + ".", finding.measurement, finding.value,
                                f"{finding.reason}; the report did not state it"))
    if before:
        text = " ".join(f"{f.sentence}." for f in before) + (" " + text if text else "")
    if after:
        text = (text.rstrip() + ("" if not text or text.rstrip().endswith(".") else ".") + " "
                + " ".join(f"{f.sentence}." for f in after)).strip()
    return VerifiedText(text.strip(), tuple(edits))


_RHYTHMS = frozenset({F.ATRIAL_FIBRILLATION, F.ATRIAL_FLUTTER, F.SINUS_BRADYCARDIA, F.SINUS_TACHYCARDIA})


def _phrase_span(text: str, claim: Claim) -> tuple[int, int, str]:
    """The span to delete for a phrase removed from a sentence that keeps other statements: the phrase with the
    comma or space joining it to the next phrase, or, at the sentence's end, to the previous one."""
    rest = text[claim.end:claim.sentence_end]
    if rest.strip(" .;\n,"):
        return claim.start, claim.end + len(rest) - len(rest.lstrip(" ,")), ""
    before = text[claim.sentence_start:claim.start]
    return claim.sentence_start + len(before.rstrip(" ,")), claim.end, ""


@dataclass(frozen=True)
class Choice:
    """The verified mode's pick: the candidate's index, its text as served, and the edits (none when it qualified)."""

    index: int
    text: str
    edits: tuple[ReportEdit, ...]


def choose_verified(candidates: Sequence[str], agreement: Callable[[int], float], m: Measurements | None) -> Choice:
    """Among `candidates` (English reports, closest first), the one that agrees best with the present diagnoses
    (`agreement` of its index; ties by order) and has no statement the measurements contradict, with the clear
    out-of-range findings it lacks added; when every candidate has a contradicted statement, the best-agreeing one
    edited (:func:`verify_text`)."""
    if not candidates:
        raise ValueError("no candidate report to verify")
    order = sorted(range(len(candidates)), key=lambda i: (-agreement(i), i))
    for i in order:
        if not contradictions(candidates[i], m):
            verified = verify_text(candidates[i], m)  # adds what it lacks, removes nothing
            return Choice(i, verified.text, verified.edits)
    best = order[0]
    verified = verify_text(candidates[best], m)
    return Choice(best, verified.text, verified.edits)
