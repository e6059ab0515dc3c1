"""Export the ECG encoder as Triton model repositories, verified against the PyTorch model.

Two repositories, one model name and one interface (inputs ``ecg`` [12, L] float32 windows at the model's rate
and ``samples`` [1] int64, each window's real length, which the model masks; output ``embedding`` [dim] float32,
L2-normalised; batch dimension managed by Triton):

- production (``--out``): ``ecg_encoder`` on the ``onnxruntime_onnx`` platform (dynamic batching, instance groups,
  warm-up, optional TensorRT FP16 on GPU) and ``ecg_encoder_torchscript`` on ``pytorch_libtorch`` (its TorchScript
  ``forward`` takes ``ecg`` and ``samples``, the names libtorch binds the config's inputs by);
- python-backend (``--python-out``): ``ecg_encoder`` as a Triton ``python`` backend model that runs the same ONNX
  file with onnxruntime - for Triton builds without the onnxruntime backend, such as the ``tritonserver`` that
  the ``nvidia-pytriton`` wheel bundles (what the tests run here).

Each config carries the encoder id and preprocessing as parameters, so a service pointed at Triton knows which
corpus the model belongs to without the checkpoint. A TensorRT FP16 export computes other vectors than the FP32
model, so it carries its own id (``<encoder id>-fp16``): a corpus embedded in FP32 is never searched with it, nor
is it mixed with the FP32 in-process fallback. The export fails unless ONNX (through onnxruntime) and TorchScript
agree with PyTorch within ``tolerance`` on real records, whole and cut short.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ecgregen.encoders.model import EncoderBundle
from ecgregen.encoders.onnxrt import INPUT_NAME, LENGTH_NAME, OUTPUT_NAME, export_onnx, run_session
from ecgregen.preprocess import preprocess
from ecgregen.records import EcgRecord
from ecgregen.settings import TRITON_MODEL

MODEL_NAME = TRITON_MODEL
TORCHSCRIPT_NAME = "ecg_encoder_torchscript"
MAX_BATCH = 64
PREFERRED_BATCHES = (8, 16, 32)
QUEUE_DELAY_US = 2000  # how long Triton may hold a request to batch it with others

PYTHON_MODEL = '''"""Triton python-backend model: the exported ONNX encoder run with onnxruntime (written by `ecgregen export`)."""

import os
import sys

# The backend's stub starts its own interpreter; ECGREGEN_PYTHONPATH points it at the environment holding
# numpy (< 2) and onnxruntime when they are not in that interpreter's own site-packages.
sys.path[:0] = [p for p in os.environ.get("ECGREGEN_PYTHONPATH", "").split(os.pathsep) if p]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ECGREGEN_ORT_THREADS", "0"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # Triton hands over the requests it batched; run them as one onnxruntime call.
        batches = [pb_utils.get_input_tensor_by_name(r, "ecg").as_numpy() for r in requests]
        lengths = [pb_utils.get_input_tensor_by_name(r, "samples").as_numpy().reshape(-1) for r in requests]
        out = self.session.run(None, {"ecg": np.concatenate(batches).astype(np.float32),
                                      "samples": np.concatenate(lengths).astype(np.int64)})[0]
        responses, start = [], 0
        for batch in batches:
            part = out[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("embedding", part)]))
        return responses
'''


@dataclass
class ExportReport:
    production: Path
    python_backend: Path
    encoder_id: str
    records_checked: int
    onnx_max_abs_diff: float
    torchscript_max_abs_diff: float

    def summary(self) -> str:
        return (
            f"exported encoder {self.encoder_id}\n"
            f"  production repository:     {self.production} ({MODEL_NAME}: onnxruntime_onnx, "
            f"{TORCHSCRIPT_NAME}: pytorch_libtorch)\n"
            f"  python-backend repository: {self.python_backend} ({MODEL_NAME}: python + onnxruntime)\n"
            f"  verified on {self.records_checked} records: max |ONNX - PyTorch| = {self.onnx_max_abs_diff:.2e}, "
            f"max |TorchScript - PyTorch| = {self.torchscript_max_abs_diff:.2e}"
        )


class ExportMismatch(RuntimeError):
    """An exported model does not reproduce the PyTorch embeddings within the tolerance."""


class _TritonInterface(torch.nn.Module):
    """The encoder with its forward's arguments named as the Triton inputs (``ecg``, ``samples``): the libtorch
    backend binds a config's inputs to the TorchScript ``forward``'s arguments by name; with the model's own
    ``x``/``lengths`` it could only fall back to their order in the config."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ecg: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        return self.model(ecg, samples)


