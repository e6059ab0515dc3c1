"""Live ECG streams from bedside monitors: chunks in, one interpretation per completed window out.

Rules for what monitors really send (each produces a warning; none ends the stream):
- **Sequence**: chunks must arrive numbered 0, 1, 2, ... A jump is a *gap*: the window under way is dropped
  (warning ``gap``) and the next window starts with the new chunk. A repeat or step back is a *duplicate or late*
  chunk: dropped (warning ``duplicate_or_late``); there is no reordering buffer.
- **Malformed chunk** (wrong number of leads, unequal lengths, digital samples without a gain): dropped like a
  gap (warning ``bad_chunk``).
- **Lead off** (``leads_off``) and leads that are all NaN/inf in a chunk: zero-filled for that chunk, window
  flagged ``lead_off:LEAD``. Isolated NaN/inf samples are interpolated linearly (``nan_interpolated:LEAD``).
- **Saturation**: a lead at or beyond +-10 mV for more than 5% of a window is flagged ``saturated:LEAD``; flat
  leads are zeroed by preprocessing (``flat:LEAD``, only for leads the monitor sends and that are not off).
- **Leads not sent** (not in the config) are listed in ``leads_missing``. Those that follow from the sent ones are
  **derived** (:func:`ecgregen.ecg.derive_limb_leads`, the arithmetic 8-lead hospital files get: III, aVR, aVL and
  aVF from I and II), so an 8-lead monitor's window is encoded and measured as the 12-lead ECG it stands for; they
  are listed in ``leads_derived`` and a warning, never in ``leads_used`` (the sent leads that carried signal). A
  derived sample whose source lead was off is zero, like the source. The others are zero-filled and **not
  recorded** (``Ecg.not_recorded`` -> ``Measurements.not_recorded``): the measurement stage does not judge them, so
  a lead never sent is never flagged flat or lead off, counted in the quality metric or read as an electrode problem.
- **Windows** are encoded like any ECG of their length (:mod:`ecgregen.preprocess`'s length policy), through the
  same :meth:`RetrievalPipeline.embed_each` and ``retrieve`` as the unary calls: a 20 s window gets the vector
  ``GenerateReport`` gives those 20 s, with the same warnings (e.g. the Triton fallback) and stage metrics. A
  ``patient_id`` in the config keeps that patient's own records out of the neighbours.
- **Back-pressure**: a stream holds at most ``MAX_PENDING_WINDOWS`` windows waiting for the encoder; while they
  wait the server stops reading that stream, so gRPC flow control slows a sender that is faster than real time
  instead of the server's memory growing. Windows from all streams that complete together are encoded in one
  call (:class:`WindowBatcher`).
- **Measurements**: each window is measured on its own (its rate, intervals, rhythm, per-lead quality, as a
  unary call measures the same seconds), so a monitor follows the rate window by window; a window whose
  measuring fails keeps its result, with a warning instead of the measurements.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from ecgregen.api_values import StreamWarningCode
from ecgregen.ecg import (
    MAX_RATE_HZ,
    MIN_DURATION_S,
    MIN_RATE_HZ,
    STANDARD_LEADS,
    Ecg,
    EcgInputError,
    canonical_lead,
    derive_limb_leads,
    ecg_from_array,
    unit_scale,
)
from ecgregen.metrics import STREAM_WINDOWS, STREAMS_ACTIVE
from ecgregen.pipeline import GeneratedReport, Retrieval, RetrievalPipeline
from ecgregen.store import SearchFilter
from ecgregen.v1 import ecgregen_pb2 as pb

log = logging.getLogger("ecgregen.stream")

MAX_PENDING_WINDOWS = 2
SATURATION_MV = 10.0
SATURATED_FRACTION = 0.05
MAX_BATCH = 64
MAX_WINDOW_S = 60.0  # windows are ECGs: at least ecg.MIN_DURATION_S


@dataclass(frozen=True)
class StreamSettings:
    rate_hz: float
    leads: tuple[str, ...]  # canonical names, in the chunks' order
    to_mv: float
    gain: float
    baseline: int
    window_s: float
    hop_s: float
    k: int
    question: str
    options: tuple[str, ...]
    patient_id: str = ""  # the monitored patient: their own records are not neighbours

    @property
    def search_filter(self) -> SearchFilter | None:
        return SearchFilter(exclude_patient_id=self.patient_id) if self.patient_id else None

    @cached_property
    def derived(self) -> tuple[str, ...]:
        """The leads not sent that follow from the sent ones, in standard order (the same for every window)."""
        return tuple(derive_limb_leads(dict.fromkeys(self.leads, np.zeros(1))))

    @cached_property
    def not_recorded(self) -> tuple[str, ...]:
        """The leads neither sent nor derived, in standard order."""
        return tuple(lead for lead in STANDARD_LEADS if lead not in self.leads and lead not in self.derived)

    @cached_property
    def derivation_note(self) -> str:
        """The warning every window of a stream with derived leads carries (worded as for 8-lead files)."""
        if not self.derived:
            return ""
        return (f"lead(s) {', '.join(self.derived)} derived from the limb leads the monitor sends (it sends "
                f"{len(self.leads)} leads)")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.rate_hz))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_s * self.rate_hz))


def parse_config(config: pb.StreamConfig, max_k: int) -> StreamSettings:
    """Check a stream's config; raises EcgInputError naming what is wrong."""
    rate = config.sampling_rate_hz
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise EcgInputError(f"sampling_rate_hz must be {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz, got {rate:g}")
    leads = [canonical_lead(name) for name in config.lead_names]
    if not leads or len(set(leads)) != len(leads):
        raise EcgInputError("lead_names must list one or more distinct standard leads")
    to_mv = unit_scale(config.units)
    window = config.window_s or 10.0
    hop = config.hop_s or window
    if not MIN_DURATION_S <= window <= MAX_WINDOW_S or not 0 < hop <= window:
        raise EcgInputError(f"window_s must be {MIN_DURATION_S:g}-{MAX_WINDOW_S:g} s and hop_s in (0, window_s]; got "
                            f"{window:g} and {hop:g}")
    k = config.k or 3
    if k > max_k:
        raise EcgInputError(f"k must be between 1 and {max_k}, got {k}")
    return StreamSettings(rate, tuple(leads), to_mv, config.gain, config.baseline, window, hop, k,
                          config.question.strip(), tuple(o.strip() for o in config.options if o.strip()),
                          config.patient_id.strip())


