"""One client for any OpenAI-compatible chat endpoint, hardened for a service that must not stall on it.

Built on the ``openai`` package (its own retries off, so every attempt is counted and jittered here):
- a per-attempt timeout, and bounded retries with exponential backoff and full jitter on what is worth retrying
  (connection errors, timeouts, 429, 5xx; never other 4xx);
- a concurrency limit (a queue wait longer than the timeout fails instead of piling up);
- a circuit breaker: after N consecutive failed attempts the endpoint is not called for a cool-down, then one
  trial call decides whether it closes again. A dead endpoint then costs microseconds, not timeouts.
Callers get :class:`LlmUnavailable` and fall back to what retrieval alone can answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from ecgregen.api_values import FallbackReason
from ecgregen.llm.settings import LlmSettings
from ecgregen.metrics import LLM_BREAKER_OPEN, LLM_CALLS, LLM_TOKENS, dependency_failed, dependency_ok

log = logging.getLogger("ecgregen.llm")

# What one failed attempt can raise: the client's own errors, the transport's when a stream is cut mid-way, and
# ValueError (JSON decoding, pydantic validation) when the endpoint's body is not the OpenAI wire format.
ATTEMPT_ERRORS = (TimeoutError, openai.OpenAIError, httpx.HTTPError, ValueError)


class LlmFailure(Exception):
    """The LLM gave no usable answer; `reason` is the short tag that fallbacks and metrics are counted by."""

    def __init__(self, reason: FallbackReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class LlmUnavailable(LlmFailure):
    """No reply: endpoint down, slow, failing, busy, or the circuit is open."""


@dataclass
class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (cool-down) -> half-open: one trial -> closed or open."""

    failures_to_open: int
    reset_s: float
    clock: Callable[[], float] = time.monotonic
    consecutive_failures: int = 0
    opened_at: float | None = None
    _trial_running: bool = field(default=False, repr=False)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def abandon(self) -> None:
        """A call ended without a verdict (cancelled): free the half-open trial slot for the next caller."""
        self._trial_running = False

    def record(self, ok: bool) -> None:
        self._trial_running = False
        if ok:
            self.consecutive_failures, self.opened_at = 0, None
        else:
            self.consecutive_failures += 1
            if self.opened_at is not None or self.consecutive_failures >= self.failures_to_open:
                self.opened_at = self.clock()  # (re)open: a failed trial starts a new cool-down
        LLM_BREAKER_OPEN.set(0 if self.opened_at is None else 1)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, TimeoutError, httpx.TransportError)):
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code == 429 or exc.status_code >= 500)


def _describe(exc: Exception) -> tuple[FallbackReason, str]:
    """(metric/fallback reason, human detail) of a failed attempt."""
    if isinstance(exc, (openai.APITimeoutError, TimeoutError, httpx.TimeoutException)):
        return FallbackReason.TIMEOUT, "no reply within the timeout"
    if isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
        return FallbackReason.CONNECTION, f"cannot reach the endpoint ({exc.__cause__ or exc})"
    if isinstance(exc, openai.APIStatusError):
        reason = (FallbackReason.RATE_LIMITED if exc.status_code == 429 else
                  FallbackReason.SERVER_ERROR if exc.status_code >= 500 else FallbackReason.REJECTED)
        return reason, f"HTTP {exc.status_code}: {str(exc.message)[:200]}"
    if isinstance(exc, ValueError):
        return FallbackReason.BAD_RESPONSE, f"the endpoint's reply is not an OpenAI chat completion ({str(exc)[:200]})"
    return FallbackReason.ERROR, f"{type(exc).__name__}: {exc}"


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


