"""Bringing the LLM stage up and down: a local model by default (``--llm-local-model``), a remote endpoint by
flag, or none.

A server whose LLM cannot start still serves: it runs retrieval-only, logs why at start-up, and reports it in
``GetServerInfo`` and the ``ecgregen.v1.llm`` health entry. ``--llm-*`` flags are shared by ``serve`` and
``evaluate qa`` through :func:`add_llm_flags` / :func:`llm_config_from_args`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ecgregen.answer import LabelVoteAnswerer
from ecgregen.llm.answerer import LlmAnswerer
from ecgregen.llm.client import JSON_MODES, LlmClient, LlmSettings
from ecgregen.llm.local import (
    DEFAULT_LOCAL_MODEL,
    LOCAL_MODEL_NAME,
    LOCAL_MODELS,
    LocalModelError,
    LocalModelServer,
    start_local_model,
)

log = logging.getLogger("ecgregen.llm")

LOCAL = "local"


@dataclass(frozen=True)
class LlmConfig:
    """What the operator asked for. ``enabled=False``: retrieval-only. ``base_url=""``: start the local model."""

    enabled: bool = True
    settings: LlmSettings = LlmSettings(base_url="", model=LOCAL_MODEL_NAME)
    threads: int | None = None  # local model only
    local_model: str = DEFAULT_LOCAL_MODEL  # which of LOCAL_MODELS, when the local model is started

    @property
    def local(self) -> bool:
        return self.enabled and not self.settings.base_url


def add_llm_flags(parser: argparse.ArgumentParser) -> None:
    d = LlmSettings(base_url="", model=LOCAL_MODEL_NAME)
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


class LlmStage:
    """The running LLM answerer (or why there is none) and the local model process it may own."""

    def __init__(self, answerer: LlmAnswerer | None, endpoint: str, detail: str, local: LocalModelServer | None) -> None:
        self.answerer = answerer
        self.endpoint = endpoint
        self.detail = detail
        self.local = local

    @classmethod
    async def start(
        cls, config: LlmConfig, fallback: LabelVoteAnswerer, *, log_dir: Path | None = None
    ) -> LlmStage:
        if not config.enabled:
            return cls(None, "", "disabled (--no-llm)", None)
        local = None
        settings = config.settings
        if config.local:
            try:
                local = await asyncio.to_thread(
                    start_local_model, config.local_model, threads=config.threads,
                    log_path=(log_dir / "llm.log") if log_dir else None,
                )
            except (LocalModelError, OSError) as exc:  # OSError: e.g. the cache folder cannot be written
                log.error("local LLM could not start (%s): serving retrieval-only", exc)
                return cls(None, LOCAL, f"local model could not start: {exc}", None)
            settings = replace(settings, base_url=local.base_url, model=local.model)
            log.info("local LLM %s serving on %s", local.model, local.base_url)
        answerer = LlmAnswerer(LlmClient(settings), fallback, fallback.vocabulary.descriptions)
        return cls(answerer, LOCAL if local else settings.base_url, "", local)

    @property
    def model(self) -> str:
        return self.answerer.client.model if self.answerer else ""

    def circuit(self) -> str:
        return self.answerer.client.breaker.state if self.answerer else ""

    async def close(self) -> None:
        if self.answerer:
            await self.answerer.client.close()
        if self.local:
            await asyncio.to_thread(self.local.stop)
