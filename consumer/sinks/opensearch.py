"""OpenSearch sink: daily indices behind aliases, bulk writes with deterministic _id.

Functional core (pure): index templates and documents (both generated from the fields of
consumer/sinks/schema.py), daily index names, NDJSON bulk bodies and the per-item
classification of a bulk response. Thin shell: `install_templates` and
`OpenSearchSink`, which retries whole-request failures and ITEMS with backoff as
consumer/sinks/errors.py classifies them (429, 5xx, connection loss and timeouts retry) and
returns the other items (e.g. mapper_parsing_exception) as rejected, with the server's reason,
so one bad document never fails its batch.

Exactly-once effects: `_id` is the row identity (result_id, or stream:shard:seq:subseq) and
the index is derived from the row's own event time, so a replay overwrites the same doc.
We use the raw _bulk API rather than helpers.streaming_bulk: it gives per-item statuses in
request order, which is all the control we need, without the helper's own retry policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Generic, TypeVar

import msgspec
import orjson

from consumer.sinks.base import RawRow, RejectedItem, ResultRow, WriteOutcome
from consumer.sinks.errors import RETRYABLE_KINDS, is_retryable, opensearch_item_kind
from consumer.sinks.retry import Retrier, StopRetrying
from consumer.sinks.rows import Columns, columns_of, part_column, result_columns
from consumer.sinks.schema import (
    DEFAULT_SCHEMA,
    RAW_IDENTITY,
    RESULT_FIELDS,
    RESULT_VERSION,
    TEXT_SUFFIX,
    Field,
    OutputSchema,
)
from consumer.windows.model import WindowResult

RowT = TypeVar("RowT")

RESULTS = "results"
RAW = "raw"
DAY_MS = 86_400_000

_DATE = {"type": "date", "format": "epoch_millis"}
_KW = {"type": "keyword"}
_TYPES: dict[str, dict[str, Any]] = {
    "text": _KW,
    "sequence": _KW,  # up to 56 digits: longer than a long
    "long": {"type": "long"},
    "double": {"type": "double"},
    "bool": {"type": "boolean"},
    "time": _DATE,
    "key": _KW,  # an array of strings: every key part is searchable
    "object": {"type": "object", "dynamic": True},
    "payload": {"type": "text", "index": False},
}


def mapping_properties(fields: tuple[Field, ...]) -> dict[str, Any]:
    """The mapping of the fields OpenSearch holds (see consumer/sinks/schema.py)."""
    props: dict[str, Any] = {}
    for f in fields:
        if f.opensearch:
            props[f.opensearch] = _TYPES[f.type]
            if f.type == "key":  # the whole key, for terms aggregations that merge shards
                props[f.opensearch + TEXT_SUFFIX] = _KW
    return props


# ---------------------------------------------------------------- pure core


def alias_name(prefix: str, kind: str) -> str:
    return f"{prefix}-{kind}"


def daily_index(prefix: str, kind: str, ts_ms: int) -> str:
    """`<prefix>-<kind>-YYYY.MM.DD` of the event time in UTC."""
    day = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return f"{prefix}-{kind}-{day:%Y.%m.%d}"


def daily_indices(prefix: str, kind: str, ts_ms: Sequence[int]) -> list[str]:
    """daily_index of each time, formatted once per day."""
    by_day: dict[int, str] = {}
    out = []
    for ts in ts_ms:
        day = ts // DAY_MS
        index = by_day.get(day)
        if index is None:
            index = by_day[day] = daily_index(prefix, kind, ts)
        out.append(index)
    return out


def results_kind(aggregation: str = "") -> str:
    """An aggregation's index kind: `results`, or `results_<name>` for a declared one, so
    its daily indices (`<prefix>-results_<name>-YYYY.MM.DD`) and alias are its own: the
    default's pattern `<prefix>-results-*` does not match them."""
    return f"{RESULTS}_{aggregation}" if aggregation else RESULTS


