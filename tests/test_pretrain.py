"""Pre-training: shapes and masking ratios, that optimisation lowers every loss, the serving checkpoint, the
`ecgregen pretrain` command (resume, torchrun + gloo DDP), and embedding stability across sampling rates."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgregen.ecg import STANDARD_LEADS, ecg_from_array
from ecgregen.encoders.base import embed_prepared
from ecgregen.encoders.checkpoint import load_checkpoint, load_encoder
from ecgregen.encoders.pytorch import InProcessEncoder
from ecgregen.preprocess import PreprocessConfig, preprocess, resample
from ecgregen.pretrain.model import RECIPES, patch_targets, random_mask
from ecgregen.pretrain.provenance import describe, folds_of, label_folds, read_training, selection_folds
from ecgregen.pretrain.train import EcgReportDataset, TrainSettings, build_model, collate, save_serving
from ecgregen.records import load_ptbxl
from tests.conftest import DEMO_PTBXL
from tests.test_cli import run


@pytest.fixture(scope="module")
def records():  # noqa: ANN201
    return load_ptbxl(DEMO_PTBXL, [1])[:16]


def fixed_batch(records, recipe: str):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    model, tokenizer = build_model(TrainSettings(recipe=recipe))
    data = EcgReportDataset(records, tokenizer, PreprocessConfig(), RECIPES[recipe].max_text_tokens, augment=False)
    return model, collate([data[i] for i in range(len(data))])


def test_random_mask_ratio_and_allowed_positions() -> None:
    mask = random_mask((8, 62), 0.75, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [round(0.75 * 62)] * 8
    allowed = torch.zeros(8, 40, dtype=torch.bool)
    allowed[:, 1:21] = True  # 20 word pieces between [CLS] and [SEP]/padding
    words = random_mask((8, 40), 0.15, torch.Generator().manual_seed(1), allowed=allowed)
    assert words.sum(1).tolist() == [3] * 8 and not (words & ~allowed).any()


def test_patch_targets_are_per_patch_normalised() -> None:
    x = torch.randn(2, 12, 1000) * 5 + 3
    targets = patch_targets(x, 16)
    assert targets.shape == (2, 62, 12 * 16)
    torch.testing.assert_close(targets.mean(-1), torch.zeros(2, 62), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.std(-1), torch.ones(2, 62), atol=1e-3, rtol=0)


@pytest.mark.parametrize("recipe", ["paper+contrastive", "mem-only"])
def test_one_optimisation_step_lowers_each_loss_on_a_fixed_batch(records, recipe: str) -> None:  # noqa: ANN001
    """Each loss, stepped on alone from the same start, goes down (same masks, no dropout, same batch)."""
    model, batch = fixed_batch(records, recipe)
    initial = copy.deepcopy(model.state_dict())

    same = batch[3]
    negatives = torch.tensor([int((~row).nonzero()[0]) for row in same])  # a fixed wrong report per ECG

    def losses() -> dict[str, torch.Tensor]:
        return model(*batch, torch.Generator().manual_seed(7), negatives)

    model.eval()
    with torch.no_grad():
        before = {k: v.item() for k, v in losses().items()}
    assert set(before) == set(RECIPES[recipe].losses)
    for name in before:
        model.load_state_dict(initial)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        losses()[name].backward()
        optimizer.step()
        with torch.no_grad():
            after = losses()[name].item()
        assert after < before[name], (name, before[name], after)


def test_serving_checkpoint_round_trip_gives_identical_embeddings(records, tmp_path: Path) -> None:  # noqa: ANN001
    model, batch = fixed_batch(records, "mem-only")
    save_serving(model, TrainSettings(recipe="mem-only"), tmp_path / "encoder.pt")
    loaded = load_checkpoint(tmp_path / "encoder.pt")
    assert loaded.encoder_id.startswith("small-mem-only-")
    assert set(torch.load(tmp_path / "encoder.pt", weights_only=True)["state_dict"]) == set(model.ecg.state_dict())
    model.ecg.eval()
    with torch.inference_mode():
        expected = model.ecg(batch[0]).numpy()
    windows = batch[0].numpy()
    lengths = np.full(len(windows), windows.shape[-1])
    np.testing.assert_allclose(InProcessEncoder(loaded).encode(windows, lengths), expected, atol=1e-6)


def test_served_encoder_is_stable_across_100_and_500_hz() -> None:
    """The same real ECG sent at 100 Hz and at 500 Hz embeds to (nearly) the same vector."""
    encoder = InProcessEncoder(load_encoder(None))
    cosines = []
    for record in load_ptbxl(DEMO_PTBXL, [9])[:10]:
        ecg = record.load_ecg()
        at_500 = ecg_from_array(resample(ecg.signal.astype(np.float64), 100, 500), 500, STANDARD_LEADS)
        a, b = embed_prepared(encoder, [preprocess(ecg), preprocess(at_500)])[0]
        cosines.append(float(a @ b))
    assert min(cosines) >= 0.95, cosines


def test_pretrain_command_logs_each_loss_and_resumes(tmp_path: Path) -> None:
    args = ["pretrain", "--ptbxl", str(DEMO_PTBXL), "--folds", "1-2", "--val-folds", "9", "--recipe", "paper",
            "--batch-size", "16", "--out", str(tmp_path / "run")]
    run(*args, "--epochs", "1")
    run(*args, "--epochs", "2", "--resume")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert log[1]["step"] == 2 * log[0]["step"]  # resumed, not restarted
    assert set(log[0]["train"]) == set(log[0]["val"]) == {"mem", "mlm", "etm"}
    assert 0 <= log[1]["scp_f1_micro"] <= 1
    assert load_checkpoint(tmp_path / "run" / "encoder.pt").encoder_id.startswith("small-paper-")
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # The serving checkpoint says what trained it: the folds of --folds / --val-folds, no labels, from random init.
    best = max(log, key=lambda e: e["scp_f1_micro"])["epoch"]
    assert read_training(tmp_path / "run" / "encoder.pt") == {
        "recipe": "paper", "stage": "self-supervised", "labels": False, "train_folds": [1, 2],
        "validation_folds": [9], "epoch": best, "epochs": 2 if best == 2 else 1, "step": log[best - 1]["step"],
        "selected_by": "validation top-1 SCP micro-F1", "init_from": "random"}


def test_pretrain_under_torchrun_with_gloo(tmp_path: Path) -> None:
    """The DDP path, on CPU: two processes, gloo, one optimiser step each."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "ecgregen.cli", "pretrain", "--ptbxl",
         str(DEMO_PTBXL), "--folds", "1-2", "--val-folds", "9", "--recipe", "paper+contrastive", "--batch-size", "8",
         "--epochs", "1", "--max-steps", "1", "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["step"] == 1  # rank 0 alone logs
    assert set(log[0]["train"]) == {"mem", "mlm", "etm", "contrastive"}
    shutil.rmtree(tmp_path / "ddp")


