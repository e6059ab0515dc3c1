"""Reading ECGs from disk: plain WFDB records, hospital exports (:mod:`ecgregen.ecg_files`) and datasets in PTB-XL
layout.

PTB-XL layout = ``ptbxl_database.csv`` (one row per ECG: ecg_id, patient_id, report, scp_codes, strat_fold,
filename_lr/filename_hr) beside the WFDB folders it points to. Any folder in that layout works - the shared
subset, a user's full PTB-XL, or the demo corpus shipped in this package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from ecgregen.ecg import MAX_DURATION_S, Ecg, EcgInputError, ecg_from_array
from ecgregen.ecg_files import is_wfdb, read_ecg_file

PTBXL_SOURCE = "ptbxl"


@dataclass(frozen=True)
class EcgRecord:
    """An ECG with the report and labels that make it a retrieval target."""

    ecg_id: str
    patient_id: str
    report: str
    scp_codes: dict[str, float]
    source: str
    path: Path  # WFDB record path without extension, or a hospital export (HL7 aECG, MUSE, DICOM, ...)
    fold: int | None = None

    def load_ecg(self, seconds: float = 0.0) -> Ecg:
        """The record's ECG; `seconds` > 0 takes at most that much from the start of a long file (a Holter)."""
        return read_ecg_path(self.path, seconds)


def read_ecg_path(path: str | Path, seconds: float = 0.0) -> Ecg:
    """A WFDB record or any hospital export, checked as the service checks any ECG."""
    if is_wfdb(path):
        return read_wfdb(path)
    return read_ecg_file(path, seconds=min(seconds, MAX_DURATION_S)).ecg


@dataclass(frozen=True)
class WfdbSignal:
    """A WFDB record as stored: any leads, any rate, its own units (not yet checked for the service)."""

    signal: np.ndarray  # float64, (n_leads, n_samples), physical units
    sampling_rate_hz: float
    lead_names: list[str]
    units: list[str]


def read_wfdb_signal(path: str | Path) -> WfdbSignal:
    """Read a WFDB record (``path`` with or without extension) as it is, for a client to send unchanged."""
    path = Path(path)
    if path.suffix in {".hea", ".dat"}:
        path = path.with_suffix("")
    if not path.with_suffix(".hea").exists():
        raise FileNotFoundError(f"no WFDB header {path.with_suffix('.hea')}")
    record = wfdb.rdrecord(str(path))
    if record.p_signal is None:
        raise EcgInputError(f"{path}: record has no physical signal")
    return WfdbSignal(
        np.asarray(record.p_signal, dtype=np.float64).T, float(record.fs), list(record.sig_name),
        [u or "mV" for u in record.units],
    )


def read_wfdb(path: str | Path) -> Ecg:
    """Read a WFDB record at whatever rate it was recorded, checked as the service checks any ECG.

    Units come from the header, so raw mV records and PTB-XL's pre-processed "NU" records are both accepted.
    """
    raw = read_wfdb_signal(path)
    return ecg_from_array(raw.signal, raw.sampling_rate_hz, raw.lead_names, raw.units)


def wfdb_comments(path: str | Path) -> list[str]:
    """Header comment lines of a WFDB record (where plain records keep their report, if any)."""
    return list(wfdb.rdheader(str(Path(path).with_suffix(""))).comments)


def folds_text(folds: Sequence[int]) -> str:
    """1-7, 9 for [1, ..., 7, 9] (three or more in a row as a range); "none" for none - how messages name folds."""
    folds = sorted(set(folds))
    if not folds:
        return "none"
    runs: list[list[int]] = []
    for f in folds:
        if runs and f == runs[-1][-1] + 1:
            runs[-1].append(f)
        else:
            runs.append([f])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def parse_folds(spec: str) -> list[int]:
    """'1-8' -> [1..8]; '1-3,9' -> [1, 2, 3, 9]."""
    folds: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            start, end = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad fold list {spec!r}: use numbers and ranges like 1-8,10") from None
        if start > end:
            raise ValueError(f"bad fold range {part!r}")
        folds.update(range(start, end + 1))
    if not folds:
        raise ValueError(f"empty fold list {spec!r}")
    return sorted(folds)


