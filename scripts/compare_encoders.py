#!/usr/bin/env python
"""Compare serving checkpoints by nearest-neighbour retrieval on a PTB-XL-layout folder.

For each checkpoint: queries = --test-folds, index = --index-folds, own patient excluded, cosine of the served
(L2-normalised, max-pooled) embeddings, exact search. Metrics (ecgregen.pretrain.labels.neighbour_metrics):
top-1 neighbour's SCP codes (micro/macro F1) and report (BLEU-4, pycocoevalcap), and the 10-neighbour vote
(p(code) = sum_i w_i [code in neighbour i] / sum_i w_i, w_i = exp(cos_i / 0.1), predicted at p >= 0.5; plus, for
information, the micro-F1 at the best single global threshold, chosen on the test queries themselves).

    python scripts/compare_encoders.py --ptbxl ../shared/data/ptbxl --index-folds 1-8 --test-folds 9 CKPT...

"shipped" stands for ecgregen/models/encoder-small.pt. Prints a Markdown table (and --json writes the numbers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from ecgregen.encoders.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint
from ecgregen.preprocess import preprocess
from ecgregen.pretrain.labels import embed_signals, neighbour_metrics
from ecgregen.records import load_ptbxl, parse_folds

COLUMNS = [("top1_f1_micro", "top-1 F1 micro"), ("top1_f1_macro", "top-1 F1 macro"),
           ("vote_f1_micro", "vote F1 micro (p>=0.5)"), ("vote_f1_macro", "vote F1 macro (p>=0.5)"),
           ("top1_bleu4", "top-1 BLEU-4"), ("vote_best_f1_micro", "vote F1 micro @best thr (info)")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", type=Path, required=True)
    parser.add_argument("--index-folds", default="1-8")
    parser.add_argument("--test-folds", default="9")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("checkpoints", nargs="+", help="serving checkpoints (encoder.pt files) or 'shipped'")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    index_records = load_ptbxl(args.ptbxl, parse_folds(args.index_folds))
    query_records = load_ptbxl(args.ptbxl, parse_folds(args.test_folds))
    index_signals = [preprocess(r.load_ecg()).first_window for r in index_records]
    query_signals = [preprocess(r.load_ecg()).first_window for r in query_records]
    rows = []
    for spec in args.checkpoints:
        path = SHIPPED_CHECKPOINT if spec == "shipped" else Path(spec)
        bundle = load_checkpoint(path)
        metrics = neighbour_metrics(embed_signals(bundle.model, query_signals),
                                    embed_signals(bundle.model, index_signals), query_records, index_records)
        rows.append({"checkpoint": str(path), "encoder_id": bundle.encoder_id, **metrics})
        print(f"{bundle.encoder_id}: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}", file=sys.stderr)

    print(f"Index folds {args.index_folds} ({len(index_records)} ECGs), queries folds {args.test_folds} "
          f"(n = {len(query_records)}), own patient excluded; {datetime.date.today().isoformat()}\n")
    print("| encoder | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for row in rows:
        cells = [f"{row[key]:.3f}" for key, _ in COLUMNS]
        cells[-1] += f" (t={row['vote_best_threshold']:.2f})"
        print(f"| `{row['encoder_id']}` | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"index_folds": args.index_folds, "test_folds": args.test_folds,
                                         "date": datetime.date.today().isoformat(), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