@dataclass
class Window:
    index: int
    start_s: float
    signal: np.ndarray  # (12, n) mV: derived leads computed, not recorded leads zero
    flags: list[str]


@dataclass
class StreamSession:
    """Turns chunks into windows by the rules above (no I/O; one per stream)."""

    settings: StreamSettings
    expected: int = 0
    buffer: np.ndarray = field(init=False)
    flags: np.ndarray = field(init=False)  # per buffered sample: bit per configured lead (lead off)
    interpolated: set[str] = field(default_factory=set)
    origin: int = 0  # stream sample index of buffer[:, 0]
    next_window: int = 0

    def __post_init__(self) -> None:
        self.buffer = np.empty((len(self.settings.leads), 0), np.float32)
        self.flags = np.empty((len(self.settings.leads), 0), bool)

    def feed(self, chunk: pb.StreamChunk) -> tuple[list[Window], list[pb.StreamWarning]]:
        warnings: list[pb.StreamWarning] = []
        if chunk.sequence < self.expected:
            return [], [_warning(chunk.sequence, StreamWarningCode.DUPLICATE_OR_LATE,
                                 f"chunk {chunk.sequence} arrived after chunk {self.expected - 1}; dropped")]
        try:
            samples, off = self._decode(chunk)
        except EcgInputError as exc:
            self.expected = chunk.sequence + 1
            self._restart()
            return [], [_warning(chunk.sequence, StreamWarningCode.BAD_CHUNK, f"chunk {chunk.sequence}: {exc}; the window under way "
                                 "is dropped")]
        if chunk.sequence > self.expected:
            warnings.append(_warning(chunk.sequence, StreamWarningCode.GAP, f"chunks {self.expected}-{chunk.sequence - 1} missing; "
                                     "the window under way is dropped"))
            STREAM_WINDOWS.labels("dropped_gap").inc()
            self._restart()
        self.expected = chunk.sequence + 1
        self.buffer = np.concatenate([self.buffer, samples], axis=1)
        self.flags = np.concatenate([self.flags, off], axis=1)
        return self._windows(), warnings

    def _restart(self) -> None:
        """Drop the buffer (the window under way) and start windows afresh with the next chunk."""
        self.origin += self.buffer.shape[1]
        self.buffer, self.flags = self.buffer[:, :0], self.flags[:, :0]
        self.next_window = self.origin
        self.interpolated.clear()

    def _decode(self, chunk: pb.StreamChunk) -> tuple[np.ndarray, np.ndarray]:
        """The chunk's samples in mV (float32, one row per configured lead) and which are off. Runs on the event loop
        for every chunk (40 per 10 s window at 0.25 s chunks): float samples are read in one pass over all leads
        (a per-lead conversion cost 2.5x more, issue 33), and the per-lead repairs run only when a lead is off or
        a sample is not finite."""
        s = self.settings
        if len(chunk.leads) != len(s.leads):
            raise EcgInputError(f"{len(chunk.leads)} leads, the config names {len(s.leads)}")
        lengths = {len(lead.digital) or len(lead.samples) for lead in chunk.leads}
        if len(lengths) != 1 or 0 in lengths:
            raise EcgInputError(f"leads carry unequal or no samples ({sorted(lengths)})")
        (n,) = lengths
        if any(lead.digital for lead in chunk.leads):
            rows = []
            for name, lead in zip(s.leads, chunk.leads):
                if lead.digital:
                    if s.gain <= 0:
                        raise EcgInputError(f"lead {name} has digital samples but the config has no gain")
                    rows.append((np.asarray(lead.digital, np.float64) - s.baseline) / s.gain)
                else:
                    rows.append(np.asarray(lead.samples, np.float64))
            x = np.stack(rows) * s.to_mv
        else:
            x = np.fromiter(itertools.chain.from_iterable(lead.samples for lead in chunk.leads), np.float64,
                            count=len(s.leads) * n).reshape(len(s.leads), n) * s.to_mv
        off = np.zeros_like(x, bool)
        leads_off = {name.strip().lower() for name in chunk.leads_off}
        if leads_off or not np.isfinite(x).all():
            for i, name in enumerate(s.leads):
                bad = ~np.isfinite(x[i])
                if name.lower() in leads_off or bad.all():
                    x[i], off[i] = 0.0, True
                elif bad.any():
                    good = np.flatnonzero(~bad)
                    x[i, bad] = np.interp(np.flatnonzero(bad), good, x[i, good])
                    self.interpolated.add(name)
        return x.astype(np.float32), off

    def _windows(self) -> list[Window]:
        s, out = self.settings, []
        while self.next_window + s.window_samples <= self.origin + self.buffer.shape[1]:
            a = self.next_window - self.origin
            part, off = self.buffer[:, a : a + s.window_samples], self.flags[:, a : a + s.window_samples]
            flags = [f"lead_off:{n}" for n, o in zip(s.leads, off.any(axis=1)) if o]
            flags += [f"nan_interpolated:{n}" for n in s.leads if n in self.interpolated]
            flags += [f"saturated:{n}" for n, f in zip(s.leads, (np.abs(part) >= SATURATION_MV).mean(axis=1))
                      if f > SATURATED_FRACTION]
            full = np.zeros((len(STANDARD_LEADS), s.window_samples), np.float32)
            for row, name in zip(part, s.leads):
                full[STANDARD_LEADS.index(name)] = row
            if s.derived:  # off samples as NaN: a derived sample that depends on one is NaN, then zero
                sent = dict(zip(s.leads, np.where(off, np.float32(np.nan), part)))
                for name, row in derive_limb_leads(sent).items():
                    full[STANDARD_LEADS.index(name)] = np.nan_to_num(row, nan=0.0)
            out.append(Window(self.next_window // s.hop_samples if s.hop_samples else 0,
                              self.next_window / s.rate_hz, full, flags))
            self.next_window += s.hop_samples
            self.interpolated.clear()
        keep_from = self.next_window - self.origin  # samples before the next window's start are not needed
        if keep_from > 0:
            self.origin += keep_from
            self.buffer, self.flags = self.buffer[:, keep_from:], self.flags[:, keep_from:]
        return out


