"""Label-aware second training stage (recipe ``labels``): shape the retrieval vector with PTB-XL's SCP statements.

Starts from a serving checkpoint (``--init-from``, default the shipped self-supervised ``encoder-small-ssl.pt``)
and trains the whole ECG encoder on three losses, all of them on the retrieval vector itself (max-pooled, L2-normalised tokens: what
serving indexes and searches), not on a projection of it:

- ``supcon``: supervised contrastive loss with soft positives: for anchor i, the target distribution over the other
  ECGs j of the batch is proportional to the Jaccard overlap of their SCP code sets; cross-entropy against the
  softmax of cos(z_i, z_j) / T (T = the recipe's temperature, 0.1, the same scale the 10-neighbour vote weights use).
- ``bce``: multi-label BCE over the SCP statements seen in training, by a linear head on the unit retrieval vector
  (positive weights sqrt(neg/pos), capped, so rare statements are not ignored). The head is not shipped.
- ``report``: ECG-report InfoNCE (identical reports are positives) against frozen all-MiniLM-L6-v2 sentence
  embeddings (mean pooling, computed once) through a small trainable projection, so the vector still finds similar
  wording.

MEM/MLM/ETM are dropped in this stage. Augmentations: :mod:`ecgregen.pretrain.augment` (resampling through
100/250/500 Hz and the serving preprocessing, gain, baseline, band-limited noise, mains hum, lead dropout; no time
warping). Validation each epoch: queries = validation folds, index = training folds, own patient excluded; top-1
SCP micro/macro F1 and BLEU-4, and the 10-neighbour vote (see :func:`neighbour_metrics`); the best epoch by vote
micro-F1 is saved as the serving checkpoint ``encoder.pt``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from ecgregen.encoders.checkpoint import SELF_SUPERVISED_CHECKPOINT, load_checkpoint
from ecgregen.encoders.model import CONFIGS, EcgEncoder
from ecgregen.preprocess import PreprocessConfig, preprocess
from ecgregen.pretrain.augment import AugmentConfig, augment_raw
from ecgregen.pretrain.model import PretrainConfig
from ecgregen.pretrain.provenance import folds_of, init_record, stage_record
from ecgregen.records import EcgRecord

VOTE_K = 10
VOTE_TEMPERATURE = 0.1
VOTE_THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------------------------------
# Evaluation (also used by scripts/compare_encoders.py)


def vote_probabilities(scores: np.ndarray, index_codes: Sequence[set[str]], k: int = VOTE_K,
                       temperature: float = VOTE_TEMPERATURE) -> list[dict[str, float]]:
    """p(code) = sum_i w_i [code in neighbour i] / sum_i w_i over the top-k neighbours, w_i = exp(cos_i / T)."""
    out = []
    for row in scores:
        top = np.argsort(-row)[:k]
        top = top[np.isfinite(row[top])]
        w = np.exp((row[top] - row[top].max()) / temperature)
        w /= w.sum()
        p: dict[str, float] = {}
        for j, wj in zip(top, w):
            for code in index_codes[j]:
                p[code] = p.get(code, 0.0) + float(wj)
        out.append(p)
    return out


def neighbour_metrics(queries: np.ndarray, index: np.ndarray, query_records: Sequence[EcgRecord],
                      index_records: Sequence[EcgRecord], *, bleu: bool = True) -> dict[str, float]:
    """Retrieval of `query_records` over `index_records` (own patient excluded) by cosine of unit embeddings.

    top1_*: the nearest neighbour's SCP codes and report (BLEU-4, pycocoevalcap as `retrieval_metrics`);
    vote_*: the 10-neighbour vote at p >= 0.5; vote_best_*: micro-F1 at the best single global threshold
    (information only: the threshold is chosen on the very queries it is scored on).
    """
    from ecgregen.evaluate.text_metrics import scp_f1, tokenize

    scores = queries @ index.T
    patients = np.array([r.patient_id for r in index_records])
    for i, r in enumerate(query_records):
        scores[i, patients == r.patient_id] = -np.inf
    truth = [set(r.scp_codes) for r in query_records]
    index_codes = [set(r.scp_codes) for r in index_records]
    top = scores.argmax(1)
    top1 = scp_f1(truth, [index_codes[j] for j in top])
    probs = vote_probabilities(scores, index_codes)
    vote = scp_f1(truth, [{c for c, p in ps.items() if p >= VOTE_THRESHOLD} for ps in probs])
    best_t, best_micro = VOTE_THRESHOLD, vote["micro"]
    for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
        micro = scp_f1(truth, [{c for c, p in ps.items() if p >= t} for ps in probs])["micro"]
        if micro > best_micro:
            best_t, best_micro = float(t), micro
    result = {"top1_f1_micro": top1["micro"], "top1_f1_macro": top1["macro"], "vote_f1_micro": vote["micro"],
              "vote_f1_macro": vote["macro"], "vote_best_f1_micro": best_micro, "vote_best_threshold": best_t}
    if bleu:
        from pycocoevalcap.bleu.bleu import Bleu

        refs = {i: [tokenize(r.report) or "empty"] for i, r in enumerate(query_records)}
        hyps = {i: [tokenize(index_records[j].report) or "empty"] for i, j in enumerate(top)}
        score, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
        result["top1_bleu4"] = score[3]
    return result


@torch.inference_mode()
def embed_signals(encoder: EcgEncoder, signals: Sequence[np.ndarray], batch: int = 128) -> np.ndarray:
    was_training = encoder.training
    encoder.eval()
    out = [encoder(torch.from_numpy(np.stack(signals[i:i + batch]))).numpy() for i in range(0, len(signals), batch)]
    encoder.train(was_training)
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------------------------
# Data


def code_vocabulary(records: Sequence[EcgRecord]) -> list[str]:
    return sorted({c for r in records for c in r.scp_codes})


def multi_hot(records: Sequence[EcgRecord], codes: Sequence[str]) -> torch.Tensor:
    position = {c: i for i, c in enumerate(codes)}
    y = torch.zeros(len(records), len(codes))
    for i, r in enumerate(records):
        for c in r.scp_codes:
            if c in position:
                y[i, position[c]] = 1.0
    return y


class LabelDataset(Dataset):
    """Raw recordings and their clean preprocessed signals (both cached once); items are (signal, index)."""

    def __init__(self, records: Sequence[EcgRecord], augment: bool, seed: int = 0,
                 augment_config: AugmentConfig = AugmentConfig(), clean_prob: float = 0.2) -> None:
        self.raw = [r.load_ecg() for r in tqdm(records, desc="load", unit="ecg")]
        self.signals = [preprocess(e).first_window for e in self.raw]  # PTB-XL: one 10 s window each
        self.augment = augment
        self.augment_config = augment_config
        self.clean_prob = clean_prob
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.augment and self.rng.random() >= self.clean_prob:
            x = augment_raw(self.raw[i], self.rng, self.augment_config)
        else:
            x = self.signals[i]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), i


def collate_labels(batch):  # noqa: ANN001, ANN201
    signals, idx = zip(*batch)
    return torch.stack(signals), torch.tensor(idx)


@torch.inference_mode()
def sentence_embeddings(texts: Sequence[str], model_path: str, batch: int = 64) -> torch.Tensor:
    """Frozen all-MiniLM-L6-v2 sentence embeddings (mean pooling over word pieces, as sentence-transformers does)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    unique = list(dict.fromkeys(texts))
    out = []
    for i in range(0, len(unique), batch):
        enc = tokenizer(unique[i:i + batch], truncation=True, max_length=128, padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    table = torch.cat(out)
    row = {t: i for i, t in enumerate(unique)}
    return table[torch.tensor([row[t] for t in texts])]


# ---------------------------------------------------------------------------------------------------------------
# Model and losses


class LabelModel(nn.Module):
    """The serving encoder plus training-only heads (BCE head, report projection)."""

    def __init__(self, encoder: EcgEncoder, n_codes: int, text_dim: int, recipe: PretrainConfig,
                 pos_weight: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> None:
        super().__init__()
        self.recipe = recipe
        self.ecg = encoder
        dim = encoder.config.dim
        self.code_head = nn.Linear(dim, n_codes)
        nn.init.normal_(self.code_head.weight, std=0.01)
        if prior is not None:
            with torch.no_grad():
                self.code_head.bias.copy_(torch.logit(prior.clamp(1e-3, 1 - 1e-3)))
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else torch.ones(n_codes))
        self.report_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / 0.07).log())

    def forward(self, signal: torch.Tensor, labels: torch.Tensor, text: torch.Tensor,
                report_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.ecg(signal)  # the retrieval vector itself
        uses = set(self.recipe.losses)
        losses: dict[str, torch.Tensor] = {}
        if "supcon" in uses:
            losses["supcon"] = jaccard_supcon(z, labels, self.recipe.temperature)
        if "bce" in uses:
            # unit vector -> logits: a fixed scale so the head does not need huge weights to be confident
            losses["bce"] = F.binary_cross_entropy_with_logits(self.code_head(z * 8.0), labels,
                                                               pos_weight=self.pos_weight)
        if "report" in uses:
            t = F.normalize(self.report_proj(text), dim=-1)
            logits = self.logit_scale.exp().clamp(max=100) * z @ t.T
            same = (report_ids[:, None] == report_ids[None, :]).float()
            targets = same / same.sum(1, keepdim=True)
            losses["report"] = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T))
        return losses

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.recipe.weight(name) * value for name, value in losses.items())


