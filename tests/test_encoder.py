"""The ECG encoder: shapes, unit-norm output, determinism across processes, checkpoint round trip, the onnxruntime
runtime against PyTorch, and callers sharing forward passes."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgregen.encoder import (
    CONFIGS,
    EcgEncoder,
    InProcessEncoder,
    load_checkpoint,
    load_encoder,
    random_encoder,
    save_checkpoint,
)
from ecgregen.onnx_encoder import OnnxRuntimeEncoder
from ecgregen.preprocess import preprocess
from ecgregen.records import DEMO_PTBXL, load_ptbxl


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


def _real_signals(n: int) -> list[np.ndarray]:
    bundle = load_encoder(None)
    return [preprocess(r.load_ecg(), bundle.preprocess).signal for r in load_ptbxl(DEMO_PTBXL, [9])[:n]]


def test_onnxruntime_encoder_equals_pytorch_and_reuses_its_checked_export(tmp_path: Path) -> None:
    bundle = load_encoder(None)
    signals = _real_signals(12)
    short = signals[0][:, :500]  # 5 s: the export's time axis is fixed, so this one runs through PyTorch
    onnx = OnnxRuntimeEncoder(bundle, cache_dir=tmp_path)
    reference = InProcessEncoder(bundle).encode([*signals, short])
    np.testing.assert_allclose(onnx.encode([*signals, short]), reference, atol=1e-5)

    (exported,) = (tmp_path / "onnx").glob("encoder-*.onnx")
    made = exported.stat().st_mtime_ns
    OnnxRuntimeEncoder(bundle, cache_dir=tmp_path)  # found in the cache and checked, not exported again
    assert exported.stat().st_mtime_ns == made

    exported.write_bytes(b"not an onnx model")  # a damaged cache file is replaced, never served
    again = OnnxRuntimeEncoder(bundle, cache_dir=tmp_path)
    np.testing.assert_allclose(again.encode(signals[:2]), reference[:2], atol=1e-5)
    assert exported.stat().st_size > 1_000_000


def test_concurrent_callers_share_passes_and_a_bad_input_fails_only_its_caller() -> None:
    encoder = InProcessEncoder(load_encoder(None))
    signals = _real_signals(16)
    alone = encoder.encode(signals)
    bad = np.zeros((11, 1000), dtype=np.float32)  # 11 leads: the model refuses it
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        good = [pool.submit(encoder.encode, [s]) for s in signals]
        failing = pool.submit(encoder.encode, [bad])
        results = np.concatenate([f.result() for f in good])
        with pytest.raises(RuntimeError):
            failing.result()
    np.testing.assert_allclose(results, alone, atol=1e-5)
