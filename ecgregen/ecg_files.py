"""ECGs from the files hospitals export: HL7 aECG, GE MUSE XML, Philips Sierra XML, SCP-ECG, DICOM waveforms, EDF,
ISHNE Holter, MFER (and WFDB, read as before by :mod:`ecgregen.records`).

The formats themselves are read by ``ecgdatakit`` (format detected from the content, units scaled to mV, XML
parsed with entity expansion refused); this module is the one place that turns what it returns into the
service's :class:`~ecgregen.ecg.Ecg`, with every decision said in a warning:

* the **rhythm** series is used, never the median (representative) beats;
* lead names are normalised; leads other than the standard 12 (V7, pacer channels) are left out;
* formats that store 8 leads get III, aVR, aVL and aVF **derived** from I and II (Einthoven/Goldberger);
* DICOM's declared padding value is a real sample value inside the recording (a naive reader turns every real 0
  into NaN): it is read back as that value, and only a run at the end where all leads carry it is padding (a
  mu-law or A-law group's padding code is refused: it is not read back);
* a stretch at the start or end where all leads carry the same value (a calibration pulse, padding) is cut;
  short gaps of missing samples inside a lead are bridged linearly, longer ones refused;
* a recorder faster than a request may be (> 1 kHz) is resampled to 1 kHz;
* a recording longer than a request takes (:data:`~ecgregen.ecg.MAX_DURATION_S`) is refused unless a segment is
  chosen; the encoder's windows are then made by the usual length policy;
* amplitudes beyond what a body produces mean a wrong gain or unit in the file, and are refused.

The file's own metadata that matters downstream (format, device, acquisition time, the device's interpretation
statements, global measurements) comes back beside the signal; patient identifiers only when asked for.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecgregen.ecg import (
    MAX_DURATION_S,
    MAX_RATE_HZ,
    MIN_RATE_HZ,
    STANDARD_LEADS,
    Ecg,
    EcgInputError,
    assemble_ecg,
    derive_limb_leads,
)

MAX_FILE_BYTES = 32 * 1024 * 1024  # the largest resting-ECG exports are a few MB; a 5-minute Holter slice fits
MAX_ABS_MV = 50.0  # surface ECGs (pacing spikes included) stay well inside this; beyond it the gain or unit is wrong
MAX_GAP_FRACTION = 0.05  # missing samples bridged linearly up to this share of a lead
MIN_EDGE_S = 0.05  # a same-on-all-leads stretch shorter than this at an edge is left alone

# Format hints a caller may give (checked against the content, which decides): ecgdatakit's format keys and the
# names people use for them.
FORMAT_KEYS: dict[str, str] = {
    "hl7_aecg": "hl7_aecg", "aecg": "hl7_aecg", "hl7": "hl7_aecg",
    "ge_muse_xml": "ge_muse_xml", "muse": "ge_muse_xml", "ge_muse": "ge_muse_xml",
    "sierra_xml": "sierra_xml", "sierra": "sierra_xml", "philips": "sierra_xml", "philips_sierra": "sierra_xml",
    "scp_ecg": "scp_ecg", "scp": "scp_ecg",
    "dicom_waveform": "dicom_waveform", "dicom": "dicom_waveform", "dcm": "dicom_waveform",
    "edf": "edf", "ishne_holter": "ishne_holter", "ishne": "ishne_holter", "mfer": "mfer",
    "mortara_el250": "mortara_el250", "mortara": "mortara_el250", "alivecor_kardia": "alivecor_kardia",
}
# Formats made of several files cannot arrive as one file's bytes.
_MULTI_FILE_FORMATS = {"wfdb": "WFDB (a .hea header with its .dat)", "edan_arc": "EDAN ARC (patient.hea + ecgraw.dat)"}
_MDC_LEAD_PREFIX = "MDC_ECG_LEAD_"
# DICOM Waveform Sample Interpretation (PS3.3 C.10.9.1.4.1) with Waveform Bits Allocated: the plain integer codes
# (MB and AB are companded: mu-law and A-law), and the interpretation a group that states none has.
_DICOM_INTEGER_CODES = {("SB", 8): "i1", ("UB", 8): "u1", ("SS", 16): "i2", ("US", 16): "u2", ("SL", 32): "i4",
                        ("UL", 32): "u4", ("SV", 64): "i8", ("UV", 64): "u8"}
_DICOM_COMPANDED = {"MB": "mu-law", "AB": "A-law"}
_DICOM_DEFAULT_INTERPRETATION = {8: "SB", 16: "SS", 32: "SL", 64: "SV"}
_DICOM_MEDIAN_GROUP_WORDS = ("MEDIAN", "REPRESENTATIVE", "AVERAGE")


class EcgFileError(EcgInputError):
    """A file that cannot become an ECG; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class FileMetadata:
    """What the file says about the recording besides the samples (JSON-ready through :meth:`to_dict`)."""

    format: str  # e.g. "GE MUSE XML"
    format_key: str  # e.g. "ge_muse_xml"
    device: dict[str, str]
    acquired_at: str  # ISO 8601 as the file states it; empty when absent
    statements: tuple[str, ...]  # the recording device's (or its overreader's) interpretation
    statements_source: str  # "machine", "overread", "confirmed" or empty
    measurements: dict[str, int]  # global intervals and axes the device measured (ms, degrees, bpm)
    leads_stored: tuple[str, ...]
    leads_derived: tuple[str, ...]
    file_duration_s: float
    start_s: float  # where the ECG used starts in the file
    duration_s: float
    sampling_rate_hz: float
    demographics: dict[str, Any]  # sex and age: clinical context, not identifiers
    patient: dict[str, Any] | None = None  # identifiers (id, name, birth date): only when asked for

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.patient is None:
            del out["patient"]
        return out


