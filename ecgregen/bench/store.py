"""Benchmark of the embedded vector store (Qdrant Edge) at corpus sizes beyond the data we have.

Why it is built this way:

* Vectors are real: PTB-XL records embedded by the shipped encoder, so the benchmark sees the clustering of real
  ECG embeddings (uniform random vectors are far easier for HNSW and would flatter recall).
* Scale comes from noisy copies of the index-fold embeddings (re-normalised), at a stated noise level. Copy ``c``
  of the corpus depends only on ``(seed, c)``, so a smaller size is a prefix of a larger one and reruns agree.
* Recall is measured against numpy's exact top-k on the same vectors, so it isolates what the HNSW index loses;
  Qdrant's own exact search and the paper's FAISS flat index are checked against it too.
* Latencies are measured around ``EdgeStore.search`` - what the service pays per request, payload included.
  Qdrant Edge holds the GIL for a whole call, so several threads add no parallelism; the concurrency runs show
  what callers from a thread pool (the gRPC server) actually get.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import re
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ecgregen.bench.measure import (
    Progress,
    available_memory_gb,
    dir_bytes,
    latency_summary,
    machine,
    peak_rss_mb,
    rss_mb,
    table,
)
from ecgregen.ecg import EcgInputError
from ecgregen.encoders.base import embed_prepared
from ecgregen.encoders.checkpoint import load_encoder
from ecgregen.encoders.pytorch import InProcessEncoder
from ecgregen.preprocess import preprocess
from ecgregen.records import EcgRecord, load_ptbxl
from ecgregen.store import EdgeStore, IndexSettings, StoredRecord

K = 10
ENCODE_BATCH = 64
UPSERT_BATCH = 1024
GT_QUERY_CHUNK = 64  # queries per matrix product when computing the exact top-k (bounds its memory)
# Noisy copies sit at about this cosine from their source: close enough to stay in the source's neighbourhood,
# far enough that copies of one record are not near-duplicates that any index finds trivially.
NOISE_COSINE = 0.93
CORPUS_STREAM, QUERY_STREAM = 0, 1
WARMUP_QUERIES = 20
BENCH_SOURCE = "bench"
BENCH_ENCODER_ID = "bench-encoder"
INSERTED_AT = "2026-01-01T00:00:00+00:00"


# ---- embeddings ----


def _embed(records: Sequence[EcgRecord], encoder: InProcessEncoder, say: Progress) -> tuple[np.ndarray, list[str]]:
    """Embeddings of the records the encoder accepts, with their ecg ids (a record with no signal is skipped)."""
    vectors: list[np.ndarray] = []
    kept: list[str] = []
    for start in range(0, len(records), ENCODE_BATCH):
        prepared = []
        for record in records[start : start + ENCODE_BATCH]:
            try:
                prepared.append(preprocess(record.load_ecg(), encoder.preprocess_config))
            except EcgInputError:
                continue
            kept.append(record.ecg_id)
        if prepared:
            vectors.append(embed_prepared(encoder, prepared)[0])
        say(f"embedded {min(start + ENCODE_BATCH, len(records))}/{len(records)}")
    return np.concatenate(vectors).astype(np.float32), kept


def _cache_file(work_dir: Path, ptbxl_dir: Path, folds: Sequence[int], encoder_id: str) -> Path:
    """One cache file per (dataset folder, folds, encoder): another encoder's vectors live in another space."""
    where = hashlib.sha256(str(ptbxl_dir.resolve()).encode()).hexdigest()[:8]
    encoder = re.sub(r"[^A-Za-z0-9.+-]", "_", encoder_id)
    return work_dir / f"emb-{encoder}-{where}-folds{'-'.join(map(str, sorted(folds)))}.npz"


