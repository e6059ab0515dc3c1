"""`ecgregen evaluate consistency`: does what the service says ever contradict what it measured? (issue 32)

A report, a diagnosis or an answer that says "sinus rhythm" beside a measured atrial fibrillation, or "normal axis"
beside a measured -67 degrees, is a reading of the ECG that the same response refutes. This evaluation counts such
contradictions with the one set of definitions the service itself uses (:mod:`ecgregen.measure.findings`, through
:func:`ecgregen.reports.verify.contradictions` for the English reports), on three kinds of input, each served the way
the server serves it:

* **PTB-XL test folds** (default fold 9) searched against the index folds (1-8) through the server's pipeline with
  the query's own patient left out, the diagnoses calibrated on another fold (``evaluate report``'s auto: the
  highest index fold), as :mod:`ecgregen.evaluate.report` does;
* **hospital files** (the shared formats folder): read by :func:`ecgregen.ecg_files.read_ecg_file` and searched as
  GenerateReport searches an ``ecg_file``;
* **a stream**: test records sent in chunks through a real StreamECG call to a server running in this process on a
  loopback port, judged on what came back over the wire (the window's report, diagnoses, answer, measurements).

Per report mode it gives the share of served reports with a contradicted statement (with examples), and beside it
the mode's English BLEU-4 and micro-F1, so a mode that is consistent because it says little shows it. The
diagnoses' contradicted share is given for the served ones (reconciled with the measurements) and for the
calibration's own decisions (PTB-XL's labelling conventions); the answers' for a fixed set of yes/no questions whose
truth the measurements decide. The rhythm codes' F1 is scored against PTB-XL's labels and against the clinical
definitions (PTB-XL's sinus labels re-read by the measured rate), since the service serves the clinical reading and
PTB-XL's cardiologists sometimes did not (a "sinus rhythm" at 56 bpm).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ecgregen.calibrate import calibrate_records
from ecgregen.diagnoses import CODE_FINDINGS, REPORT_MODES, RHYTHM_CODES, load_statements, present_codes
from ecgregen.ecg import STANDARD_LEADS
from ecgregen.ecg_files import EcgFileError, read_ecg_file
from ecgregen.evaluate.corpus import open_eval_index, retrieval_excluding_patient
from ecgregen.evaluate.report import diagnoses_by_code, in_language, training_folds
from ecgregen.evaluate.text_metrics import corpus_bleu4, scp_f1
from ecgregen.measure.findings import BRADYCARDIA_BPM, TACHYCARDIA_BPM, Finding, check, clinical_rhythm
from ecgregen.measure.types import (
    Measurements,
)
from ecgregen.pipeline import Retrieval, RetrievalPipeline
from ecgregen.records import EcgRecord
from ecgregen.reports import translate
from ecgregen.reports.claims import coverage
from ecgregen.reports.select import serve_report
from ecgregen.reports.verify import contradictions
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import measurements_from_proto

if TYPE_CHECKING:  # the server's side is imported only when a stream is judged
    from ecgregen.v1.ecgregen_pb2_grpc import EcgReGenStub

# A report mode the evaluation adds to the server's: English text from a retrieval (its pool, served diagnoses and
# measurements) - e.g. a refined report, or a test's deliberately contradicting one.
ExtraMode = Callable[[Retrieval], str]

# Questions whose truth the measurements decide, with the finding a "yes" asserts.
QUESTIONS: dict[str, Finding] = {
    "Does this ECG show sinus rhythm?": Finding.SINUS_RHYTHM,
    "Does this ECG show sinus bradycardia?": Finding.SINUS_BRADYCARDIA,
    "Does this ECG show sinus tachycardia?": Finding.SINUS_TACHYCARDIA,
    "Does this ECG show atrial fibrillation?": Finding.ATRIAL_FIBRILLATION,
    "Does this ECG show first degree av block?": Finding.AV_BLOCK_1,
    "Does this ECG show complete right bundle branch block?": Finding.BBB_COMPLETE,
}
OPTIONS = ("yes", "no", "not sure")
ANSWER_K = 3  # neighbours an answer sees: StreamConfig's and GenerateReport's default k
RHYTHM_F1_CODES = ("SR", "SBRAD", "STACH", "AFIB", "SARRH")
SINUS_FAMILY = frozenset({"SR", "SBRAD", "STACH", "SARRH"})
MAX_EXAMPLES = 3
GATED_MODES = ("verified", "statements")  # the service's default and its written report: --max-contradicted
STREAM_CHUNKS = 4  # a record's 10 s sent as this many chunks (a monitor's live pieces)
SOURCES = ("ptbxl", "files", "stream")
SOURCE_NAMES = {"ptbxl": "PTB-XL test folds", "files": "hospital files", "stream": "StreamECG windows"}


@dataclass
class Tally:
    """Items judged, those contradicted, and up to :data:`MAX_EXAMPLES` examples of them."""

    n: int = 0
    contradicted: int = 0
    examples: list[dict] = field(default_factory=list)

    def add(self, record: str, wrong: Sequence[tuple[str, str]], items: int = 1) -> None:
        """`items` judged for `record`; `wrong` the (statement, reason) of those contradicted."""
        self.n += items
        self.contradicted += len(wrong)
        for statement, reason in wrong:
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append({"record": record, "statement": statement, "reason": reason})

    def to_json(self) -> dict:
        return {"n": self.n, "contradicted": self.contradicted,
                "share": self.contradicted / self.n if self.n else None, "examples": self.examples}


@dataclass
class SourceResult:
    """What one kind of input was served, judged: reports per mode, diagnoses, answers, and what scores them."""

    reports: dict[str, Tally]
    diagnoses: dict[str, Tally] = field(default_factory=lambda: {"served": Tally(), "ptbxl_conventions": Tally()})
    answers: Tally = field(default_factory=Tally)
    texts: dict[str, list[str]] = field(default_factory=dict)  # per mode, the served English (scored by BLEU)
    references: list[str] = field(default_factory=list)  # the records' own reports in English ([] for files)
    truth: list[frozenset[str]] = field(default_factory=list)  # PTB-XL's codes ([] for files)
    clinical_truth: list[frozenset[str]] = field(default_factory=list)
    served_codes: list[frozenset[str]] = field(default_factory=list)
    convention_codes: list[frozenset[str]] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # inputs the server would refuse, and why

    def to_json(self) -> dict:
        out: dict = {"skipped": self.skipped, "answers": self.answers.to_json(),
                     "diagnoses": {name: t.to_json() for name, t in self.diagnoses.items() if t.n or name == "served"},
                     "modes": {}}
        scored = bool(self.references) and any(self.truth)
        for mode, tally in self.reports.items():
            row = tally.to_json()
            row["bleu4"] = corpus_bleu4(self.references, self.texts[mode]) if self.references else None
            row["f1_micro"] = scp_f1(self.truth, self.served_codes)["micro"] if scored else None
            out["modes"][mode] = row
        out["n"] = max((t.n for t in self.reports.values()), default=0)
        if scored and self.convention_codes:
            out["rhythm_f1"] = {
                "ptbxl_labels": diagnoses_by_code(self.truth, self.convention_codes, self.served_codes, RHYTHM_F1_CODES),
                "clinical": diagnoses_by_code(self.clinical_truth, self.convention_codes, self.served_codes,
                                              RHYTHM_F1_CODES),
            }
            out["f1_micro_all_codes"] = {  # what reconciling costs or gains over all codes, by either truth
                "ptbxl_labels": {"served": scp_f1(self.truth, self.served_codes)["micro"],
                                 "ptbxl_conventions": scp_f1(self.truth, self.convention_codes)["micro"]},
                "clinical": {"served": scp_f1(self.clinical_truth, self.served_codes)["micro"],
                             "ptbxl_conventions": scp_f1(self.clinical_truth, self.convention_codes)["micro"]}}
            # PTB-XL gives many ECGs no rhythm statement at all (e.g. only ISC_ and LVH): their rhythm is unknown,
            # not "none", so the clinical reading is also scored on the ECGs that have one.
            rhythm_codes = {c for c, s in load_statements().items() if s.kind == "rhythm"}
            stated = [i for i, labels in enumerate(self.truth) if labels & rhythm_codes]
            out["rhythm_f1"]["clinical_rhythm_stated"] = {
                **diagnoses_by_code([self.clinical_truth[i] for i in stated], [self.convention_codes[i] for i in stated],
                                    [self.served_codes[i] for i in stated], RHYTHM_F1_CODES),
                "n": len(stated)}
        return out


def contradicted_diagnoses(present: frozenset[str], m: Measurements | None) -> list[tuple[str, str]]:
    """The present codes the measurements contradict, as (code, reason): a code whose finding
    (:data:`~ecgregen.diagnoses.CODE_FINDINGS`) is contradicted beyond its margin, and - an ECG has one rhythm - every
    present one of SR/SBRAD/STACH/AFIB beside another that is not the measured rhythm's."""
    if m is None:
        return []
    out: dict[str, str] = {}
    for code in sorted(present):
        finding = CODE_FINDINGS.get(code)
        verdict = check(finding, m) if finding is not None else None
        if verdict is not None and verdict.contradicted:
            out[code] = verdict.reason
    rhythms = sorted(present & set(RHYTHM_CODES.values()))
    if len(rhythms) > 1:
        measured = clinical_rhythm(m)
        keep = RHYTHM_CODES.get(measured) if measured is not None else None
        for code in rhythms:
            if code != keep:
                out.setdefault(code, f"one rhythm: {', '.join(rhythms)} all present"
                                     + (f" (measured: {measured.value.replace('_', ' ')})" if measured else ""))
    return list(out.items())


