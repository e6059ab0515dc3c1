"""The evaluation index: the index folds embedded with the current encoder, cached between runs.

Each set of index records gets its own collection (named by a digest of their ids), so re-running an evaluation
reuses the embeddings, and an index built by another encoder is rebuilt rather than searched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from ecgregen.indexer.build import LocalSink, index_records
from ecgregen.pipeline import Retrieval, RetrievalPipeline, open_pipeline
from ecgregen.records import EcgRecord
from ecgregen.settings import EVAL_DIR
from ecgregen.store import Hit, SearchFilter, StoreMismatchError


def eval_collection(index: Sequence[EcgRecord]) -> str:
    digest = hashlib.sha1("\n".join(sorted(f"{r.source}/{r.ecg_id}" for r in index)).encode()).hexdigest()[:12]
    return f"eval-{digest}"


def open_eval_index(
    index: Sequence[EcgRecord], *, data_dir: Path = EVAL_DIR, qdrant_url: str | None = None,
    checkpoint: Path | None = None, progress: bool = True,
) -> RetrievalPipeline:
    """A pipeline whose store holds exactly `index` (embedding whatever is missing); the caller closes its store."""
    collection = eval_collection(index)
    try:
        pipeline = open_pipeline(data_dir, qdrant_url, checkpoint, collection=collection)
    except StoreMismatchError:  # made by another encoder: it is only a cache
        pipeline = open_pipeline(data_dir, qdrant_url, checkpoint, collection=collection, recreate=True)
    try:
        index_records(index, LocalSink(pipeline), progress=progress, description="index")
    except BaseException:
        pipeline.store.close()
        raise
    return pipeline


def retrieval_excluding_patient(pipeline: RetrievalPipeline, record: EcgRecord, k: int) -> Retrieval:
    """Exact top-k of `record` (and the diagnoses of its neighbourhood) with its own patient left out: the folds
    may overlap, and a patient's other ECGs (or the ECG itself) would leak the answer. A leak despite the filter
    raises rather than inflate the scores."""
    filt = SearchFilter(exclude_patient_id=record.patient_id) if record.patient_id else None
    retrieval = pipeline.search(record.load_ecg(), k, filt, exact=True)
    if record.patient_id and any(h.patient_id == record.patient_id for h in retrieval.pool):
        raise RuntimeError(f"ECG {record.ecg_id}: a neighbour is the query's own patient {record.patient_id}")
    return retrieval


def neighbours_excluding_patient(pipeline: RetrievalPipeline, record: EcgRecord, k: int) -> list[Hit]:
    """The top-k neighbours of :func:`retrieval_excluding_patient`."""
    return retrieval_excluding_patient(pipeline, record, k).hits
