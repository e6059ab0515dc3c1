"""The command line starts at once: building every parser, and the client calls that send no record, load none of the
heavy libraries (PyTorch, SciPy, Qdrant, OpenAI, pandas), each checked in a fresh interpreter.

What is imported is asserted, not how long it takes (that depends on the machine); README.md has the timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from ecgregen.cli import build_parser
from ecgregen.records import EcgRecord
from tests.conftest import ServerProcess

HEAVY = {"torch", "scipy", "numba", "qdrant_client", "qdrant_edge", "openai", "pandas"}

# Runs `ecgregen` in this interpreter once per argv (JSON) given, then writes the top-level packages it imported.
PROBE = """
import json, sys
from ecgregen.cli import main
out, *argvs = sys.argv[1:]
for argv in argvs:
    try:
        main(json.loads(argv))
    except SystemExit as exc:
        if exc.code:
            raise
with open(out, "w") as f:
    json.dump(sorted({name.split(".")[0] for name in sys.modules}), f)
"""


def imported_by(tmp_path: Path, *argvs: list[str]) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running `ecgregen` with each of `argvs`."""
    out = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", PROBE, str(out), *map(json.dumps, argvs)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return set(json.loads(out.read_text()))


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and sub-command, e.g. ("corpus", "stats"), the top level (()) first."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*path, name))


def test_every_parser_is_built_without_the_heavy_libraries(tmp_path: Path) -> None:
    paths = list(command_paths(build_parser()))
    assert {("serve",), ("corpus", "restore"), ("bench", "load"), ("evaluate", "qa"), ("client", "stats")} <= set(paths)
    assert imported_by(tmp_path, *([*path, "--help"] for path in paths)) & HEAVY == set()


def test_client_stats_and_info_load_grpc_and_nothing_heavy(edge_server: ServerProcess, tmp_path: Path) -> None:
    modules = imported_by(tmp_path, ["client", "stats", "--server", edge_server.address],
                          ["client", "info", "--server", edge_server.address, "--json"])
    assert "grpc" in modules
    assert modules & (HEAVY | {"numpy", "wfdb"}) == set()


def test_client_report_loads_only_the_record_reader(edge_server: ServerProcess, demo_queries: list[EcgRecord],
                                                    tmp_path: Path) -> None:
    modules = imported_by(tmp_path, ["client", "report", str(demo_queries[0].path), "--server", edge_server.address])
    assert "wfdb" in modules  # which brings pandas with it
    assert modules & (HEAVY - {"pandas"}) == set()
