"""What a bigger corpus buys: the served diagnoses' micro/macro-F1 and the served report's BLEU-4 against index size.

Full PTB-XL is ten times the corpus shipped here and hospitals index their own archives, so a user asks how the
numbers move with the corpus. Each size is a nested random subset of the index records (one seeded permutation cut
at each size, so a bigger index holds every smaller one and the curve shows the corpus, not a new draw), indexed
through the evaluation's own pipeline; the diagnoses are calibrated afresh on the same calibration records against
that index (a calibration belongs to its corpus); the test queries and their own-patient exclusion are those of
``evaluate report``. BLEU-4 is of the report the server would serve by default (the calibration's mode, scored in
English: references and neighbours' reports through the glossary).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ecgregen.calibrate import calibrate_records
from ecgregen.evaluate.corpus import open_eval_index
from ecgregen.evaluate.report import in_language, retrieve_modes
from ecgregen.evaluate.text_metrics import corpus_bleu4, scp_f1
from ecgregen.records import EcgRecord


def parse_sizes(text: str, available: int) -> list[int]:
    """'250,500,1000,all' -> sizes (all = every index record); each must be 1..available, given once."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        size = available if part == "all" else int(part) if part.isdigit() else None
        if size is None or not 1 <= size <= available:
            raise ValueError(f"index size {part!r}: a number of records from 1 to {available}, or 'all'")
        sizes.append(size)
    if len(set(sizes)) != len(sizes) or not sizes:
        raise ValueError(f"index sizes must be distinct and at least one; got {text!r}")
    return sorted(sizes)


def learning_curve(index: Sequence[EcgRecord], queries: Sequence[EcgRecord], calibration: Sequence[EcgRecord],
                   sizes: Sequence[int], *, data_dir: Path, qdrant_url: str | None = None,
                   checkpoint: Path | None = None, seed: int = 0, progress: bool = True) -> dict:
    """One row per size: index records, served micro/macro-F1, served mode and its BLEU-4 (English)."""
    queries = [q for q in queries if q.report.strip()]
    order = np.random.default_rng(seed).permutation(len(index))
    truth = [frozenset(q.scp_codes) for q in queries]
    references = [in_language(q.report, "en") for q in queries]
    rows = []
    for size in sizes:
        subset = [index[i] for i in sorted(order[:size])]
        pipeline = open_eval_index(subset, data_dir=data_dir, qdrant_url=qdrant_url, checkpoint=checkpoint,
                                   progress=progress)
        try:
            pipeline.use_calibration(calibrate_records(pipeline, calibration, progress=progress) if calibration
                                     else None)
            by_mode, _, _ = retrieve_modes(pipeline, queries, progress)
            mode = pipeline.resolved_report_mode()
        finally:
            pipeline.store.close()
        served = by_mode[f"retrieval-{mode}"]
        f1 = scp_f1(truth, [p.scp_codes for p in served])
        rows.append({"index_records": size, "f1_micro": f1["micro"], "f1_macro": f1["macro"], "served_mode": mode,
                     "bleu4_en": round(corpus_bleu4(references, [p.text("en") for p in served]), 4),
                     "bleu4_en_by_mode": {m[len("retrieval-"):]: round(corpus_bleu4(
                         references, [p.text("en") for p in predictions]), 4)
                         for m, predictions in by_mode.items()}})
    return {"n": len(queries), "seed": seed, "rows": rows}


def curve_markdown(curve: dict) -> str:
    lines = ["| index records | served micro-F1 | served macro-F1 | served mode | BLEU-4 (English) |",
             "|---|---|---|---|---|"]
    for r in curve["rows"]:
        lines.append(f"| {r['index_records']:,} | {r['f1_micro']:.3f} | {r['f1_macro']:.3f} | {r['served_mode']} | "
                     f"{r['bleu4_en']:.3f} |")
    return "\n".join(lines) + (f"\n\nLearning curve on {curve['n']} test ECGs: nested random subsets of the index "
                               f"(seed {curve['seed']}), diagnoses calibrated afresh against each.\n")


def plot_curve(curve: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["index_records"] for r in curve["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("f1_micro", "served micro-F1"), ("f1_macro", "served macro-F1"),
                       ("bleu4_en", "served BLEU-4 (English)")):
        ax.plot(sizes, [r[key] for r in curve["rows"]], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{size:,}" for size in sizes])
    ax.minorticks_off()
    ax.set_xlabel("index records (log scale)")
    ax.set_ylim(0, 1)
    ax.set_title(f"What a bigger corpus buys (n = {curve['n']} test ECGs)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