def contradicted_answer(finding: Finding, answer: Sequence[str], m: Measurements | None) -> str | None:
    """Why `answer` to a question about `finding` contradicts the measurements (None when it does not): a "yes" to a
    finding they contradict, or a "no" to the rhythm they state by the clinical definitions."""
    if m is None:
        return None
    said = {a.strip().lower() for a in answer}
    if "yes" in said:
        verdict = check(finding, m)
        if verdict is not None and verdict.contradicted:
            return f"answered yes; {verdict.reason}"
    if "no" in said and finding in RHYTHM_CODES and clinical_rhythm(m) is finding:
        rate = f" at {m.heart_rate_bpm:.0f} bpm" if m.heart_rate_bpm is not None else ""
        return f"answered no; measured rhythm{rate} is {finding.value.replace('_', ' ')}"
    return None


def clinical_codes(labels: frozenset[str], m: Measurements | None) -> frozenset[str]:
    """PTB-XL's labels re-read by the clinical definitions: a sinus-family label (SR/SBRAD/STACH/SARRH) stands for the
    sinus code of the measured rate (< 60 SBRAD, > 100 STACH, else SR) - SARRH itself kept - and AFIB as labelled;
    unchanged where the rate was not measured."""
    rate = m.heart_rate_bpm if m is not None else None
    if rate is None or not labels & SINUS_FAMILY:
        return labels
    sinus = "SBRAD" if rate < BRADYCARDIA_BPM else "STACH" if rate > TACHYCARDIA_BPM else "SR"
    return frozenset((labels - {"SR", "SBRAD", "STACH"}) | {sinus})