@dataclass(frozen=True)
class EcgFromFile:
    """The checked ECG, what was done to get it (warnings for the caller), and the file's metadata."""

    ecg: Ecg
    warnings: tuple[str, ...]
    metadata: FileMetadata


def is_wfdb(path: str | Path) -> bool:
    """A WFDB record (read by :mod:`ecgregen.records`): named by its header or data file, or by its path without
    extension beside a .hea."""
    path = Path(path)
    return path.suffix in {".hea", ".dat"} or (not path.is_file() and path.with_suffix(".hea").exists())


def read_ecg_file(path: str | Path, *, format_hint: str = "", start_s: float = 0.0, seconds: float = 0.0,
                  include_patient: bool = False) -> EcgFromFile:
    """Read a hospital ECG export from disk (see the module docstring for every rule applied).

    `start_s`/`seconds` choose a segment of a long recording (`seconds` 0 = to the end); a recording longer than
    :data:`MAX_DURATION_S` needs one. Raises :class:`EcgFileError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise EcgFileError(f"{path}: no such file")
    size = path.stat().st_size
    check_file_size(path.name, size)
    return _read(path, path.name, format_hint, start_s, seconds, include_patient)


def read_ecg_bytes(content: bytes, *, name: str = "", format_hint: str = "", start_s: float = 0.0,
                   seconds: float = 0.0, include_patient: bool = False) -> EcgFromFile:
    """The same for a file's bytes as they arrived (a gateway forwarding an export); `name` is for messages."""
    label = Path(name).name or "the file"
    check_file_size(label, len(content))
    with tempfile.TemporaryDirectory(prefix="ecgregen-file-") as tmp:
        path = Path(tmp) / "upload"  # formats are detected from the content, never from a caller's name
        path.write_bytes(content)
        return _read(path, label, format_hint, start_s, seconds, include_patient)


def check_file_size(label: str, size: int) -> None:
    """Empty and oversized files are refused before anything reads them (a client checks before sending)."""
    if size == 0:
        raise EcgFileError(f"{label}: the file is empty")
    if size > MAX_FILE_BYTES:
        raise EcgFileError(f"{label}: {size / 2**20:.1f} MB; at most {MAX_FILE_BYTES // 2**20} MB per file "
                           "(send a segment of a long recording as samples or stream it)")


