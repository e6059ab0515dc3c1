"""The ECG encoder: shapes, unit-norm output, the padding mask, determinism across processes, checkpoint round
trip and refusals, the onnxruntime runtime against PyTorch at every length, and callers sharing forward passes."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgregen.encoders.base import embed_prepared
from ecgregen.encoders.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, load_encoder, save_checkpoint
from ecgregen.encoders.model import CONFIGS, EcgEncoder, random_encoder
from ecgregen.encoders.onnxrt import OnnxRuntimeEncoder
from ecgregen.encoders.pytorch import InProcessEncoder, embed_batch
from ecgregen.preprocess import Preprocessed, preprocess
from ecgregen.records import load_ptbxl
from ecgregen.settings import DEMO_PTBXL
from tests.conftest import LENGTHS_S, real_ecg_of


def test_embeddings_are_unit_vectors_of_the_configured_dim() -> None:
    encoder = InProcessEncoder(random_encoder())
    windows = np.random.default_rng(0).normal(size=(3, 12, 1000)).astype(np.float32)
    lengths = np.array([1000, 1000, 640])
    windows[2, :, 640:] = 0.0
    out = encoder.encode(windows, lengths)
    assert out.shape == (3, CONFIGS["small"].dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    # Batched and one-by-one encoding agree.
    single = np.concatenate([encoder.encode(windows[i : i + 1], lengths[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(out, single, atol=1e-5)


def test_a_padded_window_embeds_as_the_short_ecg_alone() -> None:
    """The model honours the padding mask: 2-9.99 s zero-padded to the window give the vector the unpadded
    signal gives, so a short ECG's vector does not depend on how a runtime shapes its batch."""
    model = load_encoder(None).model
    x = np.random.default_rng(1).normal(size=(4, 12, 1000)).astype(np.float32)
    lengths = np.array([200, 500, 999, 1000])
    padded = x * (np.arange(1000)[None, :] < lengths[:, None])[:, None, :]
    with torch.inference_mode():
        alone = np.concatenate([model(torch.from_numpy(x[i : i + 1, :, :n])).numpy() for i, n in enumerate(lengths)])
        unmasked = model(torch.from_numpy(padded)).numpy()
    masked = InProcessEncoder(load_encoder(None)).encode(padded.astype(np.float32), lengths)
    np.testing.assert_allclose(masked, alone, atol=1e-5)
    assert np.abs(unmasked[:2] - alone[:2]).max() > 1e-3  # without the mask the padding would change the vector


def test_paper_config_builds_and_downsamples_16x() -> None:
    model = EcgEncoder(CONFIGS["paper"]).eval()
    with torch.inference_mode():
        tokens = model.tokens(torch.zeros(1, 12, 1000))
    assert tokens.shape == (1, 62, 768)