def trace_for_triton(model: torch.nn.Module, samples: int) -> torch.jit.ScriptModule:
    """The TorchScript the ``pytorch_libtorch`` config serves: its forward takes (ecg, samples) as the config says."""
    example = (torch.zeros(2, 12, samples), torch.tensor([samples, samples // 2]))
    with torch.inference_mode():
        scripted = torch.jit.trace(_TritonInterface(model).eval(), example)
    arguments = [a.name for a in scripted.forward.schema.arguments][1:]
    if arguments != [INPUT_NAME, LENGTH_NAME]:
        raise ExportMismatch(f"the TorchScript forward takes {arguments}, the Triton config gives "
                             f"{[INPUT_NAME, LENGTH_NAME]}")
    return scripted


FP16_SUFFIX = "-fp16"


def _parameters(bundle: EncoderBundle, encoder_id: str | None = None) -> str:
    preprocess_json = json.dumps(dataclasses.asdict(bundle.preprocess))
    return (
        f'parameters {{ key: "encoder_id" value: {{ string_value: "{encoder_id or bundle.encoder_id}" }} }}\n'
        f"parameters {{ key: \"preprocess\" value: {{ string_value: {json.dumps(preprocess_json)} }} }}\n"
    )


def _io(samples: int, dim: int) -> str:
    """The windows, their lengths (one number per window: [1] to Triton's clients, a scalar to the model)."""
    return (
        f'input [ {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ 12, {samples} ] }},\n'
        f'        {{ name: "{LENGTH_NAME}" data_type: TYPE_INT64 dims: [ 1 ] reshape: {{ shape: [ ] }} }} ]\n'
        f'output [ {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {dim} ] }} ]\n'
    )


def _batching() -> str:
    return (
        f"max_batch_size: {MAX_BATCH}\n"
        f"dynamic_batching {{ preferred_batch_size: [ {', '.join(map(str, PREFERRED_BATCHES))} ] "
        f"max_queue_delay_microseconds: {QUEUE_DELAY_US} }}\n"
    )


def _warmup(samples: int) -> str:
    return (
        f'model_warmup [ {{ name: "zeros" batch_size: 1 inputs {{ key: "{INPUT_NAME}" value: '
        f"{{ data_type: TYPE_FP32 dims: [ 12, {samples} ] zero_data: true }} }} "
        f'inputs {{ key: "{LENGTH_NAME}" value: {{ data_type: TYPE_INT64 dims: [ 1 ] zero_data: true }} }} }} ]\n'
    )


def production_config(bundle: EncoderBundle, *, tensorrt_fp16: bool = False) -> str:
    samples, dim = bundle.preprocess.window_samples, bundle.model.config.dim
    text = (
        f'name: "{MODEL_NAME}"\nplatform: "onnxruntime_onnx"\n' + _batching() + _io(samples, dim)
        + "instance_group [ { count: 1 kind: KIND_GPU } ]\n" + _warmup(samples)
        + _parameters(bundle, bundle.encoder_id + FP16_SUFFIX if tensorrt_fp16 else None)
    )
    if tensorrt_fp16:  # TensorRT builds an FP16 engine for the ONNX graph on first load (GPU only)
        text += (
            'optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" '
            'parameters { key: "precision_mode" value: "FP16" } '
            'parameters { key: "max_workspace_size_bytes" value: "1073741824" } } ] } }\n'
        )
    return text


def torchscript_config(bundle: EncoderBundle) -> str:
    samples, dim = bundle.preprocess.window_samples, bundle.model.config.dim
    return (
        f'name: "{TORCHSCRIPT_NAME}"\nplatform: "pytorch_libtorch"\n' + _batching() + _io(samples, dim)
        + "instance_group [ { count: 1 kind: KIND_GPU } ]\n" + _parameters(bundle)
    )


def python_config(bundle: EncoderBundle) -> str:
    samples, dim = bundle.preprocess.window_samples, bundle.model.config.dim
    return (
        f'name: "{MODEL_NAME}"\nbackend: "python"\n' + _batching() + _io(samples, dim)
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n" + _parameters(bundle)
    )


def reference_inputs(bundle: EncoderBundle, records: Sequence[EcgRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Real records' windows as the service makes them, and every other one cut to its first 2-9 s (padded and
    masked), so the check covers the mask too."""
    windows, lengths = [], []
    for i, record in enumerate(records):
        ecg = record.load_ecg()
        if i % 2:
            keep = int(ecg.sampling_rate_hz * (2 + i % 8))
            ecg = dataclasses.replace(ecg, signal=ecg.signal[:, :keep])
        prepared = preprocess(ecg, bundle.preprocess)
        windows.append(prepared.windows)
        lengths.append(prepared.lengths)
    return np.concatenate(windows), np.concatenate(lengths)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def export_repositories(
    bundle: EncoderBundle, records: Sequence[EcgRecord], out: Path, python_out: Path, *,
    tolerance: float = 1e-4, tensorrt_fp16: bool = False,
) -> ExportReport:
    """Write both repositories (replacing what was there) and verify them on `records`; raise on a mismatch."""
    import onnxruntime as ort

    if not records:
        raise ValueError("export needs real records to verify the exported models against")
    model = bundle.model.eval()
    samples = bundle.preprocess.window_samples
    for repository in (out, python_out):
        shutil.rmtree(repository / MODEL_NAME, ignore_errors=True)
    shutil.rmtree(out / TORCHSCRIPT_NAME, ignore_errors=True)
    onnx_path = out / MODEL_NAME / "1" / "model.onnx"
    onnx_path.parent.mkdir(parents=True)
    export_onnx(bundle, onnx_path)
    script_path = out / TORCHSCRIPT_NAME / "1" / "model.pt"
    script_path.parent.mkdir(parents=True)
    trace_for_triton(model, samples).save(str(script_path))
    _write(out / MODEL_NAME / "config.pbtxt", production_config(bundle, tensorrt_fp16=tensorrt_fp16))
    _write(out / TORCHSCRIPT_NAME / "config.pbtxt", torchscript_config(bundle))
    _write(python_out / MODEL_NAME / "config.pbtxt", python_config(bundle))
    _write(python_out / MODEL_NAME / "1" / "model.py", PYTHON_MODEL)
    shutil.copyfile(onnx_path, python_out / MODEL_NAME / "1" / "model.onnx")

    inputs, lengths = reference_inputs(bundle, records)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    loaded = torch.jit.load(str(script_path))
    onnx_diff = script_diff = 0.0
    with torch.inference_mode():
        for start in range(0, len(inputs), 16):
            batch, batch_lengths = inputs[start : start + 16], lengths[start : start + 16]
            args = (torch.from_numpy(batch), torch.from_numpy(batch_lengths))
            reference = model(*args).numpy()
            onnx_diff = max(onnx_diff, float(np.abs(run_session(session, batch, batch_lengths) - reference).max()))
            script_diff = max(script_diff, float(np.abs(loaded(*args).numpy() - reference).max()))
    if max(onnx_diff, script_diff) > tolerance:
        raise ExportMismatch(
            f"exported models differ from PyTorch by up to {max(onnx_diff, script_diff):.2e} (ONNX {onnx_diff:.2e}, "
            f"TorchScript {script_diff:.2e}) > {tolerance:g}; the repositories in {out} and {python_out} are not usable"
        )
    return ExportReport(out, python_out, bundle.encoder_id, len(inputs), onnx_diff, script_diff)
