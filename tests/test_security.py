"""Who may call: mutual TLS, bearer tokens with roles, load shedding - against real servers; and property-based
checks that request decoding and preprocessing answer any input with a value or a clear EcgInputError."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from ecgregen.ecg import EcgInputError
from ecgregen.preprocess import preprocess
from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.server import security
from ecgregen.server.security import AuditLog
from ecgregen.settings import DEMO_PTBXL
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc
from ecgregen.wire import ecg_from_proto, ecg_to_proto
from tests.conftest import ECGREGEN, ServerProcess, free_port, start_server
from tests.test_cli import run

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServerProcess, Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("secure")
    certs = tmp / "certs"
    run("certs", "--out", str(certs))
    tokens = {}
    for name, roles in (("ward", "read"), ("archive", "read,write"), ("registry", "read,admin")):
        printed = run("token", "add", name, "--roles", roles, "--file", str(tmp / "tokens.json")).stdout
        tokens[name] = printed.strip().splitlines()[-1]
    server = start_tls_server(tmp, certs, tmp / "tokens.json")
    yield server, certs, tokens
    server.stop()


def start_tls_server(tmp: Path, certs: Path, tokens: Path) -> ServerProcess:
    """start_server waits on a plaintext health check, so this one is awaited over mutual TLS."""

    port, metrics = free_port(), free_port()
    log = tmp / "server.log"
    process = subprocess.Popen(
        [*ECGREGEN, "serve", "--port", str(port), "--metrics-port", str(metrics), "--data-dir", str(tmp / "var"),
         "--no-llm", "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
         "--tls-client-ca", str(certs / "ca.pem"), "--tokens", str(tokens)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp,
    )
    server = ServerProcess(process, f"localhost:{port}", f"http://127.0.0.1:{metrics}/metrics", log)
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None and time.monotonic() < deadline, server.log()
        try:
            with mtls_channel(server.address, certs) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return server
        except grpc.RpcError:
            pass
        time.sleep(0.3)


def mtls_channel(address: str, certs: Path, *, client_cert: bool = True) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / "client.key").read_bytes() if client_cert else None,
        (certs / "client.pem").read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(address, credentials)


def report_request(queries: list[EcgRecord]) -> pb.GenerateReportRequest:
    return pb.GenerateReportRequest(ecg=ecg_to_proto(queries[0].load_ecg()), k=3)


def test_mutual_tls_is_required(secured: tuple, demo_queries: list[EcgRecord]) -> None:
    server, certs, _ = secured
    for channel in (grpc.insecure_channel(server.address), mtls_channel(server.address, certs, client_cert=False)):
        with channel, pytest.raises(grpc.RpcError) as error:
            pb_grpc.EcgReGenStub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tokens_and_roles(secured: tuple, demo_queries: list[EcgRecord]) -> None:
    server, certs, tokens = secured
    with mtls_channel(server.address, certs) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        with pytest.raises(grpc.RpcError) as error:
            stub.GenerateReport(report_request(demo_queries), timeout=30)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as error:
            stub.GenerateReport(report_request(demo_queries), timeout=30,
                                metadata=[("authorization", "Bearer not-a-token")])
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED

        ward = [("authorization", f"Bearer {tokens['ward']}")]
        assert stub.GenerateReport(report_request(demo_queries), timeout=30, metadata=ward).report
        with pytest.raises(grpc.RpcError) as error:
            stub.DeleteRecords(pb.DeleteRecordsRequest(keys=[pb.RecordKey(ecg_id="1")]), timeout=30, metadata=ward)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED and "lacks the 'write' role" in error.value.details()
        archive = [("authorization", f"Bearer {tokens['archive']}")]
        assert stub.DeleteRecords(pb.DeleteRecordsRequest(keys=[pb.RecordKey(ecg_id="no-such")]), timeout=30,
                                  metadata=archive).deleted == 0


def test_cli_client_uses_tls_and_token_from_the_environment(secured: tuple) -> None:
    server, certs, tokens = secured
    env = {**os.environ, "ECGREGEN_TLS_CA": str(certs / "ca.pem"), "ECGREGEN_TLS_CERT": str(certs / "client.pem"),
           "ECGREGEN_TLS_KEY": str(certs / "client.key"), "ECGREGEN_TOKEN": tokens["ward"]}
    result = subprocess.run([*ECGREGEN, "client", "stats", "--server", server.address, "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["points"] == 270
    stored = (server.log_path.parent / "tokens.json").read_text()
    assert tokens["ward"] not in stored and tokens["archive"] not in stored  # hashes only
    assert oct((server.log_path.parent / "tokens.json").stat().st_mode & 0o777) == "0o600"


def test_overload_is_shed_with_resource_exhausted(tmp_path: Path, demo_queries: list[EcgRecord]) -> None:
    server = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm", "--max-inflight", "2")
    try:
        request = report_request(demo_queries)

        def call(_: int) -> grpc.StatusCode:
            try:
                server.stub().GenerateReport(request, timeout=60)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        with ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(call, range(96)))
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert call(0) == grpc.StatusCode.OK  # and the server is fine afterwards
    finally:
        server.stop()


ecg_messages = st.builds(
    lambda rate, leads, n, values, units: pb.Ecg(sampling_rate_hz=rate, leads=[
        pb.Lead(name=name, samples=values[: n] if values else [], units=units) for name in leads]),
    rate=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([100.0, 500.0, 49.0, 1001.0])),
    leads=st.one_of(st.just(LEADS), st.lists(st.sampled_from([*LEADS, "X", "", "ii", "V7"]), max_size=14)),
    n=st.integers(0, 3000),
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=50).map(lambda v: v * 60),
    units=st.sampled_from(["", "mV", "uV", "V", "NU", "furlongs"]),
)


# CI runs a few hundred cases; the long fuzz run: ECGREGEN_FUZZ_EXAMPLES=5000 pytest tests/test_security.py -k any_
FUZZ_EXAMPLES = int(os.environ.get("ECGREGEN_FUZZ_EXAMPLES", "0"))


@settings(max_examples=FUZZ_EXAMPLES or 300, deadline=None)
@given(ecg_messages)
def test_any_ecg_message_decodes_or_is_refused_clearly(message: pb.Ecg) -> None:
    try:
        ecg = ecg_from_proto(message)
    except EcgInputError as exc:
        assert str(exc)  # a message naming what is wrong
        return
    try:
        out = preprocess(ecg)
    except EcgInputError:
        return
    assert out.windows.shape[1] == 12 and np.isfinite(out.windows).all() and (out.lengths > 0).all()


def audit_entries(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "audit.log").read_text().splitlines()]


def keyed_pseudonym(data_dir: Path, patient_id: str) -> str:
    """The pseudonym the audit log must show: HMAC-SHA256 of the id under the server's key file, 16 hex digits."""
    return hmac.new((data_dir / "pseudonym.key").read_bytes(), patient_id.encode(), hashlib.sha256).hexdigest()[:16]


