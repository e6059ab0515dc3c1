"""`ecgregen export`: the encoder as Triton model repositories, each checked against PyTorch on real records."""

from __future__ import annotations

import argparse
from pathlib import Path

from ecgregen.settings import DEMO_PTBXL


def add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write Triton model repositories for the encoder, verified numerically")
    export.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped encoder")
    export.add_argument("--out", type=Path, default=Path("deploy/triton/model_repository"),
                        help="production repository (ONNX on onnxruntime_onnx, TorchScript on pytorch_libtorch)")
    export.add_argument("--python-out", type=Path, default=None,
                        help="python-backend repository (default: OUT with _python appended)")
    export.add_argument("--verify-ptbxl", type=Path, default=DEMO_PTBXL, help="records to verify on (PTB-XL layout)")
    export.add_argument("--verify-folds", default="9")
    export.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed")
    export.add_argument("--tensorrt-fp16", action="store_true", help="production config: TensorRT FP16 on GPU")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> None:
    from ecgregen.encoder_export.export import ExportMismatch, export_repositories
    from ecgregen.encoders.checkpoint import load_encoder
    from ecgregen.records import load_ptbxl, parse_folds

    records = load_ptbxl(args.verify_ptbxl, parse_folds(args.verify_folds))
    python_out = args.python_out or args.out.with_name(args.out.name + "_python")
    try:
        report = export_repositories(load_encoder(args.checkpoint), records, args.out, python_out,
                                     tolerance=args.tolerance, tensorrt_fp16=args.tensorrt_fp16)
    except ExportMismatch as exc:
        raise SystemExit(str(exc)) from None
    print(report.summary())
