"""The measurement stage on ECGs whose answers are known: synthetic beats with set intervals and axes, the carts'
own measurements in the hospital files, a flat-chest-lead EDF, AF, premature beats, injected noise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ecgregen.ecg import STANDARD_LEADS, Ecg, ecg_from_array
from ecgregen.ecg_files import read_ecg_bytes
from ecgregen.measure import BeatOrigin, QualityFlag, Rhythm, measure
from ecgregen.records import read_wfdb_signal
from ecgregen.wire import measurements_to_proto

FORMATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "formats"
PTBXL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptbxl"
# The tolerances (a cart's against ours).
TOLERANCE = {"heart_rate_bpm": 3, "pr_interval_ms": 20, "qrs_duration_ms": 15, "qt_interval_ms": 30,
             "qtc_bazett_ms": 30, "qtc_fridericia_ms": 30, "qrs_axis_deg": 20, "p_axis_deg": 30, "t_axis_deg": 30}
CART_NAMES = {"heart_rate": "heart_rate_bpm", "pr_interval": "pr_interval_ms", "qrs_duration": "qrs_duration_ms",
              "qt_interval": "qt_interval_ms", "qtc_bazett": "qtc_bazett_ms", "qtc_fridericia": "qtc_fridericia_ms",
              "p_axis": "p_axis_deg", "qrs_axis": "qrs_axis_deg", "t_axis": "t_axis_deg"}
CHEST_WEIGHTS = {"P": [0.3, 0.4, 0.5, 0.5, 0.5, 0.4], "QRS": [-0.6, -0.9, 0.3, 1.2, 1.4, 1.1],
                 "T": [0.1, 0.5, 0.7, 0.7, 0.6, 0.4]}


def _hann(t: np.ndarray, start: float, stop: float) -> np.ndarray:
    """A raised-cosine bump that is exactly zero outside [start, stop] (so its edges are known)."""
    inside = (t >= start) & (t <= stop)
    out = np.zeros_like(t)
    out[inside] = 0.5 - 0.5 * np.cos(2 * np.pi * (t[inside] - start) / (stop - start))
    return out


def synthetic_ecg(rate_bpm: float = 72, seconds: float = 10, fs: float = 500, pr: float = 0.16, p_dur: float = 0.10,
                  qrs: float = 0.09, qt: float = 0.40, axes: tuple[float, float, float] = (50, 30, 40),
                  p_every: int = 1, beat_times: list[float] | None = None, p_waves: bool = True,
                  wide_at: tuple[float, ...] = ()) -> Ecg:
    """12 leads from frontal vectors of P, QRS and T at the given axes (degrees) with known onsets/offsets.

    `p_every` = 2 adds a non-conducted P wave mid-cycle (2:1 AV block); `wide_at` beat times get a wide
    QRS of another shape (a ventricular ectopic); `p_waves` False leaves P out (with irregular `beat_times`: AF).
    """
    t = np.arange(int(seconds * fs)) / fs
    rr = 60.0 / rate_bpm
    onsets = beat_times if beat_times is not None else list(np.arange(0.4, seconds - 0.6, rr))
    waves = {"P": np.zeros_like(t), "QRS": np.zeros_like(t), "T": np.zeros_like(t), "W": np.zeros_like(t)}
    for on in onsets:
        if any(abs(on - w) < 1e-9 for w in wide_at):
            waves["W"] += 1.2 * _hann(t, on, on + 0.16) - 0.5 * _hann(t, on + 0.16, on + 0.32)
            continue
        if p_waves:
            waves["P"] += 0.15 * _hann(t, on - pr, on - pr + p_dur)
            if p_every == 2:
                waves["P"] += 0.15 * _hann(t, on - pr + rr / 2, on - pr + rr / 2 + p_dur)
        q = qrs / 6
        waves["QRS"] += -0.1 * _hann(t, on, on + q) + 1.0 * _hann(t, on + q, on + 4 * q) - 0.25 * _hann(t, on + 4 * q, on + qrs)
        waves["T"] += 0.3 * _hann(t, on + qt - 0.22, on + qt)
    leads = np.zeros((12, t.size))
    for wave, angle in (("P", axes[0]), ("QRS", axes[1]), ("T", axes[2]), ("W", 150.0)):
        a = np.radians(angle)
        lead_i, lead_ii = np.cos(a) * waves[wave], np.cos(a - np.radians(60)) * waves[wave]
        leads[0] += lead_i
        leads[1] += lead_ii
        chest = CHEST_WEIGHTS.get(wave, [-1.0, -0.8, 0.5, 0.9, 1.0, 0.8])
        for k, w in enumerate(chest):
            leads[6 + k] += w * waves[wave]
    leads[2] = leads[1] - leads[0]
    leads[3] = -(leads[0] + leads[1]) / 2
    leads[4] = leads[0] - leads[1] / 2
    leads[5] = leads[1] - leads[0] / 2
    rng = np.random.default_rng(7)
    leads += rng.normal(0, 0.005, leads.shape)
    return Ecg(leads.astype(np.float32), fs)


def _check(m, expected: dict[str, float]) -> None:
    for name, value in expected.items():
        got = getattr(m, name)
        assert got is not None, f"{name} absent: {m.missing.get(name)}"
        if name.endswith("_deg"):
            diff = abs((got - value + 180) % 360 - 180)
        else:
            diff = abs(got - value)
        assert diff <= TOLERANCE[name], f"{name}: measured {got}, expected {value}"


def test_a_synthetic_ecg_is_measured_within_the_carts_tolerances():
    m = measure(synthetic_ecg())
    rr = 60 / 72
    _check(m, {"heart_rate_bpm": 72, "pr_interval_ms": 160, "qrs_duration_ms": 90, "qt_interval_ms": 400,
               "qtc_bazett_ms": 400 / np.sqrt(rr), "qtc_fridericia_ms": 400 / np.cbrt(rr), "p_axis_deg": 50,
               "qrs_axis_deg": 30, "t_axis_deg": 40})
    assert m.rhythm is Rhythm.SINUS and m.p_waves_present and not m.premature_beats
    assert m.beat_count == len(np.arange(0.4, 10 - 0.6, rr)) and m.median_beat is not None and m.measured_at_hz == 500


@pytest.mark.parametrize("fs", [100, 250, 1000])
def test_the_same_ecg_measures_alike_at_any_rate(fs):
    m = measure(synthetic_ecg(fs=fs))
    _check(m, {"heart_rate_bpm": 72, "pr_interval_ms": 160, "qrs_duration_ms": 90, "qt_interval_ms": 400,
               "qrs_axis_deg": 30})


def test_a_140_bpm_sinus_tachycardia_is_measured():
    m = measure(synthetic_ecg(rate_bpm=140, pr=0.13, p_dur=0.08, qrs=0.08, qt=0.28))
    _check(m, {"heart_rate_bpm": 140, "pr_interval_ms": 130, "qrs_duration_ms": 80, "qt_interval_ms": 280})
    assert m.rhythm is Rhythm.SINUS_TACHYCARDIA


def test_a_2_to_1_av_block_gives_the_ventricular_rate_and_the_conducted_pr():
    m = measure(synthetic_ecg(rate_bpm=40, pr=0.20, p_every=2))
    _check(m, {"heart_rate_bpm": 40, "pr_interval_ms": 200, "qrs_duration_ms": 90, "qt_interval_ms": 400})


def test_af_without_p_waves_leaves_pr_absent_with_its_reason():
    rng = np.random.default_rng(3)
    times = list(np.cumsum(rng.uniform(0.45, 1.1, 14)) + 0.3)
    times = [t for t in times if t < 9.3]
    m = measure(synthetic_ecg(beat_times=times, p_waves=False))
    assert m.rhythm is Rhythm.ATRIAL_FIBRILLATION and m.rr_irregular and m.p_waves_present is False
    assert m.pr_interval_ms is None and m.missing["pr_interval_ms"] == "no P waves (irregular rhythm)"
    assert m.p_duration_ms is None and m.p_axis_deg is None and "p_duration_ms" in m.missing
    assert m.qrs_duration_ms is not None and m.heart_rate_bpm is not None


def test_a_2_s_ecg_is_measured():
    m = measure(synthetic_ecg(seconds=2.0, rate_bpm=90))
    assert m.beat_count >= 2 and abs(m.heart_rate_bpm - 90) <= 3 and m.qrs_duration_ms is not None


def test_a_60_s_ecg_with_premature_beats_marks_them_by_origin():
    rr = 60 / 70
    times = list(np.arange(0.4, 59.0, rr))
    early_sv, early_v = times[20] - 0.3, times[40] - 0.35
    times[20], times[40] = early_sv, early_v
    m = measure(synthetic_ecg(seconds=60, beat_times=times, wide_at=(early_v,)))
    found = {(round(b.time_s, 1), b.origin) for b in m.premature_beats}
    assert any(abs(t - early_v) < 0.2 and o is BeatOrigin.VENTRICULAR for t, o in found), found
    assert any(abs(t - early_sv) < 0.2 and o is BeatOrigin.SUPRAVENTRICULAR for t, o in found), found
    assert len(m.premature_beats) == 2
    _check(m, {"heart_rate_bpm": 60 / np.diff(times).mean(), "qrs_duration_ms": 90, "pr_interval_ms": 160})


def test_noise_injected_into_one_lead_flags_that_lead_only():
    ecg = synthetic_ecg()
    signal = ecg.signal.copy()
    rng = np.random.default_rng(1)
    v3 = STANDARD_LEADS.index("V3")
    signal[v3] += rng.normal(0, 0.12, signal.shape[1]).astype(np.float32)
    m = measure(Ecg(signal, ecg.sampling_rate_hz))
    assert QualityFlag.STATIC_NOISE in m.lead_quality["V3"]
    assert set(m.flagged_leads) == {"V3"}
    assert m.qrs_duration_ms is not None


def test_a_burst_of_noise_in_one_lead_is_a_burst():
    ecg = synthetic_ecg()
    signal = ecg.signal.copy()
    rng = np.random.default_rng(2)
    v5 = STANDARD_LEADS.index("V5")
    signal[v5, 2000:2500] += rng.normal(0, 0.5, 500).astype(np.float32)
    m = measure(Ecg(signal, ecg.sampling_rate_hz))
    assert QualityFlag.BURST_NOISE in m.lead_quality["V5"]


def _file(name: str):
    return read_ecg_bytes((FORMATS / name).read_bytes(), name=name)


def test_the_edf_with_chest_electrodes_off_flags_v1_v6_and_measures_the_rest():
    m = measure(_file("edf_contec-ecg90a_0000050_12sig_800hz.edf").ecg)
    for lead in ("V1", "V2", "V3", "V4", "V5", "V6"):
        assert QualityFlag.LEAD_OFF in m.lead_quality[lead] and QualityFlag.FLAT in m.lead_quality[lead]
    for lead in ("I", "II", "III", "aVR", "aVL", "aVF"):
        assert QualityFlag.FLAT not in m.lead_quality[lead]
    assert m.heart_rate_bpm is not None and m.qrs_duration_ms is not None and m.qrs_axis_deg is not None


CART_FILES = ["hl7aecg_hl7-2003-example_mortara_12lead_500hz.xml", "scp_ecgtoolkit-example_12lead_500hz.scp",
              "dicom_ecgtoolkit-example_12lead_500hz_padding0.dcm",
              "dicom_pydicom-waveform_ecg_mortara_12lead_1000hz.dcm", "muse_egm-muse-sinus_mv360_500hz.xml",
              "sierra_v1.03_129DYPRG.xml"]


@pytest.mark.parametrize("name", CART_FILES)
def test_each_hospital_file_agrees_with_its_cart(name):
    """Every value the cart states is within tolerance, except the Philips QRS (135 ms by the cart, about 100 by
    us: a known miss, reported by `ecgregen evaluate measurements`)."""
    read = _file(name)
    m = measure(read.ecg)
    cart = {CART_NAMES[k]: v for k, v in read.metadata.measurements.items() if k in CART_NAMES}
    if "rr_interval" in read.metadata.measurements:
        cart["heart_rate_bpm"] = 60000 / read.metadata.measurements["rr_interval"]
    if name.startswith("sierra"):
        cart.pop("qrs_duration_ms")
    assert cart, "the file states measurements"
    _check(m, cart)


def _swap_arm_electrodes(ecg: Ecg) -> Ecg:
    """What the cart records with the left and right arm electrodes swapped: I inverted, II<->III, aVR<->aVL."""
    s = ecg.signal
    i, ii, iii, avr, avl, avf = (STANDARD_LEADS.index(n) for n in ("I", "II", "III", "aVR", "aVL", "aVF"))
    out = s.copy()
    out[i], out[ii], out[iii], out[avr], out[avl] = -s[i], s[iii], s[ii], s[avl], s[avr]
    return Ecg(out, ecg.sampling_rate_hz)


def test_swapped_arm_electrodes_are_suspected_and_a_correct_recording_is_not():
    ecg = synthetic_ecg()
    assert measure(ecg).limb_lead_reversal is False
    swapped = measure(_swap_arm_electrodes(ecg))
    assert swapped.limb_lead_reversal is True
    for name in CART_FILES:
        assert measure(_file(name).ecg).limb_lead_reversal is False, name


def test_a_sinus_arrhythmia_with_rr_from_0_67_to_1_01_s_has_no_premature_beats():
    """RR follows a breath (a 5 s cycle) smoothly between 0.67 and 1.01 s: no beat is early against the rhythm
    before it, whatever the RRs after it."""
    times, t = [], 0.4
    while t < 29.0:
        times.append(t)
        t += 0.84 + 0.17 * np.sin(2 * np.pi * t / 5.0)
    rr = np.diff(times)
    assert rr.min() < 0.69 and rr.max() > 0.99
    m = measure(synthetic_ecg(seconds=30, beat_times=times))
    assert m.premature_beats == () and m.rhythm is Rhythm.SINUS_ARRHYTHMIA


def _ptbxl(ecg_id: int):
    raw = read_wfdb_signal(PTBXL / "records100" / f"{ecg_id // 1000 * 1000:05d}" / f"{ecg_id:05d}_lr")
    return measure(ecg_from_array(raw.signal, raw.sampling_rate_hz, raw.lead_names, raw.units), raw.units)


def test_a_real_atrial_flutter_with_2_to_1_block_is_flutter_not_sinus_tachycardia():
    """PTB-XL 14083 (fold 3, AFLT, 129 bpm): a flutter wave before each QRS was taken for a P wave."""
    m = _ptbxl(14083)
    assert m.rhythm is Rhythm.ATRIAL_FLUTTER and 120 < m.heart_rate_bpm < 140


def test_a_real_sinus_tachycardia_stays_sinus_tachycardia():
    """PTB-XL 1970 (fold 5, STACH, 133 bpm): one P wave per QRS, so its cycle's power is not at twice its rate."""
    m = _ptbxl(1970)
    assert m.rhythm is Rhythm.SINUS_TACHYCARDIA and m.heart_rate_bpm > 120