def unkeyed_hashes(patient_id: str) -> set[str]:
    """What anyone can compute from a guessed id: every fixed-length hashlib digest of it, bare or prefixed."""
    return {hashlib.new(name, text.encode()).hexdigest() for name in hashlib.algorithms_guaranteed
            if not name.startswith("shake") for text in (patient_id, f"ecgregen:{patient_id}")}


def insert_audited(stub: pb_grpc.EcgReGenStub, record: pb.Record, **call: object) -> str:
    """Insert one record; its audit entry must be on disk when the call returns (fsynced before the reply)."""
    return stub.InsertRecords(iter([pb.InsertRecordsRequest(record=record)]), timeout=60, **call).batch_id


def test_writes_are_audited_with_pseudonymous_patients(secured: tuple, demo_queries: list[EcgRecord]) -> None:
    server, certs, tokens = secured
    data_dir = server.log_path.parent / "var"
    archive = [("authorization", f"Bearer {tokens['archive']}")]
    record = pb.Record(ecg_id="audit-1", patient_id="patient-4711", report="r", source="audit",
                       ecg=ecg_to_proto(demo_queries[0].load_ecg()))
    with mtls_channel(server.address, certs) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        batch = insert_audited(stub, record, metadata=archive)
        insert = next(e for e in audit_entries(data_dir) if e["method"] == "InsertRecords" and e["batch_id"] == batch)
        stub.DeleteRecords(pb.DeleteRecordsRequest(batch_id=batch), timeout=60, metadata=archive)
    entries = audit_entries(data_dir)
    assert insert["caller"] == "archive" and insert["records"][0]["ecg_id"] == "audit-1"
    patient = insert["records"][0]["patient"]
    assert not any(digest.startswith(patient) for digest in unkeyed_hashes("patient-4711"))
    assert patient == keyed_pseudonym(data_dir, "patient-4711")
    assert stat.S_IMODE((data_dir / "pseudonym.key").stat().st_mode) == 0o600
    assert "patient-4711" not in (data_dir / "audit.log").read_text()
    assert any(e["method"] == "DeleteRecords" and e.get("batch_id") == batch and e["deleted"] == 1 for e in entries)
    assert "patient-4711" not in server.log()


