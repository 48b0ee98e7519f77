"""The runbook's checks: one command answers "where is it broken?" for each failure area.

Each area of the operations runbook (README, "Runbook") has a metric, an alarm and one of
these checks. A check reads the real systems and returns a Finding; none changes anything.
"""

from __future__ import annotations

import functools
import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from consumer.config import Settings


@dataclass(frozen=True)
class Finding:
    area: str  # ingestion, processing, delivery, data-quality
    check: str
    ok: bool
    detail: str


def _guard(area: str, check: str, run: Callable[[], Finding]) -> Finding:
    """A check that cannot reach its system is a failed check, not a crash."""
    try:
        return run()
    except Exception as exc:  # the report must list every check
        return Finding(area, check, False, f"{type(exc).__name__}: {exc}")


def open_shards(kinesis: Any, stream: str) -> list[str]:
    shards, token = [], None
    while True:
        resp = (kinesis.list_shards(NextToken=token) if token
                else kinesis.list_shards(StreamName=stream))
        shards += [s["ShardId"] for s in resp["Shards"]
                   if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
        token = resp.get("NextToken")
        if not token:
            return shards


def check_stream(kinesis: Any, stream: str) -> Finding:
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    status = summary["StreamStatus"]
    shards = open_shards(kinesis, stream)
    return Finding("ingestion", "stream", status == "ACTIVE",
                   f"{stream} is {status} with {len(shards)} open shards")


def check_leases(dynamodb: Any, kinesis: Any, settings: Settings) -> Finding:
    """Every open shard has a lease with an owner (KCL's lease table = the app name)."""
    items = dynamodb.scan(TableName=settings.stream.app_name)["Items"]
    owners = {i["leaseKey"]["S"]: i.get("leaseOwner", {}).get("S") for i in items}
    shards = open_shards(kinesis, settings.stream.name)
    orphans = [s for s in shards if not owners.get(s)]
    workers = Counter(o for s, o in owners.items() if s in shards and o)
    detail = f"{len(shards) - len(orphans)}/{len(shards)} open shards leased by {dict(workers)}"
    if orphans:
        detail += f"; no owner: {orphans}"
    return Finding("ingestion", "leases", not orphans, detail)


def check_worker(url: str) -> Finding:
    """A worker's /readyz: daemon alive, leases held, processors heartbeating."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/readyz", timeout=5):
            return Finding("processing", "worker", True, f"{url} ready")
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        return Finding("processing", "worker", False, f"{url} not ready: {body.get('failed')}")


def check_s3(s3: Any, bucket: str) -> Finding:
    s3.head_bucket(Bucket=bucket)
    return Finding("delivery", "s3", True, f"bucket {bucket} reachable")


def check_redshift(settings: Settings) -> Finding:
    import psycopg2

    from consumer.sinks.redshift import RAW_TABLE, RESULTS_TABLE, ident

    cfg = settings.redshift
    with psycopg2.connect(cfg.connect_dsn(), connect_timeout=10) as conn, conn.cursor() as cur:
        counts = {}
        for spec in (RAW_TABLE, RESULTS_TABLE):
            cur.execute(f"SELECT count(*) FROM {ident(cfg.schema)}.{ident(spec.name)}")
            row = cur.fetchone()
            counts[spec.name] = row[0] if row else 0
    conn.close()
    return Finding("delivery", "redshift", True, f"schema {cfg.schema}: {counts}")


def check_opensearch(settings: Settings) -> Finding:
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[settings.opensearch.endpoint], timeout=10)
    health = client.cluster.health()["status"]
    return Finding("delivery", "opensearch", health in ("green", "yellow"),
                   f"cluster {health}")


def check_quarantine(s3: Any, settings: Settings, hours: int, max_records: int,
                     now: datetime | None = None) -> Finding:
    """Quarantine objects in the last `hours` hour partitions (data quality)."""
    from consumer.sinks.quarantine import read_rows

    now = now or datetime.now(tz=UTC)
    reasons: Counter[str] = Counter()
    for h in range(hours):
        t = now - timedelta(hours=h)
        prefix = f"{settings.s3.quarantine_prefix}dt={t:%Y-%m-%d}/hour={t:%H}/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3.bucket,
                                                                 Prefix=prefix):
            for obj in page.get("Contents", []):
                reasons.update(r["reason"] for r in read_rows(s3, settings.s3.bucket, obj["Key"]))
    total = sum(reasons.values())
    return Finding("data-quality", "quarantine", total <= max_records,
                   f"{total} records quarantined in the last {hours} h: {dict(reasons)}; "
                   f"see `aetherstream quarantine ls`")


def run_checks(settings: Settings, clients: dict[str, Any], worker_urls: list[str],
               hours: int = 1, max_quarantined: int = 1000) -> list[Finding]:
    kinesis, dynamodb, s3 = clients["kinesis"], clients["dynamodb"], clients["s3"]
    checks: list[tuple[str, str, Callable[[], Finding]]] = [
        ("ingestion", "stream", lambda: check_stream(kinesis, settings.stream.name)),
        ("ingestion", "leases", lambda: check_leases(dynamodb, kinesis, settings)),
        *[("processing", "worker", functools.partial(check_worker, u)) for u in worker_urls],
        ("delivery", "s3", lambda: check_s3(s3, settings.s3.bucket)),
    ]
    if settings.redshift.enabled:
        checks.append(("delivery", "redshift", lambda: check_redshift(settings)))
    if settings.opensearch.enabled:
        checks.append(("delivery", "opensearch", lambda: check_opensearch(settings)))
    checks.append(("data-quality", "quarantine",
                   lambda: check_quarantine(s3, settings, hours, max_quarantined)))
    return [_guard(area, name, run) for area, name, run in checks]
