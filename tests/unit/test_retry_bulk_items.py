"""Property test of the OpenSearch sink's item-level retry loop against an in-memory fake.

No server: the fake client scripts each document's statuses (429 / 5xx before a final 201
or 4xx) and fails whole requests at random, so hypothesis can explore the retry logic.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from opensearchpy.exceptions import ConnectionError as OSConnectionError

from consumer.sinks.opensearch import BULK_FILTER_PATH, IndexDoc, OpenSearchSink, retryable
from consumer.sinks.retry import Backoff, CircuitBreaker, Retrier

transient = st.sampled_from([429, 500, 502, 503])
final = st.sampled_from([200, 201, 400, 404])


class FakeCluster:
    def __init__(self, scripts: dict[str, list[int]], request_failures: list[bool]) -> None:
        self.scripts = scripts
        self.request_failures = request_failures
        self.versions: dict[str, int] = {}
        self.calls = 0
        self.filter_paths: list[str | None] = []

    def bulk(self, body: bytes, filter_path: str | None = None) -> dict[str, Any]:
        self.calls += 1
        self.filter_paths.append(filter_path)
        if self.request_failures and self.request_failures.pop(0):
            raise OSConnectionError("N/A", "connection refused", None)
        lines = body.splitlines()
        items = []
        for action_line in lines[::2]:
            doc_id = orjson.loads(action_line)["index"]["_id"]
            assert doc_id not in self.versions, "a landed doc was sent again"
            status = self.scripts[doc_id].pop(0)
            result: dict[str, Any] = {"_id": doc_id, "status": status}
            if status < 300:
                self.versions[doc_id] = self.versions.get(doc_id, 0) + 1
            else:
                result["error"] = {"type": f"e{status}", "reason": f"status {status}"}
            items.append({"index": result})
        # As OpenSearch sets it: a request whose items all succeeded has errors false.
        return {"errors": any("error" in i["index"] for i in items), "items": items}


@settings(max_examples=200, deadline=None)
@given(
    scripts=st.lists(st.tuples(st.lists(transient, max_size=4), final), min_size=1, max_size=25),
    request_failures=st.lists(st.booleans(), max_size=10),
)
def test_every_doc_lands_once_or_is_rejected(
    scripts: list[tuple[list[int], int]], request_failures: list[bool]
) -> None:
    docs = [IndexDoc("idx", f"d{i}", {"n": i}) for i in range(len(scripts))]
    cluster = FakeCluster(
        {f"d{i}": [*pre, last] for i, (pre, last) in enumerate(scripts)}, list(request_failures)
    )
    now = [0.0]  # fake clock: sleeping advances it, so an open breaker times out at once

    def sleep(seconds: float) -> None:
        now[0] += seconds * 1000

    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_ms=50, clock=lambda: now[0])
    retrier = Retrier("fake", Backoff(base_ms=1, cap_ms=2), breaker, retryable=retryable,
                      sleep=sleep)
    sink: OpenSearchSink[IndexDoc] = OpenSearchSink("fake", cluster, list, retrier)
    outcome = sink.write_docs(docs)
    landed = {f"d{i}" for i, (_, last) in enumerate(scripts) if last < 300}
    assert outcome.written == len(landed)
    assert set(cluster.versions) == landed
    assert all(v == 1 for v in cluster.versions.values())
    assert {r.item_id for r in outcome.rejected} == {d.doc_id for d in docs} - landed
    assert all(r.status in (400, 404) and r.reason == f"e{r.status}" for r in outcome.rejected)
    assert set(cluster.filter_paths) == {BULK_FILTER_PATH}  # every request asked for less