def _read(path: Path, label: str, format_hint: str, start_s: float, seconds: float,
          include_patient: bool) -> EcgFromFile:
    hint = _check_hint(format_hint)
    record, file_notes = _parse(path, label)
    key = record.source_format
    if hint and hint != key:
        raise EcgFileError(f"{label}: the content is {record.file_format.name}, not the {format_hint} "
                           "the format hint says")
    notes = list(file_notes)
    leads, rate = _rhythm_leads(record, label, notes)
    file_seconds = next(iter(leads.values())).size / rate
    leads, offset = _segment(leads, rate, start_s, seconds, file_seconds, label)
    leads = _restore_dicom_padding(leads, record, path, label, notes)
    leads = _cut_edges(leads, rate, notes)
    leads = _bridge_gaps(leads, label, notes)
    leads, rate = _within_rate_limit(leads, rate, notes)
    stored = tuple(leads)
    leads, derived = _complete(leads, label, notes)
    _check_amplitudes(leads, label)
    try:
        ecg = assemble_ecg([(name, samples, "mV") for name, samples in leads.items()], float(rate))
    except EcgInputError as exc:
        raise EcgFileError(f"{label}: {exc}") from None
    metadata = _metadata(record, include_patient, stored, derived, file_seconds, offset, ecg)
    return EcgFromFile(ecg, tuple(notes), metadata)


def _check_hint(format_hint: str) -> str:
    hint = format_hint.strip().lower().replace("-", "_").replace(" ", "_")
    if not hint:
        return ""
    if hint in _MULTI_FILE_FORMATS:
        raise EcgFileError(f"format {format_hint!r}: {_MULTI_FILE_FORMATS[hint]} is several files; "
                           "send its samples as an Ecg instead")
    if hint not in FORMAT_KEYS:
        raise EcgFileError(f"unknown format hint {format_hint!r}; one of {', '.join(sorted(set(FORMAT_KEYS.values())))}")
    return FORMAT_KEYS[hint]


def _parse(path: Path, label: str) -> tuple[Any, list[str]]:
    """ecgdatakit's record (leads in mV where the file says how) and what the caller is told about the file.

    These are :meth:`FileParser.parse`'s steps without its ``warnings.catch_warnings``: that changes the whole
    process's warning state, so a warning of another thread landed in this file's warnings (and turned a good file
    into a refusal), and two parses at once could leave the state broken. The library's warnings go to Python's
    warning machinery (the server log); nothing here depends on them: truncation and checksums are judged from the
    file's declared sizes and the parsed record (:func:`_check_complete`).
    """
    from ecgdatakit import ECGDataKitError, FileParser, UnsupportedFormatError
    from ecgdatakit.parsing.helpers.record import fill_signal_summary

    try:
        found = FileParser.detect_format(path)
        if found is None:
            raise UnsupportedFormatError(path.name)
        record = FileParser._run_parser(found["parser_class"], path)  # noqa: SLF001 - ecgdatakit 2.0.3, pinned
        if record.leads and all(len(lead.samples) == 0 for lead in record.leads):
            raise EcgFileError(f"{label}: the file holds no samples")
        fill_signal_summary(record)
        record = FileParser._auto_scale(record, "mV")  # noqa: SLF001
    except UnsupportedFormatError:
        raise EcgFileError(f"{label}: not an ECG file this service reads (HL7 aECG, GE MUSE XML, Philips "
                           "Sierra XML, SCP-ECG, DICOM waveform, EDF, ISHNE, MFER)") from None
    except (ECGDataKitError, ValueError, OSError, MemoryError, RecursionError) as exc:
        if isinstance(exc, EcgFileError):
            raise
        raise EcgFileError(f"{label}: cannot be read: {_named(exc, path, label)}") from None
    if record.source_format in _MULTI_FILE_FORMATS and not path.with_suffix(".dat").exists():
        raise EcgFileError(f"{label}: {_MULTI_FILE_FORMATS[record.source_format]} is several files")
    return record, _check_complete(record, path, label)


