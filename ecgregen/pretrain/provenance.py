"""What trained a serving checkpoint, kept in the checkpoint itself: its folds, stage by stage.

`ecgregen pretrain` writes beside the weights (payload key ``training``) one record per stage: the recipe, whether
SCP labels trained it (the label stage) or only the ECGs and their reports (the self-supervised one), the folds it
trained on, the folds that chose its epoch, the epoch kept, and the same record of the checkpoint it started from
(``init_from``: ``"random"``, or that checkpoint's id and record). An evaluation reads them from here rather than
from a note: which folds' labels the encoder has learnt (a diagnosis calibration fitted there is flattered - their
neighbours agree with them too well) and which folds chose an epoch (numbers measured there are optimistic).
Checkpoints written before this carry no record: their training is ``"unknown"``.

The loader (:func:`ecgregen.encoders.checkpoint.load_checkpoint`) ignores the key, so a checkpoint with it serves
exactly as one without.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ecgregen.records import folds_text

TRAINING_KEY = "training"
UNKNOWN = "unknown"


def folds_of(records: Iterable) -> list[int]:  # EcgRecord
    """The PTB-XL folds the records come from (records without a fold count for none)."""
    return sorted({int(r.fold) for r in records if getattr(r, "fold", None) is not None})


def stage_record(*, recipe: str, labels: bool, train_folds: Sequence[int], validation_folds: Sequence[int],
                 epoch: int, epochs: int, step: int, selected_by: str, init_from: str | dict) -> dict:
    """One training stage, as written into its serving checkpoint."""
    return {
        "recipe": recipe,
        "stage": "labels" if labels else "self-supervised",
        "labels": bool(labels),
        "train_folds": [int(f) for f in train_folds],
        "validation_folds": [int(f) for f in validation_folds],
        "epoch": int(epoch),
        "epochs": int(epochs),
        "step": int(step),
        "selected_by": selected_by,
        "init_from": init_from,
    }


def init_record(path: str | Path | None, encoder_id: str) -> str | dict:
    """What a stage started from: "random", or the starting checkpoint's id and its own record ("unknown" when that
    checkpoint carries none)."""
    if not path or str(path) == "random":
        return "random"
    return {"encoder_id": encoder_id, "training": read_training(path) or UNKNOWN}


def read_training(path: str | Path) -> dict | None:
    """The training record of the checkpoint at `path`; None for a checkpoint written before records were kept."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    record = payload.get(TRAINING_KEY) if isinstance(payload, dict) else None
    return record if isinstance(record, dict) else None


def write_training(path: str | Path, record: dict) -> None:
    """Add (or replace) the training record of the serving checkpoint at `path`; the weights are left as they are."""
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload[TRAINING_KEY] = record
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def stages(record: dict | str | None) -> list[dict] | None:
    """The record's stages, latest first; None when any stage of the chain is unknown."""
    out: list[dict] = []
    while isinstance(record, dict):
        out.append(record)
        start = record.get("init_from")
        if start == "random":
            return out
        record = start.get("training") if isinstance(start, dict) else None
    return None


def label_folds(record: dict | str | None) -> list[int] | None:
    """The folds whose SCP labels trained the encoder (any stage); None when unknown."""
    chain = stages(record)
    if chain is None:
        return None
    return sorted({f for stage in chain if stage.get("labels") for f in stage.get("train_folds", [])})


def selection_folds(record: dict | str | None) -> list[int] | None:
    """The folds that chose an epoch of any stage; None when unknown."""
    chain = stages(record)
    if chain is None:
        return None
    return sorted({f for stage in chain for f in stage.get("validation_folds", [])})


def describe(record: dict | str | None) -> str:
    """One line per stage, latest first: what trained the encoder and what chose its epochs."""
    if not isinstance(record, dict):
        return f"training {UNKNOWN} (the checkpoint records no folds)"
    parts: list[str] = []
    while isinstance(record, dict):
        what = "with their SCP labels" if record.get("labels") else "ECGs and reports, no labels"
        chosen = record.get("validation_folds", [])
        parts.append(f"{record.get('recipe')} trained on folds {folds_text(record.get('train_folds', []))} ({what}), "
                     f"epoch {record.get('epoch')} of {record.get('epochs')} chosen on fold{'s' * (len(chosen) > 1)} "
                     f"{folds_text(chosen)} by {record.get('selected_by')}")
        start = record.get("init_from")
        if start == "random":
            parts.append("random init")
            break
        record = start.get("training") if isinstance(start, dict) else None
        if not isinstance(record, dict):
            parts.append(f"from {start.get('encoder_id') if isinstance(start, dict) else start}, whose training is "
                         f"{UNKNOWN}")
    return "; started from ".join(parts)
