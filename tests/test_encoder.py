"""The ECG encoder: shapes, unit-norm output, determinism across processes, checkpoint round trip."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from ecgregen.encoder import CONFIGS, EcgEncoder, InProcessEncoder, load_checkpoint, random_encoder, save_checkpoint


def test_embeddings_are_unit_vectors_of_the_configured_dim() -> None:
    encoder = InProcessEncoder(random_encoder())
    signals = [np.random.default_rng(i).normal(size=(12, n)).astype(np.float32) for i, n in enumerate((1000, 1000, 640))]
    out = encoder.encode(signals)
    assert out.shape == (3, CONFIGS["small"].dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    # Batched and one-by-one encoding agree (equal lengths are batched together).
    single = np.concatenate([encoder.encode([s]) for s in signals])
    np.testing.assert_allclose(out, single, atol=1e-5)


def test_paper_config_builds_and_downsamples_16x() -> None:
    model = EcgEncoder(CONFIGS["paper"]).eval()
    with torch.inference_mode():
        tokens = model.tokens(torch.zeros(1, 12, 1000))
    assert tokens.shape == (1, 62, 768)


def test_seeded_random_encoder_is_identical_in_another_process() -> None:
    here = random_encoder().encoder_id
    there = subprocess.run(
        [sys.executable, "-c", "from ecgregen.encoder import random_encoder; print(random_encoder().encoder_id)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert here == there


def test_checkpoint_round_trip(tmp_path) -> None:  # noqa: ANN001
    bundle = random_encoder(seed=3)
    save_checkpoint(bundle, tmp_path / "enc.pt")
    loaded = load_checkpoint(tmp_path / "enc.pt")
    assert loaded.encoder_id == bundle.encoder_id and loaded.preprocess == bundle.preprocess
    x = [np.random.default_rng(0).normal(size=(12, 1000)).astype(np.float32)]
    np.testing.assert_array_equal(InProcessEncoder(bundle).encode(x), InProcessEncoder(loaded).encode(x))
