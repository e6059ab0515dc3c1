"""The store benchmark end to end on the demo corpus: real encoder, real Qdrant Edge, small sizes."""

from __future__ import annotations

from pathlib import Path

from ecgregen.bench.store import format_store_bench, run_store_bench, search_comparison
from ecgregen.settings import DEMO_PTBXL


def test_store_bench_on_demo_corpus(tmp_path: Path) -> None:
    result = run_store_bench(
        [3000], ptbxl_dir=DEMO_PTBXL, index_folds=range(1, 9), query_folds=[9], work_dir=tmp_path, n_queries=30,
        concurrency=(1, 2), hnsw_ef=(16, 64), progress=False,
    )

    assert result["params"]["sizes"] == [3000]
    assert (result["embeddings"]["index_records"], result["embeddings"]["query_records"]) == (270, 30)
    assert not result["embeddings"]["cached"]
    assert 0 < result["params"]["noise"]["sigma"] < 0.1
    (run,) = result["runs"]
    assert run["size"] == 3000
    assert run["stats"]["points"] == 3000
    assert run["stats"]["indexed_vectors"] == 3000
    assert run["insert"]["points_per_s"] > 0 and run["build"]["seconds"] >= 0
    assert run["disk"]["after_optimize"]["allocated"] > 0 and run["memory"]["rss_mb_after_optimize"] > 0
    assert run["exact"]["recall_at_10"] >= 0.99
    for timing in (run["exact"], run["faiss_flat"]):
        assert timing["p99_ms"] >= timing["p50_ms"] > 0
    assert run["faiss_flat"]["recall_at_10"] == 1.0  # the paper's flat index is exact, like the ground truth

    assert [h["hnsw_ef"] for h in run["hnsw"]] == [16, 64]
    for h in run["hnsw"]:
        assert 0 <= h["recall_at_1"] <= 1 and 0 <= h["recall_at_10"] <= 1
        assert h["p99_ms"] >= h["p50_ms"] > 0
        assert [c["threads"] for c in h["concurrency"]] == [1, 2]
        for c in h["concurrency"]:
            assert c["p99_ms"] >= c["p50_ms"] > 0 and c["qps"] > 0
    assert run["hnsw"][-1]["recall_at_10"] >= 0.9
    assert not (tmp_path / "edge-3000").exists()  # removed unless kept

    table = format_store_bench(result)
    assert "| 3000 | 64 |" in table and "cores" in table and "UTC" in table
    (row,) = search_comparison(result)
    assert row["size"] == 3000 and row["hnsw_ef"] in (16, 64) and row["faiss_recall"] == 1.0
    assert f"| 3000 | 1.0 | {row['faiss_p50_ms']}/" in table

    # A rerun takes the embeddings from the cache in work_dir (the smallest size a top-10 allows).
    again = run_store_bench([10], ptbxl_dir=DEMO_PTBXL, index_folds=range(1, 9), query_folds=[9],
                            work_dir=tmp_path, n_queries=5, concurrency=(1,), hnsw_ef=(16,), progress=False)
    assert again["embeddings"]["cached"]