def fold_embeddings(
    ptbxl_dir: Path, folds: Sequence[int], encoder: InProcessEncoder, work_dir: Path, say: Progress
) -> tuple[np.ndarray, list[EcgRecord], bool]:
    """(vectors, their records, whether they came from the cache); embedding ~2,000 ECGs takes a minute on CPU."""
    records = load_ptbxl(ptbxl_dir, folds)
    cache = _cache_file(work_dir, ptbxl_dir, folds, encoder.encoder_id)
    if cache.exists():
        with np.load(cache) as data:
            vectors, ids = data["vectors"], [str(i) for i in data["ecg_ids"]]
        cached = True
    else:
        say(f"embedding {len(records)} records of folds {list(folds)}")
        vectors, ids = _embed(records, encoder, say)
        np.savez(cache, vectors=vectors, ecg_ids=np.asarray(ids))
        cached = False
    by_id = {r.ecg_id: r for r in records}
    return vectors, [by_id[i] for i in ids], cached


# ---- synthetic scale ----


def noise_sigma(dim: int, cosine: float = NOISE_COSINE) -> float:
    """Per-coordinate Gaussian sigma that puts ``normalise(v + noise)`` at about ``cosine`` from a unit ``v``.

    ``|noise|^2 ~ dim * sigma^2`` and ``cos = 1 / sqrt(1 + |noise|^2)``.
    """
    return float(np.sqrt((1 / cosine**2 - 1) / dim))


