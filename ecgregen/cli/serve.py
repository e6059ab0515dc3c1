"""`ecgregen serve`, and what a secured server needs made first: `certs` (a development CA) and `token add`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ecgregen.cli.flags import (
    add_index_flags,
    add_llm_flags,
    add_runtime_flag,
    add_store_flags,
    index_settings,
    llm_config_from_args,
)
from ecgregen.settings import ServeSettings

if TYPE_CHECKING:
    from ecgregen.server.security import TlsSettings


def add_serve(commands: argparse._SubParsersAction) -> None:
    d = ServeSettings()
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--host", default=d.host)
    serve.add_argument("--port", type=int, default=d.port)
    serve.add_argument("--metrics-port", type=int, default=d.metrics_port)
    serve.add_argument("--metrics-host", default=d.metrics_host, help="metrics bind address (loopback by default)")
    serve.add_argument("--no-demo", action="store_true", help="do not index the demo corpus into an empty store")
    serve.add_argument("--max-streams", type=int, default=d.max_streams, help="concurrent StreamECG streams at most")
    serve.add_argument("--max-inflight", type=int, default=d.max_in_flight,
                       help="calls handled at once; beyond, RESOURCE_EXHAUSTED (load shedding)")
    serve.add_argument("--tls-cert", type=Path, help="server certificate (PEM): serve TLS")
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="CA of client certificates: require mutual TLS")
    serve.add_argument("--tokens", type=Path, help="bearer tokens with roles (ecgregen token add): require them")
    serve.add_argument("--rate-limit", type=float, default=d.rate_limit, help="calls per second per client (0: unlimited)")
    serve.add_argument("--daily-quota", type=int, default=d.daily_quota, help="calls per client per UTC day (0: unlimited)")
    serve.add_argument("--max-message-mb", type=float, default=d.max_message_bytes / (1024 * 1024),
                       help="largest gRPC message accepted")
    serve.add_argument("--triton-fallback-local", action="store_true",
                       help="while Triton is unavailable, encode in-process (the same model: --checkpoint)")
    serve.add_argument("--max-stream-s", type=float, default=d.max_stream_s,
                       help="a stream is ended with a max_duration warning after this long (monitors reconnect)")
    serve.add_argument("--report-mode", default=d.report_mode,
                       choices=["auto", "top1", "consensus", "statements", "verified"],
                       help="whose report is served: the closest neighbour's (top1, the paper's), the one agreeing "
                       "best with the diagnoses (consensus), one written from the ECG's own diagnoses and "
                       "measurements (statements), the top-k report agreeing best with the diagnoses that no "
                       "measurement contradicts, else the best one edited against the measurements (verified), or "
                       "auto: the mode the corpus calibration found best")
    serve.add_argument("--report-language", default=d.report_language, choices=["en", "original"],
                       help="the language reports are served in when a call does not say: en (a neighbour's "
                       "report in English, through the corpus glossary; default) or original (as its cart wrote it: "
                       "German, Swedish or English)")
    serve.add_argument("--signals", type=Path, action="append", default=[], metavar="DIR",
                       help="PTB-XL-layout folder holding the corpus's signals, for the neighbours' evidence pages of "
                       "a printed report (print_format); repeatable; the demo corpus is always looked in")
    serve.add_argument("--measure-workers", type=int, default=d.measure_workers,
                       help="processes measuring the query ECGs while they are encoded (default: one per core beyond "
                       "the first, 1-4); 0 measures in the request threads")
    serve.add_argument("--encoder-threads", type=int, default=d.encoder_threads,
                       help="onnxruntime threads per encoder pass (default 0: one per core; 1 costs a few percent "
                       "less CPU per call and answers fewer calls per second on 2 cores)")
    add_store_flags(serve)
    add_runtime_flag(serve)
    add_index_flags(serve)
    add_llm_flags(serve)
    serve.set_defaults(handler=run_serve)


def add_certs(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser("certs", help="a development CA with server and client certificates (not for production)")
    certs.add_argument("--out", type=Path, required=True)
    certs.add_argument("--host", action="append", default=[], help="server host name(s) (default localhost)")
    certs.set_defaults(handler=run_certs)


def add_token(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser("token", help="bearer tokens: only their hashes are stored")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_add = token_sub.add_parser("add", help="create a token (printed once) and store its hash")
    token_add.add_argument("name")
    token_add.add_argument("--roles", default="read",
                           help="read, write, read,write; add admin (read,admin) for a caller that may see the "
                                "neighbours' real patient ids instead of pseudonyms")
    token_add.add_argument("--file", type=Path, required=True)
    token_add.set_defaults(handler=run_token_add)


def run_serve(args: argparse.Namespace) -> None:
    import asyncio

    from ecgregen.server.app import serve

    settings = ServeSettings(
        host=args.host, port=args.port, metrics_host=args.metrics_host, metrics_port=args.metrics_port,
        data_dir=args.data_dir, qdrant_url=args.qdrant_url, checkpoint=args.checkpoint,
        seed_demo=not args.no_demo, llm=llm_config_from_args(args), index=index_settings(args),
        triton_url=args.triton_url, triton_model=args.triton_model, triton_wait_s=args.triton_wait,
        max_streams=args.max_streams, max_in_flight=args.max_inflight, tls=_tls(args),
        tokens_file=args.tokens, rate_limit=args.rate_limit, daily_quota=args.daily_quota,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024), max_stream_s=args.max_stream_s,
        triton_fallback_local=args.triton_fallback_local, encoder_runtime=args.encoder_runtime,
        report_mode=args.report_mode, measure_workers=args.measure_workers, report_language=args.report_language,
        encoder_threads=args.encoder_threads,
        signal_dirs=(*args.signals, *ServeSettings.signal_dirs),
    )
    asyncio.run(serve(settings))


def _tls(args: argparse.Namespace) -> TlsSettings | None:
    from ecgregen.server.security import TlsSettings

    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    return TlsSettings(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None


def run_certs(args: argparse.Namespace) -> None:
    from ecgregen.server.security import make_dev_certs

    for path in make_dev_certs(args.out, args.host or ["localhost"]):
        print(path)


def run_token_add(args: argparse.Namespace) -> None:
    from ecgregen.server.security import add_key

    token = add_key(args.file, args.name, {r.strip() for r in args.roles.split(",") if r.strip()})
    print(f"token for {args.name} (shown once; {args.file} keeps only its hash):\n{token}")
