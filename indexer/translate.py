"""English beside the original in a corpus indexed before it was stored: payloads updated in place.

Indexing stores each report's translation with it (``report_en``, its language, the words the glossary lacks and
the glossary version; :mod:`ecgregen.store.payload`). A corpus an older version indexed has none, and one indexed
with an older glossary has stale ones. :func:`translate_corpus` walks the corpus and sets the translation on
exactly those records - no vector is read or written, nothing is re-embedded. Each page is durable before the
next is read, and a record already translated with this glossary is left alone, so the command is idempotent and
an interrupted run resumes where it stopped. A translation is set only where the record still holds the report
it was made from: a record written again meanwhile keeps what that write gave it.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from ecgregen.reports import translate
from ecgregen.reports.glossary import load as load_glossary
from ecgregen.store import PayloadUpdate, VectorStore
from ecgregen.store.payload import translation_payload

PAGE = 256
WORDS_LISTED = 20


@dataclass
class TranslateReport:
    glossary_version: str
    records: int = 0  # scanned
    translated: int = 0  # had no translation: set now
    retranslated: int = 0  # translated with another glossary version: set again
    current: int = 0  # already translated with this glossary: left as they are
    words: int = 0  # words of German and Swedish text in the records set now
    untranslated: Counter[str] = field(default_factory=Counter)  # of those, the glossary lacks these
    seconds: float = 0.0

    def summary(self) -> str:
        missing = sum(self.untranslated.values())
        text = (f"{self.records} records: translated {self.translated}, re-translated {self.retranslated} (older "
                f"glossary), {self.current} already current; glossary {self.glossary_version}; "
                f"{missing} of {self.words} words not in the glossary (kept as written) in {self.seconds:.1f} s")
        if self.untranslated:
            listed = ", ".join(f"{word} ({n})" for word, n in self.untranslated.most_common(WORDS_LISTED))
            more = len(self.untranslated) - WORDS_LISTED
            text += f"\n  not in the glossary: {listed}" + (f" and {more} more" if more > 0 else "")
        return text


def translate_corpus(store: VectorStore, *, progress: bool = True) -> TranslateReport:
    """Set the English translation on every record of `store` that lacks one or has an older glossary's."""
    start = time.perf_counter()
    report = TranslateReport(load_glossary().version)
    pending: list[PayloadUpdate] = []
    with tqdm(total=store.count(), desc="translating", unit="rec", disable=not progress, dynamic_ncols=True) as bar:
        for record in store.scroll(with_vectors=False):
            report.records += 1
            bar.update(1)
            stored = record.translation
            if stored is not None and stored.glossary_version == report.glossary_version:
                report.current += 1
                continue
            english = translate(record.report)
            if stored is None:
                report.translated += 1
            else:
                report.retranslated += 1
            report.words += english.words
            report.untranslated.update(english.untranslated)
            pending.append(PayloadUpdate(record.point_id, {"report": record.report}, translation_payload(english)))
            if len(pending) == PAGE:
                store.update_payloads(pending)
                pending = []
        if pending:
            store.update_payloads(pending)
    report.seconds = time.perf_counter() - start
    return report
