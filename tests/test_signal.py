"""Signal path: input checks, WFDB/PTB-XL reading and the shared preprocessing, on real PTB-XL records."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgregen.ecg import STANDARD_LEADS, EcgInputError, canonical_lead, ecg_from_array
from ecgregen.preprocess import PreprocessConfig, preprocess, resample, window_starts
from ecgregen.records import load_ptbxl, parse_folds, read_wfdb
from tests.conftest import DEMO_PTBXL, shared_ptbxl


@pytest.fixture(scope="module")
def demo_records():  # noqa: ANN201
    return load_ptbxl(DEMO_PTBXL)


def raw_mv_record(records):  # noqa: ANN001, ANN201
    """A record stored in raw millivolts (the rest of the subset is pre-processed, units NU)."""
    for r in records:
        if "/mV" in r.path.with_suffix(".hea").read_text():
            return r
    raise AssertionError("no raw mV record in the corpus")


@pytest.mark.parametrize("name, expected", [("avr", "aVR"), ("AVL", "aVL"), (" v1 ", "V1"), ("ii", "II"), ("aVF", "aVF")])
def test_lead_names_map_in_any_case(name: str, expected: str) -> None:
    assert canonical_lead(name) == expected


def test_leads_in_any_order_are_put_in_standard_order() -> None:
    signal = np.arange(12)[:, None] * np.ones((12, 500))
    names = list(reversed(STANDARD_LEADS))
    ecg = ecg_from_array(signal, 250, [n.lower() for n in names])
    assert ecg.signal[:, 0].tolist() == list(reversed(range(12)))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s, n, r: (s[:3], n[:3], r), "expected 12 leads, got 3"),
        (lambda s, n, r: (s, n[:11] + ["V7"], r), "unknown lead name 'V7'"),
        (lambda s, n, r: (s, n[:11] + ["I"], r), "lead I given twice"),
        (lambda s, n, r: (s[:, :100], n, r), "ECG too short: 100 samples at 100 Hz is 1 s"),
        (lambda s, n, r: (s, n, 20), "sampling_rate_hz must be between 50 and 1000 Hz, got 20"),
        (lambda s, n, r: (np.where(np.arange(1000) == 5, np.inf, s), n, r), "lead I has 1 non-finite samples"),
    ],
)
def test_bad_ecgs_are_refused_with_a_specific_message(mutate, message: str) -> None:  # noqa: ANN001
    signal, names, rate = mutate(np.random.default_rng(0).normal(size=(12, 1000)), list(STANDARD_LEADS), 100)
    with pytest.raises(EcgInputError, match=message.replace("(", r"\(")):
        ecg_from_array(signal, rate, names)


def test_units_are_converted_to_millivolts() -> None:
    rng = np.random.default_rng(1).normal(size=(12, 1000))
    mv = ecg_from_array(rng, 100, STANDARD_LEADS, "mV")
    uv = ecg_from_array(rng * 1000, 100, STANDARD_LEADS, "uV")
    np.testing.assert_allclose(mv.signal, uv.signal, rtol=1e-6)
    with pytest.raises(EcgInputError, match="unsupported units 'mmHg'"):
        ecg_from_array(rng, 100, STANDARD_LEADS, "mmHg")


def test_read_wfdb_and_ptbxl_layout(demo_records) -> None:  # noqa: ANN001
    assert len(demo_records) == 300
    assert {r.fold for r in demo_records} == set(range(1, 10))
    record = demo_records[0]
    assert record.source == "ptbxl" and record.report and record.scp_codes and record.patient_id
    ecg = record.load_ecg()
    assert ecg.signal.shape == (12, 1000) and ecg.sampling_rate_hz == 100
    assert len(load_ptbxl(DEMO_PTBXL, [9])) == 30


def test_shared_ptbxl_fold_selection() -> None:
    root = shared_ptbxl()
    assert len(load_ptbxl(root, [9])) == 259  # fold 9 counts from the shared README
    assert len(load_ptbxl(root, parse_folds("1-8"))) == 1773


@pytest.mark.parametrize("spec, folds", [("1-8", list(range(1, 9))), ("1-3,9", [1, 2, 3, 9]), ("10", [10])])
def test_parse_folds(spec: str, folds: list[int]) -> None:
    assert parse_folds(spec) == folds


def test_parse_folds_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="bad fold list"):
        parse_folds("one-eight")


def test_preprocess_output_is_zscored_and_band_limited(demo_records) -> None:  # noqa: ANN001
    out = preprocess(raw_mv_record(demo_records).load_ecg()).first_window
    assert out.shape == (12, 1000) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=1), 1, atol=1e-4)
    spectrum = np.abs(np.fft.rfft(out, axis=1)) ** 2
    freqs = np.fft.rfftfreq(1000, 1 / 100)
    assert spectrum[:, freqs > 45].sum() / spectrum.sum() < 1e-3


def test_raw_and_preprocessed_records_land_alike(demo_records) -> None:  # noqa: ANN001
    """A raw mV record and the same record filtered + z-scored upstream (as the 'NU' records were) preprocess to
    nearly the same signal: the chain is idempotent, so both kinds of shared record share one space."""
    raw = raw_mv_record(demo_records).load_ecg()
    once = preprocess(raw).first_window
    upstream = ecg_from_array(once, 100, STANDARD_LEADS, "NU")
    twice = preprocess(upstream).first_window
    assert np.corrcoef(once.ravel(), twice.ravel())[0, 1] > 0.99


def test_500hz_input_matches_100hz_input(demo_records) -> None:  # noqa: ANN001
    """The server resamples: the same ECG sent at 500 Hz preprocesses to (almost) what 100 Hz gives."""
    ecg = raw_mv_record(demo_records).load_ecg()
    at_500 = ecg_from_array(resample(ecg.signal.astype(np.float64), 100, 500), 500, STANDARD_LEADS)
    a, b = preprocess(ecg).first_window, preprocess(at_500).first_window
    assert b.shape == a.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


@pytest.mark.parametrize(("seconds", "starts"), [(5, [0]), (10, [0]), (25, [0, 1000, 1500]), (60, [0, 1000, 2000, 3000,
                                                                                              4000, 5000])])
def test_ecgs_are_cut_into_windows_from_the_start_the_last_ending_at_the_end(seconds: int, starts: list[int]) -> None:
    """No part of an ECG is dropped: 10 s windows back to back, the last one ending where the ECG ends; a short ECG
    is one window padded with zeros past its real length."""
    signal = np.random.default_rng(2).normal(size=(12, seconds * 100))
    out = preprocess(ecg_from_array(signal, 100, STANDARD_LEADS))
    window = PreprocessConfig().window_samples
    assert out.windows.shape == (len(starts), 12, window) and out.warnings == ()
    assert list(out.lengths) == [min(window, seconds * 100)] * len(starts)
    assert window_starts(seconds * 100, window) == starts
    if seconds < 10:
        assert not out.windows[0, :, seconds * 100 :].any() and out.first_window.shape == (12, seconds * 100)
    for row, start in zip(out.windows, starts):  # each window is that stretch, preprocessed on its own
        alone = preprocess(ecg_from_array(signal[:, start : start + window], 100, STANDARD_LEADS)).windows[0]
        np.testing.assert_allclose(row, alone, atol=1e-6)


def test_an_all_flat_window_of_a_long_ecg_is_left_out_with_a_warning() -> None:
    signal = np.random.default_rng(5).normal(size=(12, 3000))
    signal[:, 1000:2000] = 0.0
    out = preprocess(ecg_from_array(signal, 100, STANDARD_LEADS))
    assert len(out.windows) == 2 and out.warnings == ("all 12 leads are flat at 10-20 s; that window is left out",)


def test_flat_leads_are_zeroed_and_reported() -> None:
    signal = np.random.default_rng(3).normal(size=(12, 1000))
    signal[[2, 8]] = 0.25
    out = preprocess(ecg_from_array(signal, 100, STANDARD_LEADS))
    assert out.flat_leads == ("III", "V3")
    assert not out.windows[0, 2].any() and not out.windows[0, 8].any()
    assert "flat lead(s) III, V3 set to zero" in out.warnings


def test_all_flat_is_refused() -> None:
    with pytest.raises(EcgInputError, match="all 12 leads are flat"):
        preprocess(ecg_from_array(np.ones((12, 1000)), 100, STANDARD_LEADS))


def test_plain_wfdb_files_at_another_rate(tmp_path) -> None:  # noqa: ANN001
    """Plain .hea/.dat files at any rate are read with their units."""
    signal = np.random.default_rng(4).normal(size=(2500, 12)) * 0.5
    wfdb.wrsamp("rec", fs=250, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=signal,
                fmt=["16"] * 12, write_dir=str(tmp_path))
    ecg = read_wfdb(tmp_path / "rec")
    assert ecg.sampling_rate_hz == 250 and ecg.signal.shape == (12, 2500)
    assert preprocess(ecg).windows.shape == (1, 12, 1000)