def _warning(sequence: int, code: StreamWarningCode, message: str) -> pb.StreamWarning:
    return pb.StreamWarning(sequence=sequence, code=code, message=message)


@dataclass(frozen=True)
class WindowOutcome:
    """What the batcher's thread made of one window: its retrieval, report and answer (None and the error where the
    window could not be encoded), and its flat-lead flags - so the event loop only turns it into a response."""

    retrieval: Retrieval | None
    report: GeneratedReport | None
    answer: list[str]
    flags: list[str]
    error: Exception | None = None


@dataclass
class _Job:
    window: Window
    settings: StreamSettings
    future: asyncio.Future
    queued_at: float


class WindowBatcher:
    """Encodes the windows of all streams that are waiting together in one encoder call, then searches each."""

    def __init__(self, pipeline: RetrievalPipeline) -> None:
        self.pipeline = pipeline
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def submit(self, window: Window, settings: StreamSettings) -> asyncio.Future:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="window-batcher")
        future = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait(_Job(window, settings, future, time.perf_counter()))
        return future

    async def _run(self) -> None:
        while True:
            jobs = [await self._jobs.get()]
            while not self._jobs.empty() and len(jobs) < MAX_BATCH:
                jobs.append(self._jobs.get_nowait())
            live = [j for j in jobs if not j.future.cancelled()]
            if not live:
                continue
            try:
                results = await asyncio.to_thread(self._process, live)
            except Exception as exc:  # e.g. the store or Triton failing: every waiting window hears about it
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(live, results):
                if not job.future.done():
                    job.future.set_result(result)

    def _process(self, jobs: list[_Job]) -> list[WindowOutcome]:
        """Embed every window in one call (the unary calls' path) while the measurement workers measure each
        window, then search each with its stream's filter, and write its report and answer (here, off the event
        loop)."""
        windows: list[Ecg | EcgInputError] = []
        for job in jobs:
            try:
                ecg = ecg_from_array(job.window.signal, job.settings.rate_hz, STANDARD_LEADS, "mV")
                windows.append(replace(ecg, not_recorded=job.settings.not_recorded))
            except EcgInputError as exc:
                windows.append(exc)
        pending = {id(w): self.pipeline.measurer.submit(w) for w in windows if isinstance(w, Ecg)}
        shared: dict[str, float] = {}  # one preprocess + encode for the whole batch
        try:
            embedded = iter(self.pipeline.embed_each([w for w in windows if isinstance(w, Ecg)], shared))
        except BaseException:
            for p in pending.values():
                p.cancel()
            raise
        results = []
        for job, ecg in zip(jobs, windows):
            done = ecg if isinstance(ecg, EcgInputError) else next(embedded)
            if isinstance(done, EcgInputError):
                if id(ecg) in pending:
                    pending[id(ecg)].cancel()
                results.append(WindowOutcome(None, None, [], [], done))
                continue
            s, seconds = job.settings, dict(shared)
            measurements, notes = pending[id(ecg)].result(seconds)  # per window: its own stage time
            warnings = [s.derivation_note] if s.derivation_note else []
            retrieval = self.pipeline.retrieve(done.vector, s.k, s.search_filter, [*warnings, *done.warnings, *notes],
                                               seconds, measurements=measurements)
            sent = [lead for lead in s.leads if f"lead_off:{lead}" not in job.window.flags]
            report = self.pipeline.report_of(retrieval, self.pipeline.resolved_report_mode())
            answer = self.pipeline.answerer.answer(
                s.question, s.options, retrieval.hits, diagnoses=retrieval.diagnoses,
                measurements=retrieval.measurements).answer if s.question else []
            results.append(WindowOutcome(retrieval, report, answer,
                                         [f"flat:{lead}" for lead in done.flat_leads if lead in sent]))
        return results


class StreamLimiter:
    """The server-wide cap on concurrent streams."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_acquire(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        STREAMS_ACTIVE.set(self.active)
        return True

    def release(self) -> None:
        self.active -= 1
        STREAMS_ACTIVE.set(self.active)