def test_seeded_random_encoder_is_identical_in_another_process() -> None:
    here = random_encoder().encoder_id
    there = subprocess.run(
        [sys.executable, "-c", "from ecgregen.encoders.model import random_encoder; print(random_encoder().encoder_id)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert here == there


def test_checkpoint_round_trip(tmp_path) -> None:  # noqa: ANN001
    bundle = random_encoder(seed=3)
    save_checkpoint(bundle, tmp_path / "enc.pt")
    loaded = load_checkpoint(tmp_path / "enc.pt")
    assert loaded.encoder_id == bundle.encoder_id and loaded.preprocess == bundle.preprocess
    x = np.random.default_rng(0).normal(size=(1, 12, 1000)).astype(np.float32)
    full = np.array([1000])
    np.testing.assert_array_equal(InProcessEncoder(bundle).encode(x, full), InProcessEncoder(loaded).encode(x, full))
    assert torch.load(tmp_path / "enc.pt", weights_only=True)["format"] == CHECKPOINT_FORMAT


def test_files_that_are_not_serving_checkpoints_are_refused_with_what_to_do(tmp_path: Path) -> None:
    bundle = random_encoder(seed=3)
    torch.save({"model": bundle.model.state_dict(), "optimizer": {}, "epoch": 3, "rng": np.random.get_state()},
               tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="not a serving checkpoint .*serve the best.pt"):
        load_checkpoint(tmp_path / "last.pt")
    save_checkpoint(bundle, tmp_path / "enc.pt")
    newer = torch.load(tmp_path / "enc.pt", weights_only=True) | {"format": CHECKPOINT_FORMAT + 1}
    torch.save(newer, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=f"format {CHECKPOINT_FORMAT + 1}, newer than .*upgrade ecgregen"):
        load_checkpoint(tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def _real_prepared(n: int) -> list[Preprocessed]:
    bundle = load_encoder(None)
    return [preprocess(r.load_ecg(), bundle.preprocess) for r in load_ptbxl(DEMO_PTBXL, [9])[:n]]


def test_onnxruntime_encoder_equals_pytorch_and_reuses_its_checked_export(tmp_path: Path) -> None:
    bundle = load_encoder(None)
    prepared = _real_prepared(12)
    windows, lengths = np.concatenate([p.windows for p in prepared]), np.concatenate([p.lengths for p in prepared])
    windows[0, :, 500:], lengths[0] = 0.0, 500  # a 5 s ECG: padded and masked in the same graph
    onnx = OnnxRuntimeEncoder(bundle, cache_dir=tmp_path)
    reference = InProcessEncoder(bundle).encode(windows, lengths)
    np.testing.assert_allclose(onnx.encode(windows, lengths), reference, atol=1e-5)

    (exported,) = (tmp_path / "onnx").glob("encoder-*.onnx")
    made = exported.stat().st_mtime_ns
    OnnxRuntimeEncoder(bundle, cache_dir=tmp_path)  # found in the cache and checked, not exported again
    assert exported.stat().st_mtime_ns == made

    exported.write_bytes(b"not an onnx model")  # a damaged cache file is replaced, never served
    again = OnnxRuntimeEncoder(bundle, cache_dir=tmp_path)
    np.testing.assert_allclose(again.encode(windows[:2], lengths[:2]), reference[:2], atol=1e-5)
    assert exported.stat().st_size > 1_000_000


@pytest.mark.parametrize("seconds", LENGTHS_S)
def test_an_ecg_of_any_length_embeds_alike_through_pytorch_and_onnxruntime(seconds: int, tmp_path: Path) -> None:
    """One length policy for every runtime: the same 5/10/20/60 s real ECG gives vectors within 1e-4."""
    bundle = load_encoder(None)
    prepared = [preprocess(real_ecg_of(seconds), bundle.preprocess)]
    assert len(prepared[0].windows) == max(1, -(-seconds // 10))
    torch_vector, _ = embed_prepared(InProcessEncoder(bundle), prepared)
    onnx_vector, _ = embed_prepared(OnnxRuntimeEncoder(bundle, cache_dir=tmp_path), prepared)
    assert np.abs(torch_vector - onnx_vector).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(torch_vector), 1, atol=1e-5)


class _CountingEncoder(InProcessEncoder):
    """The real in-process encoder, counting its forward passes (with their sizes); while ``hold`` is set the
    first pass waits for ``release``, so that the test can line callers up behind a running pass."""

    def __init__(self) -> None:
        super().__init__(load_encoder(None))
        self.pass_sizes: list[int] = []
        self.hold = False
        self.release = threading.Event()

    def _forward(self, windows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        self.pass_sizes.append(len(windows))
        if self.hold and len(self.pass_sizes) == 1:
            assert self.release.wait(60), "the callers never lined up"
        return super()._forward(windows, lengths)


def _arrive_together(encoder: _CountingEncoder, inputs: list[np.ndarray]) -> list[concurrent.futures.Future]:
    """Every input encoded by its own thread, all of them waiting while the first pass runs: then released."""
    encoder.pass_sizes.clear()
    encoder.hold, encoder.release = True, threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(inputs))
    futures = [pool.submit(encoder.encode, x, np.full(len(x), x.shape[-1])) for x in inputs]
    deadline = time.monotonic() + 60
    while True:  # one caller's job is in the held pass, the others queue behind it
        with encoder._cv:
            if len(encoder._waiting) == len(inputs) - 1:
                break
        assert time.monotonic() < deadline, "the callers never lined up"
        time.sleep(0.01)
    encoder.release.set()
    pool.shutdown(wait=True)
    encoder.hold = False
    return futures


def test_concurrent_callers_share_forward_passes_and_a_bad_input_fails_only_its_caller() -> None:
    """16 callers arriving while a pass runs are served by 2 forward passes (the running one, then one for the 15
    that waited), not 16, each getting the vector it gets alone; an 11-lead input among 16 good ones fails its own
    caller only (its batch is rerun caller by caller) and the others still get their one-by-one vectors."""
    encoder = _CountingEncoder()
    windows = np.concatenate([p.windows for p in _real_prepared(16)])
    alone = [encoder.encode(w[None], np.full(1, windows.shape[-1])) for w in windows]
    assert encoder.pass_sizes == [1] * 16  # one by one: one pass each

    futures = _arrive_together(encoder, [w[None] for w in windows])
    np.testing.assert_allclose(np.concatenate([f.result() for f in futures]), np.concatenate(alone), atol=1e-5)
    assert sorted(encoder.pass_sizes) == [1, 15], encoder.pass_sizes  # 2 passes for 16 callers

    bad = np.zeros((1, 11, windows.shape[-1]), dtype=np.float32)  # 11 leads: the model refuses it
    futures = _arrive_together(encoder, [*(w[None] for w in windows), bad])
    with pytest.raises(RuntimeError):
        futures[-1].result()
    np.testing.assert_allclose(np.concatenate([f.result() for f in futures[:-1]]), np.concatenate(alone), atol=1e-5)


def test_a_call_of_more_windows_than_max_batch_runs_in_passes_of_at_most_max_batch() -> None:
    """One bulk call of long real ECGs (60, 200 and 120 s: 38 windows) on an encoder with max_batch 8: the model's
    forward passes (counted by a torch forward hook) take at most 8 windows each - 5 passes, not one of 38 - and the
    vectors equal those of the 38 windows in one unchunked pass."""
    bundle = load_encoder(None)
    prepared = [preprocess(real_ecg_of(seconds), bundle.preprocess) for seconds in (60, 200, 120)]
    windows, lengths = np.concatenate([p.windows for p in prepared]), np.concatenate([p.lengths for p in prepared])
    assert len(windows) == 38
    passes: list[int] = []
    hook = bundle.model.register_forward_hook(lambda module, args, out: passes.append(len(args[0])))
    try:
        chunked = InProcessEncoder(bundle, max_batch=8).encode(windows, lengths)
        assert passes == [8, 8, 8, 8, 6], passes
        passes.clear()
        whole = embed_batch(bundle.model, windows.astype(np.float32), lengths.astype(np.int64))
        assert passes == [38]
    finally:
        hook.remove()
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
