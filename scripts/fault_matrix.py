"""Measure the fault matrix of issue 19 and write it as a Markdown table:

    .venv/bin/python scripts/fault_matrix.py --out docs/faults.md

Every dependency (embedded store, a Qdrant server through qdrant-client, Triton, the LLM endpoint) is made to fail
in each way that can be produced here while the service is under load (32 GenerateReport clients, 20 live
streams, one writer inserting records by default). The scenarios live in ``tests/fault_matrix.py`` so that
``tests/test_faults.py`` runs the same rows, shorter, in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the scenarios and fault peers are shared with the tests

from ecgregen.encoder_export.local_triton import start_local_triton  # noqa: E402
from ecgregen.host import free_port  # noqa: E402
from ecgregen.records import EcgRecord, load_ptbxl  # noqa: E402
from ecgregen.settings import DEMO_PTBXL  # noqa: E402
from tests.conftest import ECGREGEN, SCRIPTED_LLM_FLAGS  # noqa: E402
from tests.fault_matrix import (  # noqa: E402
    EMBEDDED_NOT_PRODUCED, TRITON_NOT_PRODUCED, Cell, Fault, Phases, RestartableServer, llm_faults, measure_qdrant_peer,
    measure_service, not_produced, table, triton_faults,
)
from tests.fault_peers import KillableLlm  # noqa: E402

FAULTS = ("killed", "hung", "slow", "errors", "garbage")
READING = """How to read it: *calls during the fault* counts the outcomes of GenerateReport calls that overlapped the
fault (gRPC status; `OK (fallback REASON)` is a report served without LLM refinement); the latency is of those calls,
whatever their outcome. *Past deadline* counts calls that ended DEADLINE_EXCEEDED at the client or ran past their
deadline: a dependency wait without a deadline shows here. *Recovered after* is from the dependency's return to the
first clean answer, without touching the service. *Acknowledged / lost*: records the writer's InsertRecords calls
were told were stored, and how many of them the corpus lacks afterwards (by id: each insert is the one record of
a batch the writer names, looked up with ListBatches afterwards). The Qdrant rows are measured at
the store (there is no Qdrant server binary here): clients open `QdrantRemoteStore` (REST, timeout 1 s, 1 retry)
against a fault-injecting HTTP peer standing where the server would be, from 8 threads (32 threads of one Python
process on two cores measured CPU starvation, not the peer); a StoreError is what the service maps to UNAVAILABLE.
The 20 live streams are load only: their outcomes are not in the table. Triton is the real tritonserver bundled
in nvidia-pytriton (CPU, Python backend).
"""
QDRANT_CLIENTS = 8  # threads of this one process: with 32 on two cores the rows measured the GIL, not the peer
TRITON_TIMEOUT_S = 10.0  # the service's per-infer Triton timeout: a hang must outlast it to be seen


def _service_rows(name: str, server: RestartableServer, faults: dict[str, Fault], records: list[EcgRecord],
                  phases: dict[str, Phases], *, refine: bool = False) -> list[Cell]:
    """One measured row per fault, each with its own phases."""
    cells = []
    for fault, (inject, restore) in faults.items():
        print(f"{name}: {fault} ...", flush=True)
        cells.append(asyncio.run(measure_service(Cell(name, fault), server.address, records, inject, restore,
                                                 phases[fault], refine=refine)))
    return cells


def run(phases: Phases, work: Path) -> list[Cell]:
    records = load_ptbxl(DEMO_PTBXL, [9])
    cells: list[Cell] = []
    server = RestartableServer(ECGREGEN, work / "embedded", "--data-dir", str(work / "embedded" / "var"), "--no-llm")

    def restart() -> str:
        began = time.monotonic()
        server.start()
        return (f"the server itself SIGKILLed under load (the engine is in-process); its restart took "
                f"{time.monotonic() - began:.1f} s, recovery counted from there")

    try:
        print("embedded store: killed (the server itself, SIGKILL mid-insert) ...", flush=True)
        cells.append(asyncio.run(measure_service(Cell("embedded store", "killed"), server.address, records,
                                                 server.kill, restart, phases)))
    finally:
        server.stop()
    cells += [not_produced("embedded store", f, why) for f, why in EMBEDDED_NOT_PRODUCED.items()]

    store_clients = replace(phases, clients=min(phases.clients, QDRANT_CLIENTS))
    for fault in FAULTS:
        print(f"Qdrant server: {fault} ...", flush=True)
        cells.append(measure_qdrant_peer(fault, store_clients))

    repository = work / "export" / "model_repository"
    subprocess.run([*ECGREGEN, "export", "--out", str(repository)], check=True, capture_output=True)
    triton = start_local_triton(repository.with_name("model_repository_python"), work / "triton",
                                grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server = RestartableServer(ECGREGEN, work / "triton-serve", "--data-dir", str(work / "triton-serve" / "var"),
                               "--no-llm", "--triton-url", triton.grpc_url)
    try:
        hung = replace(phases, fault_s=max(phases.fault_s, TRITON_TIMEOUT_S + 5))
        cells += _service_rows("Triton", server, triton_faults(triton), records,
                               {f: hung if f == "hung" else phases for f in FAULTS})
        cells += [not_produced("Triton", f, why) for f, why in TRITON_NOT_PRODUCED.items()]
    finally:
        server.stop()
        triton.stop()

    with KillableLlm() as llm:
        server = RestartableServer(ECGREGEN, work / "llm", "--data-dir", str(work / "llm" / "var"), "--llm-base-url",
                                   llm.base_url, "--llm-model", "scripted", *SCRIPTED_LLM_FLAGS)
        try:
            cells += _service_rows("LLM (refine=true)", server, llm_faults(llm), records, dict.fromkeys(FAULTS, phases),
                                   refine=True)
        finally:
            server.stop()
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "faults.md")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--fault-s", type=float, default=10.0)
    parser.add_argument("--recover-s", type=float, default=30.0)
    parser.add_argument("--deadline-s", type=float, default=30.0, help="each client call's gRPC deadline")
    args = parser.parse_args()
    phases = Phases(clients=args.clients, streams=args.streams, fault_s=args.fault_s, recover_s=args.recover_s,
                    deadline_s=args.deadline_s)
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        work = Path(tmp)
        for part in ("embedded", "triton", "triton-serve", "llm"):
            (work / part).mkdir()
        cells = run(phases, work)
    command = " ".join(["python", "scripts/fault_matrix.py", *sys.argv[1:]])
    args.out.write_text(
        f"# Fault matrix (issue 19)\n\nMeasured {datetime.date.today()} with `{command}`: {phases.clients} "
        f"GenerateReport clients, {phases.streams} live streams and one writer; each fault lasts {phases.fault_s:g} s "
        f"(a Triton hang {max(phases.fault_s, TRITON_TIMEOUT_S + 5):g} s); client deadline {phases.deadline_s:g} s."
        f"\n\n{table(cells)}\n\n{READING}"
    )
    print(table(cells))


if __name__ == "__main__":
    main()
