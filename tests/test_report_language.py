"""English beside the original (issue 26): the corpus translate command on a store an older version wrote (both
engines, and as the CLI prints it), the report language over gRPC, and the untranslated-words counter."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import qdrant_edge as qe

from ecgregen.indexer import translate as translate_module
from ecgregen.indexer.translate import translate_corpus
from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.reports import translate
from ecgregen.reports.glossary import load as load_glossary
from ecgregen.settings import DEMO_PTBXL
from ecgregen.store import EdgeStore, PayloadUpdate, StoredRecord, VectorStore, open_qdrant, open_store
from ecgregen.store.payload import TRANSLATION_FIELDS, translation_payload
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ecg_to_proto
from tests.conftest import ECGREGEN, ServerProcess

DIM = 8
UNKNOWN = "quarkwort"  # a word no glossary row knows: kept as written, and counted
UNKNOWN_REPORT = f"sinusrhythmus linkstyp {UNKNOWN}"


def demo_reports() -> list[str]:
    """The demo corpus's indexed reports (German, Swedish and English cart texts) and one with an unknown word."""
    return [r.report for r in load_ptbxl(DEMO_PTBXL, range(1, 9))] + [UNKNOWN_REPORT]


def strip_translations(store: VectorStore) -> None:
    """Make the store look as an older version wrote it: the same records without the translation fields."""
    ids = [r.point_id for r in store.scroll(with_vectors=False)]
    if isinstance(store, EdgeStore):
        shard = store._live_shard()
        shard.update(qe.UpdateOperation.delete_payload(ids, list(TRANSLATION_FIELDS)))
        shard.flush()
    else:
        store._client.delete_payload(store._name, keys=list(TRANSLATION_FIELDS), points=ids, wait=True)


