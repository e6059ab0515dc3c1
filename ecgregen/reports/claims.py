"""A report read as typed statements: what it says of the rhythm, rate, axis, conduction, QT, ectopy, hypertrophy,
infarction and ST-T, and which of its statements a measurement defines.

The corpus's reports are cart statement texts from small statement libraries, German and Swedish ones translated
by the reviewed glossary (:mod:`ecgregen.reports.translate`) into the English wording of the corpus's English carts.
So a report's English is read with a table of phrases, not a model: :data:`PATTERNS` lists each statement's phrases
(regular expressions over the lower-cased English, most specific first, so "incomplete right bundle branch block"
is never also read as a complete one) with its section and, where a measurement defines it, its
:class:`~ecgregen.measure.findings.Finding`. Statements that no measurement defines (infarction, ST-T, hypertrophy)
are typed too: they are what the report says, and the coverage figure counts them. A measured value quoted as such
("QRS 140 ms", "rate 52 bpm") is ``measured``: it states the measurement, never against it. Sentences that state
nothing about the ECG (a cart's "unconfirmed report", an editor's note, "trace only requested") are ``meta``.

:func:`coverage` measures the reader on a corpus: the share of sentences with a statement it recognises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from ecgregen.measure.findings import Finding

F = Finding
# (section, finding or None, phrase pattern), most specific first within overlapping phrases.
PATTERNS: tuple[tuple[str, Finding | None, str], ...] = (
    ("rhythm", F.ATRIAL_FIBRILLATION, r"atrial fibrillation(?: ?/ ?flutter)?"),
    ("rhythm", F.ATRIAL_FLUTTER, r"atrial flutter"),
    ("rhythm", F.SINUS_BRADYCARDIA, r"sinus bradycardia"),
    ("rhythm", F.SINUS_TACHYCARDIA, r"sinus tachycardia"),
    ("rhythm", F.SINUS_ARRHYTHMIA, r"sinus arrhythmia"),
    ("rhythm", F.SINUS_RHYTHM, r"(?:normal )?sinus rhythm"),
    ("rhythm", F.WITHOUT_P_WAVES, r"(?:accelerated )?(?:av-?\s?)?(?:junctional|nodal) (?:escape )?rhythm"
                                  r"|regular rhythm, no p waves? (?:detected|found)|rhythm is probably junctional"),
    ("rhythm", F.TACHYCARDIA, r"supraventricular tachycardia"),
    ("rhythm", None, r"(?:a regular )?paced rhythm|pacemaker (?:ecg|rhythm|spikes?|function)|pacemaker"
                     r"|supraventricular arrhythmia|atrial rhythm|ectopic atrial rhythm|wandering pacemaker"
                     r"|ventricular tachycardia|idioventricular rhythm|irregular rhythm"),
    ("rate", F.BRADYCARDIA, r"bradycardi\w*"),
    ("rate", F.TACHYCARDIA, r"tachycardi\w*|rapid ventricular response"),
    ("axis", None, r"borderline left axis deviation|indeterminate (?:qrs )?axis|sagittal axis|s1q3 pattern"
                   r"|(?:counter)?clockwise rotation|p wave axis is abnormal"),
    ("axis", F.AXIS_EXTREME, r"extreme axis deviation|northwest axis|right superior axis deviation"),
    ("axis", F.AXIS_RIGHT_DEVIATION, r"(?:extreme )?right axis deviation"),
    ("axis", F.AXIS_LEFT_DEVIATION, r"(?:abnormal |extreme )?left axis deviation"),
    ("axis", F.AXIS_RIGHTWARD, r"rightward axis"),
    ("axis", F.AXIS_LEFTWARD, r"leftward axis"),
    ("axis", F.AXIS_VERTICAL, r"vertical axis"),
    ("axis", F.AXIS_NORMAL, r"normal axis|axis normal(?: for age)?|normal qrs axis"),
    ("conduction", None, r"(?:second|third|2nd|3rd) degree av block|2:1 av block|complete (?:av|heart) block"
                         r"|wenckebach|mobitz|short pr(?: interval)?|wpw|wolff-?\s?parkinson-?\s?white|pre-?excitation"
                         r"|aberrant (?:intraventricular )?conduction|aberrantly conducted|av dissociation"
                         r"|p waves are inconspicuous"),
    ("conduction", F.AV_BLOCK_1, r"(?:first|1st) degree av block|av block (?:i|1)\b|(?:slightly )?prolonged pr"
                                 r"(?: interval)?|pr interval (?:is )?prolonged"),
    ("conduction", F.PR_NORMAL, r"pr interval (?:is )?(?:at upper limit of )?normal|normal pr interval"),
    ("conduction", F.BBB_INCOMPLETE, r"(?:non-specific )?(?:incomplete|partial) (?:right |left )?bundle branch block"),
    ("conduction", F.LAFB, r"left anterior (?:fascicular block|hemiblock)|anterior fascicular block|\blafb\b"),
    ("conduction", F.LPFB, r"left posterior (?:fascicular block|hemiblock)|posterior fascicular block"),
    ("conduction", F.BBB_COMPLETE, r"(?:complete )?(?:right|left) bundle branch block|(?:bi|tri)fascicular block"
                                   r"|(?:complete )?\b[lr]bbb\b"),
    ("conduction", F.IVCD, r"(?:non-specific )?intraventricular (?:block|conduction (?:disturbance|delay)|delay)"
                           r"|non-specific bundle branch block|wide qrs|fascicular block"),
    ("qt", F.QT_PROLONGED, r"(?:slightly )?prolonged qtc?|long qtc?|qtc? (?:interval )?(?:is )?prolonged"),
    ("qt", None, r"short qtc?|qtc? (?:interval )?(?:is )?normal"),
    ("ectopy", F.PREMATURE_BEATS, r"(?:interpolated )?premature (?:ventricular|supraventricular|atrial|junctional)?"
                                  r"\s?(?:contraction|complex|beat)(?:e?s|\(s\))?|extra-?systol\w*|ectopic beats?"
                                  r"|bigeminy|trigeminy|couplets?|\b(?:pvc|vpc|sve|pac)s?\b"),
    ("ectopy", None, r"escape beats?(?:\(s\))?|fusion beats?"),
    ("hypertrophy", None, r"hypertroph\w*|\blvh\b|\brvh\b|atrial (?:enlargement|overload)|voltage criteria"
                          r"|voltages? (?:are |is )?high|high voltage|voltages? in [\w ]+ (?:are )?at upper limit"
                          r"|low (?:limb lead |qrs |chest lead )?voltages?|low voltage|broad p waves?"
                          r"|prolonged p waves?|p (?:mitrale|pulmonale)|peripheral low voltage"),
    ("infarction", None, r"infarct\w*|myocardial damage|\bq waves?|qs complex\w*|poor (?:progression of r|r wave)"
                         r"|r wave progression|necros\w*|tiny r waves?|aneurysm"),
    ("st_t", None, r"\bst\b|st-t|st segments?|\bt waves?|\bt abnormal|t wave|ischa?emi\w*|lv strain|repolari[sz]\w*"
                   r"|digitalis|electrolyte|hypokal\w*|hyperkal\w*|drug effect|myocardial involvement|pericarditis"
                   r"|transition zone|r-s transition|u waves?|\bt (?:negative|tall|flat|inverted)"
                   r"|(?:infero|antero)?(?:lateral|septal|inferior|anterior) leads"
                   r"|^(?:infero|antero|high )?(?:lateral|inferior)$"),
    ("summary", None, r"no abnormality stated|normal ecg not confirmed"),
    ("measured", None, r"(?:rate|pr|qrs|qtc?|qt/qtc) \d+(?:/\d+)? (?:ms|bpm)(?: \(bazett\))?"),
    ("normal", F.NORMAL_ECG, r"(?:otherwise |probably )?\bnormal ecg|ecg (?:is )?normal|no definite pathology"
                             r"|within normal limits|(?:tracing )?(?:is )?otherwise normal|^normal$"),
    ("summary", None, r"(?:borderline|abnormal) ecg|ecg (?:is )?(?:abnormal|borderline)|^(?:abnormal|borderline)$"
                      r"|probably normal|qrs\(t\) abnormal"),
    ("meta", None, r"unconfirmed|trace only|edit:|^[\d\s]+$|suggest|repeat|if clinically|quality|noise|artefact"
                   r"|artifact|baseline|compared with|no longer|now present|interpretation|findings are|consistent with"
                   r"|cause of|may be|cannot be excluded|age undetermined|heart disease|physiological|obscures"
                   r"|age of the"
                   r"|significan\w*|normal variant|please ignore|seconds?\b|\bsec\b|whether|unusual tracing"),
)
_COMPILED = tuple((section, finding, re.compile(pattern)) for section, finding, pattern in PATTERNS)
# Sentences are separated by a period or semicolon before a space or the end, or a line break.
_SENTENCE = re.compile(r"[^.;\n]+(?:[.;](?=\s|$)|\n|$)")


@dataclass(frozen=True)
class Claim:
    """One statement of a report: its section, the finding a measurement defines (None: none does), the matched
    phrase and where it lies in the text, and the sentence it belongs to."""

    section: str
    finding: Finding | None
    phrase: str
    start: int
    end: int
    sentence_start: int
    sentence_end: int


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text` (a cart statement per sentence, as the glossary ends them)."""
    out = []
    for m in _SENTENCE.finditer(text):
        if m.group().strip(" .;\n"):
            out.append((m.start() + len(m.group()) - len(m.group().lstrip()), m.end()))
    return out