def test_neighbours_patient_ids_are_pseudonyms_unless_the_token_is_admin(secured: tuple,
                                                                       demo_queries: list[EcgRecord]) -> None:
    """Neighbours are other people: a read token gets their patient ids only as the audit log's keyed pseudonyms (in
    Search, GenerateReport and `client report`'s output), a read,admin token the real ids; excluding the query's
    own patient by the real id works for both."""
    server, certs, tokens = secured
    data_dir = server.log_path.parent / "var"
    real = {r.ecg_id: r.patient_id for r in load_ptbxl(DEMO_PTBXL)}  # every demo record's real patient id
    ward = [("authorization", f"Bearer {tokens['ward']}")]
    registry = [("authorization", f"Bearer {tokens['registry']}")]
    ecg = ecg_to_proto(demo_queries[0].load_ecg())
    search = pb.SearchRequest(ecg=ecg, k=10, filter=pb.SearchFilter(source="ptbxl"))
    with mtls_channel(server.address, certs) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        as_ward = stub.Search(search, timeout=30, metadata=ward).neighbours
        as_admin = stub.Search(search, timeout=30, metadata=registry).neighbours
        reported = stub.GenerateReport(pb.GenerateReportRequest(ecg=ecg, k=5), timeout=30, metadata=ward).neighbours
        own = real[as_ward[0].ecg_id]  # the query's "own" patient: the top neighbour's
        search.filter.exclude_patient_id = own
        excluded_ward = stub.Search(search, timeout=30, metadata=ward).neighbours
        excluded_admin = stub.Search(search, timeout=30, metadata=registry).neighbours

    assert len(as_ward) == 10 and [n.ecg_id for n in as_admin] == [n.ecg_id for n in as_ward]
    assert [n.patient_id for n in as_admin] == [real[n.ecg_id] for n in as_admin]
    for neighbours in (as_ward, reported):
        assert [n.patient_id for n in neighbours] == [keyed_pseudonym(data_dir, real[n.ecg_id]) for n in neighbours]
    assert not {n.patient_id for n in as_ward} & set(real.values())
    assert excluded_ward and keyed_pseudonym(data_dir, own) not in {n.patient_id for n in excluded_ward}
    assert excluded_admin and own not in {n.patient_id for n in excluded_admin}

    env = {**os.environ, "ECGREGEN_TLS_CA": str(certs / "ca.pem"), "ECGREGEN_TLS_CERT": str(certs / "client.pem"),
           "ECGREGEN_TLS_KEY": str(certs / "client.key"), "ECGREGEN_TOKEN": tokens["ward"]}
    printed = subprocess.run([*ECGREGEN, "client", "report", str(demo_queries[0].path), "--server", server.address,
                              "--k", "5"], env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    shown = [line.split("(patient ")[1].split(")")[0] for line in printed.stdout.splitlines() if "(patient " in line]
    assert shown == [n.patient_id for n in reported]


def test_the_admin_role_comes_with_read(tmp_path: Path) -> None:
    """admin only changes what a read returns: a token of admin alone is refused when made and when loaded."""
    with pytest.raises(ValueError, match="give read,admin"):
        security.add_key(tmp_path / "tokens.json", "registry", {"admin"})
    (tmp_path / "tokens.json").write_text(json.dumps({"keys": [{"name": "r", "sha256": "0" * 64, "roles": ["admin"]}]}))
    with pytest.raises(ValueError, match="give read,admin"):
        security.load_keys(tmp_path / "tokens.json")


def test_pseudonyms_stay_the_same_across_restarts(tmp_path: Path, demo_queries: list[EcgRecord]) -> None:
    data_dir = tmp_path / "var"
    ecg = ecg_to_proto(demo_queries[0].load_ecg())
    pseudonyms = []
    for start in range(2):
        server = start_server(tmp_path, "--data-dir", str(data_dir), "--no-llm", "--no-demo")
        try:
            record = pb.Record(ecg_id=f"restart-{start}", patient_id="17", report="r", source="audit", ecg=ecg)
            batch = insert_audited(server.stub(), record)
        finally:
            server.stop()
        insert = next(e for e in audit_entries(data_dir) if e.get("batch_id") == batch)
        pseudonyms.append(insert["records"][0]["patient"])
    assert not any(digest.startswith(pseudonyms[0]) for digest in unkeyed_hashes("17"))
    assert pseudonyms[0] == pseudonyms[1] == keyed_pseudonym(data_dir, "17")


def test_pseudonym_key_is_made_once_private_and_checked(tmp_path: Path) -> None:
    key_path = tmp_path / "pseudonym.key"
    barrier = threading.Barrier(8)

    def first_start(_: int) -> str:
        barrier.wait()  # all at once: exactly one key may win
        return AuditLog(tmp_path / "audit.log").pseudonym("17")

    with ThreadPoolExecutor(8) as pool:
        assert len(set(pool.map(first_start, range(8)))) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["pseudonym.key"]  # no temporary files left behind
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600 and len(key_path.read_bytes()) == 32
    other = tmp_path / "other"
    assert AuditLog(other / "audit.log").pseudonym("17") != AuditLog(tmp_path / "audit.log").pseudonym("17")

    key_path.chmod(0o640)
    with pytest.raises(ValueError, match="has mode 640: it must be readable by the server's user only"):
        AuditLog(tmp_path / "audit.log")
    key_path.chmod(0o600)
    key_path.write_bytes(b"short")
    with pytest.raises(ValueError, match="holds 5 bytes, not 32"):
        AuditLog(tmp_path / "audit.log")


def test_audit_entries_are_fsynced_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    fsynced_on = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        fsynced_on.append(threading.get_ident())
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)

    async def write_on_the_loop() -> int:
        await audit.write("DeleteRecords", batch_id="b-1", deleted=0)
        assert audit_entries(tmp_path)[-1]["batch_id"] == "b-1"  # durable once the await returns
        return threading.get_ident()

    loop_thread = asyncio.run(write_on_the_loop())
    assert fsynced_on and loop_thread not in fsynced_on


