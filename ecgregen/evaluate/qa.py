"""Table II: ECG-QA exact match per question type, answered from retrieved neighbours.

For every single-ECG question whose ECG has a signal in the data folder, the ECG is embedded and its top-k
neighbours are retrieved (own patient excluded, so neither the ECG nor its siblings can answer for themselves).
The `labels` answerer then lets each neighbour answer the question from its own PTB-XL metadata - with the same
rules that define ECG-QA's ground truth - and takes the majority (ties: the closer neighbour). Questions whose
template cannot be read from metadata fall back to the SCP-statement vote of :mod:`ecgregen.answer`.

The `llm` answerer is the paper's: the top-k reports and diagnoses go into its zero-shot prompt with the question
and the template's answer options, to whatever OpenAI-compatible endpoint is configured (the local model by
default); replies it cannot use are answered by the label vote and counted under ``answered_from``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ecgregen.answer import LabelVoteAnswerer
from ecgregen.evaluate.corpus import neighbours_excluding_patient, open_eval_index
from ecgregen.evaluate.ecgqa import (
    PtbxlMetadata,
    UnsupportedTemplate,
    answer_from_metadata,
    answer_options,
    load_questions,
    load_templates,
    needs_lead,
    question_lead,
)
from ecgregen.llm.stage import LlmConfig, LlmStage
from ecgregen.pipeline import RetrievalPipeline
from ecgregen.records import load_ptbxl
from ecgregen.store import Hit

SINGLE_TYPES = ("single-verify", "single-choose", "single-query")

# The paper's Table II (exact match, %): S-Verify / S-Choose / S-Query.
PAPER_TABLE_II = {
    "ECG-ReGen + GPT-4o mini (paper)": (72.79, 58.66, 30.56),
    "ECG-ReGen + Gemini Flash 1.5 (paper)": (72.54, 58.52, 32.57),
    "ECG-ReGen + Llama3-70B (paper)": (71.99, 54.83, 32.02),
    "M3AE supervised (paper)": (74.6, 57.1, 41.0),
    "per-type majority (paper)": (67.7, 31.2, 23.2),
}


def vote(answers: Sequence[frozenset[str]]) -> frozenset[str]:
    """Most frequent answer set; on a tie, the one given by the closest neighbour."""
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


def _exact(predicted: frozenset[str], truth: Sequence[str]) -> bool:
    return predicted == frozenset(truth)


def _answer_from_metadata(
    questions: list[dict], neighbours: dict[str, list[Hit]], metadata: PtbxlMetadata, templates: dict,
    pipeline: RetrievalPipeline,
) -> list[tuple[dict, frozenset[str], str]]:
    """Each neighbour answers from its own PTB-XL metadata by ECG-QA's rules; the majority wins."""
    results = []
    for q in questions:
        hits = neighbours[str(q["ecg_id"][0])]
        lead = question_lead(q["question"]) if needs_lead(q["template_id"]) else None
        try:
            predicted = vote([
                frozenset(answer_from_metadata(q["template_id"], q["attribute"], metadata.row(h.ecg_id), lead=lead))
                for h in hits
            ])
            how = "metadata"
        except UnsupportedTemplate:
            options = answer_options(q["template_id"], q["attribute"], templates)
            predicted = frozenset(pipeline.answerer.answer(q["question"], options, hits).answer)
            how = "scp-vote"
        results.append((q, predicted, how))
    return results


async def _answer_with_llm(
    questions: list[dict], neighbours: dict[str, list[Hit]], templates: dict, fallback: LabelVoteAnswerer,
    config: LlmConfig, progress: bool,
) -> tuple[list[tuple[dict, frozenset[str], str]], dict]:
    """The paper's zero-shot QA: the LLM reads the top-k reports and diagnoses (label vote where it fails)."""
    stage = await LlmStage.start(config, fallback)
    if stage.answerer is None:
        raise ValueError(f"the LLM is not available: {stage.detail}")
    try:
        bar = tqdm(total=len(questions), desc=f"LLM {stage.model}", unit="q", disable=not progress, dynamic_ncols=True)

        pending = list(enumerate(questions))
        results: list[tuple[dict, frozenset[str], str]] = [None] * len(questions)  # type: ignore[list-item]

        async def worker() -> None:
            # As many workers as the client's concurrency limit, so no call waits in its queue past the timeout.
            while pending:
                i, q = pending.pop(0)
                options = answer_options(q["template_id"], q["attribute"], templates)
                hits = neighbours[str(q["ecg_id"][0])]
                result = await stage.answerer.answer(q["question"], options, hits, q["question_type"])
                how = f"fallback:{result.fallback_reason}" if result.fallback_reason else "llm"
                results[i] = (q, frozenset(result.answer), how)
                bar.update()

        await asyncio.gather(*(worker() for _ in range(stage.answerer.client.settings.concurrency)))
        bar.close()
        settings = stage.answerer.client.settings
        summary = {"model": stage.model, "endpoint": stage.endpoint, "temperature": settings.temperature,
                   "max_tokens": settings.max_tokens, "json_mode": settings.json_mode}
    finally:
        await stage.close()
    return results, summary


