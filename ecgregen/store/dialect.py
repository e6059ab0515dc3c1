"""Filters, HNSW and quantisation settings and search parameters, decided once for both engines.

qdrant-edge and qdrant-client model the same Qdrant concepts with different classes and argument spellings
(``qe.MatchValue(v)`` vs ``qm.MatchValue(value=v)``). Each engine module describes its library's spelling as a
:class:`Dialect`; the functions here decide what is said (which fields a filter matches, how int8 is configured,
how quantised searches rescore), so the two engines cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ecgregen.settings import IndexSettings
from ecgregen.store.types import CollectionSpec, SearchFilter


@dataclass(frozen=True)
class Dialect:
    """How one Qdrant Python API builds the few models ecgregen uses."""

    match_value: Callable[[str, str], Any]  # the condition: field == value
    match_any: Callable[[str, list[str]], Any]  # the condition: field holds any of the values
    has_id: Callable[[list[str]], Any]  # the condition: the point's id is one of these
    filter: Callable[..., Any]  # Filter(must=..., must_not=...)
    hnsw: Callable[..., Any]  # the HNSW config from m=, ef_construct= and full_scan_threshold=
    int8: Callable[..., Any]  # int8 scalar quantisation from quantile= and always_ram=
    rescore: Callable[..., Any]  # QuantizationSearchParams(rescore=, oversampling=)
    search_params: Callable[..., Any]  # SearchParams(hnsw_ef=, exact=, quantization=)


def search_filter(dialect: Dialect, filt: SearchFilter | None) -> Any | None:
    if filt is None:
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    if filt.exclude_patient_id is not None:
        must_not.append(dialect.match_value("patient_id", filt.exclude_patient_id))
    if filt.source is not None:
        must.append(dialect.match_value("source", filt.source))
    if filt.scp_codes_any:
        must.append(dialect.match_any("scp_code_list", list(filt.scp_codes_any)))
    return dialect.filter(must=must or None, must_not=must_not or None)


def batch_filter(dialect: Dialect, batch_id: str | None) -> Any | None:
    """The records one insert wrote (what a rollback removes); None (every record) without a batch id."""
    return dialect.filter(must=[dialect.match_value("batch_id", batch_id)]) if batch_id else None


def batch_points_filter(dialect: Dialect, ids: list[str], batch_id: str) -> Any:
    """Those of the points `ids` still written by `batch_id` (what a rollback deletes)."""
    return dialect.filter(must=[dialect.has_id(ids), dialect.match_value("batch_id", batch_id)])


def point_where_filter(dialect: Dialect, point_id: str, where: dict[str, str]) -> Any:
    """The point `point_id` if its payload still holds `where` (field -> value): what a payload update sets."""
    return dialect.filter(must=[dialect.has_id([point_id]), *(dialect.match_value(k, v) for k, v in where.items())])


def hnsw_config(dialect: Dialect, index: IndexSettings) -> Any:
    return dialect.hnsw(
        m=index.hnsw_m, ef_construct=index.hnsw_ef_construct, full_scan_threshold=index.full_scan_threshold_kb
    )


def quantization(dialect: Dialect, index: IndexSettings) -> Any | None:
    """int8 for ``quantization="int8"``: the 0.99 quantile clips outliers, and the small vectors stay in RAM even
    when the originals are on disk (the point of quantising)."""
    return dialect.int8(quantile=0.99, always_ram=True) if index.quantization == "int8" else None


def search_params(dialect: Dialect, collection: CollectionSpec | None, exact: bool, hnsw_ef: int | None) -> Any:
    """A quantised collection rescores twice the candidates with the original vectors, so quantisation costs
    little recall. ``collection`` is None only when the store was closed during the call."""
    quantized = collection is not None and collection.index.quantization != "none"
    rescore = dialect.rescore(rescore=True, oversampling=2.0) if quantized else None
    return dialect.search_params(hnsw_ef=hnsw_ef, exact=exact, quantization=rescore)