def _judge_reports(result: SourceResult, record: str, texts: Mapping[str, str], m: Measurements | None) -> None:
    for mode, text in texts.items():
        result.texts.setdefault(mode, []).append(text)
        result.reports[mode].add(record, [(c.claim.phrase, c.verdict.reason) for c in contradictions(text, m)])


def _judge_answers(result: SourceResult, record: str, answers: Mapping[str, Sequence[str]],
                   m: Measurements | None) -> None:
    for question, answer in answers.items():
        why = contradicted_answer(QUESTIONS[question], answer, m)
        result.answers.add(record, [(f"{question} -> {', '.join(answer)}", why)] if why else [])


def _judge_retrieval(pipeline: RetrievalPipeline, retrieval: Retrieval, result: SourceResult, record: str,
                     extra_modes: Mapping[str, ExtraMode]) -> None:
    """Every mode's report, the diagnoses both ways and the answers of one searched ECG."""
    m = retrieval.measurements
    texts = {}
    for mode in REPORT_MODES:
        served = serve_report(mode, retrieval.pool, retrieval.diagnoses, m, pipeline.diagnoser.k)
        texts[mode] = served.text_en if served is not None else ""
    texts.update({name: make(retrieval) for name, make in extra_modes.items()})
    _judge_reports(result, record, texts, m)
    served_codes = present_codes(retrieval.diagnoses)
    conventions = present_codes(pipeline.diagnoser.diagnose(retrieval.pool, m, agree=False))
    result.served_codes.append(served_codes)
    result.convention_codes.append(conventions)
    for name, codes in (("served", served_codes), ("ptbxl_conventions", conventions)):
        result.diagnoses[name].add(record, contradicted_diagnoses(codes, m), items=len(codes))
    _judge_answers(result, record, {
        q: pipeline.answerer.answer(q, OPTIONS, retrieval.hits, retrieval.diagnoses, measurements=m).answer
        for q in QUESTIONS}, m)


def _new_result(modes: Sequence[str]) -> SourceResult:
    return SourceResult(reports={mode: Tally() for mode in modes})


