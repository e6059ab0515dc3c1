"""Answering questions about an ECG from the diagnosis labels of its nearest neighbours.

The retrieval-only answerer (no LLM): it recognises SCP-ECG statements in the question and the options (by
their PTB-XL descriptions, the wording ECG-QA uses, and the five diagnostic superclasses), then lets the top-k
neighbours vote. It is the baseline the LLM answerer is compared with, and its fallback when the LLM fails.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ecgregen.records import DEMO_PTBXL
from ecgregen.store import Hit

VERIFY_OPTIONS = frozenset({"yes", "no", "not sure"})
NONE_OPTION = "none"

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
# ECG-QA's group attributes -> the statement flag they cover; the normal statements (NORM, SR) never count.
_GROUP_PHRASES = {
    "any diagnostic symptoms": "diagnostic",
    "any form-related symptoms": "form",
    "any rhythm-related symptoms": "rhythm",
    "any kind of abnormal symptoms": None,  # every statement
}
_NORMAL_CODES = {"NORM", "SR"}


def normalise(text: str) -> str:
    """Lower case, punctuation as spaces (except the '/' of "st/t"), single spaces: the form phrases are matched in."""
    return re.sub(r"[^a-z0-9/]+", " ", text.lower()).strip()


@dataclass(frozen=True)
class Answer:
    answer: list[str]
    rationale: str


class LabelVocabulary:
    """Phrase -> SCP codes, built from a PTB-XL ``scp_statements.csv``."""

    def __init__(self, phrases: dict[str, frozenset[str]], descriptions: dict[str, str] | None = None) -> None:
        self.phrases = phrases
        self.descriptions = descriptions or {}  # code -> PTB-XL's wording, for showing labels to an LLM
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
            if code not in _NORMAL_CODES:
                for phrase, flag in _GROUP_PHRASES.items():
                    if flag is None or row.get(flag) == 1:
                        add(phrase, code)
        return cls({p: frozenset(c) for p, c in phrases.items()}, descriptions)

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


def _neighbour_state(hit: Hit, codes: frozenset[str]) -> str:
    """ECG-QA's reading of a label: likelihood 100 (or 0, as rhythm codes are listed) is yes, 0-100 not sure."""
    values = [hit.scp_codes[c] for c in codes if c in hit.scp_codes]
    if not values:
        return "no"
    return "yes" if any(v in (0.0, 100.0) for v in values) else "not sure"


class LabelVoteAnswerer:
    """Majority vote of the neighbours' SCP labels; ties go to the closer neighbour."""

    name = "labels"

    def __init__(self, vocabulary: LabelVocabulary) -> None:
        self.vocabulary = vocabulary

    def answer(self, question: str, options: Sequence[str], neighbours: Sequence[Hit]) -> Answer:
        options = [o.strip() for o in options if o.strip()]
        if not neighbours:
            return Answer([], "no neighbours to vote")
        lowered = {normalise(o) for o in options}
        if lowered and lowered <= VERIFY_OPTIONS:
            return self._verify(question, options, neighbours)
        if options:
            return self._choose(options, neighbours)
        return self._open(question, neighbours)

    def _verify(self, question: str, options: list[str], neighbours: Sequence[Hit]) -> Answer:
        statements = self.vocabulary.find(question)
        if not statements:
            fallback = next((o for o in options if normalise(o) == "no"), options[0])
            return Answer([fallback], "no SCP statement recognised in the question; answered by default")
        codes = frozenset().union(*(c for _, c in statements))
        allowed = {normalise(o): o for o in options}
        votes = []
        for hit in neighbours:
            state = _neighbour_state(hit, codes)
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
            if normalise(option) == NONE_OPTION:
                continue
            codes = self.vocabulary.codes_of(option)
            if codes is None:
                notes.append(f"{option!r} is not an SCP statement")
                continue
            tally[option] = sum(1 for h in neighbours if codes & h.scp_codes.keys())
            if tally[option] > majority:
                chosen.append(option)
        none = next((o for o in options if normalise(o) == NONE_OPTION), None)
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


def default_scp_statements() -> Path:
    """The scp_statements.csv shipped with the demo corpus (the PTB-XL one)."""
    return DEMO_PTBXL / "scp_statements.csv"
