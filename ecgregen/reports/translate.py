"""English for a corpus report: the glossary's phrases, longest match first; English text passes unchanged.

A PTB-XL report is a cart's statement text, sometimes followed by a cardiologist's edit ("... Edit: NORM 100,
schlechte Qualität V2,V3,V5"). The edits are German even under English or Swedish cart text, so the report is cut
at each "Edit:" and every part is detected and translated on its own; the report's language is its first part's.

Translation is a left-to-right scan over tokens (see :mod:`ecgregen.reports.glossary`): at each position the
longest glossary phrase that matches is replaced by its English, otherwise the token is kept as written. Kept
words are returned as ``untranslated`` so a reviewer sees what the table lacks. The result depends only on the text
and the glossary, so it can be stored at index time beside the original and recomputed to the same string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ecgregen.reports.glossary import KEEP, SOURCE_LANGUAGES, load, nfc, tokens
from ecgregen.reports.language import detect_language

_EDIT = re.compile(r"(?i)\bedit:")
_SPACE = re.compile(r"\s+")
_CLOSING = frozenset(".,;:!?)/")


@dataclass(frozen=True)
class Translation:
    """A report in English and what it took.

    ``language`` is the detected language of the cart text (``de``, ``sv``, ``en``, ``und``); ``untranslated``
    lists, in order and with repeats, the words of translated parts that the glossary does not know (they stay
    as written in ``text_en``); ``words`` counts the words of the translated parts (0 when nothing needed
    translating), so ``len(untranslated) / words`` is the report's miss rate; ``glossary_version`` names the
    table that made it, so a stored translation can be recognised as stale.
    """

    text_en: str
    language: str
    untranslated: tuple[str, ...]
    words: int
    glossary_version: str


def translate(report: str) -> Translation:
    """The report in English: German and Swedish parts through the glossary, English (and wordless) parts as is."""
    glossary = load()
    cuts = [0, *(m.start() for m in _EDIT.finditer(report)), len(report)]
    parts: list[str] = []
    untranslated: list[str] = []
    words = 0
    languages = []
    for start, end in zip(cuts, cuts[1:]):
        part = report[start:end]
        language = detect_language(part)
        languages.append(language)
        if language not in SOURCE_LANGUAGES:
            parts.append(part)
            continue
        text, missing, count = _translate(nfc(part), glossary.phrases[language], glossary.longest[language])
        parts.append(text)
        untranslated.extend(missing)
        words += count
    return Translation("".join(parts), languages[0], tuple(untranslated), words, glossary.version)


def _translate(
    text: str, phrases: Mapping[tuple[str, ...], str], longest: Mapping[str, int]
) -> tuple[str, list[str], int]:
    """Replace the longest matching phrase at each position; returns the text, the unknown words, the word count.

    What lay between two tokens in the original (spaces, line-break runs, a skipped hyphen) is kept with each
    whitespace run made one space, so "t-wave" style hyphens outside a phrase survive and the cart's column
    padding does not. A cart statement's English ends with a period (the German and Swedish texts separate
    statements by line breaks only); where the report itself puts punctuation there, the period is left out.
    """
    toks = tokens(text)
    out: list[str] = []
    missing: list[str] = []
    words = 0
    i, gap_start, translated_before = 0, 0, False
    while i < len(toks):
        english, n = None, 1
        for length in range(min(longest.get(toks[i].key, 0), len(toks) - i), 0, -1):
            english = phrases.get(tuple(t.key for t in toks[i : i + length]))
            if english is not None:
                n = length
                break
        span = toks[i : i + n]
        translated = english is not None and english != KEEP
        if not translated:
            piece = _SPACE.sub(" ", text[span[0].start : span[-1].end])
        elif i + n < len(toks) and toks[i + n].text in _CLOSING and english.endswith("."):
            piece = english[:-1]  # "extrasystole(n), trigeminus": the report's own punctuation ends the statement
        else:
            piece = english
        gap = _SPACE.sub(" ", text[gap_start : span[0].start])
        if not gap and out and (translated or translated_before) and out[-1][-1:].isalnum() and piece[:1].isalnum():
            gap = " "  # "ventr.extrasystolen": the abbreviation's period went with its row, the words must not join
        out += [gap, piece]
        words += sum(t.kind == "word" for t in span)
        if english is None and toks[i].kind == "word":
            missing.append(toks[i].text)
        gap_start, i, translated_before = span[-1].end, i + n, translated
    out.append(_SPACE.sub(" ", text[gap_start:]))
    return "".join(out), missing, words