def load_ptbxl(root: str | Path, folds: Iterable[int] | None = None, *, prefer: str = "lr") -> list[EcgRecord]:
    """Records of a PTB-XL-layout folder, restricted to `folds` (strat_fold), with signals present on disk.

    `prefer` picks records100 ("lr") or records500 ("hr") when both exist; the other is used as a fallback.
    Rows whose signal files are missing are skipped (the shared metadata lists more ECGs than it has signals).
    """
    root = Path(root)
    table = root / "ptbxl_database.csv"
    if not table.exists():
        raise FileNotFoundError(f"{root} is not in PTB-XL layout: {table} is missing")
    df = pd.read_csv(table)
    if folds is not None:
        df = df[df["strat_fold"].isin(list(folds))]
    columns = ["filename_lr", "filename_hr"] if prefer == "lr" else ["filename_hr", "filename_lr"]
    records: list[EcgRecord] = []
    for row in df.itertuples(index=False):
        path = next(
            (root / str(getattr(row, c)) for c in columns if isinstance(getattr(row, c), str)
             and (root / f"{getattr(row, c)}.hea").exists()),
            None,
        )
        if path is None:
            continue
        records.append(
            EcgRecord(
                ecg_id=str(int(row.ecg_id)),
                patient_id=str(int(row.patient_id)) if pd.notna(row.patient_id) else "",
                report=str(row.report) if pd.notna(row.report) else "",
                scp_codes={str(k): float(v) for k, v in ast.literal_eval(row.scp_codes).items()},
                source=PTBXL_SOURCE,
                path=path,
                fold=int(row.strat_fold),
            )
        )
    return records


MIMIC_SOURCE = "mimic-iv-ecg"


def load_mimic_ecg(root: str | Path, limit: int | None = None) -> list[EcgRecord]:
    """Records of a MIMIC-IV-ECG-layout folder: ``record_list.csv`` (subject_id, study_id, path) and
    ``machine_measurements.csv`` (subject_id, study_id, report_0 ... report_17), WFDB files under ``files/``.

    The machine report lines report_0..report_17 are joined into one report, as the paper did. MIMIC-IV-ECG has
    no SCP codes, so ``scp_codes`` is empty. Studies are taken in ``record_list.csv`` order; `limit` keeps the
    first N whose signal is on disk.
    """
    root = Path(root)
    for name in ("record_list.csv", "machine_measurements.csv"):
        if not (root / name).exists():
            raise FileNotFoundError(f"{root} is not in MIMIC-IV-ECG layout: {root / name} is missing")
    records_table = pd.read_csv(root / "record_list.csv")
    measurements = pd.read_csv(root / "machine_measurements.csv", low_memory=False)
    report_columns = sorted(
        (c for c in measurements.columns if c.startswith("report_")), key=lambda c: int(c.split("_")[1])
    )
    reports = {
        int(row.study_id): " ".join(
            str(getattr(row, c)).strip() for c in report_columns if pd.notna(getattr(row, c)) and str(getattr(row, c)).strip()
        )
        for row in measurements.itertuples(index=False)
    }
    records: list[EcgRecord] = []
    for row in records_table.itertuples(index=False):
        path = root / str(row.path)
        if int(row.study_id) not in reports or not path.with_suffix(".hea").exists():
            continue
        records.append(
            EcgRecord(
                ecg_id=str(int(row.study_id)), patient_id=str(int(row.subject_id)), report=reports[int(row.study_id)],
                scp_codes={}, source=MIMIC_SOURCE, path=path,
            )
        )
        if limit is not None and len(records) >= limit:
            break
    return records
