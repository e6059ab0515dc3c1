"""The closed sets of API strings (ecgregen.api_values, and the measurements' in ecgregen.measure.types) are the ones
the proto documents, and the server's."""

from __future__ import annotations

import re
from enum import StrEnum

import pytest

from ecgregen.api_values import (
    Answerer,
    FallbackReason,
    QuestionType,
    ReportEditAction,
    StreamErrorCode,
    StreamWarningCode,
)
from ecgregen.measure.types import BeatOrigin, QualityFlag, Rhythm
from tests.conftest import REPO

PROTO = (REPO / "protos" / "ecgregen" / "v1" / "ecgregen.proto").read_text()


@pytest.mark.parametrize("values", [Answerer, QuestionType, FallbackReason, StreamWarningCode, StreamErrorCode, Rhythm,
                                    QualityFlag, BeatOrigin, ReportEditAction])
def test_every_value_is_documented_in_the_proto_next_to_its_definition(values: type[StrEnum]) -> None:
    """Each member appears in the proto's comments, and the proto names the defining class beside them, so a
    client reading either finds the whole set."""
    assert f"{values.__module__}.{values.__name__}" in PROTO
    comments = " ".join(re.findall(r"//(.*)", PROTO))
    missing = [v.value for v in values if not re.search(rf"(?<![\\w-]){re.escape(v.value)}(?![\\w-])", comments)]
    assert not missing, f"{values.__name__} members not documented in the proto: {missing}"