def index_templates(prefix: str, shards: int = 1, replicas: int = 0,
                    schema: OutputSchema = DEFAULT_SCHEMA,
                    aggregations: Sequence[str] = ()) -> dict[str, Any]:
    """Composable templates: every daily index gets the mapping and joins the alias.

    dynamic=strict: an unexpected field is rejected (and quarantined) instead of silently
    growing the mapping.
    """
    mappings = {RESULTS: schema.results, RAW: schema.raw,
                **{results_kind(a): schema.results for a in aggregations}}
    return {
        f"{prefix}-{kind}": {
            "index_patterns": [f"{prefix}-{kind}-*"],
            "template": {
                "settings": {"number_of_shards": shards, "number_of_replicas": replicas},
                "aliases": {alias_name(prefix, kind): {}},
                "mappings": {"dynamic": "strict", "properties": mapping_properties(fields)},
            },
        }
        for kind, fields in mappings.items()
    }


class IndexDoc(msgspec.Struct, frozen=True, gc=False):
    """One document to index. A frozen msgspec Struct: one is built per document, and it
    costs a fraction of a frozen dataclass."""

    index: str
    doc_id: str
    source: Mapping[str, Any] | bytes  # bytes: the body's line in a bulk body (encoded_sources)
    # External version: OpenSearch refuses (409) a write that is not newer than the stored
    # document, so a stale writer or an older replayed emission never overwrites a newer one.
    version: int | None = None


def key_text(key: Sequence[str | None]) -> str:
    """The key as one JSON array string, the same text the Redshift table stores."""
    return orjson.dumps(tuple(key)).decode()  # a tuple: orjson writes it as an array


def _doc_columns(fields: tuple[Field, ...], batch: Columns) -> tuple[list[str], list[list[Any]]]:
    """The documents' field names and their columns (orjson writes a key tuple as an array
    and quantiles as an object, as the mapping wants)."""
    names: list[str] = []
    cols: list[list[Any]] = []
    for f in fields:
        if not f.opensearch:
            continue
        values = batch[f.source]
        if f.part is not None:
            values = part_column(values, f.part)
        elif f.type == "sequence":
            values = list(map(str, values))
        names.append(f.opensearch)
        cols.append(values)
        if f.type == "key":
            names.append(f.opensearch + TEXT_SUFFIX)
            cols.append(list(map(key_text, values)))
    return names, cols


def sources_of(fields: tuple[Field, ...], batch: Columns) -> list[dict[str, Any]]:
    """The documents' bodies."""
    names, cols = _doc_columns(fields, batch)
    return [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]


def encoded_sources(fields: tuple[Field, ...], batch: Columns) -> list[bytes]:
    """The documents' bodies as the lines of a bulk body (JSON and a newline)."""
    names, cols = _doc_columns(fields, batch)
    # NaN/inf serialize as null (orjson), which a double field accepts as missing.
    return [_line(dict(zip(names, row, strict=True))) for row in zip(*cols, strict=True)]


def _line(value: Any) -> bytes:
    # The `+` copies orjson's output into a small object. Keeping orjson's own buffer cost a
    # page fault per document (2.4 us; measured with orjson 3.13).
    return orjson.dumps(value) + b"\n"


def _result_docs(prefix: str, batch: Columns, sources: Sequence[Mapping[str, Any] | bytes],
                 kind: str = RESULTS) -> list[IndexDoc]:
    indices = daily_indices(prefix, kind, batch["start_ms"])
    return list(map(IndexDoc, indices, batch["result_id"], sources, batch[RESULT_VERSION]))


def result_docs(prefix: str, batch: Columns, kind: str = RESULTS) -> list[IndexDoc]:
    """Window results' documents: _id the result id, in the daily index of the window start,
    the result's version as the external version; bodies encoded."""
    return _result_docs(prefix, batch, encoded_sources(RESULT_FIELDS, batch), kind)


def result_doc(prefix: str, row: ResultRow) -> IndexDoc:
    """One result's document, its body as a mapping (the plain form of result_docs)."""
    batch = columns_of([row], RESULT_FIELDS)
    return _result_docs(prefix, batch, sources_of(RESULT_FIELDS, batch))[0]