@pytest.mark.parametrize(("fs", "expected"), [(100, 100), (500, 500), (1000, 500)])
def test_measured_at_hz_is_the_rate_of_the_samples_the_fiducials_rest_on(fs, expected):
    m = measure(synthetic_ecg(fs=fs))
    assert m.measured_at_hz == expected and m.median_beat is not None and m.median_beat.rate_hz == 500


def test_the_median_beat_says_nu_for_a_z_scored_ptbxl_record_and_mv_for_a_cart_file():
    raw = read_wfdb_signal(PTBXL / "records100" / "05000" / "05434_lr")
    assert set(raw.units) == {"NU"}
    nu = measure(ecg_from_array(raw.signal, raw.sampling_rate_hz, raw.lead_names, raw.units), raw.units)
    assert nu.median_beat is not None and nu.median_beat.units == "NU"
    assert {lead.units for lead in measurements_to_proto(nu, include_median_beat=True).median_beat.leads} == {"NU"}
    mv = measure(_file("muse_egm-muse-sinus_mv360_500hz.xml").ecg)
    assert mv.median_beat is not None and mv.median_beat.units == "mV"


@pytest.mark.parametrize("name", [n for n in CART_FILES if not n.startswith("scp")])
def test_qt_is_within_20_ms_of_each_cart_that_states_it(name):
    """T end at the knee of the magnitude's tail: the tangent alone put QT 14-22 ms short of three of the carts."""
    read = _file(name)
    m = measure(read.ecg)
    assert abs(m.qt_interval_ms - read.metadata.measurements["qt_interval"]) <= 20


