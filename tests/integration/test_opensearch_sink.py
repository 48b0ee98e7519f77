"""OpenSearch sink against a real server.

Stand-in: osmem-server, because it is the only OpenSearch-compatible server installable
offline and it behaves like OpenSearch where this sink depends on it: composable templates
with aliases, _bulk with explicit _id (re-index overwrites), and per-item errors
(mapper_parsing_exception, strict_dynamic_mapping_exception). It is slow (~2k docs/s), so
the data here stays small. Faults (429 items, 503 requests) come from tests/support's proxy,
since osmem never throttles. One osmem per module; each test uses its own index prefix.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opensearchpy import OpenSearch, TransportError

from consumer.sinks.base import RawRow, ResultRow, Sink
from consumer.sinks.errors import is_retryable
from consumer.sinks.opensearch import (
    BULK_FILTER_PATH,
    BulkResponseMismatch,
    IndexDoc,
    OpenSearchSink,
    alias_name,
    bulk_body,
    classify_items,
    daily_index,
    install_templates,
    raw_sink,
    result_doc,
    results_sink,
    retryable,
)
from consumer.sinks.retry import Backoff, CircuitBreaker, Retrier, StopRetrying
from consumer.sinks.rows import result_version
from tests.support.faulty_proxy import FaultyProxy
from tests.support.servers import osmem
from tests.support.stub_servers import (
    OPENSEARCH_429,
    OPENSEARCH_503,
    json_answer,
    scripted_http_server,
    status_server,
)

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
_prefixes = (f"p{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with osmem() as base:
        yield base


@pytest.fixture()
def client(url: str) -> OpenSearch:
    return OpenSearch(hosts=[url], timeout=30)


@pytest.fixture()
def prefix(client: OpenSearch) -> str:
    p = next(_prefixes)
    install_templates(client, p)
    return p


def fast_retrier(name: str, **kw: Any) -> Retrier:
    return Retrier(
        name,
        Backoff(base_ms=1, cap_ms=20),
        CircuitBreaker(failure_threshold=50, reset_timeout_ms=10),
        retryable=retryable,
        **kw,
    )


def result(i: int, *, start: int = T0, count: int = 1) -> ResultRow:
    return ResultRow(
        result_id=f"r{i:04d}",
        kind="tumbling",
        start_ms=start,
        end_ms=start + 60_000,
        key=(f"dev-{i % 7}", "temp"),
        shard_id="shardId-000",
        count=count,
        sum=float(count),
        min=1.0,
        max=1.0,
        mean=1.0,
        first_ts_ms=start,
        last_ts_ms=start + 1,
        is_final=False,
        quantiles={"p50": 1.0},
        version=result_version(count, False),
    )


def count(client: OpenSearch, index: str) -> int:
    client.indices.refresh(index=index)
    return int(client.count(index=index)["count"])


def test_templates_installed(client: OpenSearch, prefix: str) -> None:
    got = client.indices.get_index_template(name=f"{prefix}-*")
    names = sorted(t["name"] for t in got["index_templates"])
    assert names == [f"{prefix}-raw", f"{prefix}-results"]
    install_templates(client, prefix)  # idempotent


def test_daily_indices_behind_alias_and_replay_keeps_count(client: OpenSearch, prefix: str) -> None:
    sink: Sink[ResultRow] = results_sink(client, prefix, fast_retrier("os"))
    rows = [result(i, start=T0 + (i % 2) * DAY_MS) for i in range(40)]
    assert sink.write_batch(rows, "b").written == 40
    alias = alias_name(prefix, "results")
    indices = sorted(client.indices.get_alias(name=alias))
    assert indices == [f"{prefix}-results-2023.11.14", f"{prefix}-results-2023.11.15"]
    assert count(client, alias) == 40
    assert sink.write_batch(rows, "b").written == 40  # replay overwrites
    # A late record updates one result: same _id, same daily index, new values.
    sink.write_batch([result(3, start=T0 + DAY_MS, count=5)], "late")
    assert count(client, alias) == 40
    doc = client.get(index=f"{prefix}-results-2023.11.15", id="r0003")
    assert doc["_source"]["count"] == 5
    # A replay of the older emission (a stale writer, or a new owner catching up) is refused
    # by the external version and counted as durable: the newer document stays.
    assert sink.write_batch([result(3, start=T0 + DAY_MS, count=1)], "old").written == 1
    doc = client.get(index=f"{prefix}-results-2023.11.15", id="r0003")
    assert doc["_source"]["count"] == 5


def test_raw_records_use_record_identity(client: OpenSearch, prefix: str) -> None:
    rows = [
        RawRow("s", "sh-1", 10**50 + i, 0, "pk", T0, T0 + i, ("d", "m"), 1.5, '{"a": 1}')
        for i in range(10)
    ]
    sink = raw_sink(client, prefix, fast_retrier("os-raw"))
    sink.write_batch(rows + rows[:3], "x")
    sink.write_batch(rows, "x")
    assert count(client, alias_name(prefix, "raw")) == 10
    doc = client.get(index=f"{prefix}-raw-2023.11.14", id=rows[0].doc_id)
    assert doc["_source"]["sequence"] == str(10**50)


def test_mapping_conflict_is_rejected_with_reason_rest_lands(
    client: OpenSearch, prefix: str
) -> None:
    sink = results_sink(client, prefix, fast_retrier("os"))
    good = [result_doc(prefix, result(i)) for i in range(5)]
    bad_type = IndexDoc(good[0].index, "bad-type", {**good[0].source, "count": "many"})
    unknown = IndexDoc(good[0].index, "bad-field", {**good[0].source, "surprise": 1})
    outcome = sink.write_docs([good[0], bad_type, *good[1:], unknown])
    assert outcome.written == 5
    reasons = {r.item_id: (r.status, r.reason) for r in outcome.rejected}
    assert reasons == {
        "bad-type": (400, "mapper_parsing_exception"),
        "bad-field": (400, "strict_dynamic_mapping_exception"),
    }
    assert "count" in next(r.message for r in outcome.rejected if r.item_id == "bad-type")
    assert count(client, alias_name(prefix, "results")) == 5


def test_throttled_items_and_failed_requests_land_exactly_once(
    client: OpenSearch, url: str, prefix: str
) -> None:
    rows = [result(i, start=T0 + (i % 3) * DAY_MS) for i in range(300)]
    with FaultyProxy(url, throttle_fraction=0.3, fail_fraction=0.2, seed=7) as proxy:
        via = OpenSearch(hosts=[proxy.url], timeout=30, max_retries=0)
        sink = results_sink(via, prefix, fast_retrier("os"))
        for chunk in range(0, 300, 100):
            outcome = sink.write_batch(rows[chunk : chunk + 100], f"c{chunk}")
            assert outcome.written == 100 and outcome.rejected == ()
    assert proxy.stats.throttled_items > 50 and proxy.stats.failed_requests > 0
    assert proxy.stats.forwarded_items == 300  # nothing was forwarded twice
    alias = alias_name(prefix, "results")
    assert count(client, alias) == 300
    got = client.mget(
        body={"docs": [{"_index": result_doc(prefix, r).index, "_id": r.result_id} for r in rows]}
    )
    # One write per document: its version is the one it was written with, never bumped.
    assert all(d["found"] and d["_version"] == r.version
               for d, r in zip(got["docs"], rows, strict=True))


def test_stop_interrupts_endless_throttling(url: str, prefix: str) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    with FaultyProxy(url, throttle_fraction=1.0) as proxy:
        via = OpenSearch(hosts=[proxy.url], timeout=30, max_retries=0)
        sink = results_sink(via, prefix, fast_retrier("os", should_stop=stop))
        with pytest.raises(StopRetrying):
            sink.write_batch([result(1)], "k")


def test_too_large_requests_are_split_and_oversized_doc_rejected(
    client: OpenSearch, url: str, prefix: str
) -> None:
    docs = [result_doc(prefix, result(i)) for i in range(16)]
    huge = IndexDoc(docs[0].index, "huge", {**docs[0].source, "kind": "x" * 5_000})
    limit = len(bulk_body(docs[:3])) + 10  # about three docs per request
    with FaultyProxy(url, max_body_bytes=limit) as proxy:
        via = OpenSearch(hosts=[proxy.url], timeout=30, max_retries=0)
        sink: OpenSearchSink[IndexDoc] = OpenSearchSink("os", via, list, fast_retrier("os"))
        outcome = sink.write_docs([*docs[:8], huge, *docs[8:]])
    assert outcome.written == 16
    assert [(r.item_id, r.status) for r in outcome.rejected] == [("huge", 413)]
    assert proxy.stats.too_large > 0
    assert count(client, alias_name(prefix, "results")) == 16


# ---------------------------------------------------------------- pure parts


def test_daily_index_uses_utc_event_day() -> None:
    assert daily_index("a", "results", 0) == "a-results-1970.01.01"
    assert daily_index("a", "raw", DAY_MS - 1) == "a-raw-1970.01.01"
    assert daily_index("a", "raw", DAY_MS) == "a-raw-1970.01.02"


def test_classify_items_and_body() -> None:
    docs = [IndexDoc("i", str(n), {"n": n}) for n in range(4)]
    assert bulk_body(docs[:1]) == b'{"index":{"_index":"i","_id":"0"}}\n{"n":0}\n'
    response = {
        "items": [
            {"index": {"status": 201}},
            {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
            {"index": {"status": 503, "error": {"type": "unavailable"}}},
            {
                "index": {
                    "status": 400,
                    "error": {"type": "mapper_parsing_exception", "reason": "bad"},
                }
            },
        ]
    }
    out = classify_items(docs, response)
    assert out.written == 1
    assert [d.doc_id for d in out.retry] == ["1", "2"]
    assert [(r.item_id, r.reason, r.message) for r in out.rejected] == [
        ("3", "mapper_parsing_exception", "bad")
    ]


def test_classify_items_takes_errors_false_as_every_item_written() -> None:
    """OpenSearch sets `errors` when any item failed; false spares the look at each item (its
    items here carry no status, which the per-item look would read as 500 and retry). Items
    that do not line up with the documents are still a mismatch, and without `errors: false`
    each item is judged by its status."""
    docs = [IndexDoc("i", str(n), {"n": n}) for n in range(3)]
    assert classify_items(docs, {"errors": False, "items": [{"index": {}}] * 3}).written == 3
    with pytest.raises(BulkResponseMismatch):
        classify_items(docs, {"errors": False, "items": [{"index": {}}] * 2})
    for errors in ({"errors": True}, {}):
        out = classify_items(docs, {**errors, "items": [{"index": {}}] * 3})
        assert (out.written, len(out.retry)) == (0, 3)


def test_bulk_responses_hold_only_what_classify_items_reads(client: OpenSearch,
                                                            prefix: str) -> None:
    """With BULK_FILTER_PATH the server sends an item's status and error and nothing else,
    and classify_items still tells written from rejected by them."""
    index = daily_index(prefix, "results", T0)
    good = result_doc(prefix, result(1))
    bad = IndexDoc(index, "bad", {**orjson.loads(orjson.dumps(good.source)), "extra": 1})
    docs = [good, bad]
    response = client.bulk(body=bulk_body(docs), filter_path=BULK_FILTER_PATH)
    items = [next(iter(i.values())) for i in response["items"]]
    assert response["errors"] is True
    assert [sorted(i) for i in items] == [["status"], ["error", "status"]]
    out = classify_items(docs, response)
    assert out.written == 1 and not out.retry
    assert [(r.item_id, r.reason) for r in out.rejected] == [
        ("bad", "strict_dynamic_mapping_exception")]
    # The same version again: a 409, which a versioned document counts as written.
    again = client.bulk(body=bulk_body([good]), filter_path=BULK_FILTER_PATH)
    assert [i["index"]["status"] for i in again["items"]] == [409]
    assert classify_items([good], again).written == 1
    fresh = IndexDoc(index, "fresh", good.source)
    ok = client.bulk(body=bulk_body([fresh]), filter_path=BULK_FILTER_PATH)
    assert ok == {"errors": False, "items": [{"index": {"status": 201}}]}


def test_sink_type_accepts_custom_docs(client: OpenSearch, prefix: str) -> None:
    sink: OpenSearchSink[int] = OpenSearchSink(
        "ints", client, lambda ns: [result_doc(prefix, result(n)) for n in ns],
        fast_retrier("ints")
    )
    assert sink.write_batch([1, 2, 2], "k").written == 2


# ---------------------------------------------------------------- classification (errors.py)

STUB_BODIES = {403: {"message": "The security token included in the request is invalid."},
               404: {"error": {"type": "index_not_found_exception"}, "status": 404},
               400: {"error": {"type": "parse_exception"}, "status": 400},
               408: {"error": {"type": "timeout"}, "status": 408},
               429: OPENSEARCH_429, 503: OPENSEARCH_503}


@pytest.mark.parametrize(("status", "retried"), [(403, False), (404, False), (400, False),
                                                 (408, True), (429, True), (503, True)])
def test_request_failures_retry_only_as_errors_py_classifies(status: int, retried: bool) -> None:
    """A stub server answers every request with `status` and OpenSearch's own body for it
    (osmem cannot be made to answer these): auth, missing and bad requests fail at once;
    throttling, timeouts and unavailability are retried until the shard stops."""
    checks = {"n": 0}

    def stop() -> bool:
        checks["n"] += 1
        return checks["n"] > 3

    with status_server(status, STUB_BODIES[status]) as stub:
        via = OpenSearch(hosts=[stub.url], timeout=5, max_retries=0)
        sink = results_sink(via, "p", fast_retrier("os", should_stop=stop))
        with pytest.raises(StopRetrying if retried else TransportError) as info:
            sink.write_batch([result(1)], "k")
    assert len(stub.requests) == (3 if retried else 1)
    if not retried:
        assert isinstance(info.value, TransportError) and info.value.status_code == status
        assert not is_retryable(info.value)


def test_bulk_items_retry_only_as_errors_py_classifies() -> None:
    """A scripted _bulk answers each document's first attempt with the status its id names,
    and 201 after: 429, 5xx and 408 items go again (alone), 4xx items are rejected, and a
    409 on a document written with an external version counts as written (a same or newer
    version is stored), while a 409 without one is a rejection."""
    first = {"s429": 429, "s503": 503, "s408": 408, "s400": 400, "s403": 403,
             "v409": 409, "u409": 409, "ok": 201}
    sent: list[list[str]] = []

    def bulk(request: Any) -> Any:
        lines = request.body.decode().splitlines()
        ids = [orjson.loads(line)["index"]["_id"] for line in lines[::2]]
        sent.append(ids)
        items = []
        for doc_id in ids:
            status = first.pop(doc_id, 201)
            error = {"type": f"e{status}", "reason": f"r{status}"} if status >= 300 else None
            items.append({"index": {"_id": doc_id, "status": status,
                                    **({"error": error} if error else {})}})
        return json_answer(200, {"took": 1, "errors": True, "items": items})

    docs = [IndexDoc("i", doc_id, {"n": 1}, None if doc_id == "u409" else 7)
            for doc_id in ("s429", "s503", "s408", "s400", "s403", "v409", "u409", "ok")]
    with scripted_http_server(bulk) as stub:
        via = OpenSearch(hosts=[stub.url], timeout=5, max_retries=0)
        sink: OpenSearchSink[IndexDoc] = OpenSearchSink("os", via, list, fast_retrier("os"))
        outcome = sink.write_docs(docs)
    assert sent == [[d.doc_id for d in docs], ["s429", "s503", "s408"]]
    assert outcome.written == 5  # ok, v409, and the three retried items
    assert sorted((r.item_id, r.status, r.reason) for r in outcome.rejected) == [
        ("s400", 400, "e400"), ("s403", 403, "e403"), ("u409", 409, "e409")]