def jaccard_supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss, positives weighted by the Jaccard overlap of the code sets (self excluded)."""
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    inter = labels @ labels.T
    counts = labels.sum(1)
    union = counts[:, None] + counts[None, :] - inter
    jac = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter)).masked_fill(eye, 0.0)
    rows = jac.sum(1) > 0
    if not rows.any():
        return z.sum() * 0.0
    target = jac[rows] / jac[rows].sum(1, keepdim=True)
    log_prob = F.log_softmax(logits[rows], dim=1).masked_fill(eye[rows], 0.0)
    return -(target * log_prob).sum(1).mean()


# ---------------------------------------------------------------------------------------------------------------
# Training


def initial_encoder(settings) -> tuple[EcgEncoder, str, str | dict]:  # noqa: ANN001
    """The encoder the stage starts from, its id, and its training record (:func:`init_record`)."""
    path = settings.init_from or str(SELF_SUPERVISED_CHECKPOINT)
    if path == "random":
        return EcgEncoder(CONFIGS[settings.encoder]), "random", "random"
    bundle = load_checkpoint(path)
    if bundle.model.config != CONFIGS[settings.encoder]:
        raise SystemExit(f"--init-from {path} is config {bundle.model.config.name}, not {settings.encoder}")
    encoder = bundle.model
    encoder.train()
    return encoder, bundle.encoder_id, init_record(path, bundle.encoder_id)


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Sampling weight per record: mean of 1/sqrt(frequency) of its codes (rare statements come up more often)."""
    freq = labels.sum(0).clamp(min=1)
    inv = labels * (1.0 / freq.sqrt())[None, :]
    w = inv.sum(1) / labels.sum(1).clamp(min=1)
    return torch.where(labels.sum(1) > 0, w, w[labels.sum(1) > 0].mean())


