"""The closed sets of strings the gRPC API carries, which clients may branch on: one place, stdlib only.

The proto keeps these fields as strings (adding a value must not break old clients' decoding), and this module
is their definition: the server emits only these members, clients compare against them (each is a ``str``), and
the proto comments point here. Adding a member is a documented API change.
"""

from __future__ import annotations

from enum import StrEnum


class Answerer(StrEnum):
    """``AnswerQuestionRequest.answerer`` / ``AnswerQuestionResponse.answerer``."""

    LABELS = "labels"  # vote over the neighbours' SCP codes (and the calibrated diagnoses)
    LLM = "llm"  # the paper's zero-shot prompt over the neighbours' reports


class QuestionType(StrEnum):
    """``AnswerQuestionRequest.question_type`` (ECG-QA's single-ECG types)."""

    VERIFY = "single-verify"
    CHOOSE = "single-choose"
    QUERY = "single-query"


class ReportLanguage(StrEnum):
    """``GenerateReportRequest.report_language`` and the server's ``--report-language``."""

    EN = "en"  # the neighbour's report in English (the corpus glossary's translation stored with it)
    ORIGINAL = "original"  # as the neighbour's cart wrote it (German, Swedish or English)


class ReportEditAction(StrEnum):
    """``ReportEdit.action``: what a ``verified`` report did to the chosen neighbour's report, so a reviewer can tell
    a statement dropped from one the measurements made the report state."""

    REMOVED = "removed"  # a sentence the measurements contradict
    ADDED = "added"  # a measured finding out of range that the report did not state


class FallbackReason(StrEnum):
    """``fallback_reason`` of GenerateReport (refinement) and AnswerQuestion (LLM): why the LLM's text was not used."""

    TIMEOUT = "timeout"  # no reply within the timeout
    CONNECTION = "connection"  # the endpoint cannot be reached
    RATE_LIMITED = "rate_limited"  # HTTP 429
    SERVER_ERROR = "server_error"  # HTTP 5xx
    REJECTED = "rejected"  # another HTTP error (e.g. a bad request or key)
    BAD_RESPONSE = "bad_response"  # the reply is not an OpenAI chat completion
    ERROR = "error"  # any other failure of the call (the server log names it)
    BUSY = "busy"  # every LLM slot stayed busy
    CIRCUIT_OPEN = "circuit_open"  # too many recent failures: the LLM is not asked for a while
    MALFORMED = "malformed"  # the answer is not the JSON asked for
    OUT_OF_OPTIONS = "out_of_options"  # the answer names something that is not an option
    EMPTY = "empty"  # no answer / no text
    NO_NEIGHBOURS = "no_neighbours"  # nothing retrieved to refine
    LLM_DISABLED = "llm_disabled"  # the server runs without an LLM
    CONTRADICTS_MEASUREMENTS = "contradicts_measurements"  # a refined report stated what the measurements contradict


class StreamWarningCode(StrEnum):
    """``StreamWarning.code``: the stream goes on (except the last two, sent as it ends)."""

    GAP = "gap"
    DUPLICATE_OR_LATE = "duplicate_or_late"
    BAD_CHUNK = "bad_chunk"
    WINDOW_DROPPED = "window_dropped"
    SHUTTING_DOWN = "shutting_down"
    MAX_DURATION = "max_duration"


class StreamErrorCode(StrEnum):
    """``StreamError.code`` (StreamECG and GenerateReportStream): the stream ends after it."""

    INTERNAL = "internal"  # a server bug; the server log has the details