def _normalise(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def noisy_copies(
    base: np.ndarray, n: int, sigma: float, seed: int, stream: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` vectors: ``base`` itself first, then noisy copies of it; and each row's source row in ``base``.

    Copy ``c`` is drawn from ``default_rng([seed, stream, c])`` alone, so every size is a prefix of every larger
    one; corpus and queries use different streams so that query noise never repeats corpus noise.
    """
    parts: list[np.ndarray] = []
    have = 0
    copy = 0
    while have < n:
        take = min(len(base), n - have)
        rows = base[:take]
        if copy > 0:
            noise = np.random.default_rng([seed, stream, copy]).normal(0.0, sigma, size=rows.shape)
            rows = _normalise(rows + noise)
        parts.append(rows)
        have += take
        copy += 1
    return np.concatenate(parts), np.arange(n) % len(base)


# ---- ground truth and recall ----


def _exact_top_k(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of each query's k most similar corpus vectors, best first (numpy, exact)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), GT_QUERY_CHUNK):
        scores = queries[start : start + GT_QUERY_CHUNK] @ corpus.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + len(scores)] = np.take_along_axis(top, order, axis=1)
    return out


def _recall(found: Sequence[Sequence[int]], truth: np.ndarray) -> dict[str, float]:
    """recall@1 (the true nearest neighbour ranked first) and recall@k (overlap of the top-k sets), averaged."""
    at_1 = np.mean([len(f) > 0 and f[0] == t[0] for f, t in zip(found, truth)])
    at_k = np.mean([len(set(f[: truth.shape[1]]) & set(t)) / truth.shape[1] for f, t in zip(found, truth)])
    return {"recall_at_1": round(float(at_1), 4), f"recall_at_{truth.shape[1]}": round(float(at_k), 4)}


# ---- the store ----


def _insert(
    store: EdgeStore, corpus: np.ndarray, sources: np.ndarray, records: Sequence[EcgRecord]
) -> dict[str, Any]:
    """Upsert the corpus in batches, each point carrying its source record's payload (realistic payload sizes)."""
    start = time.perf_counter()
    for batch_start in range(0, len(corpus), UPSERT_BATCH):
        batch = []
        for i in range(batch_start, min(batch_start + UPSERT_BATCH, len(corpus))):
            source = records[sources[i]]
            batch.append(StoredRecord(
                vector=corpus[i], ecg_id=str(i), patient_id=source.patient_id, report=source.report,
                scp_codes=source.scp_codes, source=BENCH_SOURCE, inserted_at=INSERTED_AT,
            ))
        store.upsert(batch)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "points_per_s": round(len(corpus) / seconds, 1)}


def _search_ids(store: EdgeStore, query: np.ndarray, **search: Any) -> tuple[list[int], float]:
    """Corpus rows found for one query, and the seconds the search took."""
    start = time.perf_counter()
    hits = store.search(query, K, **search)
    return [int(h.ecg_id) for h in hits], time.perf_counter() - start


def _single_thread(store: EdgeStore, queries: np.ndarray, **search: Any) -> tuple[list[list[int]], list[float]]:
    """Every query once, one after another, after a warm-up (first calls page in the index and the payloads)."""
    for query in queries[:WARMUP_QUERIES]:
        store.search(query, K, **search)
    found, seconds = zip(*(_search_ids(store, q, **search) for q in queries))
    return list(found), list(seconds)


def _concurrent(store: EdgeStore, queries: np.ndarray, threads: int, **search: Any) -> dict[str, Any]:
    """Closed loop: ``threads`` workers split the queries and each searches its share back to back.

    Per-query latency is measured inside the worker, around the call; throughput is queries over wall time.
    """
    shares = [queries[i::threads] for i in range(threads)]

    def worker(share: np.ndarray) -> list[float]:
        return [_search_ids(store, q, **search)[1] for q in share]

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        start = time.perf_counter()
        latencies = [s for part in pool.map(worker, shares) for s in part]
        wall = time.perf_counter() - start
    return {"threads": threads, **latency_summary(latencies), "qps": round(len(queries) / wall, 1)}


def _faiss_flat(corpus: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The paper's retrieval: an in-process FAISS flat inner-product index, one query per call as a server would.

    Measured beside Qdrant in the same run so that the ratio holds on a noisy machine. Vectors only: FAISS keeps
    no payloads, so the reports would still have to be fetched from elsewhere.
    """
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines list the SIMD builds it tried
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss-cpu is not installed (a benchmark-only dependency: pip install 'ecgregen[bench]')"}
    start = time.perf_counter()
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    add_seconds = time.perf_counter() - start

    def one(query: np.ndarray) -> tuple[list[int], float]:
        t = time.perf_counter()
        _, ids = index.search(query[None, :], K)
        return [int(i) for i in ids[0]], time.perf_counter() - t

    for query in queries[:WARMUP_QUERIES]:
        one(query)
    found, seconds = zip(*(one(q) for q in queries))
    return {**_recall(found, truth), **latency_summary(seconds), "add_seconds": round(add_seconds, 3),
            "threads": faiss.omp_get_max_threads(), "version": faiss.__version__}


def _hnsw_runs(
    store: EdgeStore, queries: np.ndarray, truth: np.ndarray, hnsw_ef: Sequence[int], concurrency: Sequence[int],
    say: Progress,
) -> list[dict[str, Any]]:
    runs = []
    for ef in hnsw_ef:
        found, seconds = _single_thread(store, queries, hnsw_ef=ef)
        run = {"hnsw_ef": ef, **_recall(found, truth), **latency_summary(seconds)}
        run["concurrency"] = [_concurrent(store, queries, c, hnsw_ef=ef) for c in concurrency]
        say(f"  ef={ef}: recall@10 {run[f'recall_at_{K}']}, p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms")
        runs.append(run)
    return runs


def build_store(
    store: EdgeStore, path: Path, corpus: np.ndarray, sources: np.ndarray, records: Sequence[EcgRecord],
    index: IndexSettings, say: Progress, encoder_id: str = BENCH_ENCODER_ID,
) -> dict[str, Any]:
    """Fill a fresh store and build its HNSW index: time, memory and disk of each step.

    Each point carries its source record's payload (real report and label sizes) and ecg id = its corpus row.
    ``encoder_id`` is the one the collection is tagged with; a server opens the store only with that encoder.
    """
    size = len(corpus)
    memory = {"rss_mb_before_insert": round(rss_mb(), 1)}
    store.ensure_collection(corpus.shape[1], encoder_id, index=index)
    say(f"N={size}: inserting")
    insert = _insert(store, corpus, sources, records)
    memory["rss_mb_after_insert"] = round(rss_mb(), 1)
    disk = {"after_insert": dir_bytes(path)}
    say(f"N={size}: inserted at {insert['points_per_s']} points/s; building HNSW")
    start = time.perf_counter()
    store.optimize()
    build_seconds = time.perf_counter() - start
    memory["rss_mb_after_optimize"] = round(rss_mb(), 1)
    memory["peak_rss_mb"] = round(peak_rss_mb(), 1)
    disk["after_optimize"] = dir_bytes(path)
    stats = store.stats()
    say(f"N={size}: built in {build_seconds:.1f} s")
    return {
        "insert": insert, "build": {"seconds": round(build_seconds, 2)}, "memory": memory, "disk": disk,
        "stats": {"points": stats.points, "indexed_vectors": stats.indexed_vectors, "segments": stats.segments,
                  "status": stats.status},
    }


def _bench_size(
    size: int, base: np.ndarray, records: Sequence[EcgRecord], queries: np.ndarray, *, sigma: float, seed: int,
    work_dir: Path, index: IndexSettings, hnsw_ef: Sequence[int], concurrency: Sequence[int], keep: bool,
    say: Progress,
) -> dict[str, Any]:
    """One corpus size: build the corpus and the store, then recall and latency against numpy's exact top-k."""
    corpus, sources = noisy_copies(base, size, sigma, seed, CORPUS_STREAM)
    truth = _exact_top_k(corpus, queries, K)
    truth_scores = np.einsum("qd,qkd->qk", queries, corpus[truth])
    result: dict[str, Any] = {
        "size": size,
        "corpus_mb": round(corpus.nbytes / 2**20, 1),
        "truth_cosine": {"top1_mean": round(float(truth_scores[:, 0].mean()), 4),
                         f"top{K}_mean": round(float(truth_scores[:, -1].mean()), 4)},
        # Share of the true top-k that are synthetic copies: near 0 means the copies are only distractors and
        # the index just has to find the real records among them.
        "truth_copy_share": round(float(np.mean(truth >= len(base))), 4),
    }
    path = work_dir / f"edge-{size}"
    shutil.rmtree(path, ignore_errors=True)
    store = EdgeStore(path)
    try:
        result |= build_store(store, path, corpus, sources, records, index, say)
        found, seconds = _single_thread(store, queries, exact=True)
        result["exact"] = {**_recall(found, truth), **latency_summary(seconds)}
        result["faiss_flat"] = _faiss_flat(corpus, queries, truth)
        say(f"N={size}: Qdrant exact p50 {result['exact']['p50_ms']} ms, "
            f"FAISS flat p50 {result['faiss_flat'].get('p50_ms', '-')} ms")
        result["hnsw"] = _hnsw_runs(store, queries, truth, hnsw_ef, concurrency, say)
    finally:
        store.close()
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
    return result


def _memory_needed_gb(size: int, dim: int) -> float:
    """Peak memory of one size, roughly: the corpus in numpy, its copy in FAISS, Qdrant's vectors + HNSW graph
    (about twice the vectors while it builds), payloads (~1 kB per point) and the exact top-k scores."""
    vectors = size * dim * 4
    return (4 * vectors + size * 1024) / 2**30 + 1.0


# ---- entry points ----


def run_store_bench(
    sizes: Sequence[int],
    *,
    ptbxl_dir: Path,
    index_folds: Sequence[int],
    query_folds: Sequence[int],
    work_dir: Path,
    n_queries: int = 200,
    concurrency: Sequence[int] = (1, 4, 16),
    index: IndexSettings | None = None,
    hnsw_ef: Sequence[int] = (64, 128),
    progress: bool = True,
    seed: int = 0,
    keep: bool = False,
    noise_cosine: float = NOISE_COSINE,
) -> dict[str, Any]:
    """Benchmark Qdrant Edge at each corpus size; returns a JSON-able dict (see :func:`format_store_bench`).

    Index-fold embeddings are scaled to each size with noisy copies; queries are the query-fold embeddings (noisy
    copies of them as well if ``n_queries`` asks for more), each copy at about ``noise_cosine`` from its source.
    Embeddings are cached in ``work_dir``; each store is built in ``work_dir / f"edge-{size}"`` and removed
    afterwards unless ``keep``.
    """
    if not sizes or min(sizes) < K:
        raise ValueError(f"sizes must be given and each at least {K}")
    if n_queries < 1 or not concurrency or min(concurrency) < 1 or not hnsw_ef or min(hnsw_ef) < 1:
        raise ValueError("n_queries, every concurrency level and every hnsw_ef must be positive")
    if not 0 < noise_cosine < 1:
        raise ValueError(f"noise_cosine must be in (0, 1), got {noise_cosine}")
    started = time.perf_counter()
    say = Progress(progress, "store-bench")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    index = index or IndexSettings()
    rss_at_start = rss_mb()

    bundle = load_encoder(None)
    encoder = InProcessEncoder(bundle)
    embed_start = time.perf_counter()
    base, records, cached_index = fold_embeddings(Path(ptbxl_dir), index_folds, encoder, work_dir, say)
    query_base, _, cached_queries = fold_embeddings(Path(ptbxl_dir), query_folds, encoder, work_dir, say)
    embed_seconds = time.perf_counter() - embed_start
    sigma = noise_sigma(base.shape[1], noise_cosine)
    queries, _ = noisy_copies(query_base, n_queries, sigma, seed, QUERY_STREAM)
    first_copy = noisy_copies(base, 2 * len(base), sigma, seed, CORPUS_STREAM)[0][len(base) :]
    measured_cosine = float(np.mean(np.sum(first_copy * base, axis=1)))

    runs, skipped = [], []
    for size in sorted(sizes):
        need_gb, have_gb = _memory_needed_gb(size, base.shape[1]), available_memory_gb()
        if need_gb > have_gb:
            skipped.append({"size": size, "reason": f"needs ~{need_gb:.1f} GB of memory, {have_gb:.1f} GB available"})
            say(f"N={size}: skipped ({skipped[-1]['reason']})")
            continue
        runs.append(_bench_size(size, base, records, queries, sigma=sigma, seed=seed, work_dir=work_dir, index=index,
                                hnsw_ef=hnsw_ef, concurrency=concurrency, keep=keep, say=say))
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {
            "sizes": sorted(sizes), "ptbxl_dir": str(ptbxl_dir), "index_folds": list(index_folds),
            "query_folds": list(query_folds), "n_queries": n_queries, "k": K, "concurrency": list(concurrency),
            "hnsw_ef": list(hnsw_ef), "index": dataclasses.asdict(index), "seed": seed,
            "upsert_batch": UPSERT_BATCH, "encoder_id": bundle.encoder_id, "dim": int(base.shape[1]),
            "noise": {"sigma": round(sigma, 5), "target_cosine": noise_cosine,
                      "measured_mean_cosine": round(measured_cosine, 4)},
        },
        "embeddings": {"index_records": len(base), "query_records": len(query_base),
                       "seconds": round(embed_seconds, 1), "cached": cached_index and cached_queries},
        "rss_mb_at_start": round(rss_at_start, 1),
        "runs": runs,
        "skipped_sizes": skipped,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def search_comparison(result: dict[str, Any], min_recall: float = 0.99) -> list[dict[str, Any]]:
    """Per corpus size: FAISS flat beside Qdrant exact and the cheapest HNSW beam reaching ``min_recall``.

    The cheapest beam is the smallest measured ``hnsw_ef`` whose recall@k reaches ``min_recall`` (else the most
    accurate one measured); ratios are HNSW latency over FAISS-flat latency (below 1: HNSW is faster).
    """
    rows = []
    for run in result["runs"]:
        good = [h for h in run["hnsw"] if h[f"recall_at_{K}"] >= min_recall]
        hnsw = min(good, key=lambda h: h["hnsw_ef"]) if good else max(run["hnsw"], key=lambda h: h[f"recall_at_{K}"])
        faiss = run["faiss_flat"]
        row: dict[str, Any] = {
            "size": run["size"], "hnsw_ef": hnsw["hnsw_ef"], "hnsw_recall": hnsw[f"recall_at_{K}"],
            "hnsw_p50_ms": hnsw["p50_ms"], "hnsw_p99_ms": hnsw["p99_ms"],
            "exact_p50_ms": run["exact"]["p50_ms"], "exact_p99_ms": run["exact"]["p99_ms"],
        }
        if "p50_ms" in faiss:
            row |= {
                "faiss_recall": faiss[f"recall_at_{K}"], "faiss_p50_ms": faiss["p50_ms"], "faiss_p99_ms": faiss["p99_ms"],
                "hnsw_over_faiss_p50": round(hnsw["p50_ms"] / faiss["p50_ms"], 2),
                "hnsw_over_faiss_p99": round(hnsw["p99_ms"] / faiss["p99_ms"], 2),
            }
        rows.append(row)
    return rows


def _comparison_table(result: dict[str, Any]) -> list[str]:
    header = ["N", "FAISS flat recall@10", "FAISS flat p50/p99 ms", "Qdrant exact p50/p99 ms",
              "Qdrant HNSW ef (first >= 0.99)", "HNSW recall@10", "HNSW p50/p99 ms", "HNSW / FAISS p50, p99"]
    rows = []
    for r in search_comparison(result):
        faiss = "faiss_p50_ms" in r
        rows.append([
            r["size"], r["faiss_recall"] if faiss else "-", f"{r['faiss_p50_ms']}/{r['faiss_p99_ms']}" if faiss else "-",
            f"{r['exact_p50_ms']}/{r['exact_p99_ms']}", r["hnsw_ef"], r["hnsw_recall"],
            f"{r['hnsw_p50_ms']}/{r['hnsw_p99_ms']}",
            f"{r['hnsw_over_faiss_p50']}x, {r['hnsw_over_faiss_p99']}x" if faiss else "-",
        ])
    return table(header, rows)


def _search_table(result: dict[str, Any]) -> list[str]:
    levels = result["params"]["concurrency"]
    header = ["N", "hnsw_ef", "recall@1", f"recall@{K}", "p50 ms", "p99 ms", "mean ms"]
    header += [f"C={c} p50/p99 ms" for c in levels] + [f"C={c} q/s" for c in levels]
    rows = []
    for run in result["runs"]:
        for ef in run["hnsw"]:
            by_level = {c["threads"]: c for c in ef["concurrency"]}
            rows.append(
                [run["size"], ef["hnsw_ef"], ef["recall_at_1"], ef[f"recall_at_{K}"], ef["p50_ms"], ef["p99_ms"],
                 ef["mean_ms"]]
                + [f"{by_level[c]['p50_ms']}/{by_level[c]['p99_ms']}" for c in levels]
                + [by_level[c]["qps"] for c in levels]
            )
    return table(header, rows)


def _build_table(result: dict[str, Any]) -> list[str]:
    header = ["N", "insert s", "insert pts/s", "build s", "points", "indexed", "segments",
              "RSS MB before/insert/optimize", "disk MB alloc/apparent", f"exact recall@{K}"]
    rows = []
    for run in result["runs"]:
        memory, stats, disk = run["memory"], run["stats"], run["disk"]["after_optimize"]
        rows.append([
            run["size"], run["insert"]["seconds"], run["insert"]["points_per_s"], run["build"]["seconds"],
            stats["points"], stats["indexed_vectors"], stats["segments"],
            f"{memory['rss_mb_before_insert']}/{memory['rss_mb_after_insert']}/{memory['rss_mb_after_optimize']}",
            f"{disk['allocated'] / 2**20:.1f}/{disk['apparent'] / 2**20:.1f}", run["exact"][f"recall_at_{K}"],
        ])
    return table(header, rows)


def format_store_bench(result: dict[str, Any]) -> str:
    """Markdown: a header naming when, where and with what; search quality and latency; then build and footprint."""
    params, host, index = result["params"], result["machine"], result["params"]["index"]
    header = (
        f"Store benchmark (Qdrant Edge beside FAISS flat), "
        f"{result['date_utc'].replace('T', ' ').removesuffix('+00:00')} UTC, {host['cpu_count']} cores "
        f"({host['cpu_model']}), {host['platform']}. Encoder {params['encoder_id']} (dim {params['dim']}); "
        f"{result['embeddings']['index_records']} index-fold embeddings (folds {params['index_folds']}) scaled by "
        f"noisy copies (sigma {params['noise']['sigma']}, mean cosine to source "
        f"{params['noise']['measured_mean_cosine']}); {params['n_queries']} queries from folds "
        f"{params['query_folds']}; k={params['k']}; HNSW m={index['hnsw_m']} ef_construct={index['hnsw_ef_construct']} "
        f"full_scan_threshold_kb={index['full_scan_threshold_kb']} on_disk={index['on_disk']} "
        f"quantization={index['quantization']}; seed {params['seed']}; wall {result['wall_s']} s."
    )
    return "\n".join([header, "", *_comparison_table(result), "", *_search_table(result), "",
                      *_build_table(result)]) + "\n"