def test_rate_limit_and_message_size(tmp_path: Path, demo_queries: list[EcgRecord]) -> None:
    server = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm", "--rate-limit", "5",
                          "--max-message-mb", "1", "--daily-quota", "30")
    try:
        stub = server.stub()
        codes = []
        for _ in range(20):
            try:
                stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                assert "rate limit of 5 calls/s for 'anonymous' exceeded" in exc.details()
        assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        big = pb.Ecg(sampling_rate_hz=1000, leads=[pb.Lead(name=n, samples=[0.1] * 30_000) for n in LEADS])  # ~1.4 MB
        time.sleep(1.2)  # refill the bucket
        with pytest.raises(grpc.RpcError) as error:
            stub.GenerateReport(pb.GenerateReportRequest(ecg=big), timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Calls refused by the rate limit do not count against the quota; the oversized one was admitted, then
        # refused by gRPC while reading its message.
        used = sum(1 for c in codes if c == grpc.StatusCode.OK) + 1
        for _ in range(30 - used):
            time.sleep(0.25)
            stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10)
        time.sleep(0.25)
        with pytest.raises(grpc.RpcError) as error:
            stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10)
        assert "has used its quota of 30 calls today (UTC)" in error.value.details()
    finally:
        server.stop()


def test_rate_limits_below_one_call_per_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(security.time, "monotonic", lambda: now[0])
    bucket = security._Bucket(0.5)  # one call every 2 s, bursts of one
    assert bucket.take() and not bucket.take()
    now[0] += 1.9
    assert not bucket.take()
    now[0] += 0.1
    assert bucket.take()
    now[0] += 60  # a long pause still buys a single call
    assert bucket.take() and not bucket.take()
    monkeypatch.undo()

    server = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm", "--no-demo", "--rate-limit", "0.5")
    try:
        stub = server.stub()
        assert stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10).points == 0
        with pytest.raises(grpc.RpcError) as error:
            stub.GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit of 0.5 calls/s for 'anonymous' exceeded" in error.value.details()
    finally:
        server.stop()


chunk_events = st.lists(
    st.tuples(
        st.integers(0, 12),  # sequence (duplicates, gaps and steps back all happen)
        st.integers(0, 300),  # samples per lead
        st.integers(11, 13),  # leads sent (the config has 12)
        st.booleans(),  # digital instead of float samples
        st.sampled_from([0.0, float("nan"), float("inf"), 50.0, -0.3]),  # a value to plant
        st.lists(st.sampled_from(["V1", "ii", "X"]), max_size=2),  # leads off
    ),
    max_size=40,
)


@settings(max_examples=FUZZ_EXAMPLES or 200, deadline=None)
@given(chunk_events)
def test_any_chunk_sequence_gives_windows_or_warnings(events: list) -> None:
    from ecgregen.server.streaming import StreamSession, parse_config

    session = StreamSession(parse_config(pb.StreamConfig(sampling_rate_hz=100, lead_names=LEADS, window_s=2), 100))
    rng = np.random.default_rng(0)
    for sequence, n, leads, digital, planted, off in events:
        values = rng.normal(size=(leads, n)).astype(np.float32)
        if n:
            values[0, n // 2] = planted
        lead_msgs = [pb.StreamLead(digital=np.clip(np.nan_to_num(row * 200), -2**31, 2**31 - 1).astype(np.int64).tolist()) if digital
                     else pb.StreamLead(samples=row) for row in values]
        windows, warnings = session.feed(pb.StreamChunk(sequence=sequence, leads=lead_msgs, leads_off=off))
        for window in windows:
            assert window.signal.shape == (12, 200) and np.isfinite(window.signal).all()
        assert all(w.code in {"gap", "duplicate_or_late", "bad_chunk"} and w.message for w in warnings)
