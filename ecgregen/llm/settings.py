"""What the LLM stage is asked to be: the endpoint and how hard to try (:class:`LlmSettings`), and whether and which
model runs (:class:`LlmConfig`).

Stdlib only (with the local models' registry, itself data): the command line builds its ``--llm-*`` flags from these
defaults, and building a parser must not import the OpenAI client or what runs the local model.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecgregen.llm.models import DEFAULT_LOCAL_MODEL, LOCAL_MODELS

JSON_MODES = ("json_schema", "json_object", "off")


@dataclass(frozen=True)
class LlmSettings:
    """Where the LLM is and how hard to try. Defaults follow the paper (temperature 1.0, 256 tokens)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 1.0
    max_tokens: int = 256
    timeout_s: float = 30.0
    retries: int = 2
    concurrency: int = 4
    json_mode: str = "json_schema"
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    backoff_base_s: float = 0.25
    backoff_max_s: float = 4.0

    def __post_init__(self) -> None:
        if self.json_mode not in JSON_MODES:
            raise ValueError(f"json mode must be one of {', '.join(JSON_MODES)}, got {self.json_mode!r}")
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0 or self.max_tokens < 1:
            raise ValueError("LLM concurrency and max tokens must be >= 1, retries >= 0, timeout > 0")


@dataclass(frozen=True)
class LlmConfig:
    """What the operator asked for. ``enabled=False``: retrieval-only. ``base_url=""``: start the local model."""

    enabled: bool = True
    settings: LlmSettings = LlmSettings(base_url="", model=LOCAL_MODELS[DEFAULT_LOCAL_MODEL].served_name)
    threads: int | None = None  # local model only
    local_model: str = DEFAULT_LOCAL_MODEL  # which of LOCAL_MODELS, when the local model is started

    @property
    def local(self) -> bool:
        return self.enabled and not self.settings.base_url
