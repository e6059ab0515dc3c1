"""The `ecgregen` command line: the top-level parser, its commands in help order, and the errors printed as one line.

Each command group is a module that adds its sub-parsers and sets each one's ``handler``; :func:`main` parses and
calls that handler. Building the parsers imports the stdlib and the settings modules only, and each handler imports
what its work needs when it runs, so ``ecgregen --help`` and ``ecgregen client stats`` start in a fraction of a second
(tests/test_cli_startup.py holds every parser to this).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ecgregen.cli import bench, client, corpus, evaluate, export, pretrain, serve, simulate
from ecgregen.errors import ClientError, EncoderUnavailable, StoreError

DESCRIPTION = """The `ecgregen` command: serve, certs, token, index, calibrate, corpus {stats, batches, rollback, optimize, snapshot,
restore, translate}, export, simulate-monitors, bench [store, load], evaluate {report, qa, measurements}, qa-generate,
pretrain, client {report, ask, insert, delete, stats, info, batches, rollback, snapshot, optimize}.

Flag names are a stable interface (acceptance checks and users' scripts use them).
"""

# In the order `ecgregen --help` lists them.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    serve.add_serve, serve.add_certs, serve.add_token,
    corpus.add_index, corpus.add_calibrate, corpus.add_corpus,
    evaluate.add_evaluate, export.add_export, evaluate.add_qa_generate, pretrain.add_pretrain,
    simulate.add_simulate, bench.add_bench, client.add_client,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecgregen", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpx2"):  # one INFO line per LLM request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.handler(args)
    except (ClientError, StoreError, EncoderUnavailable, FileNotFoundError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(1)
