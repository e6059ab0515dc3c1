"""`ecgregen pretrain`: train the ECG encoder (self-supervised, then on SCP labels) on PTB-XL-layout folds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_pretrain(commands: argparse._SubParsersAction) -> None:
    pretrain = commands.add_parser("pretrain", help="self-supervised pre-training of the ECG encoder")
    pretrain.add_argument("--ptbxl", type=Path, required=True)
    pretrain.add_argument("--folds", default="1-8")
    pretrain.add_argument("--val-folds", default="9")
    pretrain.add_argument("--config", default="small", help="encoder size: small (CPU) or paper (768-d, 12 layers)")
    pretrain.add_argument("--recipe", default="paper+contrastive",
                          help="losses: paper (MEM+MLM+ETM), mem-only, paper+contrastive (default); labels = "
                               "second stage on SCP labels (supervised contrastive + BCE + report InfoNCE)")
    pretrain.add_argument("--init-from", default="",
                          help="serving checkpoint to start the encoder from (default: the shipped self-supervised "
                               "encoder-small-ssl.pt for the labels recipes, random init otherwise; 'random' forces "
                               "random init)")
    pretrain.add_argument("--out", type=Path, required=True, help="run folder (log.jsonl, last.pt, encoder.pt)")
    pretrain.add_argument("--epochs", type=int, default=10)
    pretrain.add_argument("--batch-size", type=int, default=32)
    pretrain.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 3e-4; labels: 5e-4)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--text-model", default="", help="local BERT folder (default: bundled all-MiniLM-L6-v2)")
    pretrain.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    pretrain.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps (smoke runs)")
    pretrain.set_defaults(handler=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> None:
    from ecgregen.encoders.model import CONFIGS
    from ecgregen.pretrain.model import RECIPES
    from ecgregen.pretrain.train import TrainSettings, pretrain
    from ecgregen.records import load_ptbxl, parse_folds

    if args.config not in CONFIGS or args.recipe not in RECIPES:
        raise SystemExit(f"--config is one of {', '.join(CONFIGS)}; --recipe one of {', '.join(RECIPES)}")
    train, val = load_ptbxl(args.ptbxl, parse_folds(args.folds)), load_ptbxl(args.ptbxl, parse_folds(args.val_folds))
    if len(train) < args.batch_size or len(val) < 2:
        raise SystemExit(f"too few records: {len(train)} training (folds {args.folds}), {len(val)} validation")
    settings = TrainSettings(
        encoder=args.config, recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (5e-4 if RECIPES[args.recipe].stage == "labels" else 3e-4),
        seed=args.seed, text_model=args.text_model, init_from=str(args.init_from or ""),
    )
    summary = pretrain(train, val, args.out, settings, resume=args.resume, max_steps=args.max_steps)
    if summary:
        print(json.dumps(summary, indent=2))
