"""PTB-XL metadata as ECG-QA's answers read it: the free-text parsers of the noise and extra-beat columns, one parsed
row (:class:`EcgMetadata`), and a table looked up by ecg_id (:class:`PtbxlMetadata`).

The parsers' rules were read off the published answers; each docstring says what the data showed.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ecgregen.evaluate.ecgqa.vocabulary import LEADS, SEXES
from ecgregen.qa_conventions import NOISE_COLUMNS

_LEAD_TOKEN = r"(avr|avl|avf|iii|ii|i|v\s*\d|\d)"
_LEAD_SPAN = re.compile(rf"(?<![a-z]){_LEAD_TOKEN}(?:\s*-\s*{_LEAD_TOKEN})?(?![a-z])")
_LIMB_INDEX = {"i": 0, "ii": 1, "iii": 2, "avr": 3, "avl": 4, "avf": 5}


def _lead_index(token: str) -> int | None:
    token = re.sub(r"\s", "", token)
    if token in _LIMB_INDEX:
        return _LIMB_INDEX[token]
    number = int(token.removeprefix("v"))
    return 5 + number if 1 <= number <= 6 else None


def parse_noise_leads(text: object) -> frozenset[str]:
    """The leads a PTB-XL noise column names, e.g. ``" , I-AVF,  "`` -> I, II, III, aVR, aVL, aVF.

    The columns are free text by the annotators; these rules reproduce ECG-QA's answers on every published noise
    question we hold whose ECG is in folds 1-9 (8,498 in train/120000.json, 7,609 of them about one lead, and the
    sample's 204):
    - ranges run in the standard order I, II, III, aVR, aVL, aVF, V1-V6 ("I-V1" = the six limb leads and V1);
    - "alles"/"alle" (German "all") = all twelve leads;
    - a bare digit is a chest lead ("V1,3,4,6", "v5-6", and even " , 2" alone = V2);
    - "ALF" is a typo for aVF ("I-ALF" -> I..aVF); "?", "." and words ("stark", "Kontaktprobleme aVL ???") are noise;
    - a column with words but no lead ("leicht", "mittel", "noisy recording") counts as no noise at all.
    """
    if not isinstance(text, str):
        return frozenset()
    text = text.lower().replace("alf", "avf")
    if re.search(r"(?<![a-z])alle", text):
        return frozenset(LEADS)
    leads: set[str] = set()
    for match in _LEAD_SPAN.finditer(text):
        start = _lead_index(match.group(1))
        if start is None:
            continue
        end = _lead_index(match.group(2)) if match.group(2) else None
        end = start if end is None else end
        leads.update(LEADS[min(start, end): max(start, end) + 1])
    return frozenset(leads)


def parse_extra_systoles(text: object) -> frozenset[str]:
    """The kinds of extra systole PTB-XL's ``extra_beats`` column records.

    Entries are comma/semicolon lists such as "SVES", "VES2,alles", "VES,SVES1,alles", "1ES", "2,V1": a kind with an
    optional count, then leads. "SVES" = supraventricular, "VES" = ventricular; "ES" or a bare count = extrasystoles of
    unstated kind, as is an entry naming no kind ("period."). ECG-QA keeps the kinds apart: "VES,SVES" is *not*
    "extrasystoles".
    """
    if not isinstance(text, str) or not text.strip():
        return frozenset()
    kinds = set()
    for token in re.split(r"[,;]", text.upper()):
        token = token.strip()
        if re.fullmatch(r"\d*SVES\d*", token):
            kinds.add("supraventricular extrasystoles")
        elif re.fullmatch(r"\d*VES\d*", token):
            kinds.add("ventricular extrasystoles")
        elif re.fullmatch(r"\d*ES\d*(\(.*\))?", token):
            kinds.add("extrasystoles")
    return frozenset(kinds or {"extrasystoles"})


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


@dataclass(frozen=True)
class EcgMetadata:
    """What ECG-QA's single-ECG answers depend on, parsed from one PTB-XL metadata row."""

    ecg_id: int
    age: float | None
    sex: int | None
    scp_codes: Mapping[str, float]
    infarction_stadium1: str | None
    infarction_stadium2: str | None
    noise: Mapping[str, frozenset[str]]  # ECG-QA noise name -> leads
    extra_beats: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EcgMetadata:
        codes = row["scp_codes"]
        if isinstance(codes, str):
            codes = ast.literal_eval(codes)
        age, sex = row.get("age"), row.get("sex")
        return cls(
            ecg_id=int(row["ecg_id"]),
            age=None if age is None or pd.isna(age) else float(age),
            sex=None if sex is None or pd.isna(sex) else int(sex),
            scp_codes={str(k): float(v) for k, v in dict(codes).items()},
            infarction_stadium1=_text(row.get("infarction_stadium1")),
            infarction_stadium2=_text(row.get("infarction_stadium2")),
            noise={name: parse_noise_leads(row.get(column)) for name, column in NOISE_COLUMNS.items()},
            extra_beats=_text(row.get("extra_beats")),
        )

    def patient_suffix(self) -> str:
        """The sentence the published questions end with; age prints as the CSV's float ("81.0", or "nan")."""
        age = math.nan if self.age is None else self.age
        return f" Given that patient is {SEXES.get(self.sex, 'Unknown')} and is {age} years old."


class PtbxlMetadata:
    """A PTB-XL metadata table (``ptbxl_database.csv`` layout: any CSV with its columns), looked up by ecg_id."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.table = table.set_index("ecg_id", drop=False)
        self._parsed: dict[int, EcgMetadata] = {}

    @classmethod
    def from_csv(cls, path: Path) -> PtbxlMetadata:
        return cls(pd.read_csv(path))

    @classmethod
    def from_ptbxl(cls, ptbxl_dir: Path) -> PtbxlMetadata:
        return cls.from_csv(Path(ptbxl_dir) / "ptbxl_database.csv")

    def __contains__(self, ecg_id: object) -> bool:
        return str(ecg_id).isdigit() and int(str(ecg_id)) in self.table.index

    def __len__(self) -> int:
        return len(self.table)

    def ecg_ids(self, folds: Iterable[int] | None = None) -> list[int]:
        table = self.table if folds is None else self.table[self.table["strat_fold"].isin(list(folds))]
        return sorted(int(i) for i in table["ecg_id"])

    def row(self, ecg_id: int | str) -> EcgMetadata:
        """The parsed row of this ECG (ids as ints or as the digit strings records use); KeyError if absent."""
        key = int(ecg_id)
        if key not in self._parsed:
            self._parsed[key] = EcgMetadata.from_row(self.table.loc[key].to_dict())
        return self._parsed[key]
