"""Prometheus metrics: one registry for the process, names by Prometheus conventions (base units, _total).

Buckets span sub-millisecond searches to multi-second calls so one histogram family serves every stage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

if TYPE_CHECKING:
    from ecgregen.diagnoses import Diagnosis
    from ecgregen.measure import Measurements
    from ecgregen.store import StoreStats

REGISTRY = CollectorRegistry()

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

RPC_REQUESTS = Counter(
    "ecgregen_rpc_requests_total",
    "gRPC requests handled, by method and status code.",
    ["method", "code"],
    registry=REGISTRY,
)
RPC_IN_FLIGHT = Gauge(
    "ecgregen_rpc_in_flight", "gRPC calls being handled now (streams included), by method: what autoscaling follows.",
    ["method"], registry=REGISTRY,
)
RPC_LATENCY = Histogram(
    "ecgregen_rpc_duration_seconds",
    "Time to handle a gRPC request, by method.",
    ["method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
STAGE_LATENCY = Histogram(
    "ecgregen_stage_duration_seconds",
    "Time spent in one pipeline stage (preprocess, encode, measure, search, diagnose, answer, llm, upsert).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RECORDS_WRITTEN = Counter(
    "ecgregen_records_written_total",
    "Corpus writes by outcome (inserted, updated, rejected, deleted).",
    ["outcome"],
    registry=REGISTRY,
)
CORPUS_POINTS = Gauge("ecgregen_corpus_points", "Records in the corpus.", registry=REGISTRY)
CORPUS_UNINDEXED = Gauge(
    "ecgregen_corpus_unindexed_points",
    "Records not yet in the HNSW index (searched exhaustively until the optimizer indexes them).",
    registry=REGISTRY,
)
DEPENDENCY_ERRORS = Counter(
    "ecgregen_dependency_errors_total", "Failed calls to a dependency (qdrant, triton, llm).", ["dependency"],
    registry=REGISTRY,
)
LLM_CALLS = Counter(
    "ecgregen_llm_requests_total",
    "Attempts to call the LLM endpoint by outcome (ok, timeout, connection, rate_limited, server_error, rejected, "
    "busy, circuit_open).",
    ["outcome"],
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "ecgregen_llm_tokens_total", "Tokens sent to (prompt) and received from (completion) the LLM.", ["direction"],
    registry=REGISTRY,
)
LLM_FALLBACKS = Counter(
    "ecgregen_llm_fallbacks_total",
    "LLM answers replaced by the retrieval-only answer, by reason (endpoint failure or unusable reply).",
    ["reason"],
    registry=REGISTRY,
)
LLM_BREAKER_OPEN = Gauge(
    "ecgregen_llm_circuit_open", "1 while the LLM circuit breaker is open (endpoint not called).", registry=REGISTRY
)
DEPENDENCY_UP = Gauge(
    "ecgregen_dependency_up", "1 if the last call to the dependency succeeded, 0 if it failed.", ["dependency"],
    registry=REGISTRY,
)
ENCODER_FALLBACKS = Counter(
    "ecgregen_encoder_fallbacks_total", "Encodings done in-process because Triton was unavailable.", registry=REGISTRY
)
STREAMS_ACTIVE = Gauge("ecgregen_streams_active", "StreamECG streams open now.", registry=REGISTRY)
STREAM_PENDING = Gauge(
    "ecgregen_stream_pending_windows",
    "Stream windows waiting for the encoder, all streams together (each stream holds at most 2).",
    registry=REGISTRY,
)
STREAM_WINDOWS = Counter(
    "ecgregen_stream_windows_total",
    "Stream windows by outcome: answered, dropped_gap, dropped_unusable; refused_stream counts refused streams.",
    ["outcome"],
    registry=REGISTRY,
)
DIAGNOSED = Counter(
    "ecgregen_diagnosed_total", "ECGs given predicted diagnoses (every report, search, answer and stream window).",
    registry=REGISTRY,
)
DIAGNOSES_PRESENT = Counter(
    "ecgregen_diagnoses_present_total",
    "Diagnoses decided present, by SCP code (a code outside PTB-XL's 71 statements counts as 'other'): "
    "rate(...{code=\"AFIB\"}) / rate(ecgregen_diagnosed_total) is how often atrial fibrillation is flagged.",
    ["code"],
    registry=REGISTRY,
)
CALIBRATION_STATE = Gauge(
    "ecgregen_diagnosis_calibration",
    "1 for the diagnosis calibration's state: calibrated, stale (the corpus changed a lot since), or uncalibrated.",
    ["state"],
    registry=REGISTRY,
)
# Rate buckets at the clinical cut-offs (bradycardia < 60, tachycardia > 100, 150 for flutter with 2:1 block),
# 10 bpm apart where most ECGs fall, from an escape rhythm (20-40) to the fastest a cart reports (250).
HEART_RATE_BUCKETS = (20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 150, 180, 210, 250)

MEASURED_HEART_RATE = Histogram(
    "ecgregen_measured_heart_rate_bpm",
    "Heart rate measured on the ECGs served (every report, search, answer and stream window whose rate could be "
    "measured): a shift in the distribution is a shift in the population or a fault of the measurement stage.",
    buckets=HEART_RATE_BUCKETS,
    registry=REGISTRY,
)
LEAD_QUALITY_FLAGS = Counter(
    "ecgregen_lead_quality_flags_total",
    "Signal quality flags raised on measured ECGs, by lead and flag (flat, saturated, lead_off, baseline_drift, "
    "static_noise, burst_noise): one lead rising is a site's electrode or cable.",
    ["lead", "flag"],
    registry=REGISTRY,
)
MEASUREMENT_MISSING = Counter(
    "ecgregen_measurement_missing_total",
    "Measured ECGs on which a value could not be measured, by field (e.g. pr_interval_ms); the reasons, free "
    "text, are in the responses, not in labels.",
    ["field"],
    registry=REGISTRY,
)
MEASURED_RHYTHM = Counter(
    "ecgregen_measured_rhythm_total",
    "Measured ECGs by the rhythm read from rate, RR regularity and P waves (sums to the ECGs measured).",
    ["rhythm"],
    registry=REGISTRY,
)
MEASUREMENT_FAILURES = Counter(
    "ecgregen_measurement_failures_total",
    "ECGs whose measurement stage raised (a bug on an unusual signal; the call still succeeds, without "
    "measurements): rate(...) / rate(ecgregen_stage_duration_seconds_count{stage=\"measure\"}) is the share.",
    registry=REGISTRY,
)
REPORT_UNTRANSLATED_WORDS = Counter(
    "ecgregen_report_untranslated_words_total",
    "Words of German or Swedish corpus reports the glossary does not know, kept as written in the English text, by "
    "when they were met: indexed (records written) or served (neighbour reports served in English). A rise is a "
    "gap in the phrase table; the words themselves are in each response's untranslated_words.",
    ["when"],
    registry=REGISTRY,
)
for _when in ("indexed", "served"):  # both series from the start, so a rate reads 0 rather than no data
    REPORT_UNTRANSLATED_WORDS.labels(_when)
EVENT_LOOP_LAG = Histogram(
    "ecgregen_event_loop_lag_seconds",
    "How late the server's event loop woke from a 50 ms sleep: time in which it served nothing (health checks "
    "included), because a call held the GIL or blocked the loop.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BUILD_INFO = Info("ecgregen_build", "Version and encoder of this server.", registry=REGISTRY)


@contextmanager
def stage_timer(stage: str, into: dict[str, float] | None = None) -> Iterator[None]:
    """Observe the block's wall time in the stage histogram (and record it in `into`, in seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        record_stage(stage, time.perf_counter() - start, into)


