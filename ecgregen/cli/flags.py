"""Flags more than one command takes, and what they turn into: the store and encoder flags, the collection's index
settings, the LLM, SCP codes given as JSON.

Stdlib only with the settings modules: every default comes from :mod:`ecgregen.settings` or
:mod:`ecgregen.llm.settings`, where the code that runs takes it from too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ecgregen.llm.models import DEFAULT_LOCAL_MODEL, LOCAL_MODELS
from ecgregen.llm.settings import JSON_MODES, LlmConfig, LlmSettings
from ecgregen.settings import (
    DATA_DIR,
    ENCODER_RUNTIMES,
    QUANTIZATIONS,
    TRITON_MODEL,
    TRITON_WAIT_S,
    IndexSettings,
)


def add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="embedded Qdrant store location (default ./var)")
    p.add_argument(
        "--qdrant-url", default=None,
        help="Qdrant server/cluster (http://host:6333) instead of the embedded store; "
        "':memory:' or 'local:PATH' use qdrant-client's local mode",
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="encoder checkpoint (default: the shipped pre-trained encoder)")
    p.add_argument("--triton-url", default=None, help="encode with the model in Triton at HOST:PORT (gRPC) instead")
    p.add_argument("--triton-model", default=TRITON_MODEL, help="model name in Triton's repository")
    p.add_argument("--triton-wait", type=float, default=TRITON_WAIT_S, help="seconds to wait for Triton and the model at start")


def add_runtime_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder-runtime", default=ENCODER_RUNTIMES[0], choices=ENCODER_RUNTIMES,
                   help="how the in-process encoder runs: onnxruntime (exported once, checked against PyTorch; "
                   "the fast CPU path) or eager torch")


def add_index_flags(p: argparse.ArgumentParser) -> None:
    d = IndexSettings()
    g = p.add_argument_group("collection settings (used when the collection is created)")
    g.add_argument("--hnsw-m", type=int, default=d.hnsw_m, help="HNSW graph degree")
    g.add_argument("--hnsw-ef-construct", type=int, default=d.hnsw_ef_construct, help="HNSW build beam width")
    g.add_argument("--full-scan-threshold-kb", type=int, default=d.full_scan_threshold_kb,
                   help="segments smaller than this are searched exhaustively (exact, faster there)")
    g.add_argument("--on-disk", action="store_true", help="keep vectors memory-mapped on disk instead of in RAM")
    g.add_argument("--quantization", default=d.quantization, choices=QUANTIZATIONS,
                   help="int8: scalar-quantised vectors in RAM (4x smaller), candidates rescored exactly")
    g.add_argument("--shards", type=int, default=d.shards, help="Qdrant cluster: shards of the collection")
    g.add_argument("--replicas", type=int, default=d.replicas, help="Qdrant cluster: replicas of each shard")


def index_settings(args: argparse.Namespace) -> IndexSettings:
    return IndexSettings(
        hnsw_m=args.hnsw_m, hnsw_ef_construct=args.hnsw_ef_construct, full_scan_threshold_kb=args.full_scan_threshold_kb,
        on_disk=args.on_disk, quantization=args.quantization, shards=args.shards, replicas=args.replicas,
    )


def add_llm_flags(parser: argparse.ArgumentParser) -> None:
    d = LlmConfig().settings
    g = parser.add_argument_group("LLM (QA with --answerer llm, report refinement)")
    g.add_argument("--llm-base-url", default="",
                   help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://vllm:8000/v1 "
                        "(default: start the bundled local model on loopback)")
    g.add_argument("--llm-model", default="", help="model name at --llm-base-url")
    g.add_argument("--llm-local-model", default=None, choices=tuple(LOCAL_MODELS),
                   help=f"the bundled model to start when there is no --llm-base-url (default: {DEFAULT_LOCAL_MODEL}; "
                        "qwen2.5-coder-1.5b needs `make llm-1.5b` first)")
    g.add_argument("--llm-api-key-env", default=d.api_key_env, help="environment variable holding the API key")
    g.add_argument("--llm-temperature", type=float, default=d.temperature)
    g.add_argument("--llm-max-tokens", type=int, default=d.max_tokens)
    g.add_argument("--llm-timeout", type=float, default=d.timeout_s, help="seconds per attempt")
    g.add_argument("--llm-retries", type=int, default=d.retries, help="retries after a failed attempt")
    g.add_argument("--llm-concurrency", type=int, default=d.concurrency, help="calls in flight at most")
    g.add_argument("--llm-json", default=d.json_mode, choices=JSON_MODES,
                   help="constrained output: json_schema (answers restricted to the options), json_object, off")
    g.add_argument("--llm-breaker-failures", type=int, default=d.breaker_failures,
                   help="consecutive failures that open the circuit breaker")
    g.add_argument("--llm-breaker-reset", type=float, default=d.breaker_reset_s,
                   help="seconds the breaker stays open before a trial call")
    g.add_argument("--llm-threads", type=int, default=None, help="CPU threads of the local model (default: all cores)")
    g.add_argument("--no-llm", action="store_true", help="retrieval only: no LLM is started or called")


def llm_config_from_args(args: argparse.Namespace) -> LlmConfig:
    if args.llm_model and not args.llm_base_url:
        raise ValueError("--llm-model names a model at --llm-base-url (give both); the local one is "
                         "chosen by --llm-local-model")
    if args.llm_local_model and args.llm_base_url:
        raise ValueError("--llm-local-model chooses the bundled model, which --llm-base-url replaces; "
                         "name the endpoint's model with --llm-model")
    local_model = args.llm_local_model or DEFAULT_LOCAL_MODEL
    settings = LlmSettings(
        base_url=args.llm_base_url, model=args.llm_model or LOCAL_MODELS[local_model].served_name,
        api_key_env=args.llm_api_key_env,
        temperature=args.llm_temperature, max_tokens=args.llm_max_tokens, timeout_s=args.llm_timeout,
        retries=args.llm_retries, concurrency=args.llm_concurrency, json_mode=args.llm_json,
        breaker_failures=args.llm_breaker_failures, breaker_reset_s=args.llm_breaker_reset,
    )
    return LlmConfig(enabled=not args.no_llm, settings=settings, threads=args.llm_threads, local_model=local_model)


def scp_codes(text: str) -> dict[str, float]:
    """``--scp-codes`` of `index` and `client insert`: a JSON object of code -> likelihood."""
    try:
        codes = json.loads(text)
        if not isinstance(codes, dict):
            raise ValueError
        return {str(k): float(v) for k, v in codes.items()}
    except (ValueError, TypeError):
        raise SystemExit(f'--scp-codes must be a JSON object of code -> likelihood, got {text!r}') from None
