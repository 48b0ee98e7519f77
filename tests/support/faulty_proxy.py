"""A fault-injecting HTTP proxy (stdlib, one thread per request) in front of an OpenSearch.

- Whole requests: a `fail_fraction` of them get 503 without being forwarded, and a body
  over `max_body_bytes` gets 413 (like http.max_content_length).
- _bulk requests: a `throttle_fraction` of the ITEMS are answered 429
  (es_rejected_execution_exception) and NOT forwarded; the rest are forwarded and the
  upstream's item results are merged back in request order.

Because failed items never reach the server, a client that retries only what failed
indexes every document exactly once (each ends at _version 1). Faults are drawn from a
seeded Random so a failing test reproduces.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.support.http_proxy import Answer, ForwardingProxy


@dataclass
class ProxyStats:
    requests: int = 0
    failed_requests: int = 0
    too_large: int = 0
    bulk_items_seen: int = 0
    throttled_items: int = 0
    forwarded_items: int = 0


def _split_bulk(body: bytes) -> list[tuple[bytes, bytes | None]]:
    """NDJSON into (action, source) pairs; delete actions have no source line."""
    lines = [ln for ln in body.split(b"\n") if ln.strip()]
    pairs: list[tuple[bytes, bytes | None]] = []
    i = 0
    while i < len(lines):
        action = lines[i]
        op = next(iter(json.loads(action)))
        if op == "delete":
            pairs.append((action, None))
            i += 1
        else:
            pairs.append((action, lines[i + 1]))
            i += 2
    return pairs


def _throttled_item(action: bytes) -> dict[str, Any]:
    op, meta = next(iter(json.loads(action).items()))
    return {
        op: {
            "_index": meta.get("_index"),
            "_id": meta.get("_id"),
            "status": 429,
            "error": {
                "type": "es_rejected_execution_exception",
                "reason": "rejected execution (injected by faulty proxy)",
            },
        }
    }


class FaultyProxy(ForwardingProxy):
    def __init__(
        self,
        upstream: str,
        *,
        throttle_fraction: float = 0.0,
        fail_fraction: float = 0.0,
        max_body_bytes: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(upstream)
        self.throttle_fraction = throttle_fraction
        self.fail_fraction = fail_fraction
        self.max_body_bytes = max_body_bytes
        self.stats = ProxyStats()
        self._rand = random.Random(seed)

    def _draw(self, fraction: float) -> bool:
        with self._lock:
            return self._rand.random() < fraction

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        with self._lock:
            self.stats.requests += 1
        if self._draw(self.fail_fraction):
            with self._lock:
                self.stats.failed_requests += 1
            err = {"error": {"type": "unavailable", "reason": "injected 503"}, "status": 503}
            return _json(503, err)
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            with self._lock:
                self.stats.too_large += 1
            err = {"error": {"type": "content_too_long", "reason": "injected 413"}, "status": 413}
            return _json(413, err)
        if method in ("POST", "PUT") and urlsplit(path).path.endswith("/_bulk") and body:
            return self._bulk(method, path, headers, body)
        return self.forward(method, path, headers, body)

    def _bulk(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        pairs = _split_bulk(body)
        keep = [not self._draw(self.throttle_fraction) for _ in pairs]
        sent = [p for p, k in zip(pairs, keep, strict=True) if k]
        with self._lock:
            self.stats.bulk_items_seen += len(pairs)
            self.stats.throttled_items += len(pairs) - len(sent)
            self.stats.forwarded_items += len(sent)
        upstream_items: list[dict[str, Any]] = []
        took = 0
        if sent:
            lines = [ln for a, s in sent for ln in ((a,) if s is None else (a, s))]
            answer = self.forward(method, path, headers, b"\n".join(lines) + b"\n")
            if answer[0] >= 300:
                return answer
            parsed = json.loads(answer[2])
            upstream_items = list(parsed["items"])
            took = int(parsed.get("took", 0))
        it = iter(upstream_items)
        items = [
            next(it) if k else _throttled_item(a) for (a, _), k in zip(pairs, keep, strict=True)
        ]
        errors = any("error" in next(iter(i.values())) for i in items)
        return _json(200, {"took": took, "errors": errors, "items": items})


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, [("content-type", "application/json")], json.dumps(body).encode()
