"""English for the corpus reports: a reviewed German/Swedish -> English phrase table, a language detector, and
the translation that indexing and serving store and show beside the original (issue 26).

PTB-XL's reports are cart statement texts: about 61% German, 4% Swedish, the rest English. They come from small
statement libraries plus short cardiologist additions, so a glossary translates them exactly and reproducibly
(no model, no network): ``glossary.tsv`` is the data, with its source and reviewer notes in its header;
:mod:`~ecgregen.reports.language` decides what to translate; :func:`translate` does it, English passing
unchanged; :mod:`~ecgregen.reports.coverage` measures what the table misses on a corpus.
:mod:`~ecgregen.reports.statements` writes the other English report: one from this ECG's own diagnoses and
measurements rather than a neighbour's text. :mod:`~ecgregen.reports.claims` reads any report as typed statements,
:mod:`~ecgregen.reports.verify` checks and edits one against the measurements, and
:mod:`~ecgregen.reports.select` is where each report mode's report is made.

Importing the package loads only the translation (standard library only), so the server and the CLI can use it
without a start-up cost.
"""

from ecgregen.reports.language import LANGUAGES, detect_language
from ecgregen.reports.translate import Translation, translate

__all__ = ["LANGUAGES", "Translation", "detect_language", "translate"]
