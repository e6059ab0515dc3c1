"""The encoder's PyTorch weights exported to ONNX and run by onnxruntime, in process: the served CPU default.

Why: on this project's CPU machines onnxruntime runs the same model 2-4x faster than eager PyTorch called from a
server's worker threads (measured by `ecgregen bench`), with outputs equal to 1e-6. The export is made once per
set of weights (keyed by their digest, so a retrained checkpoint never meets a stale file), cached beside the
other derived files, and checked against PyTorch every time it is loaded - a stale, truncated or foreign file is
re-exported, never served. The graph takes the model's fixed windows and their real lengths (see
:mod:`ecgregen.encoders.model`), so every ECG, short or long, runs through it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ecgregen.encoders.model import EncoderBundle, weights_digest
from ecgregen.encoders.pytorch import BatchingEncoder, embed_batch
from ecgregen.host import default_cache_dir

log = logging.getLogger(__name__)

INPUT_NAME = "ecg"
LENGTH_NAME = "samples"  # real samples per window; the rest is padding the model masks
OUTPUT_NAME = "embedding"
EXPORT_FORMAT = 2  # 2: windows + lengths (1: windows only); part of the cache key
ONNX_OPSET = 17
TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted on the check input


def export_onnx(bundle: EncoderBundle, path: Path) -> None:
    """Write the model as ONNX: inputs ``ecg`` (batch, 12, window) float32 and ``samples`` (batch,) int64, output
    ``embedding`` (batch, dim).

    Shared by the serving cache and the Triton repositories (`ecgregen export`), so both run the same graph.
    """
    model = bundle.model.eval()
    window = bundle.preprocess.window_samples
    example = (torch.zeros(2, 12, window), torch.tensor([window, window // 2]))
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated upstream but needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, example, str(path), input_names=[INPUT_NAME, LENGTH_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, LENGTH_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET, dynamo=False,
        )


def _session(path: Path, threads: int = 0):  # -> onnxruntime.InferenceSession (imported lazily: a heavy import)
    """A CPU session whose idle threads sleep instead of spinning, with `threads` per forward pass (0: one per core,
    onnxruntime's default).

    onnxruntime's threads spin after each run by default; in a server the cores they spin on are the ones the
    event loop and the next requests need (measured: GenerateReport at concurrency 8 over gRPC, 2 cores, 198
    calls/s p99 77 ms with spinning, 252 calls/s p99 53 ms without).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_inputs(window: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed pseudo-random batch (the same every time): full windows and padded ones of 2 s to 9.9 s at 100 Hz."""
    lengths = np.array([window, window, window // 5, window // 2, window - 1], np.int64)
    x = np.random.default_rng(0).standard_normal((len(lengths), 12, window)).astype(np.float32)
    x *= (np.arange(window)[None, :] < lengths[:, None])[:, None, :]
    return x, lengths


def run_session(session, windows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The exported graph on (n, 12, window) windows and their real lengths -> (n, dim)."""
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(windows, dtype=np.float32),
                              LENGTH_NAME: np.ascontiguousarray(lengths, dtype=np.int64)})[0]


def _difference(bundle: EncoderBundle, session) -> float:
    """Largest |onnxruntime - PyTorch| over :func:`check_inputs`."""
    x, lengths = check_inputs(bundle.preprocess.window_samples)
    return float(np.abs(run_session(session, x, lengths) - embed_batch(bundle.model, x, lengths)).max())


def load_or_export(bundle: EncoderBundle, cache_dir: Path | None = None, threads: int = 0):
    """An onnxruntime session equal to ``bundle``'s PyTorch model, from the cache or freshly exported into it, with
    `threads` per forward pass (0: one per core)."""
    directory = (cache_dir or default_cache_dir()) / "onnx"
    path = directory / (f"encoder-{weights_digest(bundle.model)}-{bundle.preprocess.window_samples}"
                        f"-v{EXPORT_FORMAT}.onnx")
    if path.exists():
        try:
            session = _session(path, threads)
            if _difference(bundle, session) <= TOLERANCE:
                return session
            log.warning("cached ONNX encoder %s differs from the weights; exporting it again", path)
        except Exception as exc:  # truncated or foreign file: export again
            log.warning("cached ONNX encoder %s is unusable (%s); exporting it again", path, exc)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".onnx.tmp")
    except OSError as exc:  # no writable cache: export for this process only (a few seconds at every start)
        log.warning("cannot cache the ONNX encoder in %s (%s); exporting it for this run only", directory, exc)
        with tempfile.TemporaryDirectory(prefix="ecgregen-onnx-") as scratch:
            return _export_checked(bundle, Path(scratch) / path.name, threads)
    os.close(fd)
    try:
        session = _export_checked(bundle, Path(tmp), threads)
        os.replace(tmp, path)  # atomic: concurrent starts never see half a file
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info("encoder exported to ONNX for onnxruntime: %s", path)
    return session


def _export_checked(bundle: EncoderBundle, path: Path, threads: int = 0):
    """Export to ``path`` and open it; refuse an export that does not compute what PyTorch computes."""
    export_onnx(bundle, path)
    session = _session(path, threads)
    difference = _difference(bundle, session)
    if difference > TOLERANCE:
        raise RuntimeError(f"the ONNX export differs from PyTorch by {difference:.2e} > {TOLERANCE:g}")
    log.info("ONNX export matches PyTorch (max difference %.1e)", difference)
    return session


class OnnxRuntimeEncoder(BatchingEncoder):
    """The bundle's model run by onnxruntime (CPU), callers batched as in :class:`BatchingEncoder`, with `threads`
    per forward pass (0: one per core).

    The trade (``ecgregen serve --encoder-threads``): a pass split over several threads pays for waking and joining
    them at each of the graph's operators, and finishes sooner only while the other cores are free. Measured on
    the 2-core development machine, 2026-12-07: alone, batch 1 / 4 / 8, 7.3 / 7.0 / 6.7 ms of CPU per ECG with one
    thread against 9.2 / 9.7 / 8.5 ms with two (5.8 / 5.7 / 4.7 ms wall against 7.3 / 7.0 / 6.7); in the server,
    beside its measurement worker (``ecgregen bench --sections measure --before-tree`` of a tree serving with two),
    one thread saved 1-6 % of the server's CPU per GenerateReport but answered 11 % fewer 100 Hz calls at
    concurrency 8 and took 1.2 ms longer per call at concurrency 1. So the default stays one thread per core.
    """

    def __init__(self, bundle: EncoderBundle, cache_dir: Path | None = None, max_batch: int = 64,
                 threads: int = 0) -> None:
        super().__init__(bundle, max_batch)
        self._session = load_or_export(bundle, cache_dir, threads)

    def _forward(self, windows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return run_session(self._session, windows, lengths)