def raw_docs(prefix: str, fields: tuple[Field, ...], batch: Columns) -> list[IndexDoc]:
    """Raw records' documents: _id the record identity, in the daily index of the event time
    (of the arrival time when there is none); bodies encoded."""
    times = [a if t is None else t for t, a in zip(batch["event_ts_ms"], batch["arrival_ms"],
                                                   strict=True)]
    ids = [":".join(map(str, i)) for i in zip(*(batch[s] for s in RAW_IDENTITY), strict=True)]
    return list(map(IndexDoc, daily_indices(prefix, RAW, times), ids,
                    encoded_sources(fields, batch)))


def dedupe_docs(docs: Sequence[IndexDoc]) -> list[IndexDoc]:
    """Last version per (index, _id); one bulk should not index the same doc twice."""
    latest: dict[tuple[str, str], IndexDoc] = {}
    for doc in docs:
        latest.pop((doc.index, doc.doc_id), None)
        latest[(doc.index, doc.doc_id)] = doc
    return list(latest.values())


_ACTION = b'{"index":{"_index":%s,"_id":%s}}\n'
_VERSIONED = b'{"index":{"_index":%s,"_id":%s,"version":%d,"version_type":"external"}}\n'


# What classify_items reads of a bulk response, and all the cluster sends back: an item's
# status and error, not its _index, _id, _version, _shards and _seq_no (about 20 B an item
# instead of 200; the response of a 10,000-document bulk is that much less to send and parse).
BULK_FILTER_PATH = "errors,items.*.status,items.*.error"


def bulk_body(docs: Sequence[IndexDoc]) -> bytes:
    """The _bulk request: per document its action line (what orjson would write for it,
    formatted from encoded parts) and its body."""
    lines: list[bytes] = []
    indices: dict[str, bytes] = {}
    for doc in docs:
        index = indices.get(doc.index)
        if index is None:
            index = indices[doc.index] = orjson.dumps(doc.index)
        if doc.version is None:
            lines.append(_ACTION % (index, orjson.dumps(doc.doc_id)))
        else:
            lines.append(_VERSIONED % (index, orjson.dumps(doc.doc_id), doc.version))
        src = doc.source
        lines.append(src if isinstance(src, bytes) else _line(src))
    return b"".join(lines)


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    written: int
    retry: tuple[IndexDoc, ...]
    rejected: tuple[RejectedItem, ...] = field(default=())


class BulkResponseMismatch(Exception):
    """The response does not line up with the request; the whole request is retried."""


def classify_items(docs: Sequence[IndexDoc], response: Mapping[str, Any]) -> BulkOutcome:
    """Split a bulk response (items are in request order) into written / retry / rejected."""
    items = response.get("items", [])
    if len(items) != len(docs):
        raise BulkResponseMismatch(f"sent {len(docs)} docs, got {len(items)} items")
    if response.get("errors") is False:  # OpenSearch's word that every item succeeded
        return BulkOutcome(len(docs), ())
    written = 0
    retry: list[IndexDoc] = []
    rejected: list[RejectedItem] = []
    for doc, item in zip(docs, items, strict=True):
        result = next(iter(item.values()))
        status = int(result.get("status", 500))
        if status < 300 or (status == 409 and doc.version is not None):
            written += 1  # 409 on a versioned doc: the same or a newer version is stored
        elif opensearch_item_kind(status) in RETRYABLE_KINDS:
            retry.append(doc)
        else:
            error = result.get("error") or {}
            if isinstance(error, str):
                error = {"type": "error", "reason": error}
            rejected.append(
                RejectedItem(
                    item_id=doc.doc_id,
                    status=status,
                    reason=str(error.get("type", "unknown")),
                    message=str(error.get("reason", "")),
                )
            )
    return BulkOutcome(written, tuple(retry), tuple(rejected))


# ---------------------------------------------------------------- I/O shell


def install_templates(client: Any, prefix: str, shards: int = 1, replicas: int = 0,
                      schema: OutputSchema = DEFAULT_SCHEMA,
                      aggregations: Sequence[str] = ()) -> None:
    """Idempotent: PUT replaces a template with the same body."""
    for name, body in index_templates(prefix, shards, replicas, schema, aggregations).items():
        client.indices.put_index_template(name=name, body=body)


