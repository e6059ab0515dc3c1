"""Start-up and shutdown of the gRPC server: encoder + store + pipeline, LLM stage, demo seeding, health, reflection,
metrics."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ecgregen import __version__
from ecgregen.calibrate import calibrate_records
from ecgregen.calibrate import save as save_calibration
from ecgregen.errors import EncoderUnavailable
from ecgregen.indexer.build import LocalSink, index_records
from ecgregen.llm.stage import LlmStage
from ecgregen.measure.workers import warm
from ecgregen.metrics import BUILD_INFO, observe_corpus, serve_metrics, watch_event_loop
from ecgregen.pipeline import RetrievalPipeline, open_pipeline
from ecgregen.records import load_ptbxl
from ecgregen.server.security import AuditLog, GuardInterceptor, load_keys, server_credentials
from ecgregen.server.service import EcgReGenService
from ecgregen.settings import DEMO_PTBXL, ServeSettings
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc

log = logging.getLogger("ecgregen.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EcgReGen"].full_name
LLM_HEALTH_NAME = "ecgregen.v1.llm"  # SERVING when the LLM stage is up; NOT_SERVING when retrieval-only
DEMO_FOLDS = range(1, 9)  # fold 9 of the demo corpus stays out of the index: queries to try
DEMO_CALIBRATION_FOLDS = (8,)  # never trained on by the shipped encoder's label stage (folds 1-7)
WORKERS_READY_S = 60.0  # how long a start waits for its measurement workers to warm up


def seed_demo_corpus(pipeline: RetrievalPipeline) -> None:
    """First start on an empty store: index the shipped demo corpus so the service answers at once."""
    records = load_ptbxl(DEMO_PTBXL, DEMO_FOLDS)
    log.info("empty corpus: indexing the %d-record demo corpus (%s)", len(records), DEMO_PTBXL)
    report = index_records(records, LocalSink(pipeline), description="demo index")
    log.info("demo corpus indexed: %s", report.summary())
    validation = [r for r in records if r.fold in DEMO_CALIBRATION_FOLDS]
    calibration = calibrate_records(pipeline, validation, progress=False,
                                    description=f"demo corpus fold {','.join(map(str, DEMO_CALIBRATION_FOLDS))}")
    save_calibration(pipeline, calibration)
    log.info("demo corpus calibrated on %d ECGs (a small set: run `ecgregen calibrate` on your own data)",
             calibration.fitted_on["cases"])


async def serve(settings: ServeSettings) -> None:
    try:
        pipeline = open_pipeline(settings.data_dir, settings.qdrant_url, settings.checkpoint, index=settings.index,
                                 triton_url=settings.triton_url, triton_model=settings.triton_model,
                                 triton_wait_s=settings.triton_wait_s,
                                 triton_fallback_local=settings.triton_fallback_local,
                                 encoder_runtime=settings.encoder_runtime, report_mode=settings.report_mode,
                                 measure_workers=settings.measure_workers, report_language=settings.report_language,
                                 encoder_threads=settings.encoder_threads)
    except EncoderUnavailable as exc:
        raise SystemExit(f"cannot start: {exc}") from None
    warm()  # the compiled filters of preprocessing, before the first call needs them
    if not pipeline.measurer.wait_ready(WORKERS_READY_S):
        log.warning("the measurement workers were not ready within %.0f s, or were given up; serving anyway (calls "
                    "wait for them, or go without measurements)", WORKERS_READY_S)
    llm: LlmStage | None = None
    try:
        keys = load_keys(settings.tokens_file) if settings.tokens_file else None
        server = grpc.aio.server(
            interceptors=[GuardInterceptor(keys, settings.max_in_flight, settings.rate_limit, settings.daily_quota)],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
            ]
        )
        llm = await LlmStage.start(settings.llm, pipeline.answerer, log_dir=settings.data_dir)
        service = EcgReGenService(pipeline, llm, settings.data_dir / "snapshots", max_streams=settings.max_streams,
                                  audit=AuditLog(settings.data_dir / "audit.log"), max_stream_s=settings.max_stream_s,
                                  signal_dirs=settings.signal_dirs)
        pb_grpc.add_EcgReGenServicer_to_server(service, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        address = f"{settings.host}:{settings.port}"
        try:
            if settings.tls:
                server.add_secure_port(address, server_credentials(settings.tls))
            else:
                server.add_insecure_port(address)
        except RuntimeError as exc:
            raise SystemExit(f"cannot listen on {address}: {exc}") from None
        try:
            serve_metrics(settings.metrics_port, settings.metrics_host)
        except OSError as exc:
            raise SystemExit(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}") from None
        # Ports are bound first so a conflict is reported at once, not after indexing the demo corpus.
        if settings.seed_demo and pipeline.store.count() == 0:
            await asyncio.to_thread(seed_demo_corpus, pipeline)
        observe_corpus(pipeline.store.stats())
        BUILD_INFO.info({"version": __version__, "encoder_id": pipeline.encoder.encoder_id})
        lag_watch = asyncio.get_running_loop().create_task(watch_event_loop())
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set(
            LLM_HEALTH_NAME,
            health_pb2.HealthCheckResponse.SERVING if llm.answerer else health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        log.info("security: %s, %s, at most %d calls in flight",
                 "mutual TLS" if settings.tls and settings.tls.client_ca else "TLS" if settings.tls else "plaintext",
                 f"{len(keys)} bearer token(s)" if keys is not None else "no authentication", settings.max_in_flight)
        log.info(
            "LLM: %s", f"{llm.model} at {llm.endpoint}" if llm.answerer else f"none, retrieval-only ({llm.detail})"
        )
        log.info(
            "serving ecgregen.v1 on %s (metrics http://%s:%d/metrics), %d records, encoder %s (%s), store %s",
            address, settings.metrics_host, settings.metrics_port, pipeline.store.count(),
            pipeline.encoder.encoder_id,
            f"Triton {settings.triton_url}" if settings.triton_url else f"in-process, {settings.encoder_runtime}",
            pipeline.store.stats().engine,
        )
        log.info("measurements: %s", f"{settings.measure_workers} worker process(es)" if settings.measure_workers
                 else "in the request threads")
        log.info("diagnoses: %s; report mode %s (serving %s), reports in %s",
                 pipeline.calibration_note or f"calibrated ({pipeline.diagnoser.calibration.fitted_on.get('description')})",
                 settings.report_mode, pipeline.resolved_report_mode(),
                 "English" if settings.report_language == "en" else "the original language")

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: draining calls for up to %.0f s", settings.shutdown_grace_s)
        await health_servicer.enter_graceful_shutdown()
        service.draining.set()  # open streams answer what they hold, say goodbye and end
        await server.stop(settings.shutdown_grace_s)
        lag_watch.cancel()
    finally:
        if llm is not None:
            await llm.close()
        pipeline.measurer.close()
        pipeline.store.close()
        log.info("store closed")
        close_encoder = getattr(pipeline.encoder, "close", None)
        if close_encoder is not None:
            close_encoder()
