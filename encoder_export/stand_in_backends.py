"""Stand-ins for Triton's ``onnxruntime`` and ``pytorch`` backends, so that the production repository - its configs
as ``ecgregen export`` writes them, its ONNX and TorchScript files - loads and serves in the ``tritonserver`` that
the ``nvidia-pytriton`` wheel bundles, which has only the Python backend (``backends/python``; no
``libtriton_onnxruntime.so``, no ``libtriton_pytorch.so``).

Each is a *Python-based backend*: a ``model.py`` in ``<backend directory>/<backend name>/``, which tritonserver
runs with its Python backend when it finds no C++ library of that name - the platform ``onnxruntime_onnx`` is the
backend ``onnxruntime``, ``pytorch_libtorch`` is ``pytorch``. Triton's core does everything it does for the real
backends (config parsing and normalisation, dynamic batching, the ``reshape`` of the length input, warm-up); the
stand-in runs the model file with the library the real backend embeds and checks the config against the model the
way the real backend binds them:

- ``onnxruntime``: every config input and output is a graph input/output of that name, type and shape (the real
  backend refuses a model otherwise);
- ``pytorch``: the config's inputs are bound to the TorchScript ``forward``'s arguments by name (libtorch's
  FORWARD_ARGUMENT convention) or by ``<name>__<index>``. Where neither holds, the real backend falls back to the
  inputs' order in the config, with a warning; the stand-in refuses such a config instead, since a repository that
  works only by that order is the defect it is here to catch.

Written into the backend directory by :func:`ecgregen.encoder_export.local_triton.start_local_triton` for tests;
never part of a deployment (a production Triton has the real backends).
"""

from __future__ import annotations

from pathlib import Path

_PRELUDE = '''
import json
import os
import sys

# The backend's stub starts its own interpreter; ECGREGEN_PYTHONPATH points it at the environment holding
# numpy, onnxruntime and torch.
sys.path[:0] = [p for p in os.environ.get("ECGREGEN_PYTHONPATH", "").split(os.pathsep) if p]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

_NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32}


def _model_dims(tensor):
    """The shape the model sees for a config input/output, batch dimension left out (``reshape`` applied)."""
    reshape = tensor.get("reshape")
    dims = reshape.get("shape", []) if isinstance(reshape, dict) else tensor.get("dims", [])
    return [int(d) for d in dims]


def _model_file(args, config, default):
    return os.path.join(args["model_repository"], args["model_version"],
                        config.get("default_model_filename") or default)


def _split(requests, names, dims):
    """Each request's inputs by name (shaped as the model takes them) joined along the batch, and each request's
    batch size."""
    parts = {name: [] for name in names}
    sizes = []
    for request in requests:
        for name in names:
            value = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            parts[name].append(value.reshape((value.shape[0], *dims[name])))
        sizes.append(len(parts[names[0]][-1]))
    return {name: np.concatenate(values) for name, values in parts.items()}, sizes


def _responses(outputs, sizes):
    responses, start = [], 0
    for size in sizes:
        responses.append(pb_utils.InferenceResponse(
            [pb_utils.Tensor(name, np.ascontiguousarray(value[start:start + size])) for name, value in outputs]))
        start += size
    return responses
'''

ONNXRUNTIME_MODEL = '''"""Stand-in for Triton's onnxruntime backend (see ecgregen.encoder_export.stand_in_backends)."""
''' + _PRELUDE + '''
import onnxruntime as ort  # noqa: E402

_ONNX_TYPES = {"TYPE_FP32": "tensor(float)", "TYPE_FP16": "tensor(float16)", "TYPE_INT64": "tensor(int64)",
               "TYPE_INT32": "tensor(int32)"}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.session = ort.InferenceSession(_model_file(args, config, "model.onnx"),
                                            providers=["CPUExecutionProvider"])
        batched = int(config.get("max_batch_size", 0)) > 0
        for kind, declared, graph in (("input", config["input"], self.session.get_inputs()),
                                      ("output", config["output"], self.session.get_outputs())):
            by_name = {g.name: g for g in graph}
            if sorted(t["name"] for t in declared) != sorted(by_name):
                names = sorted(t["name"] for t in declared)
                raise pb_utils.TritonModelException(f"the config's {kind}s are {names}, the graph's {sorted(by_name)}")
            for tensor in declared:
                node = by_name[tensor["name"]]
                if _ONNX_TYPES.get(tensor["data_type"]) != node.type:
                    raise pb_utils.TritonModelException(
                        f"{kind} {tensor['name']!r} is {tensor['data_type']} in the config, {node.type} in the graph")
                shape = list(node.shape[1:] if batched else node.shape)
                dims = _model_dims(tensor)
                if len(shape) != len(dims) or any(isinstance(s, int) and s != d for s, d in zip(shape, dims)):
                    raise pb_utils.TritonModelException(
                        f"{kind} {tensor['name']!r} has dims {dims} in the config, {shape} in the graph")
        self.inputs = [t["name"] for t in config["input"]]
        self.dims = {t["name"]: _model_dims(t) for t in config["input"]}
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        feeds, sizes = _split(requests, self.inputs, self.dims)
        outputs = self.session.run(self.outputs, feeds)
        return _responses(list(zip(self.outputs, outputs)), sizes)
'''

PYTORCH_MODEL = '''"""Stand-in for Triton's pytorch backend (see ecgregen.encoder_export.stand_in_backends)."""
''' + _PRELUDE + '''
import re  # noqa: E402

import torch  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.module = torch.jit.load(_model_file(args, config, "model.pt"), map_location="cpu").eval()
        arguments = [a.name for a in self.module.forward.schema.arguments][1:]  # after self
        names = [t["name"] for t in config["input"]]
        indexed = [re.fullmatch(r".+__(\\d+)", name) for name in names]
        if all(name in arguments for name in names):
            self.order = sorted(names, key=arguments.index)  # libtorch: FORWARD_ARGUMENT
        elif all(indexed):
            self.order = sorted(names, key=lambda name: int(re.fullmatch(r".+__(\\d+)", name).group(1)))
        else:
            raise pb_utils.TritonModelException(
                f"inputs {names} are neither arguments of the TorchScript forward ({', '.join(arguments)}) nor "
                "named <name>__<index>: libtorch would bind them only by their order in the config")
        if len(self.order) != len(arguments):
            raise pb_utils.TritonModelException(
                f"the TorchScript forward takes {', '.join(arguments)}; the config gives {', '.join(names)}")
        self.types = {t["name"]: _NUMPY_TYPES[t["data_type"]] for t in config["input"]}
        self.dims = {t["name"]: _model_dims(t) for t in config["input"]}
        if len(config["output"]) != 1:
            raise pb_utils.TritonModelException("the stand-in serves models with one output")
        self.output = config["output"][0]["name"]

    def execute(self, requests):
        feeds, sizes = _split(requests, self.order, self.dims)
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=self.types[name]))
                                for name in self.order))
        return _responses([(self.output, out.numpy())], sizes)
'''

STAND_INS = {"onnxruntime": ONNXRUNTIME_MODEL, "pytorch": PYTORCH_MODEL}


def install(backend_directory: Path) -> None:
    """Write each stand-in as ``<backend_directory>/<backend>/model.py`` (beside ``python/``, which runs them)."""
    for backend, code in STAND_INS.items():
        (backend_directory / backend).mkdir(parents=True, exist_ok=True)
        (backend_directory / backend / "model.py").write_text(code)
