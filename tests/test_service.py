"""The gRPC service end to end: real servers (both Qdrant engines), real PTB-XL records, generated stubs."""

from __future__ import annotations

import math
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ecgregen.answer import DEFAULT_SETTINGS
from ecgregen.encoders.checkpoint import load_encoder
from ecgregen.records import EcgRecord
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto
from tests.conftest import ServerProcess
from tests.test_security import keyed_pseudonym


def record_proto(record: EcgRecord, *, ecg_id: str | None = None, source: str = "test") -> pb.Record:
    return pb.Record(
        ecg_id=ecg_id or record.ecg_id, patient_id=record.patient_id, report=record.report,
        scp_codes=record.scp_codes, source=source, ecg=ecg_to_proto(record.load_ecg()),
    )


def insert(server: ServerProcess, records: list[pb.Record]) -> pb.InsertRecordsResponse:
    return server.stub().InsertRecords(iter([pb.InsertRecordsRequest(record=r) for r in records]), timeout=60)


def points(server: ServerProcess) -> int:
    return server.stub().GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10).points


def check_neighbours(response: pb.GenerateReportResponse, k: int) -> None:
    """k neighbours best first; the paper's mode (asked for) serves the closest one's report; diagnoses as served."""
    assert len(response.neighbours) == k
    scores = [n.score for n in response.neighbours]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0001 <= s <= 1.0001 for s in scores)
    assert response.report_mode == "top1" and response.report == response.neighbours[0].report_en
    assert response.report_ecg_id == response.neighbours[0].ecg_id
    check_diagnoses(response.diagnoses)
    for n in response.neighbours:
        assert n.ecg_id and n.report and n.source == "ptbxl" and n.inserted_at
        assert n.scp_codes and all(0 <= v <= 100 for v in n.scp_codes.values())


def check_diagnoses(diagnoses: list[pb.Diagnosis]) -> None:
    """Probabilities in [0, 1], most probable first, present exactly when at or above the threshold unless a
    measurement decided it."""
    assert diagnoses
    probabilities = [d.probability for d in diagnoses]
    assert probabilities == sorted(probabilities, reverse=True)
    for d in diagnoses:
        assert 0.0 <= d.probability <= 1.0 and 0.0 < d.threshold <= 1.0
        # Where a measurement decided the statement (one reading of the ECG), it says which; else the probability.
        assert d.decided_by or d.present == (d.probability >= d.threshold - 1e-6), d
        assert d.code and d.description


def report_request(record: EcgRecord, **fields: object) -> pb.GenerateReportRequest:
    return pb.GenerateReportRequest(ecg=ecg_to_proto(record.load_ecg()), **fields)


def test_health_serving_and_reflection(edge_server: ServerProcess) -> None:
    with grpc.insecure_channel(edge_server.address) as channel:
        for service in ("", "ecgregen.v1.EcgReGen"):
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for s in next(stream).list_services_response.service}
    assert "ecgregen.v1.EcgReGen" in names and "grpc.health.v1.Health" in names


def test_demo_corpus_is_indexed_on_first_start(demo_server: ServerProcess) -> None:
    stats = demo_server.stub().GetCorpusStats(pb.GetCorpusStatsRequest(), timeout=10)
    assert stats.points >= 270  # the 270 fold 1-8 demo records (tests may have added some)
    assert (stats.dim, stats.encoder_id) == (256, load_encoder(None).encoder_id)  # the served default encoder
    assert "demo index" in demo_server.log()