class ItemsThrottled(Exception):
    """Some bulk items came back 429/5xx; used as the retry event's error."""


def retryable(exc: BaseException) -> bool:
    """errors.py's classification, plus a response that does not line up with its request
    (the request is idempotent by _id and version, so sending it again is safe)."""
    return isinstance(exc, BulkResponseMismatch) or is_retryable(exc)


class OpenSearchSink(Generic[RowT]):
    """Commit step: every doc of a batch is indexed or returned as rejected."""

    def __init__(
        self,
        name: str,
        client: Any,
        to_docs: Callable[[Sequence[RowT]], Sequence[IndexDoc]],
        retrier: Retrier | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.to_docs = to_docs  # a whole batch at once: no per-row call
        # A given retrier keeps its own classifier (fixed when it was made).
        self.retrier = retrier or Retrier(name, retryable=retryable)

    def _bulk(self, docs: Sequence[IndexDoc]) -> BulkOutcome:
        response = self.client.bulk(body=bulk_body(docs), filter_path=BULK_FILTER_PATH)
        return classify_items(docs, response)

    def _send(self, docs: Sequence[IndexDoc]) -> BulkOutcome:
        """One bulk, retried while the cluster is unavailable; halved on 413."""
        from opensearchpy.exceptions import TransportError

        try:
            return self.retrier.call(partial(self._bulk, docs))
        except TransportError as exc:
            if exc.status_code != 413:
                raise
            if len(docs) == 1:  # a single document over the request limit cannot land
                item = RejectedItem(docs[0].doc_id, 413, "request_too_large", str(exc.error))
                return BulkOutcome(0, (), (item,))
            mid = len(docs) // 2
            a, b = self._send(docs[:mid]), self._send(docs[mid:])
            return BulkOutcome(a.written + b.written, a.retry + b.retry, a.rejected + b.rejected)

    def write_docs(self, docs: Sequence[IndexDoc]) -> WriteOutcome:
        pending: Sequence[IndexDoc] = dedupe_docs(docs)
        written = 0
        rejected: list[RejectedItem] = []
        attempt = 0
        while pending:
            outcome = self._send(pending)
            written += outcome.written
            rejected.extend(outcome.rejected)
            pending = outcome.retry
            if pending:
                # Only the throttled items go again; the rest are already durable.
                if self.retrier.should_stop():
                    raise StopRetrying(f"{self.name}: {len(pending)} items not yet written")
                self.retrier.pause(attempt, ItemsThrottled(f"{len(pending)} items"))
                attempt += 1
        return WriteOutcome(written, tuple(rejected))

    def write_batch(self, rows: Sequence[RowT], batch_key: str = "") -> WriteOutcome:
        return self.write_docs(self.to_docs(rows))


def results_sink(
    client: Any, prefix: str, retrier: Retrier | None = None
) -> OpenSearchSink[ResultRow]:
    return OpenSearchSink("opensearch-results", client,
                          lambda rows: result_docs(prefix, columns_of(rows, RESULT_FIELDS)),
                          retrier)


def window_results_sink(
    client: Any, prefix: str, retrier: Retrier | None = None, aggregation: str = ""
) -> OpenSearchSink[WindowResult]:
    """The pipeline's results sink: documents straight from its WindowResults (into the
    aggregation's own indices: results_kind)."""
    kind = results_kind(aggregation)
    name = f"opensearch-results:{aggregation}" if aggregation else "opensearch-results"
    return OpenSearchSink(name, client,
                          lambda results: result_docs(prefix, result_columns(results), kind),
                          retrier)


def raw_sink(client: Any, prefix: str, retrier: Retrier | None = None,
             schema: OutputSchema = DEFAULT_SCHEMA) -> OpenSearchSink[RawRow]:
    return OpenSearchSink("opensearch-raw", client,
                          lambda rows: raw_docs(prefix, schema.raw, columns_of(rows, schema.raw)),
                          retrier)