class LlmClient:
    """Async chat completions with timeout, retries, a concurrency limit and a circuit breaker.

    Create it inside the event loop that uses it (the HTTP connection pool belongs to that loop).
    """

    def __init__(self, settings: LlmSettings, *, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.settings = settings
        self._api = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=os.environ.get(settings.api_key_env) or "not-needed",  # local servers take any key
            max_retries=0,
            timeout=settings.timeout_s,
        )
        self._slots = asyncio.Semaphore(settings.concurrency)
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        self._sleep = sleep

    @property
    def model(self) -> str:
        return self.settings.model

    def _request(self, messages: list[dict[str, str]], schema: dict[str, Any] | None) -> dict[str, Any]:
        s = self.settings
        request: dict[str, Any] = {
            "model": s.model, "messages": messages, "temperature": s.temperature, "max_tokens": s.max_tokens,
        }
        if schema is not None and s.json_mode == "json_schema":
            request["response_format"] = {
                "type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        elif schema is not None and s.json_mode == "json_object":
            request["response_format"] = {"type": "json_object"}
        return request

    async def _acquire(self) -> None:
        try:
            await asyncio.wait_for(self._slots.acquire(), self.settings.timeout_s)
        except TimeoutError:
            LLM_CALLS.labels("busy").inc()
            raise LlmUnavailable(FallbackReason.BUSY, f"all {self.settings.concurrency} LLM slots stayed busy for "
                                         f"{self.settings.timeout_s:.0f} s") from None

    def _gate(self) -> None:
        if not self.breaker.allow():
            LLM_CALLS.labels("circuit_open").inc()
            raise LlmUnavailable(
                FallbackReason.CIRCUIT_OPEN,
                f"LLM endpoint failed {self.breaker.consecutive_failures} times in a row; "
                f"not called for {self.settings.breaker_reset_s:.0f} s",
            )

    def _failed(self, exc: Exception, attempt: int) -> tuple[str, str]:
        reason, detail = _describe(exc)
        LLM_CALLS.labels(reason).inc()
        self.breaker.record(False)
        dependency_failed("llm")
        log.warning("LLM attempt %d/%d failed: %s", attempt + 1, self.settings.retries + 1, detail)
        return reason, detail

    def _succeeded(self, prompt_tokens: int, completion_tokens: int) -> None:
        LLM_CALLS.labels("ok").inc()
        LLM_TOKENS.labels("prompt").inc(prompt_tokens)
        LLM_TOKENS.labels("completion").inc(completion_tokens)
        self.breaker.record(True)
        dependency_ok("llm")

    async def _backoff(self, attempt: int) -> None:
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2**attempt)
        await self._sleep(random.uniform(0, cap))  # full jitter: retries from many callers spread out

    async def complete(self, messages: list[dict[str, str]], schema: dict[str, Any] | None = None) -> Completion:
        """One chat completion (JSON-constrained when `schema` is given and the mode allows)."""
        request = self._request(messages, schema)
        await self._acquire()
        try:
            attempt = 0
            while True:
                self._gate()
                try:
                    response = await self._api.chat.completions.create(**request)
                except ATTEMPT_ERRORS as exc:
                    reason, detail = self._failed(exc, attempt)
                    if not _retryable(exc) or attempt == self.settings.retries:
                        raise LlmUnavailable(reason, detail) from None
                    await self._backoff(attempt)
                    attempt += 1
                    continue
                except BaseException:  # cancelled (the caller's deadline): no verdict on the endpoint
                    self.breaker.abandon()
                    raise
                usage = response.usage
                text = (response.choices[0].message.content or "") if response.choices else ""
                prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
                self._succeeded(prompt, completion)
                return Completion(text, prompt, completion)
        finally:
            self._slots.release()

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        """Text deltas as the endpoint produces them. Retried only until the first delta has been yielded."""
        request = {**self._request(messages, None), "stream": True}
        await self._acquire()
        try:
            attempt = 0
            while True:
                self._gate()
                yielded = 0
                try:
                    chunks = await self._api.chat.completions.create(**request)
                    async for chunk in chunks:
                        delta = chunk.choices[0].delta.content if chunk.choices else None
                        if delta:
                            yielded += 1
                            yield delta
                except ATTEMPT_ERRORS as exc:
                    reason, detail = self._failed(exc, attempt)
                    if yielded or not _retryable(exc) or attempt == self.settings.retries:
                        raise LlmUnavailable(reason, detail + (f" after {yielded} chunks" if yielded else "")) from None
                    await self._backoff(attempt)
                    attempt += 1
                    continue
                except BaseException:  # cancelled, or the consumer stopped reading: no verdict on the endpoint
                    self.breaker.abandon()
                    raise
                self._succeeded(0, yielded)  # streamed replies carry no usage from every server: count chunks
                return
        finally:
            self._slots.release()

    async def close(self) -> None:
        await self._api.close()
