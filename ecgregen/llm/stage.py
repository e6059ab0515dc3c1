"""Bringing the LLM stage up and down: a local model by default (``--llm-local-model``), a remote endpoint by
flag, or none.

A server whose LLM cannot start still serves: it runs retrieval-only, logs why at start-up, and reports it in
``GetServerInfo`` and the ``ecgregen.v1.llm`` health entry. What is asked for is an
:class:`~ecgregen.llm.settings.LlmConfig`, which the ``--llm-*`` flags of ``serve`` and ``evaluate qa`` make.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from ecgregen.answer import LabelVoteAnswerer
from ecgregen.llm.answerer import LlmAnswerer
from ecgregen.llm.client import LlmClient
from ecgregen.llm.local import LocalModelError, LocalModelServer, start_local_model
from ecgregen.llm.settings import LlmConfig

log = logging.getLogger("ecgregen.llm")

LOCAL = "local"


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
