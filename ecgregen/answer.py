"""Answering questions about an ECG from the diagnosis labels of its nearest neighbours.

The retrieval-only answerer (no LLM): it recognises SCP-ECG statements in the question and the options (by
their PTB-XL descriptions, the wording ECG-QA uses, and the five diagnostic superclasses), then answers from the
predicted diagnoses (:mod:`ecgregen.diagnoses`) when it is given them, else lets the top-k neighbours vote. It is
the baseline the LLM answerer is compared with, and its fallback when the LLM fails.

With diagnoses, a statement's probability ``p`` is its calibrated probability (0 when no neighbour carries it);
a phrase that stands for several codes (a superclass such as "myocardial infarction", or a group such as "any
form-related symptoms") takes the largest ``p`` of its codes. ECG-QA's reading of a label
(:func:`ecgregen.qa_conventions.label_state`) is yes = listed with likelihood 100 (or listed at all, for rhythm
statements, which PTB-XL lists with likelihood 0), not sure = listed with 0 < likelihood < 100, no = not listed.
Verify questions are those whose options are yes / no / not sure (:func:`ecgregen.qa_conventions.is_verify`), as for
the LLM prompt. ``p`` is the probability of being listed at all, so the answerer maps
probability bands onto those answers (the edges are :class:`AnswerSettings`):

- verify, "not sure" offered, non-rhythm statement: ``p >= verify_yes`` -> yes; ``verify_not_sure <= p <
  verify_yes`` -> not sure; ``p < verify_not_sure`` -> no;
- verify with yes/no only, or a rhythm statement: ``p >= verify_binary`` -> yes, else no;
- verify about a group ("any ... symptoms", "any kind of abnormal symptoms"): ``p >= group_thresholds[group]``
  (``verify_group`` for a group without its own; "... excluding uncertain" questions have their own) -> yes, else no;
- verify that names a lead ("... in lead V2?"): the diagnoses cannot place a statement in a lead, so ``p`` is
  scaled by ``lead_share`` (the share of ECG-QA's lead questions about a present statement answered yes) first;
- choose: every option whose ``p >= choose`` (``None``: the diagnosis's own calibrated ``present`` threshold);
  none chosen -> "none" where offered, else the most probable option;
- query with options (more than two statement options): the same with ``query``; without options: the codes of
  the asked statements (all codes when none is named) with ``p`` at or over their threshold.

Questions about what a cart measures - numeric features, heart axis, noise, extra systoles - are answered from the
ECG's own measurements when the caller passes them (:mod:`ecgregen.answer_measured`, ECG-QA's ranges): the neighbours
do not share them. Where the measurement is absent the answer falls back as below and the rationale says why. Other
questions naming no SCP statement and options that are not statements are answered as without diagnoses, by the
neighbours' vote. The shipped settings (:data:`DEFAULT_SETTINGS`, ``ecgregen/models/answer-settings.json``) were
fitted by ``ecgregen evaluate qa ... --settings-out`` for the encoder they name.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import pandas as pd

from ecgregen.answer_measured import MeasuredAnswer, Unmeasured, answer_from_measurements
from ecgregen.diagnoses import Diagnosis
from ecgregen.measure.types import Measurements
from ecgregen.qa_conventions import NONE, is_verify, label_state, normalise, question_lead
from ecgregen.settings import DEMO_PTBXL
from ecgregen.store import Hit

# ECG-QA's names of PTB-XL's diagnostic superclasses. Its "hypertrophy" leaves out atrial overload (LAO/LAE).
_SUPERCLASS_PHRASES = {
    "NORM": "normal ecg",
    "MI": "myocardial infarction",
    "STTC": "st/t change",
    "CD": "conduction disturbance",
    "HYP": "hypertrophy",
}
_NOT_HYPERTROPHY = {"LAO/LAE", "RAO/RAE"}
# ECG-QA words a few statements differently from PTB-XL's scp_statements.csv.
_ECGQA_WORDING = {
    "BIGU": "bigeminal pattern (unknown origin, supraventricular, or ventricular)",
    "TRIGU": "trigeminal pattern (unknown origin, supraventricular, or ventricular)",
    "LOWT": "low amplitude t-wave",
}
# ECG-QA's group attributes -> the statement flag they cover. NORM never counts, SR only as rhythm-related (ECG-QA
# answers "any rhythm-related symptoms" with yes for an ECG listing SR alone, "any kind of abnormal" with no).
_GROUP_PHRASES = {
    "any diagnostic symptoms": "diagnostic",
    "any form-related symptoms": "form",
    "any rhythm-related symptoms": "rhythm",
    "any kind of abnormal symptoms": None,  # every statement
}
_NORMAL_CODES = {"NORM", "SR"}
_EXCLUDING = " excluding uncertain"


@dataclass(frozen=True)
class AnswerSettings:
    """Probability band edges of the answers from diagnoses (see the module docstring), and how many flagged leads
    or premature beats make a noise kind or an extra systole present (:mod:`ecgregen.answer_measured`)."""

    verify_yes: float = 0.5
    verify_not_sure: float = 0.5
    verify_binary: float = 0.5
    verify_group: float = 0.5
    group_thresholds: dict[str, float] = field(default_factory=dict)  # per group phrase; verify_group for others
    lead_share: float = 1.0
    choose: float | None = None  # None: each diagnosis's own present threshold
    query: float | None = None
    noise_min_leads: int = 1
    premature_min_beats: int = 1
    # The band edges hold for the calibrated probabilities of one encoder's neighbours: the encoder they were fitted
    # for ("" = none in particular).
    encoder_id: str = ""
    fitted_on: str = ""  # what the settings were fitted on (a note)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> AnswerSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def but(self, **changes: object) -> AnswerSettings:
        return replace(self, **changes)


# The shipped settings, for the shipped encoder, whose id the file names (tests/test_answer.py checks it); written by
# `ecgregen evaluate qa --ptbxl ../shared/data/ptbxl --questions ../shared/data/ecgqa/ptbxl/single_sample.json
# ../shared/data/ecgqa/ptbxl/template/train/120000.json --index-folds 1-8 --settings-out
# ecgregen/models/answer-settings.json`: fitted on fold 8 split by patient (neither the reported fold 9 nor the
# encoder's label folds 1-7); the file's fitted_on says how.
SHIPPED_SETTINGS = Path(__file__).resolve().parent / "models" / "answer-settings.json"


def load_settings(path: str | Path = SHIPPED_SETTINGS) -> AnswerSettings:
    return AnswerSettings.from_json(json.loads(Path(path).read_text()))


DEFAULT_SETTINGS = load_settings()


@dataclass(frozen=True)
class Answer:
    answer: list[str]
    rationale: str


class LabelVocabulary:
    """Phrase -> SCP codes, built from a PTB-XL ``scp_statements.csv``."""

    def __init__(self, phrases: dict[str, frozenset[str]], descriptions: dict[str, str] | None = None,
                 rhythm: frozenset[str] = frozenset()) -> None:
        self.phrases = phrases
        self.descriptions = descriptions or {}  # code -> PTB-XL's wording, for showing labels to an LLM
        self.rhythm = rhythm  # rhythm statements: listed with likelihood 0, so never "not sure"
        self.groups = frozenset(normalise(p) for p in _GROUP_PHRASES)
        # Longest first, so "myocardial infarction in inferior leads" wins over "myocardial infarction".
        self._ordered = sorted(phrases, key=len, reverse=True)

    @classmethod
    def from_scp_statements(cls, path: str | Path) -> LabelVocabulary:
        df = pd.read_csv(path, index_col=0)
        phrases: dict[str, set[str]] = {}
        descriptions = {str(code): str(text) for code, text in df["description"].items()}

        def add(phrase: str, code: str) -> None:
            phrases.setdefault(normalise(phrase), set()).add(code)

        for code, row in df.iterrows():
            code = str(code)
            description = str(row["description"])
            add(description, code)
            add(code, code)
            mi = re.fullmatch(r"(\w+) myocardial infarction", description)
            if mi:  # ECG-QA says "myocardial infarction in inferior leads" for PTB-XL's "inferior myocardial infarction"
                add(f"myocardial infarction in {mi.group(1)} leads", code)
            if code in _ECGQA_WORDING:
                add(_ECGQA_WORDING[code], code)
            superclass = row.get("diagnostic_class")
            if isinstance(superclass, str) and superclass in _SUPERCLASS_PHRASES:
                if not (superclass == "HYP" and code in _NOT_HYPERTROPHY):
                    add(_SUPERCLASS_PHRASES[superclass], code)
            for phrase, flag in _GROUP_PHRASES.items():
                if code in _NORMAL_CODES and not (code == "SR" and flag == "rhythm"):
                    continue
                if flag is None or row.get(flag) == 1:
                    add(phrase, code)
        rhythm = frozenset(str(code) for code, row in df.iterrows() if row.get("rhythm") == 1)
        return cls({p: frozenset(c) for p, c in phrases.items()}, descriptions, rhythm)

    def find(self, text: str) -> list[tuple[str, frozenset[str]]]:
        """Statements named in `text`, each once, longest phrases first and not overlapping."""
        remaining = f" {normalise(text)} "
        found: list[tuple[str, frozenset[str]]] = []
        for phrase in self._ordered:
            token = f" {phrase} "
            if len(phrase) > 3 and token in remaining:  # codes of <= 3 letters ("MI", "SR") are too ambiguous in prose
                found.append((phrase, self.phrases[phrase]))
                remaining = remaining.replace(token, " | ")
        return found

    def codes_of(self, option: str) -> frozenset[str] | None:
        """Codes an answer option stands for, if it names a statement."""
        return self.phrases.get(normalise(option))


class LabelVoteAnswerer:
    """Answers from the predicted diagnoses when given them, else a majority vote of the neighbours' SCP labels
    (ties go to the closer neighbour)."""

    name = "labels"

    def __init__(self, vocabulary: LabelVocabulary, settings: AnswerSettings = DEFAULT_SETTINGS) -> None:
        self.vocabulary = vocabulary
        self.settings = settings

    def answer(
        self, question: str, options: Sequence[str], neighbours: Sequence[Hit], diagnoses: Sequence[Diagnosis] = (),
        *, measurements: Measurements | None = None,
    ) -> Answer:
        """From `measurements` for a question about a measured attribute; else from the diagnoses, else by the
        neighbours' vote (saying why the measurements could not answer, where they could not)."""
        options = [o.strip() for o in options if o.strip()]
        if measurements is not None:
            measured = self.measured_answer(question, options, measurements)
            if isinstance(measured, MeasuredAnswer):
                return Answer(measured.answer, f"from the ECG's measurements: {measured.rationale}")
            if isinstance(measured, Unmeasured):
                fallback = self._from_labels(question, options, neighbours, diagnoses)
                return Answer(fallback.answer, f"{measured.reason}, so answered as without measurements: "
                                               f"{fallback.rationale}")
        return self._from_labels(question, options, neighbours, diagnoses)

    def measured_answer(self, question: str, options: Sequence[str], measurements: Measurements
                        ) -> MeasuredAnswer | Unmeasured | None:
        """:func:`ecgregen.answer_measured.answer_from_measurements` with these settings."""
        return answer_from_measurements(question, options, measurements, noise_min_leads=self.settings.noise_min_leads,
                                        premature_min_beats=self.settings.premature_min_beats)

    def _from_labels(
        self, question: str, options: list[str], neighbours: Sequence[Hit], diagnoses: Sequence[Diagnosis],
    ) -> Answer:
        if diagnoses:
            answered = self._from_diagnoses(question, options, diagnoses)
            if answered is not None:
                return answered
        if not neighbours:
            return Answer([], "no neighbours to vote")
        if is_verify(options):
            return self._verify(question, options, neighbours)
        if options:
            return self._choose(options, neighbours)
        return self._open(question, neighbours)

    # --- from the predicted diagnoses -------------------------------------------------------------------------

    def _from_diagnoses(
        self, question: str, options: list[str], diagnoses: Sequence[Diagnosis]
    ) -> Answer | None:
        """The answer from calibrated probabilities; None where they cannot answer (no statement named)."""
        by_code = {d.code: d for d in diagnoses}
        if is_verify(options):
            return self._verify_diagnoses(question, options, by_code)
        if options:
            return self._choose_diagnoses(options, by_code)
        return self._open_diagnoses(question, by_code)

    @staticmethod
    def _probability(codes: frozenset[str], by_code: dict[str, Diagnosis]) -> float:
        return max((by_code[c].probability for c in codes if c in by_code), default=0.0)

    @staticmethod
    def _holds(codes: frozenset[str], by_code: dict[str, Diagnosis], threshold: float | None) -> bool:
        """Some code at or over `threshold` (None: the diagnosis's own present threshold); where a measurement
        decided the statement (:func:`_decided`), what it decided."""
        decided = _decided(codes, by_code)
        if decided is not None:
            return decided
        return any(
            by_code[c].probability >= (by_code[c].threshold if threshold is None else threshold)
            for c in codes if c in by_code
        )

    def verify_evidence(self, question: str, options: Sequence[str], diagnoses: Sequence[Diagnosis]) -> dict | None:
        """What a verify answer from diagnoses rests on: the band rule that applies ("group", "bands" or "binary"),
        the probability (before any lead scaling), whether a lead is named, the statements; None: no statement."""
        statements = self.vocabulary.find(question)
        if not statements:
            return None
        by_code = {d.code: d for d in diagnoses}
        codes = frozenset().union(*(c for _, c in statements))
        allowed = {normalise(o) for o in options}
        groups = [phrase for phrase, _ in statements if phrase in self.vocabulary.groups]
        if groups:  # "excluding uncertain symptoms" asks about another population of statements: its own edge
            rule = "group:" + groups[0] + (_EXCLUDING if _EXCLUDING in normalise(question) else "")
        elif "not sure" in allowed and not codes <= self.vocabulary.rhythm:
            rule = "bands"
        else:
            rule = "binary"
        return {"rule": rule, "p": self._probability(codes, by_code), "lead": question_lead(question),
                "statements": [p for p, _ in statements], "codes": sorted(codes)}

    @staticmethod
    def verify_state(rule: str, p: float, lead: bool, s: AnswerSettings) -> str:
        """yes / not sure / no for a probability under the band rule (see the module docstring)."""
        if lead:
            p *= s.lead_share
        if rule.startswith("group"):
            return "yes" if p >= s.group_thresholds.get(rule.partition(":")[2], s.verify_group) else "no"
        if rule == "bands":
            return "yes" if p >= s.verify_yes else "not sure" if p >= s.verify_not_sure else "no"
        return "yes" if p >= s.verify_binary else "no"

    def _verify_diagnoses(self, question: str, options: list[str], by_code: dict[str, Diagnosis]) -> Answer | None:
        evidence = self.verify_evidence(question, options, list(by_code.values()))
        if evidence is None:
            return None
        s = self.settings
        allowed = {normalise(o): o for o in options}
        state = self.verify_state(evidence["rule"], evidence["p"], evidence["lead"] is not None, s)
        if state not in allowed:  # options without "no" (or "yes"): the nearest one offered
            state = next((o for o in ("not sure", "yes", "no") if o in allowed), normalise(options[0]))
        decided = _decided(frozenset(evidence["codes"]), by_code)
        if decided is not None and evidence["lead"] is None and not evidence["rule"].startswith("group"):
            state = "yes" if decided else "no"
            if state in allowed:
                why = "; ".join(dict.fromkeys(by_code[c].decided_by for c in evidence["codes"]
                                              if c in by_code and by_code[c].decided_by))
                return Answer([allowed[state]], f"statement(s) {', '.join(evidence['statements'])} "
                                                f"({', '.join(evidence['codes'])}) decided by the ECG's measurements, "
                                                f"as the served diagnoses are: {why}")
        group = evidence["rule"].partition(":")[2]
        rule = {"binary": f"band {s.verify_binary}",
                "bands": f"bands no < {s.verify_not_sure} <= not sure < {s.verify_yes} <= yes"}.get(
            evidence["rule"], f"group band {s.group_thresholds.get(group, s.verify_group)}")
        lead = evidence["lead"]
        where = f" x lead share {s.lead_share} (asked about lead {lead})" if lead else ""
        return Answer([allowed[state]], f"statement(s) {', '.join(evidence['statements'])} "
                                        f"({', '.join(evidence['codes'])}): calibrated probability "
                                        f"{evidence['p']:.2f}{where}; {rule}")

    def choice_evidence(self, options: Sequence[str], diagnoses: Sequence[Diagnosis]) -> dict[str, tuple[float, bool]]:
        """Per option naming a statement: (largest calibrated probability of its codes, whether a code is present by
        its own threshold)."""
        by_code = {d.code: d for d in diagnoses}
        out = {}
        for option in options:
            codes = self.vocabulary.codes_of(option) if normalise(option) != NONE else None
            if codes is not None:
                out[option] = (self._probability(codes, by_code), self._holds(codes, by_code, None))
        return out

    @staticmethod
    def choose_options(options: Sequence[str], evidence: dict[str, tuple[float, bool]], threshold: float | None) -> list[str]:
        """The statement options at or over `threshold` (None: their own); else "none" if offered, else the likeliest."""
        chosen = [o for o, (p, own) in evidence.items() if (own if threshold is None else p >= threshold)]
        if chosen:
            return chosen
        none = next((o for o in options if normalise(o) == NONE), None)
        if none is not None:
            return [none]
        best = max(evidence, key=lambda o: evidence[o][0])
        return [best] if evidence[best][0] > 0 else []

    def _choose_diagnoses(self, options: list[str], by_code: dict[str, Diagnosis]) -> Answer | None:
        evidence = self.choice_evidence(options, list(by_code.values()))
        if not evidence:
            return None
        query = len(evidence) > 2
        threshold = self.settings.query if query else self.settings.choose
        chosen = self.choose_options(options, evidence, threshold)
        rule = "own present thresholds" if threshold is None else f"threshold {threshold}"
        shown = {o: round(p, 2) for o, (p, _) in evidence.items()}
        others = [o for o in options if o not in evidence and normalise(o) != NONE]
        return Answer(chosen, f"calibrated probabilities {shown} ({rule}, {'query' if query else 'choose'})"
                              + (f"; not SCP statements: {others}" if others else ""))

    def _open_diagnoses(self, question: str, by_code: dict[str, Diagnosis]) -> Answer:
        asked = self.vocabulary.find(question)
        candidates = frozenset().union(*(c for _, c in asked)) if asked else frozenset(by_code)
        threshold = self.settings.query
        present = [d for c, d in by_code.items() if c in candidates
                   and (d.present if d.decided_by
                        else d.probability >= (d.threshold if threshold is None else threshold))]
        codes = [d.code for d in sorted(present, key=lambda d: (-d.probability, d.code))]
        return Answer(codes, "predicted diagnoses at or over their threshold: "
                             + (", ".join(f"{d.code} {d.probability:.2f}" for d in present) or "none"))

    # --- the neighbours' vote ---------------------------------------------------------------------------------

    def _verify(self, question: str, options: list[str], neighbours: Sequence[Hit]) -> Answer:
        statements = self.vocabulary.find(question)
        if not statements:
            fallback = next((o for o in options if normalise(o) == "no"), options[0])
            return Answer([fallback], "no SCP statement recognised in the question; answered by default")
        codes = frozenset().union(*(c for _, c in statements))
        allowed = {normalise(o): o for o in options}
        votes = []
        for hit in neighbours:
            state = label_state(hit.scp_codes, codes)
            if state == "not sure" and "not sure" not in allowed:
                state = "yes"
            votes.append(state)
        counts = Counter(v for v in votes if v in allowed)
        if not counts:
            return Answer([], f"neighbours voted {votes}, none of them an allowed option")
        best = max(counts.values())
        winner = next(v for v in votes if counts.get(v) == best)  # first in rank order among the tied
        names = ", ".join(p for p, _ in statements)
        return Answer([allowed[winner]], f"statement(s) {names} ({', '.join(sorted(codes))}); neighbour votes {votes}")

    def _choose(self, options: list[str], neighbours: Sequence[Hit]) -> Answer:
        majority = len(neighbours) / 2
        chosen: list[str] = []
        notes: list[str] = []
        tally: dict[str, int] = {}
        for option in options:
            if normalise(option) == NONE:
                continue
            codes = self.vocabulary.codes_of(option)
            if codes is None:
                notes.append(f"{option!r} is not an SCP statement")
                continue
            tally[option] = sum(1 for h in neighbours if codes & h.scp_codes.keys())
            if tally[option] > majority:
                chosen.append(option)
        none = next((o for o in options if normalise(o) == NONE), None)
        if not chosen:
            if none is not None:
                chosen = [none]
            elif tally and max(tally.values()) > 0:
                chosen = [max(tally, key=lambda o: tally[o])]
        rationale = f"votes of {len(neighbours)} neighbours: {tally}" + (f"; {'; '.join(notes)}" if notes else "")
        return Answer(chosen, rationale)

    def _open(self, question: str, neighbours: Sequence[Hit]) -> Answer:
        majority = len(neighbours) / 2
        asked = self.vocabulary.find(question)
        counts = Counter(code for h in neighbours for code in h.scp_codes)
        candidates = frozenset().union(*(c for _, c in asked)) if asked else frozenset(counts)
        codes = sorted((c for c in candidates if counts[c] > majority), key=lambda c: (-counts[c], c))
        return Answer(codes, f"SCP codes carried by a majority of {len(neighbours)} neighbours: {dict(counts)}")


def _decided(codes: frozenset[str], by_code: dict[str, Diagnosis]) -> bool | None:
    """Whether the statement of `codes` holds, where a measurement decided one of them (the served diagnoses'
    rhythm, a code the measurements contradict: :func:`ecgregen.diagnoses.reconcile`); None where none was, so
    the answer never says what the served diagnoses and measurements do not."""
    if not any(c in by_code and by_code[c].decided_by for c in codes):
        return None
    return any(by_code[c].present for c in codes if c in by_code)


def default_scp_statements() -> Path:
    """The scp_statements.csv shipped with the demo corpus (the PTB-XL one)."""
    return DEMO_PTBXL / "scp_statements.csv"
