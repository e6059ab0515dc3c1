"""The encoder served by NVIDIA Triton: the same interface as the in-process runtimes (:mod:`ecgregen.encoders.base`).

The model's config (written by ``ecgregen export``) names the encoder id and preprocessing, so the service
checks its corpus against the model Triton actually serves, not against a local checkpoint. Like every runtime
it takes the preprocessing's fixed windows with their real lengths (``samples``), which the model masks.

Concurrent callers (the gRPC server's worker threads) are gathered into one infer call: a dispatcher thread
waits up to ``batch_window_s`` after the first pending request for others, up to the model's max batch. Triton's
own dynamic batcher does the same server-side; gathering here also saves a round trip per request.

No caller waits on Triton without a deadline: each infer call has ``timeout_s`` and each ``encode`` gives up on
its results after ``timeout_s`` too (a request queued behind a hung batch would otherwise wait for that batch
first), and whatever the infer call raises fails only that batch - before, an exception other than Triton's
own killed the dispatcher thread and every later ``encode`` waited forever.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from ecgregen.encoders.onnxrt import INPUT_NAME, LENGTH_NAME, OUTPUT_NAME
from ecgregen.errors import EncoderUnavailable
from ecgregen.metrics import dependency_ok
from ecgregen.preprocess import PreprocessConfig
from ecgregen.settings import TRITON_MODEL, TRITON_WAIT_S


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

    def __init__(self, url: str, model: str = TRITON_MODEL, *, timeout_s: float = 10.0,
                 batch_window_s: float = 0.002, startup_wait_s: float = TRITON_WAIT_S) -> None:
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
                # Each call bounded: a Triton that accepts connections but never answers must not hang start-up.
                ready = self._client.is_server_ready(client_timeout=2) and self._client.is_model_ready(
                    model, client_timeout=2)
                if ready:
                    config = self._client.get_model_config(model, as_json=True, client_timeout=2)["config"]
                    return _describe(model, config)
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
        deadline = time.monotonic() + self.timeout_s
        try:
            vectors = [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except FutureTimeout:
            for future in futures:
                future.cancel()  # still queued: the dispatcher drops it instead of inferring it for nobody
            raise EncoderUnavailable(f"Triton at {self.url} ({self.model.name}): no answer within "
                                     f"{self.timeout_s:g} s") from None
        return np.stack(vectors) if vectors else np.empty((0, self.dim), np.float32)

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
            # Running futures can no longer be cancelled by a waiter that gave up; cancelled ones are dropped.
            batch = [item for item in batch if item[2].set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                vectors = self._infer(batch)
            except InferenceServerException as exc:
                self._fail(batch, exc.message() or str(exc))
            except Exception as exc:  # noqa: BLE001 - any other fault fails this batch, never the dispatcher
                self._fail(batch, f"{type(exc).__name__}: {exc}")
            else:
                dependency_ok("triton")
                for (_, _, future), vector in zip(batch, vectors):
                    future.set_result(vector)

    def _fail(self, batch: list[tuple[np.ndarray, int, Future[np.ndarray]]], cause: str) -> None:
        error = EncoderUnavailable(f"Triton at {self.url} ({self.model.name}): {cause}")
        for _, _, future in batch:
            future.set_exception(error)

    def _infer(self, batch: list[tuple[np.ndarray, int, Future[np.ndarray]]]) -> np.ndarray:
        """One infer call for `batch`; its (len(batch), dim) vectors, or whatever numpy / Triton raised."""
        data = np.stack([window for window, _, _ in batch])
        lengths = np.array([[length] for _, length, _ in batch], np.int64)
        inputs = [triton.InferInput(INPUT_NAME, list(data.shape), "FP32"),
                  triton.InferInput(LENGTH_NAME, list(lengths.shape), "INT64")]
        inputs[0].set_data_from_numpy(data)
        inputs[1].set_data_from_numpy(lengths)
        result = self._client.infer(self.model.name, inputs, outputs=[triton.InferRequestedOutput(OUTPUT_NAME)],
                                    client_timeout=self.timeout_s)
        vectors = result.as_numpy(OUTPUT_NAME)
        if vectors is None or vectors.shape != (len(batch), self.model.dim):
            shape = None if vectors is None else vectors.shape
            raise ValueError(f"Triton answered {OUTPUT_NAME!r} of shape {shape}, "
                             f"expected {(len(batch), self.model.dim)}")
        return vectors

    def close(self) -> None:
        self._pending.put(None)
        self._dispatcher.join(timeout=5)
        self._client.close()