def test_values_are_those_of_the_code_before_the_speed_work() -> None:
    """Issue 33 made the stage cheaper on condition that its values stay: the hospital files and 12 PTB-XL fold-9
    records (100 Hz and resampled to 500 Hz) measure as the code before it did (`tests/data/measure_reference.json`,
    written by ``python -m ecgregen.bench.same_values --before-tree <5f15e17> --limit 12 --write-reference``):
    intervals within 2 ms, rate 1 bpm, axes 2 degrees; rhythm, beats, premature beats, flags and reasons equal."""
    import json

    from ecgregen.bench.same_values import check_ecgs, differences, summary

    if not (PTBXL / "ptbxl_database.csv").exists() or not FORMATS.is_dir():
        pytest.skip("the shared PTB-XL records and hospital files are needed")
    reference = json.loads((Path(__file__).parent / "data" / "measure_reference.json").read_text())
    named = check_ecgs(PTBXL, [9], FORMATS, limit=12)
    assert sorted(name for name, _ in named) == sorted(reference)
    today = [summary(measure(ecg)) for _, ecg in named]
    assert differences([n for n, _ in named], [reference[n] for n, _ in named], today) == []


def test_the_reasons_of_missing_values_do_not_depend_on_the_process() -> None:
    """A value missing because another is (the P axis because no QRS was delineated) gets the same reason, in the
    same order, in processes with different string hashing, as the server's and its measurement workers' are: the
    reasons were once chosen in the order of a set."""
    import json
    import subprocess
    import sys

    program = ("import json, numpy as np\n"
               "from ecgregen.ecg import Ecg\n"
               "from ecgregen.measure import measure\n"
               "rng = np.random.default_rng(0)\n"
               "rng.standard_normal((12, 1000))\n"
               "t = np.arange(5000) / 500.0\n"
               "x = np.sin(2 * np.pi * 1.1 * t)[None, :] + 0.01 * rng.standard_normal((12, 5000))\n"
               "print(json.dumps(list(measure(Ecg(x.astype(np.float32), 500.0)).missing.items())))\n")
    seen = []
    for seed in ("1", "2", "3"):
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        seen.append(json.loads(done.stdout))
    assert seen[0] and seen[0] == seen[1] == seen[2]
    reasons = dict(seen[0])  # a sine has no QRS to delineate: everything that rests on it says so, down the chain
    assert reasons["p_axis_deg"] == reasons["pr_interval_ms"] == reasons["qrs_duration_ms"] != "not measurable"