def judge_ptbxl(pipeline: RetrievalPipeline, queries: Sequence[EcgRecord],
                extra_modes: Mapping[str, ExtraMode]) -> SourceResult:
    """The test records searched as ``evaluate report`` searches them (exact, own patient left out)."""
    result = _new_result([*REPORT_MODES, *extra_modes])
    for record in queries:
        retrieval = retrieval_excluding_patient(pipeline, record, ANSWER_K)
        labels = frozenset(record.scp_codes)
        result.references.append(in_language(record.report, "en"))
        result.truth.append(labels)
        result.clinical_truth.append(clinical_codes(labels, retrieval.measurements))
        _judge_retrieval(pipeline, retrieval, result, f"ptbxl {record.ecg_id}", extra_modes)
    return result


def judge_files(pipeline: RetrievalPipeline, formats_dir: Path, extra_modes: Mapping[str, ExtraMode]) -> SourceResult:
    """Every file of `formats_dir` the server reads, read and searched as a GenerateReport ``ecg_file`` is; a file it
    refuses is listed with the reason."""
    result = _new_result([*REPORT_MODES, *extra_modes])
    for path in sorted(p for p in formats_dir.iterdir() if p.is_file() and p.suffix.lower() != ".md"):
        try:
            ecg = read_ecg_file(path).ecg
        except EcgFileError as exc:
            result.skipped.append({"record": path.name, "reason": str(exc)})
            continue
        _judge_retrieval(pipeline, pipeline.search(ecg, ANSWER_K), result, path.name, extra_modes)
    return result


