"""The LLM stages: zero-shot QA over the top-k neighbours, and refinement of the top-1 report.

The LLM never decides alone whether a request fails. A reply is parsed strictly and normalised onto the allowed
options; anything unusable (endpoint down, circuit open, malformed JSON, an answer outside the options) falls
back to the retrieval-only label vote, and the result says so (``fallback_reason``) and counts it in
``ecgregen_llm_fallbacks_total``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from ecgregen.answer import LabelVoteAnswerer, normalise
from ecgregen.api_values import FallbackReason
from ecgregen.diagnoses import Diagnosis
from ecgregen.llm.client import LlmClient, LlmFailure
from ecgregen.llm.prompts import QUESTION_TYPES, infer_question_type, qa_answer_schema, qa_messages, refine_messages
from ecgregen.measure.types import Measurements
from ecgregen.metrics import LLM_FALLBACKS, stage_timer
from ecgregen.store import Hit

log = logging.getLogger("ecgregen.llm")

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class UnusableAnswer(LlmFailure):
    """A reply that cannot be turned into allowed options."""


@dataclass(frozen=True)
class QaResult:
    answer: list[str]
    answerer: str  # who produced the answer: "llm", or "labels" after a fallback
    rationale: str
    fallback_reason: str = ""  # empty when the requested answerer answered
    model: str = ""


def parse_answer(text: str, options: Sequence[str], question_type: str) -> list[str]:
    """The options a reply names, in option order. Strict: one JSON object (a ```json fence is tolerated) with
    an "answer" that is a string, a boolean (verify questions) or a list of them, each matching an option
    after case and punctuation folding. With no options, any non-empty strings are taken as they are."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise UnusableAnswer(FallbackReason.MALFORMED, f"reply is not JSON ({exc.msg}): {text[:120]!r}") from None
    if not isinstance(data, dict) or "answer" not in data:
        raise UnusableAnswer(FallbackReason.MALFORMED, f'reply has no "answer": {text[:120]!r}')
    raw = data["answer"]
    items = raw if isinstance(raw, list) else [raw]
    allowed = {normalise(o): o for o in options}
    chosen: list[str] = []
    for item in items:
        if isinstance(item, bool) and question_type == "single-verify":
            item = "yes" if item else "no"
        if not isinstance(item, str) or not item.strip():
            raise UnusableAnswer(FallbackReason.MALFORMED, f"answer item {item!r} is not a non-empty string")
        if not options:
            value = item.strip()
        elif normalise(item) in allowed:
            value = allowed[normalise(item)]
        else:
            raise UnusableAnswer(FallbackReason.OUT_OF_OPTIONS, f"{item!r} is not one of {list(options)}")
        if value not in chosen:
            chosen.append(value)
    if not chosen:
        raise UnusableAnswer(FallbackReason.EMPTY, "the answer list is empty")
    if question_type == "single-verify" and len(chosen) > 1:
        raise UnusableAnswer(FallbackReason.OUT_OF_OPTIONS, f"a verify question takes one answer, got {chosen}")
    order = {o: i for i, o in enumerate(options)}
    return sorted(chosen, key=lambda o: order.get(o, len(order)))


class LlmAnswerer:
    """QA and refinement through an OpenAI-compatible endpoint, falling back to the label vote."""

    name = "llm"

    def __init__(self, client: LlmClient, fallback: LabelVoteAnswerer, descriptions: Mapping[str, str]) -> None:
        self.client = client
        self.fallback = fallback
        self.descriptions = descriptions

    async def answer(
        self, question: str, options: Sequence[str], neighbours: Sequence[Hit], question_type: str = "",
        seconds: dict[str, float] | None = None, diagnoses: Sequence[Diagnosis] = (),
        measurements: Measurements | None = None,
    ) -> QaResult:
        """The LLM's answer from the top-k reports and diagnoses, the predicted `diagnoses` and the ECG's
        `measurements` (those given); the label answerer's (from the same diagnoses) where the reply is unusable."""
        options = [o.strip() for o in options if o.strip()]
        qtype = question_type or infer_question_type(question, options)
        if qtype not in QUESTION_TYPES:
            raise ValueError(f"unknown question type {qtype!r}; one of {', '.join(QUESTION_TYPES)}")
        if not neighbours:
            return self._fall_back("no_neighbours", "no neighbours to show the LLM", question, options, neighbours,
                                   diagnoses, measurements)
        messages = qa_messages(question, options, qtype, neighbours, self.descriptions, diagnoses, measurements)
        try:
            with stage_timer("llm", seconds):
                completion = await self.client.complete(messages, qa_answer_schema(options, qtype))
            chosen = parse_answer(completion.text, options, qtype)
        except LlmFailure as exc:
            return self._fall_back(exc.reason, str(exc), question, options, neighbours, diagnoses, measurements)
        predicted = (f", {len(diagnoses)} predicted diagnoses" if diagnoses else "") + (
            ", measurements" if measurements is not None else "")
        return QaResult(
            chosen, self.name, f"{self.client.model} ({qtype}, top-{len(neighbours)} reports and diagnoses{predicted}) "
            f"replied {completion.text.strip()[:200]}", model=self.client.model,
        )

    def _fall_back(self, reason: str, detail: str, question: str, options: list[str], neighbours: Sequence[Hit],
                   diagnoses: Sequence[Diagnosis] = (), measurements: Measurements | None = None) -> QaResult:
        """The label answer, from the same diagnoses and measurements the LLM was shown."""
        LLM_FALLBACKS.labels(reason).inc()
        log.info("LLM answer unusable (%s); answering from labels", detail)
        labels = self.fallback.answer(question, options, neighbours, diagnoses=diagnoses, measurements=measurements)
        return QaResult(
            labels.answer, self.fallback.name, f"LLM unusable ({detail}); label vote: {labels.rationale}",
            fallback_reason=reason, model=self.client.model,
        )

    async def refine(self, neighbours: Sequence[Hit], measurements: Measurements | None = None) -> AsyncIterator[str]:
        """Deltas of the top-1 report rewritten against the top-k evidence and the ECG's `measurements` (raises
        LlmUnavailable)."""
        async for delta in self.client.stream(refine_messages(neighbours, self.descriptions, measurements)):
            yield delta
