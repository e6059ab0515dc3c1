"""How much of a corpus's German and Swedish text the glossary translates, and what it misses.

The target (issue 26) is the share of word tokens: a report that is 98% translated reads well even when a typo
stays German, while a share of fully translated reports would hide how close the rest are. The untranslated words,
counted, are the work list for the next glossary revision. A fixed-seed sample of translations is printed as a
Markdown table for a reviewer (docs/reports-english.md).

Run: ``python -m ecgregen.reports.coverage ../shared/data/ptbxl`` (``--sample 40`` for the review table).
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ecgregen.reports.glossary import SOURCE_LANGUAGES
from ecgregen.reports.translate import Translation, translate

REPORTS_CSV = "ptbxl_database_all_reports.csv"


@dataclass
class Coverage:
    """Counts over a set of reports: per detected language, and over the German and Swedish text.

    ``words`` and ``untranslated`` cover every part the translator translated (the cart text of German and Swedish
    reports, and the German edits under English cart text); ``languages`` counts reports by their cart text.
    """

    languages: Counter[str] = field(default_factory=Counter)
    words: int = 0
    untranslated: Counter[str] = field(default_factory=Counter)

    @property
    def share(self) -> float:
        """The share of words that the glossary translated (1.0 when there was nothing to translate)."""
        return 1.0 - sum(self.untranslated.values()) / self.words if self.words else 1.0

    def add(self, translation: Translation) -> None:
        """Count one report (words counted lower-cased, so the cart's upper-case umlauts are not separate words)."""
        self.languages[translation.language] += 1
        self.words += translation.words
        self.untranslated.update(word.lower() for word in translation.untranslated)


def coverage(reports: Iterable[str]) -> Coverage:
    """Translate every report and count what the glossary covered."""
    result = Coverage()
    for report in reports:
        result.add(translate(report))
    return result


def read_reports(path: Path, folds: Sequence[int]) -> list[str]:
    """The ``report`` column of a PTB-XL table (a CSV, or a folder holding ``ptbxl_database_all_reports.csv``)."""
    csv_path = path / REPORTS_CSV if path.is_dir() else path
    with csv_path.open(newline="", encoding="utf-8") as f:
        return [row["report"] for row in csv.DictReader(f) if int(float(row["strat_fold"])) in folds]


def sample_table(reports: Sequence[str], n: int, seed: int) -> str:
    """A Markdown table of ``n`` German or Swedish reports drawn with ``seed``: original | English."""
    foreign = [r for r in reports if translate(r).language in SOURCE_LANGUAGES]
    rows = ["| # | language | original | English |", "|---|---|---|---|"]
    for i, report in enumerate(random.Random(seed).sample(foreign, min(n, len(foreign))), start=1):
        t = translate(report)
        cells = (" ".join(s.split()).replace("|", "\\|") for s in (report, t.text_en))
        rows.append(f"| {i} | {t.language} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecgregen.reports.coverage", description=__doc__.split("\n")[0])
    parser.add_argument("ptbxl", type=Path, help=f"a PTB-XL folder (with {REPORTS_CSV}) or a report CSV")
    parser.add_argument("--folds", default="1,2,3,4,5,6,7,8,9", help="strat_fold values to include (default 1-9)")
    parser.add_argument("--top", type=int, default=40, help="how many untranslated words to list")
    parser.add_argument("--sample", type=int, default=0, help="also print a review table of this many translations")
    parser.add_argument("--seed", type=int, default=26, help="seed of the review sample")
    args = parser.parse_args(argv)
    reports = read_reports(args.ptbxl, [int(f) for f in args.folds.split(",")])
    result = coverage(reports)
    missed = sum(result.untranslated.values())
    print(f"reports: {len(reports)} ({', '.join(f'{k} {v}' for k, v in result.languages.most_common())})")
    print(f"German and Swedish words: {result.words}, untranslated {missed}, coverage {result.share:.2%}")
    print(f"untranslated words ({len(result.untranslated)} distinct), most frequent first:")
    for word, count in result.untranslated.most_common(args.top):
        print(f"  {count:5d}  {word}")
    if args.sample:
        print()
        print(sample_table(reports, args.sample, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
