"""Which language a PTB-XL style report is in: ``de``, ``sv``, ``en``, or ``und`` when no word in it tells.

General language identifiers fail on these texts: they are short, full of abbreviations and compounds, and the
German and Swedish statements share much of their vocabulary (py3langid, restricted to de/sv/en, calls 1,103
copies of "sinusrhythmus lagetyp normal normales ekg" Swedish; measured in docs/reports-english.md). The glossary
already knows the statement vocabulary, so the detector counts words: a word that only German rows of the
glossary use is a vote for German, likewise for Swedish (a word both use is half a vote each), a word that the
glossary marks neutral (lead names, codes, "inferior", "normal") is no vote, and any other word is a vote for
English - the glossary covers the German and Swedish reports almost completely, so unknown words are English
prose far more often than untranslated German. German or Swedish wins when its votes reach the others'.
"""

from __future__ import annotations

from ecgregen.reports.glossary import SOURCE_LANGUAGES, load, nfc, tokens

#: The answers of :func:`detect_language`; ``und`` (BCP 47 "undetermined") is text without a word that tells a
#: language: empty, or only codes, leads and numbers.
LANGUAGES = ("de", "sv", "en", "und")


def detect_language(text: str) -> str:
    """The language of ``text``: ``de``, ``sv``, ``en``, or ``und`` (nothing tells, e.g. "(NORM 100)" or "")."""
    glossary = load()
    votes = dict.fromkeys(SOURCE_LANGUAGES, 0.0)
    other = 0
    for token in tokens(nfc(text)):
        if token.kind != "word" or token.key in glossary.neutral or len(token.key) < 2 or not token.key.isalpha():
            continue  # one letter is a lead or wave name far more often than a word; "v5" or "ó½" is no word
        langs = [lang for lang in SOURCE_LANGUAGES if token.key in glossary.evidence[lang]]
        for lang in langs:
            votes[lang] += 1 / len(langs)
        other += not langs
    source = sum(votes.values())
    if source and source >= other:
        return max(SOURCE_LANGUAGES, key=lambda lang: votes[lang])  # ties go to the first, German
    return "en" if other else "und"