def _check_complete(record: Any, path: Path, label: str) -> list[str]:
    """Refuse a cut-off recording (the library reads what is complete of an EDF or ISHNE file); say when the file's
    checksum fails (SCP-ECG, GE MUSE, ISHNE state one)."""
    size = path.stat().st_size
    if record.source_format in ("edf", "edf_plus"):
        try:
            declared, complete = _edf_records(path, size)
        except (ValueError, ZeroDivisionError):  # a header field the parser let through is not a number
            raise EcgFileError(f"{label}: the EDF header's record counts or samples per record are not numbers: "
                               "the file is damaged") from None
        if declared > complete:
            raise EcgFileError(f"{label}: the file is truncated: its header declares {declared} data records, "
                               f"{complete} are complete")
    if record.source_format == "ishne_holter" and record.leads:
        frame = 2 * len(record.leads)  # 16-bit samples, one of each lead per frame
        data_bytes = size - 522 - int(record.raw_metadata.get("var_block_size", 0))
        if data_bytes % frame:
            raise EcgFileError(f"{label}: the file is truncated: its last sample frame holds {data_bytes % frame} "
                               f"of {frame} bytes")
    if record.raw_metadata.get("checksum_valid") is False:
        return [f"{label}: the file's checksum does not match its content: it may be damaged"]
    return []


def _edf_records(path: Path, size: int) -> tuple[int, int]:
    """The data records an EDF header declares (-1, "not closed by the recorder", counts as none) and the complete
    ones the file holds (the parser has checked the header's fields)."""
    with path.open("rb") as f:
        head = f.read(256)
        signals = int(head[252:256])
        header = f.read(256 * signals)
    samples_at = signals * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)  # labels ... prefiltering, then samples per record
    per_record = sum(int(header[samples_at + 8 * i: samples_at + 8 * i + 8]) for i in range(signals))
    complete = (size - 256 * (signals + 1)) // (2 * per_record)
    return max(int(head[236:244]), 0), complete


def _named(message: object, path: Path, label: str) -> str:
    """A library message with our temporary path replaced by the name the caller knows."""
    return str(message).replace(str(path), label)


def _lead_key(label: str) -> str | None:
    """A standard lead name for a file's channel label ("Lead I", "ECG AVR", "MDC_ECG_LEAD_V1", "-aVR" for the
    inverted aVR of a Cabrera layout), or None for channels that are not one of the 12 (V7, V4R, pacer)."""
    from ecgdatakit.parsing.helpers.labels import normalize_lead_label

    text = label.strip()
    if text.upper().startswith(_MDC_LEAD_PREFIX):
        text = text[len(_MDC_LEAD_PREFIX):]
    name = normalize_lead_label(text)
    if name == "-aVR":
        return name
    return name if name in STANDARD_LEADS else None


