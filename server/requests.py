"""What a request may hold, checked before any work: k, HNSW beam, batch ids, questions and options, and the ECG
(samples or a hospital file). Every refusal is an :class:`~ecgregen.ecg.EcgInputError` (INVALID_ARGUMENT with its
message); the handlers in :mod:`ecgregen.server.service` only orchestrate.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, TypeVar

from ecgregen.api_values import QuestionType
from ecgregen.ecg import EcgInputError
from ecgregen.pipeline import MAX_K, Retrieval
from ecgregen.store import SearchFilter
from ecgregen.v1 import ecgregen_pb2 as pb
from ecgregen.wire import ReceivedEcg, file_info_to_proto, filter_from_proto, received_ecg

MAX_HNSW_EF = 4096
BATCH_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_QUESTION_CHARS = 2000
MAX_OPTIONS = 100
MAX_OPTION_CHARS = 200

T = TypeVar("T")


def check_k(k: int, default: int) -> int:
    if k == 0:
        return default
    if k > MAX_K:
        raise EcgInputError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def check_hnsw_ef(hnsw_ef: int) -> int | None:
    if hnsw_ef > MAX_HNSW_EF:
        raise EcgInputError(f"hnsw_ef must be at most {MAX_HNSW_EF}, got {hnsw_ef}")
    return hnsw_ef or None


def check_batch_id(batch_id: str) -> str:
    if not BATCH_ID.fullmatch(batch_id):
        raise EcgInputError(f"batch_id {batch_id[:80]!r} must be 1-64 letters, digits, '-', '_', '.' or ':'")
    return batch_id


async def off_loop_if_file(read: Callable[[Any], T], msg: Any) -> T:
    """`read(msg)`, in a worker thread when `msg` carries an ``ecg_file``: reading a hospital export is CPU work the
    event loop must not do; samples are checked in place (a thread hop would cost more than the check)."""
    return await asyncio.to_thread(read, msg) if msg.HasField("ecg_file") else read(msg)


async def parse_query(request: Any, default_k: int) -> tuple[ReceivedEcg, int, SearchFilter | None]:
    """The ECG (samples, or a file read off the event loop), k and filter every query request carries, checked."""
    k, filt = check_k(request.k, default_k), filter_from_proto(request.filter)
    return await off_loop_if_file(received_ecg, request), k, filt


def with_file(retrieval: Retrieval, received: ReceivedEcg) -> dict[str, Any]:
    """A response's fields for a file-borne ECG: what reading the file said comes first among the warnings."""
    retrieval.warnings[:0] = received.warnings
    return {"source_file": file_info_to_proto(received.file)}


def check_question(request: pb.AnswerQuestionRequest) -> tuple[str, list[str], str]:
    """Question, options and question type, bounded: the question reaches an LLM prompt."""
    question = request.question.strip()
    if not question:
        raise EcgInputError("question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise EcgInputError(f"question is {len(question)} characters; at most {MAX_QUESTION_CHARS}")
    options = [o.strip() for o in request.options if o.strip()]
    if len(options) > MAX_OPTIONS or any(len(o) > MAX_OPTION_CHARS for o in options):
        raise EcgInputError(f"at most {MAX_OPTIONS} options of at most {MAX_OPTION_CHARS} characters each")
    if request.question_type and request.question_type not in list(QuestionType):
        raise EcgInputError(f"unknown question_type {request.question_type!r}; one of {', '.join(QuestionType)}")
    return question, options, request.question_type