def test_report_on_demo_queries(demo_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    stub = demo_server.stub()
    for record in demo_queries[:5]:
        response = stub.GenerateReport(report_request(record, k=3, report_mode="top1"), timeout=30)
        check_neighbours(response, 3)
        assert response.latency.total_ms > 0 and response.latency.encode_ms > 0


def test_report_on_shared_ptbxl_fold9(ptbxl_server: ServerProcess, ptbxl_queries: list[EcgRecord]) -> None:
    stub = ptbxl_server.stub()
    assert points(ptbxl_server) > 1500  # folds 1-8 of the shared subset (1,773 records)
    for record in ptbxl_queries[:10]:
        response = stub.GenerateReport(report_request(record, k=5, report_mode="top1"), timeout=30)
        check_neighbours(response, 5)
    # Indexed with `ecgregen index`, never calibrated: served as raw votes, and every answer says so.
    assert any("not calibrated" in w for w in response.warnings)
    calibration = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).calibration
    assert not calibration.calibrated and "ecgregen calibrate" in calibration.detail
    assert {d.threshold for d in response.diagnoses} == {0.5}


def test_statements_reports_of_all_fold9_records_rest_on_the_served_diagnoses_and_measurements(
        ptbxl_server: ServerProcess, ptbxl_queries: list[EcgRecord]) -> None:
    """report_mode statements on every fold-9 record: each sentence's codes are present diagnoses (at their served
    probability) and its quoted values are the served measurements; every present code is stated or withheld with
    a reason; nothing stated contradicts a measurement (a rate-defined rhythm against the measured rate, a
    fascicular block against the measured axis); "normal ECG" only with NORM and no abnormal statement."""
    stub = ptbxl_server.stub()
    closings = set()
    for record in ptbxl_queries:
        r = stub.GenerateReport(report_request(record, report_mode="statements"), timeout=60)
        assert r.report_mode == "statements" and not r.report_ecg_id and r.statements
        present = {d.code: d.probability for d in r.diagnoses if d.present}
        m = r.measurements
        stated: set[str] = set()
        for s in r.statements:
            assert s.text and s.text[:1].upper() + s.text[1:] in r.report
            for code, probability in s.codes.items():
                assert code in present and math.isclose(probability, present[code], abs_tol=1e-3), (record.ecg_id, s)
            stated |= set(s.codes)
            for name, value in s.measured.items():
                if name.startswith("premature_"):
                    origin = name.removeprefix("premature_")
                    assert value == sum(b.origin == origin for b in m.premature_beats)
                else:
                    assert m.HasField(name) and math.isclose(value, getattr(m, name), abs_tol=0.05), (name, s)
        assert set(r.withheld_statements) <= set(present) and all(r.withheld_statements.values())
        assert (stated | set(r.withheld_statements)) >= set(present) - {"NORM"}, record.ecg_id
        assert not stated & set(r.withheld_statements)
        rate = m.heart_rate_bpm if m.HasField("heart_rate_bpm") else None
        if rate is not None:
            assert "SBRAD" not in stated or rate < 60, (record.ecg_id, rate)
            assert "STACH" not in stated or rate > 90, (record.ecg_id, rate)
        closing = r.statements[-1].text
        closings.add(closing)
        if closing == "normal ECG":
            assert "NORM" in present and set(present) <= {"NORM", "SR"}
        if closing == "abnormal ECG":
            assert set(present) - {"NORM", "SR"}
    assert "normal ECG" in closings and "abnormal ECG" in closings  # fold 9 holds both


