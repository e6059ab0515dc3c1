"""What in a document we write could identify a patient beyond the fields FHIR and the printed page already hold
back, and how it is left out.

The FHIR bundle and the printed page leave out the patient, the recorder's serial number and the acquisition time
unless identifiers are asked for (``include_patient``). A cart's own interpretation statements are free text and
can carry the same information: GE MUSE writes "When compared with ECG of 30-MAR-2023 09:09" - the date and time of
an earlier ECG of this patient. Dates are identifiers under HIPAA's Safe Harbor rule, so by default they and clock
times are replaced; the statements' clinical content stays.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DATE_LEFT_OUT = "[date not shown]"
TIME_LEFT_OUT = "[time not shown]"

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATES = re.compile(
    r"\b(?:"
    r"\d{4}-\d{1,2}-\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2})?)?"  # 2023-03-30, 2023-03-30T09:09 (ISO)
    rf"|\d{{1,2}}[-./ ](?:\d{{1,2}}|{_MONTH})[-./ ]\d{{2,4}}"  # 30-MAR-2023, 30.03.2023, 03/30/23, 30 Mar 2023
    rf"|{_MONTH} \d{{1,2}},? \d{{4}}"  # March 30, 2023
    r")(?![\d])",
    re.IGNORECASE,
)
_TIMES = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s?[ap]\.?m\.?)?(?![\d])", re.IGNORECASE)


def without_dates(text: str) -> str:
    """`text` with its calendar dates and clock times replaced by placeholders."""
    return _TIMES.sub(TIME_LEFT_OUT, _DATES.sub(DATE_LEFT_OUT, text))


def shown_statements(statements: Sequence[str], include_patient: bool) -> list[str]:
    """A recording's interpretation statements as a written document shows them: as they are with identifiers asked
    for, else without dates and times."""
    return list(statements) if include_patient else [without_dates(s) for s in statements]
