"""The encoder served by NVIDIA Triton: the same interface as the in-process runtimes (:mod:`ecgregen.encoders.base`).

The model's config (written by ``ecgregen export``) names the encoder id and preprocessing, so the service
checks its corpus against the model Triton actually serves, not against a local checkpoint. Like every runtime
it takes the preprocessing's fixed windows with their real lengths (``samples``), which the model masks.

Concurrent callers (the gRPC server's worker threads) are gathered into one infer call: a dispatcher thread
waits up to ``batch_window_s`` after the first pending request for others, up to the model's max batch. Triton's
own dynamic batcher does the same server-side; gathering here also saves a round trip per request.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from ecgregen.encoders.onnxrt import INPUT_NAME, LENGTH_NAME, OUTPUT_NAME
from ecgregen.errors import EncoderUnavailable
from ecgregen.metrics import dependency_ok
from ecgregen.preprocess import PreprocessConfig


@dataclass(frozen=True)
class TritonModel:
    """What the service needs to know about the served model (read from its config at start-up)."""

    name: str
    encoder_id: str
    preprocess: PreprocessConfig
    dim: int
    samples: int
    max_batch: int


def _describe(model: str, config: dict) -> TritonModel:
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    if "encoder_id" not in params or "preprocess" not in params:
        raise EncoderUnavailable(
            f"Triton model {model!r} has no encoder_id/preprocess parameters; export it with `ecgregen export`"
        )
    preprocess = PreprocessConfig.from_dict(json.loads(params["preprocess"]))
    inputs = {i["name"]: i for i in config["input"]}
    if set(inputs) != {INPUT_NAME, LENGTH_NAME}:
        raise EncoderUnavailable(f"Triton model {model!r} takes {sorted(inputs)}, not {INPUT_NAME!r} + "
                                 f"{LENGTH_NAME!r}: export it again with this version's `ecgregen export`")
    (out,) = config["output"]
    samples = int(inputs[INPUT_NAME]["dims"][-1])
    if samples != preprocess.window_samples:
        raise EncoderUnavailable(f"Triton model {model!r} takes {samples} samples, its preprocessing makes "
                                 f"{preprocess.window_samples}")
    return TritonModel(model, params["encoder_id"], preprocess, int(out["dims"][-1]), samples,
                       max(1, int(config.get("max_batch_size", 1))))


class TritonEncoder:
    """Encodes through a Triton server (gRPC); raises :class:`EncoderUnavailable` when Triton cannot answer."""

    def __init__(self, url: str, model: str = "ecg_encoder", *, timeout_s: float = 10.0,
                 batch_window_s: float = 0.002, startup_wait_s: float = 30.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.batch_window_s = batch_window_s
        # Reconnect quickly once Triton is back (gRPC's default backoff grows to 2 minutes).
        self._client = triton.InferenceServerClient(url, channel_args=[
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        self.model = self._wait_for_model(model, startup_wait_s)
        self._pending: queue.Queue[tuple[np.ndarray, int, Future[np.ndarray]] | None] = queue.Queue()
        self._dispatcher = threading.Thread(target=self._dispatch, name="triton-batcher", daemon=True)
        self._dispatcher.start()

    def _wait_for_model(self, model: str, wait_s: float) -> TritonModel:
        """Model-ready check at start-up: waits for Triton (it may still be loading), then reads the config."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                if self._client.is_server_ready(client_timeout=2) and self._client.is_model_ready(model):
                    return _describe(model, self._client.get_model_config(model, as_json=True)["config"])
                problem = f"model {model!r} is not ready"
            except InferenceServerException as exc:
                problem = str(exc)
            if time.monotonic() > deadline:
                raise EncoderUnavailable(f"Triton at {self.url} not usable after {wait_s:.0f} s: {problem}")
            time.sleep(0.5)

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def encoder_id(self) -> str:
        return self.model.encoder_id

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.model.preprocess

    def encode(self, windows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(n, 12, window) windows and their real lengths -> (n, dim) unit vectors, in input order (blocks)."""
        futures = []
        for window, length in zip(windows, lengths):
            future: Future[np.ndarray] = Future()
            self._pending.put((window.astype(np.float32, copy=False), int(length), future))
            futures.append(future)
        return np.stack([f.result() for f in futures]) if futures else np.empty((0, self.dim), np.float32)

    def encode_noting(self, windows: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, str]:
        return self.encode(windows, lengths), ""

    def _dispatch(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_window_s
            while len(batch) < self.model.max_batch:
                try:
                    item = self._pending.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._pending.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._infer(batch)

    def _infer(self, batch: list[tuple[np.ndarray, int, Future[np.ndarray]]]) -> None:
        data = np.stack([window for window, _, _ in batch])
        lengths = np.array([[length] for _, length, _ in batch], np.int64)
        inputs = [triton.InferInput(INPUT_NAME, list(data.shape), "FP32"),
                  triton.InferInput(LENGTH_NAME, list(lengths.shape), "INT64")]
        inputs[0].set_data_from_numpy(data)
        inputs[1].set_data_from_numpy(lengths)
        try:
            result = self._client.infer(self.model.name, inputs, outputs=[triton.InferRequestedOutput(OUTPUT_NAME)],
                                        client_timeout=self.timeout_s)
            vectors = result.as_numpy(OUTPUT_NAME)
        except InferenceServerException as exc:
            error = EncoderUnavailable(f"Triton at {self.url} ({self.model.name}): {exc.message() or exc}")
            for _, _, future in batch:
                future.set_exception(error)
            return
        dependency_ok("triton")
        for (_, _, future), vector in zip(batch, vectors):
            future.set_result(vector)

    def close(self) -> None:
        self._pending.put(None)
        self._dispatcher.join(timeout=5)
        self._client.close()