@contextmanager
def loopback_server(pipeline: RetrievalPipeline) -> Iterator[str]:
    """The gRPC service on `pipeline`, served from this process on a free loopback port (its own event loop in a
    thread; no LLM): yields its address. The server's handlers, batcher and wire format are the real ones."""
    import grpc

    from ecgregen.llm.stage import LlmStage
    from ecgregen.server.service import EcgReGenService
    from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="consistency-server", daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        pb_grpc.add_EcgReGenServicer_to_server(
            EcgReGenService(pipeline, LlmStage(None, "", "disabled (evaluation)", None)), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    async def stop(server: grpc.aio.Server) -> None:
        """Stop serving, then end the service's own tasks (the window batcher) before the loop goes."""
        await server.stop(None)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    server_log = logging.getLogger("ecgregen.server")
    level = server_log.level
    server_log.setLevel(logging.WARNING)  # its "stream opened" line per stream is a server's log, not a result
    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server_log.setLevel(level)
        asyncio.run_coroutine_threadsafe(stop(server), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def _stream_window(stub: EcgReGenStub, record: EcgRecord, question: str) -> pb.WindowResult:
    """One StreamECG call carrying `record` (its 10 s in chunks, the patient excluded as a monitor says it)."""
    ecg = record.load_ecg()
    config = pb.StreamConfig(sampling_rate_hz=ecg.sampling_rate_hz, lead_names=list(STANDARD_LEADS),
                             patient_id=record.patient_id, k=ANSWER_K, question=question,
                             options=list(OPTIONS) if question else [])
    pieces = np.array_split(ecg.signal.astype(np.float32), STREAM_CHUNKS, axis=1)
    sent = [pb.StreamEcgRequest(config=config),
            *(pb.StreamEcgRequest(chunk=pb.StreamChunk(sequence=i, leads=[pb.StreamLead(samples=row.tolist())
                                                                          for row in piece]))
              for i, piece in enumerate(pieces))]
    windows = [r.window_result for r in stub.StreamECG(iter(sent), timeout=300) if r.HasField("window_result")]
    if len(windows) != 1:
        raise RuntimeError(f"ECG {record.ecg_id}: the stream returned {len(windows)} windows, not 1")
    return windows[0]


def judge_stream(pipeline: RetrievalPipeline, records: Sequence[EcgRecord]) -> SourceResult:
    """Each record streamed once per report mode (the server set to that mode, as `serve --report-mode` does) and
    once per question (a stream asks one): reports, served diagnoses and answers as they came over the wire, each
    judged against the measurements of its own window. Extra modes have no server to serve them and are left out."""
    import grpc

    from ecgregen.v1 import ecgregen_pb2_grpc as pb_grpc

    result = _new_result(REPORT_MODES)
    questions = list(QUESTIONS)
    default_mode = pipeline.report_mode
    with loopback_server(pipeline) as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EcgReGenStub(channel)
        try:
            for record in records:
                name = f"stream {record.ecg_id}"
                for i in range(max(len(REPORT_MODES), len(questions))):
                    mode = REPORT_MODES[i] if i < len(REPORT_MODES) else default_mode
                    pipeline.report_mode = mode
                    window = _stream_window(stub, record, questions[i] if i < len(questions) else "")
                    m = measurements_from_proto(window.measurements) if window.HasField("measurements") else None
                    if i < len(REPORT_MODES):
                        _judge_reports(result, name, {mode: window.report}, m)
                    if i < len(questions):
                        _judge_answers(result, name, {questions[i]: list(window.answer)}, m)
                    if i == 0:
                        codes = frozenset(d.code for d in window.diagnoses if d.present)
                        labels = frozenset(record.scp_codes)
                        result.served_codes.append(codes)
                        result.truth.append(labels)
                        result.clinical_truth.append(clinical_codes(labels, m))
                        result.references.append(in_language(record.report, "en"))
                        result.diagnoses["served"].add(name, contradicted_diagnoses(codes, m), items=len(codes))
        finally:
            pipeline.report_mode = default_mode
    return result


def evaluate_consistency(
    index: Sequence[EcgRecord], queries: Sequence[EcgRecord], *, calibration: Sequence[EcgRecord] = (),
    formats_dir: Path | None = None, stream_records: int = 0, extra_modes: Mapping[str, ExtraMode] | None = None,
    data_dir: Path, qdrant_url: str | None = None, checkpoint: Path | None = None, progress: bool = True,
) -> dict:
    """Index (or reuse) `index`, calibrate on `calibration`, and judge the test `queries`, the files of
    `formats_dir` (None: none) and the first `stream_records` queries streamed; returns the JSON-ready result."""
    start = time.perf_counter()
    extra_modes = dict(extra_modes or {})
    clash = set(extra_modes) & set(REPORT_MODES)
    if clash:
        raise ValueError(f"extra report modes {', '.join(sorted(clash))} are the server's own")
    queries = [q for q in queries if q.report.strip()]  # a record without a report cannot be scored
    if not queries:
        raise ValueError("no test record with a report")
    if {r.ecg_id for r in calibration} & {q.ecg_id for q in queries}:
        raise ValueError("test records are also calibration records: calibrate on other folds")
    encoder_folds = training_folds(checkpoint, calibration, queries)
    pipeline = open_eval_index(index, data_dir=data_dir, qdrant_url=qdrant_url, checkpoint=checkpoint,
                               progress=progress)
    try:
        fitted = calibrate_records(pipeline, calibration, progress=progress) if calibration else None
        pipeline.use_calibration(fitted)
        sources = {"ptbxl": judge_ptbxl(pipeline, queries, extra_modes)}
        if formats_dir is not None:
            sources["files"] = judge_files(pipeline, formats_dir, extra_modes)
        if stream_records:
            sources["stream"] = judge_stream(pipeline, queries[:stream_records])
        encoder_id = pipeline.encoder.encoder_id
    finally:
        pipeline.measurer.close()
        pipeline.store.close()
    return {
        "n": len(queries), "n_index": len(index), "encoder": encoder_id,
        "calibration": {"records": len(calibration), "folds": sorted({r.fold for r in calibration})} if fitted else None,
        "encoder_training": encoder_folds,
        "served_rhythm_reading": "clinical",
        "extra_modes": sorted(extra_modes),
        "sources": {name: source.to_json() for name, source in sources.items()},
        "wall_time_s": round(time.perf_counter() - start, 1),
    }


def gate(result: dict, max_share: float, modes: Sequence[str] = GATED_MODES) -> list[str]:
    """Why `result` fails ``--max-contradicted``: each source and mode of `modes` whose share of contradicted
    reports exceeds `max_share` (none: it passes)."""
    failures = []
    for source, judged in result["sources"].items():
        for mode in modes:
            row = judged["modes"].get(mode)
            if row and row["share"] is not None and row["share"] > max_share:
                failures.append(f"{SOURCE_NAMES[source]}, {mode}: {row['contradicted']} of {row['n']} reports "
                                f"contradicted ({row['share']:.1%} > {max_share:.1%})")
    return failures


def reader_coverage(reports_csv: Path) -> dict:
    """How much of a PTB-XL-layout database's reports (every report it lists, with or without a signal here) the
    statement reader recognises, read in English through the glossary as served."""
    reports = pd.read_csv(reports_csv, usecols=["report"])["report"].fillna("")
    return coverage(translate(r).text_en for r in reports)