def record_stage(stage: str, elapsed: float, into: dict[str, float] | None = None) -> None:
    """Observe a stage's time measured elsewhere (e.g. in a measurement worker process), as :func:`stage_timer`."""
    STAGE_LATENCY.labels(stage).observe(elapsed)
    if into is not None:
        into[stage] = into.get(stage, 0.0) + elapsed


def observe_corpus(stats: StoreStats) -> None:
    """Corpus gauges from a store's stats (points, and how many wait for indexing)."""
    CORPUS_POINTS.set(stats.points)
    CORPUS_UNINDEXED.set(max(0, stats.points - stats.indexed_vectors))


def observe_diagnoses(diagnoses: Sequence[Diagnosis]) -> None:
    from ecgregen.diagnoses import known_code

    DIAGNOSED.inc()
    for d in diagnoses:
        if d.present:
            DIAGNOSES_PRESENT.labels(d.code if known_code(d.code) else "other").inc()


@cache
def _create_measurement_series() -> None:
    """Every series of the measurement counters' closed label sets at 0, so a rate or a ratio of a flag, a missing
    field or a rhythm that has not happened yet reads 0 rather than no data (once per process)."""
    from ecgregen.ecg import STANDARD_LEADS
    from ecgregen.measure.types import VALUE_FIELDS, QualityFlag, Rhythm

    for lead in STANDARD_LEADS:
        for flag in QualityFlag:
            LEAD_QUALITY_FLAGS.labels(lead, flag.value)
    for name in VALUE_FIELDS:
        MEASUREMENT_MISSING.labels(name)
    for rhythm in Rhythm:
        MEASURED_RHYTHM.labels(rhythm.value)


def observe_measurements(m: Measurements) -> None:
    """Count one measured ECG: its rate, quality flags, the values it lacks (by field) and its rhythm."""
    _create_measurement_series()
    if m.heart_rate_bpm is not None:
        MEASURED_HEART_RATE.observe(m.heart_rate_bpm)
    for lead, flags in m.lead_quality.items():
        for flag in flags:
            LEAD_QUALITY_FLAGS.labels(lead, str(flag)).inc()
    for name in m.missing:
        MEASUREMENT_MISSING.labels(name).inc()
    MEASURED_RHYTHM.labels(str(m.rhythm)).inc()


def observe_calibration(*, calibrated: bool, stale: bool) -> None:
    state = "stale" if stale else "calibrated" if calibrated else "uncalibrated"
    for name in ("calibrated", "stale", "uncalibrated"):
        CALIBRATION_STATE.labels(name).set(1 if name == state else 0)


async def watch_event_loop(interval_s: float = 0.05) -> None:
    """Sleep ``interval_s`` again and again and observe each wake-up's delay in EVENT_LOOP_LAG, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - start - interval_s))


def dependency_failed(name: str) -> None:
    DEPENDENCY_ERRORS.labels(name).inc()
    DEPENDENCY_UP.labels(name).set(0)


def dependency_ok(name: str) -> None:
    DEPENDENCY_UP.labels(name).set(1)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on its own port (loopback by default: metrics are for the operator's scraper)."""
    start_http_server(port, addr=host, registry=REGISTRY)