def older_store(store: VectorStore, reports: list[str]) -> dict[str, np.ndarray]:
    """`store` filled with `reports` (random unit vectors) as an older version indexed them; the vectors by id, as
    the engine keeps them."""
    rng = np.random.default_rng(26)
    vectors = rng.normal(size=(len(reports), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [StoredRecord(v, str(i), f"p{i}", report, {"NORM": 100.0}, "ptbxl", "2026-01-01T00:00:00+00:00", "b1")
               for i, (v, report) in enumerate(zip(vectors, reports))]
    store.ensure_collection(DIM, "older-encoder")
    store.upsert(records)
    strip_translations(store)
    return {r.point_id: r.vector for r in store.scroll()}


class Interrupted(Exception):
    """The run stopped (a kill, a lost connection) while writing its second page."""


@pytest.fixture(params=["edge", "client-memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    opened = EdgeStore(tmp_path / "edge") if request.param == "edge" else open_qdrant(":memory:")
    yield opened
    opened.close()


def test_translate_command_on_an_older_store_is_resumable_idempotent_and_counts(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store indexed without translations serves English at once (translated when read) and gets the payload
    fields from translate_corpus: a run cut off after its first page kept that page; the next run translates the
    rest only; a third changes nothing; records translated with an older glossary are translated again. No vector
    changes, and a record whose report changed since it was read keeps its own payload."""
    reports = demo_reports()
    vectors = older_store(store, reports)
    assert all(r.translation is None for r in store.scroll(with_vectors=False))
    top = store.search(next(iter(vectors.values())), 1)[0]
    assert top.translation is None and top.english == translate(top.report)  # served in English all the same

    monkeypatch.setattr(translate_module, "PAGE", 100)
    written = store.update_payloads
    calls = []

    def cut_after_first_page(updates: list[PayloadUpdate]) -> None:
        calls.append(len(updates))
        if len(calls) > 1:
            raise Interrupted
        written(updates)

    monkeypatch.setattr(store, "update_payloads", cut_after_first_page)
    with pytest.raises(Interrupted):
        translate_corpus(store, progress=False)
    monkeypatch.setattr(store, "update_payloads", written)
    assert sum(r.translation is not None for r in store.scroll(with_vectors=False)) == calls[0] == 100

    resumed = translate_corpus(store, progress=False)
    assert (resumed.records, resumed.translated, resumed.retranslated, resumed.current) == (
        len(reports), len(reports) - 100, 0, 100)
    again = translate_corpus(store, progress=False)
    assert (again.translated, again.retranslated, again.current, again.words) == (0, 0, len(reports), 0)
    assert f"{len(reports)} already current" in again.summary()

    records = list(store.scroll())
    assert len(records) == len(reports)
    for record in records:
        assert record.translation == translate(record.report)
        # Payloads only (local mode writes a point's vector back with its payload: within float32 rounding).
        np.testing.assert_allclose(record.vector, vectors[record.point_id], rtol=0, atol=1e-6)
    unknown = next(r for r in records if r.report == UNKNOWN_REPORT)
    assert unknown.translation.untranslated == (UNKNOWN,) and unknown.translation.language == "de"
    assert unknown.translation.text_en.endswith(UNKNOWN)

    stale = {**translation_payload(translate("x")), "glossary_version": "0+older"}
    store.update_payloads([PayloadUpdate(r.point_id, {"report": r.report}, stale) for r in records[:5]])
    refreshed = translate_corpus(store, progress=False)
    assert (refreshed.translated, refreshed.retranslated, refreshed.current) == (0, 5, len(reports) - 5)
    assert all(r.translation == translate(r.report) for r in store.scroll(with_vectors=False))

    # Written again since it was read: the update's report no longer matches, so the record keeps its payload.
    store.update_payloads([PayloadUpdate(unknown.point_id, {"report": "what an older read saw"}, stale)])
    assert next(r for r in store.scroll(with_vectors=False) if r.point_id == unknown.point_id).translation == (
        translate(UNKNOWN_REPORT))
    assert store.count() == len(reports) and sum(b.points for b in store.batches()) == len(reports)


def test_corpus_translate_cli_prints_the_counts(tmp_path: Path) -> None:
    """`ecgregen corpus translate --data-dir` on an older embedded store: every record translated, the unknown
    word listed (a second run's "already current" is the API test's)."""
    reports = demo_reports()
    with open_store(tmp_path / "var") as store:
        older_store(store, reports)
    command = [*ECGREGEN, "corpus", "translate", "--data-dir", str(tmp_path / "var")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    version = load_glossary().version
    missing = sum(len(translate(r).untranslated) for r in reports)
    words = sum(translate(r).words for r in reports)
    assert missing == 1, "the demo corpus's reports are all in the glossary, the added one's word is not"
    assert (f"{len(reports)} records: translated {len(reports)}, re-translated 0 (older glossary), 0 already current; "
            f"glossary {version}; 1 of {words} words not in the glossary") in first, first
    assert f"not in the glossary: {UNKNOWN} (1)" in first


def german_top1(
    server: ServerProcess, queries: list[EcgRecord]
) -> tuple[pb.GenerateReportRequest, pb.GenerateReportResponse]:
    """A fold-9 query whose closest neighbour's report is German, and its top-1 report in English."""
    stub = server.stub()
    for record in queries:
        request = pb.GenerateReportRequest(ecg=ecg_to_proto(record.load_ecg()), k=3, report_mode="top1")
        response = stub.GenerateReport(request, timeout=60)
        if response.neighbours[0].language == "de":
            return request, response
    pytest.fail("no fold-9 query of the demo corpus has a German closest neighbour")


def test_report_language_over_grpc(demo_server: ServerProcess, demo_queries: list[EcgRecord]) -> None:
    """Default (the server's en): the closest neighbour's report in English, with the original and its language
    beside it; "original": as the cart wrote it; a statements report is English either way; anything else is
    INVALID_ARGUMENT naming it. Every neighbour carries both texts."""
    stub = demo_server.stub()
    assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30).report_language == "en"
    request, english = german_top1(demo_server, demo_queries)
    top = english.neighbours[0]
    assert english.report_language == "en" and english.report == top.report_en == translate(top.report).text_en
    assert english.report != top.report and english.retrieved_report == english.report
    assert (english.original_report, english.original_language) == (top.report, "de")
    assert list(english.untranslated_words) == list(translate(top.report).untranslated)
    for n in english.neighbours:
        assert (n.report_en, n.language) == (translate(n.report).text_en, translate(n.report).language)

    request.report_language = "original"
    original = stub.GenerateReport(request, timeout=60)
    assert (original.report, original.report_language) == (top.report, "de")
    assert original.original_report == top.report and not original.untranslated_words
    request.report_language = "en"
    assert stub.GenerateReport(request, timeout=60).report == english.report

    statements = stub.GenerateReport(pb.GenerateReportRequest(
        ecg=request.ecg, k=3, report_mode="statements", report_language="original"), timeout=60)
    assert statements.report_language == "en" and not statements.original_report

    request.report_language = "deutsch"
    with pytest.raises(grpc.RpcError) as refused:
        stub.GenerateReport(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'deutsch'" in refused.value.details() and "report_language" in refused.value.details()


def counter(server: ServerProcess, when: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    match = re.search(rf'^ecgregen_report_untranslated_words_total\{{when="{when}"\}} (\S+)$', text, re.M)
    assert match, f"no {when} series of ecgregen_report_untranslated_words_total"
    return float(match.group(1))


def test_untranslated_words_are_kept_counted_and_listed(edge_server: ServerProcess,
                                                       demo_queries: list[EcgRecord]) -> None:
    """A record whose report has a word the glossary lacks: the word stays as written in the English report, the
    response lists it, and the counter counts it when indexed and when served."""
    stub = edge_server.stub()
    indexed, served = counter(edge_server, "indexed"), counter(edge_server, "served")
    ecg = ecg_to_proto(demo_queries[-1].load_ecg())
    record = pb.Record(ecg_id="lang-1", patient_id="p-lang", report=UNKNOWN_REPORT, scp_codes={"SR": 100.0},
                       source="lang-test", ecg=ecg)
    stub.InsertRecords(iter([pb.InsertRecordsRequest(record=record)]), timeout=60)
    try:
        response = stub.GenerateReport(pb.GenerateReportRequest(
            ecg=ecg, k=1, report_mode="top1", filter=pb.SearchFilter(source="lang-test")), timeout=60)
        assert response.report_ecg_id == "lang-1" and response.report == translate(UNKNOWN_REPORT).text_en
        assert UNKNOWN in response.report and list(response.untranslated_words) == [UNKNOWN]
        assert counter(edge_server, "indexed") - indexed == 1 and counter(edge_server, "served") - served == 1
    finally:
        stub.DeleteRecords(pb.DeleteRecordsRequest(keys=[pb.RecordKey(ecg_id="lang-1", source="lang-test")]),
                           timeout=60)
