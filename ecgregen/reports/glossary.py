"""The phrase table (``glossary.tsv``) and the one tokenizer that both the table and the reports go through.

The table is data reviewed by people, so its loader is strict: a malformed row, an unknown language or the same
phrase given two translations for one language is an error when the package loads it, not a silent wrong report.

Matching works on *keys*, not on raw text, so that one table row covers every spelling the carts and typists used:
case is dropped, umlauts fold to their ASCII spellings ("Ä"/"ä"/"ae" -> "ae", "ö"/"oe", "ü"/"ue", "ß"/"ss",
Swedish "å" -> "aa"), whitespace is ignored and a hyphen is skipped ("st-t", "st - t" and "st t" are one key; so are
"a-v block" and "a - v block"). Punctuation other than the hyphen stays part of the key, so an abbreviation's
period ("unbest.", "v.a.") is matched, and consumed, only where the table says so.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

#: Languages the table translates from (the report languages of PTB-XL besides English).
SOURCE_LANGUAGES = ("de", "sv")
#: The ``english`` of a row whose source is the same in English (lead names, codes, drug names): the report's own
#: spelling is kept, so "V2" and "NORM" stay as written.
KEEP = "="
#: The ``lang`` of a row that applies in every source language: lead names, SCP codes, drug names, units, and
#: English or Latin words the cardiologists wrote into German and Swedish text.
NEUTRAL = "*"

_TOKEN = re.compile(r"(?P<word>[^\W\d_]+\d*)|(?P<number>\d+(?:[.,]\d+)*)|(?P<space>\s+)|(?P<punct>.)", re.S)
_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "å": "aa"})
_SKIPPED = "-"  # hyphenation varies freely in the data ("st-t", "av-block", "kammar- belastning")


@dataclass(frozen=True)
class Token:
    """One token of a text: ``kind`` is word, number or punct; ``key`` is what matching compares."""

    text: str
    key: str
    kind: str
    start: int
    end: int


def tokens(text: str) -> list[Token]:
    """The tokens of an NFC-normalised text (see :func:`nfc`), without the whitespace and hyphens that matching
    ignores; offsets point into ``text``, where those stay."""
    out = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "punct"
        if kind == "space" or m.group() == _SKIPPED:
            continue
        out.append(Token(m.group(), m.group().lower().translate(_FOLD), kind, m.start(), m.end()))
    return out


def nfc(text: str) -> str:
    """The composed Unicode form, so that "ä" written as "a" plus a combining diaeresis is one letter."""
    return unicodedata.normalize("NFC", text)


def key_of(phrase: str) -> tuple[str, ...]:
    """The matching key of a phrase: its tokens' keys."""
    return tuple(t.key for t in tokens(nfc(phrase)))


@dataclass(frozen=True)
class Glossary:
    """The loaded table: one phrase -> English map per source language, and the words that evidence a language.

    ``phrases[lang]`` holds the rows of that language and the neutral rows; ``longest[lang]`` gives, per first
    token key, the length of the longest phrase starting with it, so matching tries only lengths that can exist.
    ``evidence[lang]`` holds the words that occur in that language's rows but in no English translation and in no
    neutral row (so "sinusrhythmus", not "inferior"): the language detector counts them; ``neutral`` holds the
    known words that say nothing about the language ("avl", "inferior", "normal"). ``version`` is the header's
    version plus a digest of the file, so an edit that forgot to bump the version still changes it (stored
    translations know they are stale).
    """

    version: str
    phrases: Mapping[str, Mapping[tuple[str, ...], str]]
    longest: Mapping[str, Mapping[str, int]]
    evidence: Mapping[str, frozenset[str]]
    neutral: frozenset[str]


def _rows(text: str) -> Iterator[tuple[int, list[str]]]:
    header_seen = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if not header_seen:
            if fields[:3] != ["lang", "source", "english"]:
                raise ValueError(f"glossary line {number}: expected the column header 'lang source english note'")
            header_seen = True
            continue
        yield number, fields


def _words(phrase: str) -> set[str]:
    return {t.key for t in tokens(nfc(phrase)) if t.kind == "word"}


def _longest(table: Mapping[tuple[str, ...], str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in table:
        out[key[0]] = max(out.get(key[0], 0), len(key))
    return out


def parse(text: str) -> Glossary:
    """Parse and check a glossary (the TSV described in its own header); raises ValueError on any bad row."""
    version = ""
    for line in text.splitlines():
        if line.startswith("# version:"):
            version = line.split(":", 1)[1].strip()
    if not version:
        raise ValueError("glossary: no '# version:' header line")
    own: dict[str, dict[tuple[str, ...], str]] = {lang: {} for lang in (*SOURCE_LANGUAGES, NEUTRAL)}
    source_words: dict[str, set[str]] = {lang: set() for lang in (*SOURCE_LANGUAGES, NEUTRAL)}
    target_words: set[str] = set()
    errors: list[str] = []
    for number, fields in _rows(text):
        if len(fields) not in (3, 4) or not fields[1].strip() or not fields[2].strip():
            errors.append(f"line {number}: expected lang, source, english[, note]: {fields!r}")
            continue
        langs = fields[0].split(",")
        key, english = key_of(fields[1]), " ".join(fields[2].split())
        if any(lang not in (*SOURCE_LANGUAGES, NEUTRAL) for lang in langs) or not key:
            errors.append(f"line {number}: unknown language {fields[0]!r} or a source without tokens")
            continue
        for lang in langs:
            if own[lang].setdefault(key, english) != english:
                errors.append(f"line {number}: {fields[1]!r} ({lang}) is already {own[lang][key]!r}")
            source_words[lang] |= _words(fields[1])
        target_words |= _words(fields[1] if english == KEEP else english)
    if errors:
        raise ValueError("glossary:\n" + "\n".join(errors))
    phrases = {lang: {**own[NEUTRAL], **own[lang]} for lang in SOURCE_LANGUAGES}  # a language's own row wins
    all_sources = set().union(*source_words.values())
    neutral = source_words[NEUTRAL] | (all_sources & target_words)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return Glossary(
        version=f"{version}+{digest}",
        phrases=phrases,
        longest={lang: _longest(table) for lang, table in phrases.items()},
        evidence={lang: frozenset(source_words[lang] - neutral) for lang in SOURCE_LANGUAGES},
        neutral=frozenset(neutral),
    )


@cache
def load() -> Glossary:
    """The glossary shipped in the package (parsed once per process)."""
    return parse(resources.files(__package__).joinpath("glossary.tsv").read_text(encoding="utf-8"))