def test_demo_corpus_is_calibrated_on_first_start(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    """The demo corpus is calibrated on its fold 8 when it is indexed; the calibration is served and described."""
    info = edge_server.stub().GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert info.calibration.calibrated and info.calibration.fitted_on == "demo corpus fold 8"
    assert info.calibration.cases == 32 and info.calibration.corpus_points >= 270 and info.calibration.k > 0
    assert info.report_mode == "verified"  # the default: a report that never contradicts the measurements
    assert info.calibration.report_mode in ("top1", "consensus", "statements", "verified")
    response = edge_server.stub().GenerateReport(report_request(demo_queries[2], report_mode="auto"), timeout=30)
    assert response.report_mode == info.calibration.report_mode  # auto serves the calibration's choice
    assert not any("calibrat" in w for w in response.warnings)
    check_diagnoses(response.diagnoses)


def test_report_modes(demo_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    """A known answer: ten copies of a query ECG are inserted - the exact copy labelled IMI, nine copies with a
    little noise labelled NORM - so they are its ten nearest neighbours and the diagnoses say NORM, not IMI. top1
    serves the exact copy's report (the closest); consensus the closest NORM copy's (the neighbour agreeing with the
    present diagnoses; among equals, the closer). An unknown mode is INVALID_ARGUMENT."""
    import dataclasses

    stub = demo_server.stub()
    query = next(q for q in demo_queries if q.ecg_id == "343")  # a sinus rhythm: nothing measured speaks against NORM
    ecg = query.load_ecg()
    rng = np.random.default_rng(0)
    scale = float(np.std(ecg.signal))
    copies = [pb.Record(ecg_id=f"modes-{i}", patient_id=f"modes-p{i}", report=f"copy {i} report",
                        scp_codes={"IMI": 100.0} if i == 0 else {"NORM": 100.0}, source="modes-test",
                        ecg=ecg_to_proto(dataclasses.replace(ecg, signal=(
                            ecg.signal + (0.02 * i * scale * rng.standard_normal(ecg.signal.shape))).astype(
                                np.float32)))) for i in range(10)]
    assert insert(demo_server, copies).inserted == 10
    try:
        request = report_request(query, k=10)
        top1 = stub.GenerateReport(pb.GenerateReportRequest(ecg=request.ecg, k=10, report_mode="top1"), timeout=30)
        consensus = stub.GenerateReport(pb.GenerateReportRequest(ecg=request.ecg, k=10, report_mode="consensus"),
                                        timeout=30)
        ids = [n.ecg_id for n in consensus.neighbours]
        assert set(ids) == {f"modes-{i}" for i in range(10)} and ids[0] == "modes-0"  # the setting holds
        present = {d.code for d in consensus.diagnoses if d.present}
        assert "NORM" in present and "IMI" not in present, present
        assert (top1.report_mode, top1.report_ecg_id, top1.report) == ("top1", "modes-0", "copy 0 report")
        closest_norm = ids[1]  # the neighbours come closest first
        assert (consensus.report_mode, consensus.report_ecg_id) == ("consensus", closest_norm)
        assert consensus.report == f"copy {closest_norm.removeprefix('modes-')} report"
    finally:
        stub.DeleteRecords(pb.DeleteRecordsRequest(
            keys=[pb.RecordKey(source="modes-test", ecg_id=f"modes-{i}") for i in range(10)]), timeout=30)
    with pytest.raises(grpc.RpcError) as error:
        stub.GenerateReport(report_request(demo_queries[0], report_mode="best"), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown report mode 'best'" in error.value.details()


def test_search_and_answers_carry_diagnoses(demo_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    stub = demo_server.stub()
    ecg = ecg_to_proto(demo_queries[3].load_ecg())
    report = stub.GenerateReport(pb.GenerateReportRequest(ecg=ecg), timeout=30)
    search = stub.Search(pb.SearchRequest(ecg=ecg, k=2), timeout=30)
    answer = stub.AnswerQuestion(pb.AnswerQuestionRequest(ecg=ecg, question="Is this a normal ECG?"), timeout=30)
    for diagnoses in (search.diagnoses, answer.diagnoses):
        check_diagnoses(diagnoses)
        # The diagnoses come from the calibration's neighbourhood, whatever k the caller asked for.
        assert [(d.code, d.probability, d.present) for d in diagnoses] == [
            (d.code, d.probability, d.present) for d in report.diagnoses]
    assert len(search.neighbours) == 2 and search.latency.diagnose_ms > 0


def test_indexed_record_finds_itself_and_patient_filter_excludes_it(ptbxl_server: ServerProcess) -> None:
    from ecgregen.records import load_ptbxl
    from tests.conftest import SHARED_PTBXL

    record = load_ptbxl(SHARED_PTBXL, [3])[7]
    stub = ptbxl_server.stub()
    request = pb.SearchRequest(ecg=ecg_to_proto(record.load_ecg()), k=5)
    top = stub.Search(request, timeout=30).neighbours[0]
    shown = keyed_pseudonym(ptbxl_server.log_path.parent / "var", record.patient_id)  # no admin token: a pseudonym
    assert (top.ecg_id, top.patient_id) == (record.ecg_id, shown) and top.score > 0.999
    request.filter.exclude_patient_id = record.patient_id  # the real id, matched on the server
    assert all(n.patient_id != shown for n in stub.Search(request, timeout=30).neighbours)


def test_insert_search_reinsert_delete(demo_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    stub = demo_server.stub()
    record = demo_queries[0]
    before = points(demo_server)

    first = insert(demo_server, [record_proto(record, ecg_id="ins-1")])
    assert (first.inserted, first.updated, first.rejected) == (1, 0, 0)
    assert points(demo_server) == before + 1

    search = pb.SearchRequest(ecg=ecg_to_proto(record.load_ecg()), k=3)
    top = stub.Search(search, timeout=30).neighbours[0]
    assert (top.ecg_id, top.source) == ("ins-1", "test") and top.score > 0.999

    changed = record_proto(record, ecg_id="ins-1")
    changed.report = "updated report text"
    again = insert(demo_server, [changed])
    assert (again.inserted, again.updated) == (0, 1)
    assert points(demo_server) == before + 1
    assert stub.Search(search, timeout=30).neighbours[0].report == "updated report text"

    search.filter.source = "test"
    assert [n.ecg_id for n in stub.Search(search, timeout=30).neighbours] == ["ins-1"]

    deleted = stub.DeleteRecords(pb.DeleteRecordsRequest(keys=[pb.RecordKey(ecg_id="ins-1", source="test")]), timeout=10)
    assert deleted.deleted == 1
    assert points(demo_server) == before
    assert stub.Search(search, timeout=30).neighbours == []
    again = stub.DeleteRecords(pb.DeleteRecordsRequest(keys=[pb.RecordKey(ecg_id="ins-1", source="test")]), timeout=10)
    assert again.deleted == 0


def test_partially_bad_stream_lands_the_good_records(demo_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    good = record_proto(demo_queries[1], ecg_id="mix-good")
    bad = record_proto(demo_queries[2], ecg_id="mix-bad")
    del bad.ecg.leads[3:]
    before = points(demo_server)
    response = insert(demo_server, [bad, good])
    assert (response.inserted, response.rejected) == (1, 1)
    assert response.rejections[0].index == 0 and response.rejections[0].ecg_id == "mix-bad"
    assert response.rejections[0].reason == "expected 12 leads, got 3"
    assert points(demo_server) == before + 1
    demo_server.stub().DeleteRecords(pb.DeleteRecordsRequest(keys=[pb.RecordKey(ecg_id="mix-good", source="test")]), timeout=10)


def _bad_ecgs(good: pb.Ecg) -> dict[str, tuple[pb.Ecg, str]]:
    """name -> (broken copy of `good`, text the error must contain)."""
    cases: dict[str, tuple[pb.Ecg, str]] = {}

    def variant(name: str, expected: str):  # noqa: ANN202
        ecg = pb.Ecg()
        ecg.CopyFrom(good)
        cases[name] = (ecg, expected)
        return ecg

    del variant("three_leads", "expected 12 leads, got 3").leads[3:]
    nan = variant("nan", "lead V2 has 1 non-finite samples (NaN or infinity)")
    nan.leads[7].samples[10] = math.nan
    short = variant("three_samples", "ECG too short: 3 samples")
    for lead in short.leads:
        del lead.samples[3:]
    variant("unknown_lead", "unknown lead name 'X9'").leads[4].name = "X9"
    variant("absurd_rate", "sampling_rate_hz must be between 50 and 1000 Hz, got 1e+06").sampling_rate_hz = 1e6
    variant("no_leads", "ECG has no leads").ClearField("leads")
    return cases


@pytest.mark.parametrize("case", ["three_leads", "nan", "three_samples", "unknown_lead", "absurd_rate", "no_leads"])
def test_bad_input_is_invalid_argument_and_changes_nothing(
    demo_server: ServerProcess, demo_queries: list[EcgRecord], case: str
) -> None:
    stub = demo_server.stub()
    ecg, expected = _bad_ecgs(ecg_to_proto(demo_queries[3].load_ecg()))[case]
    before = points(demo_server)
    with pytest.raises(grpc.RpcError) as report_error:
        stub.GenerateReport(pb.GenerateReportRequest(ecg=ecg, k=3), timeout=30)
    assert report_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in report_error.value.details()

    record = pb.Record(ecg_id="bad-1", source="test", report="x", ecg=ecg)
    with pytest.raises(grpc.RpcError) as insert_error:
        insert(demo_server, [record])
    assert insert_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in insert_error.value.details() and "ecg_id 'bad-1'" in insert_error.value.details()
    assert points(demo_server) == before


def test_empty_insert_stream_is_invalid_argument(demo_server: ServerProcess) -> None:
    before = points(demo_server)
    with pytest.raises(grpc.RpcError) as error:
        insert(demo_server, [])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "empty stream: no records to insert"
    assert points(demo_server) == before


def test_digital_samples_with_gain_equal_physical(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    """int16 + gain/baseline (WFDB style) is decoded to the same ECG as float samples."""
    ecg = demo_queries[4].load_ecg()
    physical = ecg_to_proto(ecg)
    digital = pb.Ecg(sampling_rate_hz=ecg.sampling_rate_hz)
    for lead, row in zip(physical.leads, ecg.signal):
        digital.leads.add(name=lead.name, digital=np.round(row * 1000 + 7).astype(int).tolist(), gain=1000, baseline=7)
    stub = edge_server.stub()
    a = stub.Search(pb.SearchRequest(ecg=physical, k=3), timeout=30).neighbours
    b = stub.Search(pb.SearchRequest(ecg=digital, k=3), timeout=30).neighbours
    assert [n.ecg_id for n in a] == [n.ecg_id for n in b]
    assert [n.score for n in a] == pytest.approx([n.score for n in b], abs=1e-4)


def test_k_out_of_range_is_invalid_argument(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    with pytest.raises(grpc.RpcError) as error:
        edge_server.stub().Search(pb.SearchRequest(ecg=ecg_to_proto(demo_queries[0].load_ecg()), k=1000), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "k must be between 1 and 100, got 1000"


def test_answer_question_from_the_diagnoses(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    request = pb.AnswerQuestionRequest(
        ecg=ecg_to_proto(demo_queries[5].load_ecg()), question="Does this ECG show sinus rhythm?",
        options=["yes", "no", "not sure"],
    )
    response = edge_server.stub().AnswerQuestion(request, timeout=30)
    assert response.answerer == "labels" and len(response.neighbours) == 3
    # Sinus rhythm is a rhythm statement: where the measured rhythm decided SR (as here: 56 bpm with P waves, a
    # sinus bradycardia, so not SR), the served decision; else yes when its calibrated probability reaches the
    # binary band edge.
    sr = next((d for d in response.diagnoses if d.code == "SR"), None)
    assert sr is not None and sr.decided_by and not sr.present
    holds = sr.present if sr.decided_by else sr.probability >= DEFAULT_SETTINGS.verify_binary
    assert response.answer == (["yes"] if holds else ["no"])
    assert "sinus rhythm" in response.rationale and "decided by the ECG's measurements" in response.rationale


def test_unknown_answerer_is_invalid_argument(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    request = pb.AnswerQuestionRequest(
        ecg=ecg_to_proto(demo_queries[0].load_ecg()), question="Is this a normal ECG?", answerer="oracle"
    )
    with pytest.raises(grpc.RpcError) as error:
        edge_server.stub().AnswerQuestion(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown answerer 'oracle'" in error.value.details()


def test_metrics_expose_rpc_and_stage_histograms(edge_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    edge_server.stub().GenerateReport(pb.GenerateReportRequest(ecg=ecg_to_proto(demo_queries[6].load_ecg())), timeout=30)
    text = urllib.request.urlopen(edge_server.metrics_url, timeout=5).read().decode()
    assert 'ecgregen_rpc_duration_seconds_bucket{le="0.05",method="GenerateReport"}' in text
    assert 'ecgregen_rpc_requests_total{code="OK",method="GenerateReport"}' in text
    assert 'ecgregen_diagnosis_calibration{state="calibrated"} 1.0' in text
    diagnosed = next(line for line in text.splitlines() if line.startswith("ecgregen_diagnosed_total "))
    assert float(diagnosed.split()[-1]) >= 1
    assert "ecgregen_diagnoses_present_total{code=" in text
    for stage in ("preprocess", "encode", "search", "diagnose", "answer"):
        count = next(line for line in text.splitlines() if line.startswith(f'ecgregen_stage_duration_seconds_count{{stage="{stage}"}}'))
        assert float(count.split()[-1]) >= 1
    assert "ecgregen_corpus_points" in text and "ecgregen_build_info{" in text


def test_sigterm_stops_cleanly_and_store_persists(tmp_path, demo_queries: list[EcgRecord]) -> None:  # noqa: ANN001
    """...and the restarted server, given --report-language original, serves the reports as the carts wrote them
    to a call that does not say otherwise."""
    from tests.conftest import start_server

    first = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm")
    count = points(first)
    assert first.stop() == 0
    assert "store closed" in first.log()
    second = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-llm", "--report-language", "original")
    try:
        assert points(second) == count
        assert "demo index" not in second.log()  # not re-indexed: the store was persisted
        stub = second.stub()
        assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).report_language == "original"
        reply = stub.GenerateReport(report_request(demo_queries[0], report_mode="top1"), timeout=60)
        assert (reply.report, reply.report_language) == (reply.neighbours[0].report, reply.neighbours[0].language)
    finally:
        second.stop()


def test_a_burst_of_heavy_calls_gets_each_report_as_alone_and_health_keeps_answering(
    edge_server: ServerProcess, demo_queries: list[EcgRecord]
) -> None:
    """16 clients keep GenerateReport calls on 300 s ECGs (30 windows each) in flight, two rounds each, while gRPC
    health checks - answered by the server's event loop itself - are asked every 20 ms: every call of the burst gets
    the report its ECG gets alone, and every health check asked during the burst is answered SERVING (none fails).
    How fast those checks are answered - the event loop's share of the claim that blocking work runs off it - is
    measured by `ecgregen bench burst` (the same burst, ecgregen/bench/burst.py; target: under 1.5 s), not here."""
    from ecgregen.bench.burst import run_burst

    result = run_burst(edge_server.address, demo_queries[:16], clients=16, rounds=2, ecg_seconds=300)
    assert result["calls"] == 32 and result["mismatches"] == []
    health = result["health"]
    assert health["during_burst"] >= 1 and health["failed"] == [] and health["not_serving"] == 0, health


def test_empty_corpus_is_failed_precondition(tmp_path, demo_queries: list[EcgRecord]) -> None:  # noqa: ANN001
    from tests.conftest import start_server

    server = start_server(tmp_path, "--data-dir", str(tmp_path / "var"), "--no-demo", "--no-llm")
    try:
        assert points(server) == 0
        with pytest.raises(grpc.RpcError) as error:
            server.stub().GenerateReport(pb.GenerateReportRequest(ecg=ecg_to_proto(demo_queries[0].load_ecg())), timeout=30)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "corpus is empty" in error.value.details()
    finally:
        server.stop()
