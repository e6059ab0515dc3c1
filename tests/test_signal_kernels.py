"""The compiled and hand-written signal kernels compute what the numpy and scipy calls they replace compute, to the
bit (issue 33 made them cheaper on that condition): the zero-phase filter (``sosfiltfilt``), the moving average
(``cumsum`` of the edge-padded signal), the percentile and median of a few values (``np.percentile``,
``np.median``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from ecgregen.measure.signal import filtered, median_of, moving_average, percentile
from ecgregen.preprocess import zero_phase


@pytest.mark.parametrize(("shape", "rate_hz", "band", "order"), [
    ((12, 1000), 100.0, (0.5, 40.0), 2),   # the encoder's band-pass of a 10 s ECG at 100 Hz
    ((12, 2500), 250.0, (5.0, 25.0), 2),   # QRS detection of a 500 Hz ECG (detected at half its rate)
    ((8, 651), 500.0, (None, 20.0), 2),    # a median beat's low-pass, eight leads
    ((3, 40), 100.0, (0.5, 40.0), 4),      # shorter than scipy's default pad: the pad shrinks to the signal
    ((2,), 100.0, (0.5, 40.0), 2),         # two samples
])
def test_zero_phase_is_sosfiltfilt_to_the_bit(shape: tuple[int, ...], rate_hz: float,
                                                band: tuple[float | None, float], order: int) -> None:
    """Random signals through Butterworth filters of the service's kinds: the compiled filter and scipy agree
    exactly (same operations in the same order), for 2-D and 1-D input and pads longer than the signal."""
    x = np.random.default_rng(7).standard_normal(shape) * 3.0 + 1.0
    nyquist = rate_hz / 2.0
    low, high = band
    sos = (sps.butter(order, [low / nyquist, high / nyquist], btype="bandpass", output="sos") if low is not None
           else sps.butter(order, high / nyquist, btype="lowpass", output="sos"))
    pad = 3 * (2 * sos.shape[0] + 1)
    expected = sps.sosfiltfilt(sos, x, axis=-1, padlen=min(pad, shape[-1] - 1))
    got = zero_phase(x, sos, sps.sosfilt_zi(sos), pad)
    assert got.shape == x.shape
    assert np.array_equal(got, expected)


def test_the_measurement_filters_take_views_and_float32() -> None:
    """A strided float32 view (as the stage slices its leads) filters as its float64 copy does."""
    x = np.random.default_rng(3).standard_normal((12, 3000)).astype(np.float32)
    view = x[::2, ::2]
    assert np.array_equal(filtered(view, 250.0, 5.0, 25.0), filtered(np.array(view, np.float64), 250.0, 5.0, 25.0))


@pytest.mark.parametrize("width", [2, 3, 8, 20, 125, 999])
def test_moving_average_is_the_cumsum_of_the_edge_padded_signal_to_the_bit(width: int) -> None:
    """Rows and a single row, widths even and odd, narrow and nearly the signal's length: the definition's
    numpy expression and the kernel agree exactly."""
    x = np.random.default_rng(width).standard_normal((12, 1000)) * 2.0 + 0.5
    pad = width // 2
    c = np.cumsum(np.pad(x, [(0, 0), (pad + 1, width - 1 - pad)], mode="edge"), axis=-1)
    assert np.array_equal(moving_average(x, width), (c[:, width:] - c[:, :-width]) / width)
    assert np.array_equal(moving_average(x[3], width), ((c[:, width:] - c[:, :-width]) / width)[3])
    assert moving_average(x, 1) is x


def test_percentile_and_median_are_numpys_to_the_bit() -> None:
    """Every count of values from 1 to 29, and the shares the stage uses or could: equal to ``np.percentile`` and
    ``np.median`` (also of integers, as beat widths are)."""
    rng = np.random.default_rng(11)
    for n in range(1, 30):
        for _ in range(20):
            values = rng.standard_normal(n) * rng.uniform(0.001, 100.0)
            for share in (0.0, 0.05, 0.25, 0.5, 0.75, 0.99, 1.0):
                assert percentile(values, share) == float(np.percentile(values, 100 * share))
            assert median_of(values) == float(np.median(values))
            counts = rng.integers(0, 90, n)
            assert median_of(counts) == float(np.median(counts))