def train_labels(train_records: Sequence[EcgRecord], val_records: Sequence[EcgRecord], out: Path, settings, *,  # noqa: ANN001
                 resume: bool = False, max_steps: int | None = None) -> dict:
    from ecgregen.pretrain.model import RECIPES
    from ecgregen.pretrain.train import (
        default_text_model,
        optimiser_step,
        plot_log,
        restore_training,
        save_serving,
        seed_everything,
        warmup_cosine,
    )

    recipe = RECIPES[settings.recipe]
    seed_everything(settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    codes = code_vocabulary(train_records)
    y_train, y_val = multi_hot(train_records, codes), multi_hot(val_records, codes)
    text_path = settings.text_model or str(default_text_model())
    text = sentence_embeddings([r.report for r in train_records] + [r.report for r in val_records], text_path)
    text_train, text_val = text[: len(train_records)], text[len(train_records):]
    report_index = {t: i for i, t in enumerate(dict.fromkeys(r.report for r in [*train_records, *val_records]))}
    rid_train = torch.tensor([report_index[r.report] for r in train_records])
    rid_val = torch.tensor([report_index[r.report] for r in val_records])

    encoder, init_id, init_from = initial_encoder(settings)
    pos = y_train.sum(0)
    pos_weight = ((len(y_train) - pos) / pos.clamp(min=1)).sqrt().clamp(max=recipe.pos_weight_cap)
    model = LabelModel(encoder, len(codes), text.shape[1], recipe, pos_weight, pos / len(y_train))

    train_set = LabelDataset(train_records, settings.augment, seed=settings.seed)
    val_set = LabelDataset(val_records, augment=False)
    sampler = None
    if recipe.balanced_sampling:
        sampler = WeightedRandomSampler(balanced_weights(y_train).double(), len(train_set), replacement=True,
                                        generator=torch.Generator().manual_seed(settings.seed))
    loader = DataLoader(train_set, batch_size=settings.batch_size, shuffle=sampler is None, sampler=sampler,
                        collate_fn=collate_labels, drop_last=True,
                        generator=torch.Generator().manual_seed(settings.seed))
    head_params = [p for n, p in model.named_parameters() if not n.startswith("ecg.")]
    optimizer = torch.optim.AdamW(
        [{"params": list(model.ecg.parameters()), "lr": settings.lr},
         {"params": head_params, "lr": max(settings.lr, recipe.head_lr)}],
        weight_decay=settings.weight_decay, betas=(0.9, 0.98),
    )
    scheduler = warmup_cosine(optimizer, settings.epochs * len(loader), settings.warmup_fraction)
    state_path, log_path = out / "last.pt", out / "log.jsonl"
    start_epoch, step, best = 0, 0, -1.0
    if resume and state_path.exists():
        start_epoch, step, best = restore_training(state_path, model, optimizer, scheduler, "cpu")
        train_set.rng = np.random.default_rng([settings.seed, start_epoch])
        if sampler is not None:
            sampler.generator = torch.Generator().manual_seed(settings.seed + 1000 * start_epoch)
    elif start_epoch == 0:
        metrics = neighbour_metrics(embed_signals(model.ecg, val_set.signals), embed_signals(model.ecg, train_set.signals),
                                    val_records, train_records)
        with log_path.open("w") as f:
            f.write(json.dumps({"epoch": 0, "init_from": init_id, "codes": len(codes), **metrics}) + "\n")
        print(json.dumps({"epoch": 0, **metrics}))
    started = time.perf_counter()
    summary: dict = {}
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        sums: dict[str, float] = {}
        batches = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch")
        for signal, idx in bar:
            losses = model(signal, y_train[idx], text_train[idx], rid_train[idx])
            optimiser_step(losses, model.total(losses), optimizer, scheduler, list(model.parameters()), sums)
            step += 1
            batches += 1
            bar.set_postfix({k: f"{v / batches:.3f}" for k, v in sums.items()})
            if max_steps is not None and step >= max_steps:
                break
        val_losses = label_validation_losses(model, val_set, y_val, text_val, rid_val, settings.batch_size)
        index_emb, query_emb = embed_signals(model.ecg, train_set.signals), embed_signals(model.ecg, val_set.signals)
        metrics = neighbour_metrics(query_emb, index_emb, val_records, train_records)
        entry = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                 "train": {k: v / max(1, batches) for k, v in sums.items()}, "val": val_losses, **metrics,
                 "scp_f1_micro": metrics["top1_f1_micro"], "scp_f1_macro": metrics["top1_f1_macro"],
                 "bleu4": metrics["top1_bleu4"], "elapsed_s": round(time.perf_counter() - started, 1)}
        with log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()
                          if k not in ("train", "val")}))
        plot_log(log_path, out / "curves.png")
        if metrics["vote_f1_micro"] > best:
            best = metrics["vote_f1_micro"]
            save_serving(model, settings, out / "encoder.pt", stage_record(
                recipe=settings.recipe, labels=True, train_folds=folds_of(train_records),
                validation_folds=folds_of(val_records), epoch=epoch + 1, epochs=settings.epochs, step=step,
                selected_by=f"validation {VOTE_K}-neighbour vote micro-F1", init_from=init_from))
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step, "best": best,
                    "torch_rng": torch.get_rng_state(), "settings": asdict(settings), "codes": codes}, state_path)
        summary = entry
        if max_steps is not None and step >= max_steps:
            break
    return summary


@torch.inference_mode()
def label_validation_losses(model: LabelModel, data: LabelDataset, labels: torch.Tensor, text: torch.Tensor,
                            report_ids: torch.Tensor, batch_size: int) -> dict[str, float]:
    model.eval()
    sums: dict[str, float] = {}
    batches = 0
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(len(data), start + batch_size))
        if len(idx) < 2:
            continue
        signal = torch.from_numpy(np.stack([data.signals[i] for i in idx]))
        for name, value in model(signal, labels[idx], text[idx], report_ids[idx]).items():
            sums[name] = sums.get(name, 0.0) + value.item()
        batches += 1
    model.train()
    return {k: v / max(1, batches) for k, v in sums.items()}
