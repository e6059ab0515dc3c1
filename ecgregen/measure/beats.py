"""QRS complexes across all usable leads, their RR intervals, and which beats are premature or of another shape.

Detection runs on the summed, per-lead normalised energy of the 5-25 Hz band of every usable lead (a lead's
artefact or a small QRS in one lead cannot hide or invent a beat), not on one lead: a single-lead detector
(neurokit2's on lead II, measured in REFERENCE.md) misses fast tachycardias and AF where lead II is small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal as sps

from ecgregen.measure.signal import filtered, median_along, median_of, moving_average, quantiles, samples_of

# Beats closer than this cannot both be QRS complexes (300 bpm).
REFRACTORY_MS = 200.0
# A candidate is a beat when its energy reaches this share of the typical beat's.
DETECT_SHARE = 0.3
# A beat this soon after the previous one with less than this share of its energy is that beat's T wave.
T_WAVE_WINDOW_MS = 360.0
T_WAVE_SHARE = 0.5
# Premature: the RR before the beat is below this share of the rhythm before it, of the RR just before it and of
# the RR after it (:func:`_premature_by_rr`).
PREMATURE_SHARE = 0.85
# The rhythm a beat is judged against: the median of this many RRs before its own.
LOCAL_RRS = 3
# Another shape: the beat's multi-lead QRS correlates less than this with the dominant one.
SHAPE_CORRELATION = 0.8
# Half-width of the QRS window compared between beats, and how far a beat may be shifted to align it.
QRS_HALF_MS = 60.0
ALIGN_MS = 16.0


@dataclass(frozen=True)
class Beats:
    """Detected beats: QRS peak samples (aligned), and per beat whether it is premature / of another shape."""

    peaks: np.ndarray  # int, samples at the measuring rate
    premature: np.ndarray  # bool
    other_shape: np.ndarray  # bool
    wide: np.ndarray  # bool: QRS energy lasts longer than the dominant beat's by > 40 ms

    @property
    def dominant(self) -> np.ndarray:
        """The beats the representative beat is made of: on time and of the usual shape."""
        return ~(self.premature | self.other_shape)


def detect_qrs(x: np.ndarray, usable: np.ndarray, rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """QRS peak samples and the 5-25 Hz band-passed leads (reused for alignment and shape)."""
    band = filtered(x, rate_hz, 5.0, min(25.0, 0.4 * rate_hz))
    if not usable.any():
        return np.zeros(0, int), band
    slope = np.diff(band[usable], axis=1, prepend=band[usable][:, :1]) * rate_hz
    energy = slope**2
    scale = quantiles(energy, (0.99,))[0][:, None]
    combined = moving_average((energy / np.where(scale > 0, scale, 1.0)).sum(axis=0), samples_of(80, rate_hz))
    candidates, props = sps.find_peaks(combined, distance=max(1, samples_of(REFRACTORY_MS, rate_hz)),
                                       height=1e-12)
    if candidates.size == 0:
        return candidates, band
    heights = props["peak_heights"]
    expected = max(2, int(x.shape[1] / rate_hz * 40 / 60))  # the beats of 40 bpm at least
    typical = median_of(np.sort(heights)[::-1][:expected])
    keep = heights >= DETECT_SHARE * typical
    peaks, heights = candidates[keep], heights[keep]
    accepted: list[int] = []
    window = samples_of(T_WAVE_WINDOW_MS, rate_hz)
    for peak, height in zip(peaks, heights):
        if accepted and peak - accepted[-1] < window and height < T_WAVE_SHARE * combined[accepted[-1]]:
            continue
        accepted.append(int(peak))
    return np.asarray(accepted, int), band


def _qrs_segments(band: np.ndarray, peaks: np.ndarray, half: int) -> np.ndarray:
    """(beats, leads, 2*half+1) windows around each peak, zero beyond the recording's ends (cut as slices: a fancy
    index of every sample cost twice as much)."""
    padded = np.pad(band, ((0, 0), (half, half)))
    out = np.empty((peaks.size, band.shape[0], 2 * half + 1))
    for k, peak in enumerate(peaks.tolist()):
        out[k] = padded[:, peak: peak + 2 * half + 1]
    return out


def classify_beats(band: np.ndarray, usable: np.ndarray, peaks: np.ndarray, rate_hz: float) -> Beats:
    """Align each beat on the dominant QRS shape, then mark premature and other-shape beats.

    Alignment: each beat is shifted (up to ±ALIGN_MS) to best match the median QRS of all beats, so the
    representative beat is not smeared by detector jitter (which would lengthen QRS). Premature: early against the
    rhythm before it, abruptly, and followed by a pause (:func:`_premature_by_rr`). Another shape: low correlation
    with the dominant QRS.
    """
    n = peaks.size
    if n == 0:
        empty = np.zeros(0, bool)
        return Beats(peaks, empty, empty, empty)
    half, shift = samples_of(QRS_HALF_MS, rate_hz), max(1, samples_of(ALIGN_MS, rate_hz))
    leads = band[usable] if usable.any() else band
    wide_segments = _qrs_segments(leads, peaks, half + shift)
    template = median_along(wide_segments[:, :, shift: shift + 2 * half + 1], 0)
    t = (template - template.mean()).ravel()
    t_norm = float(np.sqrt(np.einsum("i,i->", t, t))) or 1.0
    # Every shift of every beat at once: (beats, shifts, leads x window), each row as one shift's segment.
    shifted = sliding_window_view(wide_segments, 2 * half + 1, axis=2)
    seg = np.ascontiguousarray(shifted.transpose(0, 2, 1, 3)).reshape(n, 2 * shift + 1, -1)
    seg = seg - seg.mean(axis=2, keepdims=True)
    corr = np.einsum("nsj,j->ns", seg, t) / (np.sqrt(np.einsum("nsj,nsj->ns", seg, seg)) * t_norm + 1e-12)
    first_best = np.argmax(corr, axis=1)  # the earliest shift of the highest correlation, as the loop kept it
    best, best_corr = first_best - shift, corr[np.arange(n), first_best]
    peaks = np.clip(peaks + best, 0, band.shape[1] - 1)
    other_shape = best_corr < SHAPE_CORRELATION
    # Width: how long the beat's QRS energy stays above a fifth of its peak, against the dominant beats'.
    segments = _qrs_segments(leads, peaks, 2 * half)
    energy = (np.diff(segments, axis=2) ** 2).sum(axis=1)
    widths = (energy > 0.2 * energy.max(axis=1, keepdims=True)).sum(axis=1)
    normal_width = median_of(widths[~other_shape]) if (~other_shape).any() else median_of(widths)
    wide = widths - normal_width > samples_of(40, rate_hz)
    return Beats(peaks, _premature_by_rr(np.diff(peaks).tolist()), other_shape, wide)


def _premature_by_rr(rr: list[float]) -> np.ndarray:
    """Per beat (one more than `rr`): early against the local rhythm, as an ectopic beat is.

    A beat is premature when the RR before it (its coupling interval) is below :data:`PREMATURE_SHARE` of
    - the median of the up to :data:`LOCAL_RRS` RRs before that (the rhythm it interrupts),
    - the one RR just before it (it came abruptly), and
    - the RR after it (the pause that follows an ectopic beat, compensatory or not).
    The RRs *after* a beat never set the rhythm it is judged against: a sinus arrhythmia's slowing phase would
    make its faster beats look early (RR 0.67-1.01 s over a breath gave two "premature beats"). A sinus
    arrhythmia shortens RR gradually and lengthens it gradually, so it fails the second or third test; an early
    beat passes all three. The first two beats and the last have no rhythm before or pause after to judge by and
    are not marked: judging them one-sided (the second by the pause after it, the last by the rhythm before it)
    found 5 more of PTB-XL folds 1-8's records with extra beats but 15 more false ones (any-extra-beat F1 0.634
    against 0.644 without). Nor is a run of two or more early beats of the usual shape marked (its second beat is
    not early against the first); a ventricular run still is, by its shape and width (``stage._premature``).
    """
    premature = np.zeros(len(rr) + 1, bool)
    for i in range(2, len(rr)):
        rhythm = _median(rr[max(0, i - 1 - LOCAL_RRS): i - 1])
        premature[i] = rr[i - 1] < PREMATURE_SHARE * min(rhythm, rr[i - 2], rr[i])
    return premature


def _median(values: list[float]) -> float:
    """Median of a few RRs: plain Python costs a tenth of numpy's per-call overhead for a list this short."""
    s = sorted(values)
    middle = len(s) // 2
    return s[middle] if len(s) % 2 else 0.5 * (s[middle - 1] + s[middle])


def rr_irregularity(beats: Beats) -> float | None:
    """Median |successive RR difference| / median RR (None: too few beats).

    Intervals touching a beat of another shape (e.g. a ventricular ectopic) are left out; premature beats of the
    usual shape are not, since in AF every short RR looks "premature". The median keeps a single early beat in
    sinus rhythm from reading as an irregular rhythm.
    """
    if beats.peaks.size < 4:
        return None
    rr = np.diff(beats.peaks).astype(float)
    clean = ~(beats.other_shape[1:] | beats.other_shape[:-1])
    use = rr[clean] if clean.sum() >= 3 else rr
    return median_of(np.abs(np.diff(use))) / median_of(use)