@lru_cache(maxsize=8192)
def read_claims(text: str) -> tuple[Claim, ...]:
    """The statements of a report's English, in order. Each phrase is read once, by the first (most specific)
    pattern that matches it. Cached: a corpus repeats a few thousand report texts, and every verified report reads
    its k candidates."""
    lower = text.lower()
    out: list[Claim] = []
    for s_start, s_end in sentences(text):
        sentence = lower[s_start:s_end].rstrip(" .;\n")
        taken = [False] * len(sentence)
        for section, finding, pattern in _COMPILED:
            for m in pattern.finditer(sentence):
                if any(taken[m.start():m.end()]) or m.end() == m.start():
                    continue
                taken[m.start():m.end()] = [True] * (m.end() - m.start())
                out.append(Claim(section, finding, text[s_start + m.start():s_start + m.end()], s_start + m.start(),
                                 s_start + m.end(), s_start, s_end))
    return tuple(sorted(out, key=lambda c: c.start))


def coverage(reports: Iterable[str]) -> dict[str, float | int | dict[str, int]]:
    """How much of `reports` (English) the reader recognises: sentences with at least one statement (meta
    included), reports with every sentence recognised, and the count of statements per section."""
    sentence_count = read = reports_count = reports_full = 0
    sections: dict[str, int] = {}
    for text in reports:
        reports_count += 1
        spans = sentences(text)
        claims = read_claims(text)
        for claim in claims:
            sections[claim.section] = sections.get(claim.section, 0) + 1
        covered = {(c.sentence_start, c.sentence_end) for c in claims}
        sentence_count += len(spans)
        read += sum(1 for span in spans if span in covered)
        reports_full += all(span in covered for span in spans)
    return {"reports": reports_count, "sentences": sentence_count,
            "sentences_read": round(read / max(1, sentence_count), 4),
            "reports_fully_read": round(reports_full / max(1, reports_count), 4), "statements_by_section": sections}