def evaluate_qa(
    ptbxl_dir: Path,
    question_paths: Sequence[Path],
    index_folds: Sequence[int],
    *,
    answerer: str = "labels",
    k: int = 3,
    limit: int | None = None,
    data_dir: Path,
    qdrant_url: str | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
    llm: LlmConfig | None = None,
) -> dict:
    if answerer not in ("labels", "llm"):
        raise ValueError(f"unknown answerer {answerer!r}; labels or llm")
    start = time.perf_counter()
    with_signal = {r.ecg_id: r for r in load_ptbxl(ptbxl_dir)}
    questions = [
        q for q in load_questions(question_paths)
        if q["question_type"] in SINGLE_TYPES and str(q["ecg_id"][0]) in with_signal
    ][:limit]
    if not questions:
        raise ValueError(f"no single-ECG question refers to an ECG with a signal in {ptbxl_dir}")
    metadata = PtbxlMetadata.from_ptbxl(ptbxl_dir)
    templates = load_templates()
    index = load_ptbxl(ptbxl_dir, index_folds)
    pipeline = open_eval_index(index, data_dir=data_dir, qdrant_url=qdrant_url, checkpoint=checkpoint, progress=progress)
    neighbours: dict[str, list[Hit]] = {}
    try:
        for q in tqdm(questions, desc="questions", unit="q", disable=not progress, dynamic_ncols=True):
            ecg_id = str(q["ecg_id"][0])
            if ecg_id not in neighbours:
                neighbours[ecg_id] = neighbours_excluding_patient(pipeline, with_signal[ecg_id], k)
        if answerer == "llm":
            results, llm_summary = asyncio.run(
                _answer_with_llm(questions, neighbours, templates, pipeline.answerer, llm or LlmConfig(), progress)
            )
        else:
            results, llm_summary = _answer_from_metadata(questions, neighbours, metadata, templates, pipeline), None
    finally:
        pipeline.store.close()

    by_type: dict[str, list[bool]] = defaultdict(list)
    by_template: dict[int, list[bool]] = defaultdict(list)
    for q, predicted, _ in results:
        by_type[q["question_type"]].append(_exact(predicted, q["answer"]))
        by_template[q["template_id"]].append(_exact(predicted, q["answer"]))
    # Majority baseline (as in the paper's Table II): each question type's most frequent answer set among the
    # evaluated questions. It sees the test answers, so it is an optimistic baseline.
    type_majority = {
        t: Counter(frozenset(q["answer"]) for q, _, _ in results if q["question_type"] == t).most_common(1)[0][0]
        for t in by_type
    }
    majority: dict[str, list[bool]] = defaultdict(list)
    for q, _, _ in results:
        majority[q["question_type"]].append(_exact(type_majority[q["question_type"]], q["answer"]))

    def summary(scores: dict) -> dict:
        return {key: {"n": len(v), "exact_match": round(sum(v) / len(v), 4)} for key, v in sorted(scores.items())}

    return {
        "answerer": answerer,
        "k": k,
        "n": len(results),
        "generated": any(q.get("generated") for q, _, _ in results),
        "questions": [str(p) for p in question_paths],
        "index_folds": list(index_folds),
        "encoder": pipeline.encoder.encoder_id,
        "by_type": summary(by_type),
        "majority": summary(majority),
        "by_template": summary(by_template),
        "answered_from": dict(Counter(how for _, _, how in results)),
        "llm": llm_summary,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }


def format_qa(result: dict) -> str:
    """Markdown table of exact match (%) per type, beside the paper's Table II."""
    kind = "generated" if result["generated"] else "ECG-QA"
    lines = ["| method | S-Verify | S-Choose | S-Query |", "|---|---|---|---|"]
    method = f"LLM {result['llm']['model']}" if result.get("llm") else result["answerer"]
    for name, scores in ((f"retrieval + {method} (ours)", result["by_type"]),
                         ("per-type majority (ours)", result["majority"])):
        cells = [f"{100 * scores[t]['exact_match']:.2f} (n={scores[t]['n']})" if t in scores else "-" for t in SINGLE_TYPES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, values in PAPER_TABLE_II.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines) + (
        f"\n\n{result['n']} {kind} questions, k = {result['k']}, index folds {result['index_folds']}, encoder "
        f"`{result['encoder']}`, answered from {result['answered_from']}, wall time {result['wall_time_s']} s.\n"
    )