def test_pretraining_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    """Same data, seed and settings -> the same weights (the encoder id carries a digest of them)."""
    ids = []
    for name in ("a", "b"):
        run("pretrain", "--ptbxl", str(DEMO_PTBXL), "--folds", "1", "--val-folds", "9", "--recipe", "mem-only",
            "--batch-size", "16", "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path / name))
        ids.append(load_checkpoint(tmp_path / name / "encoder.pt").encoder_id)
    assert ids[0] == ids[1]


# --- the label stage (recipe "labels"): device augmentations and a short run from the shipped checkpoint -------


def _r_peaks(x: np.ndarray) -> np.ndarray:
    """R-peak sample positions from the energy summed over leads (robust to one lead's morphology)."""
    from scipy.signal import find_peaks

    energy = (x.astype(np.float64) ** 2).sum(0)
    peaks, _ = find_peaks(energy, height=0.3 * energy.max(), distance=30)  # >= 0.3 s apart at 100 Hz
    return peaks


@pytest.mark.parametrize("rate", [100.0, 250.0, 500.0])
def test_device_augmentation_keeps_shape_and_rhythm(rate: float) -> None:
    """Resampling through `rate` + gain, baseline, band-limited noise and hum: same shape, R-peaks within 1 sample."""
    from ecgregen.pretrain.augment import AugmentConfig, augment_raw
    from tests.conftest import shared_ptbxl

    config = AugmentConfig(rates_hz=(rate,), rate_probs=(1.0,), wander_prob=1.0, noise_prob=1.0, hum_prob=1.0,
                           lead_drop_prob=0.0)
    rng = np.random.default_rng(0)
    for record in load_ptbxl(shared_ptbxl(), [9])[:6]:
        ecg = record.load_ecg()
        clean = preprocess(ecg).first_window
        augmented = augment_raw(ecg, rng, config)
        assert augmented.shape == clean.shape and augmented.dtype == np.float32
        assert not np.allclose(augmented, clean, atol=1e-3)  # it did change the signal
        a, b = _r_peaks(clean), _r_peaks(augmented)
        assert len(a) >= 3
        assert np.abs(a[:, None] - b[None, :]).min(1).max() <= 1, (record.ecg_id, a, b)
        assert np.abs(b[:, None] - a[None, :]).min(1).max() <= 1, (record.ecg_id, a, b)
    dropped = augment_raw(ecg, np.random.default_rng(1), AugmentConfig(lead_drop_prob=1.0))
    assert dropped.shape == clean.shape and 1 <= int((np.abs(dropped).max(1) == 0).sum()) <= 2


def test_label_recipe_trains_from_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    """The `labels` recipe starts from the shipped self-supervised encoder, logs its losses and the 10-NN vote, saves a serving
    checkpoint with a new id (loadable, same config), and resumes from last.pt. In-process on a few real records."""
    from ecgregen.encoders.checkpoint import SELF_SUPERVISED_CHECKPOINT
    from ecgregen.pretrain.train import pretrain
    from tests.conftest import shared_ptbxl

    records = load_ptbxl(shared_ptbxl(), [1, 2])
    train, val = records[:32], records[-12:]
    out = tmp_path / "labels"
    torch.set_num_threads(2)
    pretrain(train, val, out, TrainSettings(recipe="labels", epochs=1, batch_size=16, lr=5e-4), max_steps=2)
    pretrain(train, val, out, TrainSettings(recipe="labels", epochs=2, batch_size=16, lr=5e-4), resume=True,
             max_steps=3)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    shipped = load_checkpoint(SELF_SUPERVISED_CHECKPOINT)
    assert log[0]["epoch"] == 0 and log[0]["init_from"] == shipped.encoder_id
    assert [e["epoch"] for e in log[1:]] == [1, 2] and [e["step"] for e in log[1:]] == [2, 3]
    assert set(log[1]["train"]) == set(log[1]["val"]) == {"supcon", "bce", "report"}
    assert all(0 <= log[2][k] <= 1 for k in ("vote_f1_micro", "vote_f1_macro", "top1_f1_micro", "top1_bleu4"))
    loaded = load_checkpoint(out / "encoder.pt")
    assert loaded.encoder_id.startswith("small-labels-") and loaded.encoder_id != shipped.encoder_id
    assert loaded.model.config == shipped.model.config
    assert set(torch.load(out / "encoder.pt", weights_only=True)["state_dict"]) == set(shipped.model.state_dict())
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # Its training record: this stage (labels of the training records' folds, the epoch kept, chosen on the
    # validation records' folds), then the shipped self-supervised stage it started from, read from that checkpoint.
    record = read_training(out / "encoder.pt")
    best = max(log[1:], key=lambda e: e["vote_f1_micro"])
    assert {k: record[k] for k in ("recipe", "labels", "train_folds", "validation_folds", "epoch", "step")} == {
        "recipe": "labels", "labels": True, "train_folds": folds_of(train), "validation_folds": folds_of(val),
        "epoch": best["epoch"], "step": best["step"]}
    assert record["init_from"] == {"encoder_id": shipped.encoder_id,
                                   "training": read_training(SELF_SUPERVISED_CHECKPOINT)}
    assert record["init_from"]["training"]["validation_folds"] == [9]  # the shipped stage's epoch: chosen on 9
    assert label_folds(record) == folds_of(train) and selection_folds(record) == sorted({*folds_of(val), 9})


def test_shipped_checkpoints_record_their_folds_and_old_ones_say_unknown(tmp_path: Path) -> None:
    """The shipped encoder learnt the labels of folds 1-7 and chose its epoch on fold 8, starting from the
    self-supervised one (folds 1-8 without labels, epoch chosen on fold 9); their weights load as before. A
    checkpoint saved without a record (as every one before records were kept) reads as unknown."""
    from ecgregen.encoders.checkpoint import SELF_SUPERVISED_CHECKPOINT, SHIPPED_CHECKPOINT

    shipped, ssl = read_training(SHIPPED_CHECKPOINT), read_training(SELF_SUPERVISED_CHECKPOINT)
    assert (shipped["recipe"], shipped["labels"], shipped["train_folds"], shipped["validation_folds"]) == (
        "labels+balanced", True, [1, 2, 3, 4, 5, 6, 7], [8])
    assert shipped["init_from"] == {"encoder_id": load_checkpoint(SELF_SUPERVISED_CHECKPOINT).encoder_id,
                                    "training": ssl}
    assert (ssl["labels"], ssl["train_folds"], ssl["validation_folds"], ssl["init_from"]) == (
        False, list(range(1, 9)), [9], "random")
    assert label_folds(shipped) == list(range(1, 8)) and selection_folds(shipped) == [8, 9]
    assert label_folds(ssl) == [] and selection_folds(ssl) == [9]

    model, _ = build_model(TrainSettings(recipe="mem-only"))
    save_serving(model, TrainSettings(recipe="mem-only"), tmp_path / "old.pt")
    assert read_training(tmp_path / "old.pt") is None
    assert label_folds(None) is None and describe(None).startswith("training unknown")
    # A record whose starting point's own record is missing: the labels it may have learnt there are unknown.
    orphan = {**shipped, "init_from": {"encoder_id": "x", "training": "unknown"}}
    assert label_folds(orphan) is None and "whose training is unknown" in describe(orphan)