def _rhythm_leads(record: Any, label: str, notes: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """The rhythm series by standard lead name, at one rate and one length."""
    if not record.leads:
        if record.median_beats:
            raise EcgFileError(f"{label}: the file holds only median (representative) beats, no rhythm recording")
        raise EcgFileError(f"{label}: the file holds no leads")
    raw = [lead for lead in record.leads if lead.is_raw]
    if raw:
        raise EcgFileError(f"{label}: lead(s) {', '.join(lead.label for lead in raw)} are raw ADC counts with no "
                           "calibration in the file; amplitudes cannot be known")
    leads: dict[str, Any] = {}
    skipped = []
    for lead in record.leads:
        name = _lead_key(lead.label)
        if name is None or name in leads:
            skipped.append(lead.label)
            continue
        leads[name] = lead
    if skipped:
        notes.append(f"channel(s) {', '.join(skipped)} are not one of the 12 standard leads (or repeat one); left out")
    inverted = leads.pop("-aVR", None)
    if inverted is not None and "aVR" not in leads:
        leads["aVR"] = dataclasses.replace(inverted, samples=-np.asarray(inverted.samples, dtype=np.float64))
        notes.append("lead aVR taken as the negated -aVR the file stores (Cabrera layout)")
    if not leads:
        raise EcgFileError(f"{label}: none of the channels ({', '.join(lead.label for lead in record.leads[:12])}) "
                           "is a standard ECG lead")
    rates = {lead.sampling_rate for lead in leads.values()}
    if len(rates) > 1:
        raise EcgFileError(f"{label}: leads are sampled at different rates ({', '.join(map(str, sorted(rates)))} Hz)")
    rate = rates.pop()
    if not rate >= MIN_RATE_HZ:  # a library rounds a rate below 0.5 Hz to 0
        raise EcgFileError(f"{label}: the file states a sampling rate of {rate:g} Hz; an ECG is sampled at "
                           f"{MIN_RATE_HZ:g} Hz or more")
    lengths = {lead.samples.size for lead in leads.values()}
    n = min(lengths)
    if n == 0:
        raise EcgFileError(f"{label}: a lead holds no samples")
    if len(lengths) > 1:
        notes.append(f"leads hold {min(lengths)}-{max(lengths)} samples; all cut to the shortest ({n})")
    return {name: np.asarray(lead.samples[:n], dtype=np.float64) for name, lead in leads.items()}, int(rate)


def _segment(leads: dict[str, np.ndarray], rate: int, start_s: float, seconds: float, file_seconds: float,
             label: str) -> tuple[dict[str, np.ndarray], float]:
    """The chosen stretch of the recording; a recording longer than a request takes needs a choice."""
    if not (np.isfinite(start_s) and np.isfinite(seconds)) or start_s < 0 or seconds < 0:
        raise EcgFileError(f"{label}: segment start {start_s:g} s and length {seconds:g} s must be >= 0")
    if start_s >= file_seconds:
        raise EcgFileError(f"{label}: segment starts at {start_s:g} s but the recording is {file_seconds:.1f} s long")
    remaining = file_seconds - start_s
    if seconds == 0 and remaining > MAX_DURATION_S:
        raise EcgFileError(
            f"{label}: the recording is {file_seconds:,.0f} s long; a request takes at most {MAX_DURATION_S:g} s: "
            "choose a segment (start and length; --start/--seconds on the command line) or stream it")
    first = int(round(start_s * rate))
    last = first + int(round(seconds * rate)) if seconds else None
    return {name: samples[first:last] for name, samples in leads.items()}, first / rate


def _restore_dicom_padding(leads: dict[str, np.ndarray], record: Any, path: Path, label: str,
                           notes: list[str]) -> dict[str, np.ndarray]:
    """DICOM marks a padding value; ecgdatakit turns every sample equal to it into NaN, real samples included.

    Inside the recording such a sample is data (a padding value of 0 hits every zero crossing), so it is read back
    as the padding value in mV; a run of it at the end on all leads is then cut as padding by :func:`_cut_edges`.
    The value comes from the group the samples came from, read again with pydicom; a value that cannot be read,
    or that is a companded (mu-law, A-law) code, is refused naming the problem.
    """
    if record.source_format != "dicom_waveform" or not any(np.isnan(s).any() for s in leads.values()):
        return leads
    try:
        pad_code = _dicom_padding_code(path, label)
        if pad_code is None:  # no padding value declared: the gaps are missing samples (bridged or refused)
            return leads
        by_label = {_lead_key(lead.label): lead for lead in record.leads}
        restored = 0
        out = {}
        for name, samples in leads.items():
            nan = np.isnan(samples)
            if nan.any():
                lead, sign = (by_label[name], 1.0) if name in by_label else (by_label["-aVR"], -1.0)
                value = sign * dataclasses.replace(lead, samples=np.array([pad_code]), is_raw=True,
                                                   units="").to_physical().convert_units("mV").samples[0]
                samples = samples.copy()
                samples[nan] = value
                restored += int(nan.sum())
            out[name] = samples
    except EcgFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom decodes lazily: a malformed value fails, as any type, when read
        raise EcgFileError(f"{label}: the DICOM padding value cannot be read ({type(exc).__name__}: "
                           f"{_named(exc, path, label)})") from None
    notes.append(f"{restored} samples equal to the file's declared DICOM padding value read as real samples")
    return out


def _dicom_padding_code(path: Path, label: str) -> float | None:
    """The padding code of the group ecgdatakit takes the rhythm from (the first multiplex group with channels,
    samples and data that is not a median beat), or None when it declares none a sample can equal."""
    import pydicom

    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    rhythm = next((g for g in dataset.get("WaveformSequence") or []
                   if g.get("WaveformData") is not None and int(g.get("NumberOfWaveformChannels") or 0) > 0
                   and int(g.get("NumberOfWaveformSamples") or 0) > 0
                   and not any(word in str(g.get("MultiplexGroupLabel") or "").upper()
                               for word in _DICOM_MEDIAN_GROUP_WORDS)), None)
    padding = rhythm.get("WaveformPaddingValue") if rhythm is not None else None
    if not isinstance(padding, (bytes, bytearray)) or not padding:
        return None
    bits = int(rhythm.get("WaveformBitsAllocated") or 0)
    interpretation = str(rhythm.get("WaveformSampleInterpretation") or "").strip().upper()
    interpretation = interpretation or _DICOM_DEFAULT_INTERPRETATION.get(bits, "")
    if interpretation in _DICOM_COMPANDED:
        raise EcgFileError(f"{label}: the DICOM rhythm group is {_DICOM_COMPANDED[interpretation]} companded and "
                           "declares a padding value: the samples equal to it cannot be read back (send the "
                           "recording with linear samples)")
    code = _DICOM_INTEGER_CODES.get((interpretation, bits))
    if code is None:
        raise EcgFileError(f"{label}: the DICOM rhythm group's samples are {bits}-bit {interpretation or '(none)'}, "
                           "not a sample type DICOM defines")
    dtype = np.dtype(code).newbyteorder("<" if _dicom_little_endian(dataset) else ">")
    if len(padding) < dtype.itemsize:  # shorter than a sample: ecgdatakit marks no sample as padding
        return None
    return float(np.frombuffer(bytes(padding[: dtype.itemsize]), dtype=dtype)[0])


def _dicom_little_endian(dataset: Any) -> bool:
    """The byte order of the dataset's values, as ecgdatakit takes it: the transfer syntax, else how pydicom read
    the file, else little endian."""
    file_meta = getattr(dataset, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if syntax is not None:
        try:
            return bool(syntax.is_little_endian)
        except (AttributeError, ValueError):  # not a transfer syntax pydicom knows
            pass
    encoding = getattr(dataset, "original_encoding", None)
    return bool(encoding[1]) if encoding and encoding[1] is not None else True


def _cut_edges(leads: dict[str, np.ndarray], rate: int, notes: list[str]) -> dict[str, np.ndarray]:
    """Cut a stretch at either end where every lead is missing or carries the same value as all others
    (calibration pulse, padding): no body produces the same voltage on all leads at once."""
    stack = np.stack(list(leads.values()))
    missing = np.isnan(stack).all(axis=0)
    same = np.isclose(np.nanmax(stack, axis=0), np.nanmin(stack, axis=0), atol=1e-9) if len(leads) > 1 else missing
    not_ecg = missing | same
    if not_ecg.all():
        raise EcgFileError("every lead carries the same value throughout (or nothing): no ECG in the file")
    usable = np.flatnonzero(~not_ecg)
    first, last = int(usable[0]), int(usable[-1]) + 1
    min_edge = int(MIN_EDGE_S * rate)
    first = first if first >= min_edge else 0
    last = last if stack.shape[1] - last >= min_edge else stack.shape[1]
    cut = [f"{n / rate:.2f} s at the {where}" for n, where in ((first, "start"), (stack.shape[1] - last, "end")) if n]
    if cut:
        notes.append(f"cut {' and '.join(cut)} where all leads carry the same value (calibration pulse or padding)")
    return {name: samples[first:last] for name, samples in leads.items()}


def _bridge_gaps(leads: dict[str, np.ndarray], label: str, notes: list[str]) -> dict[str, np.ndarray]:
    """Missing samples inside a lead: bridged linearly when few, refused when a lead is mostly gaps."""
    out = {}
    for name, samples in leads.items():
        nan = ~np.isfinite(samples)
        if nan.any():
            share = nan.mean()
            if share > MAX_GAP_FRACTION:
                raise EcgFileError(f"{label}: lead {name} is missing {share:.0%} of its samples "
                                   f"(at most {MAX_GAP_FRACTION:.0%} are bridged)")
            index = np.arange(samples.size)
            samples = samples.copy()
            samples[nan] = np.interp(index[nan], index[~nan], samples[~nan])
            notes.append(f"lead {name}: {int(nan.sum())} missing samples bridged linearly")
        out[name] = samples
    return out


def _within_rate_limit(leads: dict[str, np.ndarray], rate: int, notes: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """Recorders sampling faster than a request may be (2 kHz, 8 kHz research carts) are resampled to the limit:
    the encoder works at far lower rates, so nothing it uses is lost."""
    if rate <= MAX_RATE_HZ:
        return leads, rate
    from ecgregen.preprocess import resample  # scipy: only for such files, so a client stays light

    target = int(MAX_RATE_HZ)
    notes.append(f"resampled from {rate} Hz to {target} Hz (the most a request takes)")
    return {name: resample(samples, rate, target) for name, samples in leads.items()}, target


def _complete(leads: dict[str, np.ndarray], label: str, notes: list[str]) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Derive missing limb leads from two stored ones (:func:`~ecgregen.ecg.derive_limb_leads`, as for streams)."""
    have = {**leads, **derive_limb_leads(leads)}
    missing = [name for name in STANDARD_LEADS if name not in have]
    if missing:
        raise EcgFileError(f"{label}: lead(s) {', '.join(missing)} are not in the file and cannot be derived "
                           f"(stored: {', '.join(leads)})")
    derived = tuple(name for name in STANDARD_LEADS if name not in leads)
    if derived:
        notes.append(f"lead(s) {', '.join(derived)} derived from the stored limb leads (the file stores "
                     f"{len(leads)} leads)")
    return {name: have[name] for name in STANDARD_LEADS}, derived


def _check_amplitudes(leads: dict[str, np.ndarray], label: str) -> None:
    for name, samples in leads.items():
        peak = float(np.max(np.abs(samples))) if samples.size else 0.0
        if peak > MAX_ABS_MV:
            raise EcgFileError(f"{label}: lead {name} reaches {peak:.3g} mV; an ECG stays within ±{MAX_ABS_MV:g} mV, "
                               "so the file's gain or units cannot be right")


def _metadata(record: Any, include_patient: bool, stored: tuple[str, ...], derived: tuple[str, ...],
              file_seconds: float, start_s: float, ecg: Ecg) -> FileMetadata:
    device = record.recording.device
    interpretation = record.interpretation
    statements = tuple(" ".join(part for part in (left.strip(), right.strip()) if part)
                       for left, right in interpretation.statements if (left or right).strip())
    patient = record.patient
    identifiers = None
    if include_patient:
        identifiers = {"patient_id": patient.patient_id, "first_name": patient.first_name,
                       "last_name": patient.last_name,
                       "birth_date": patient.birth_date.date().isoformat() if patient.birth_date else ""}
    return FileMetadata(
        format=record.file_format.name, format_key=record.source_format,
        device={k: str(v) for k, v in (("manufacturer", device.manufacturer), ("model", device.model),
                                       ("serial_number", device.serial_number),
                                       ("software_version", device.software_version),
                                       ("institution", device.institution)) if v},
        acquired_at=record.recording.date.isoformat() if record.recording.date else "",
        statements=statements, statements_source=interpretation.source if statements else "",
        measurements={k: int(v) for k, v in record.measurements.to_dict().items() if v is not None},
        leads_stored=stored, leads_derived=derived, file_duration_s=round(file_seconds, 3),
        start_s=round(start_s, 3), duration_s=round(ecg.duration_s, 3), sampling_rate_hz=ecg.sampling_rate_hz,
        demographics={k: v for k, v in (("sex", patient.sex), ("age", patient.age)) if v not in ("", None, "U")},
        patient=identifiers,
    )
