"""`transform test --against-archive s3://bucket/prefix`: the run's window results compared
with the ones the service stored in its S3 results objects (consumer/sinks/layout.py).

Which stored results correspond to the input: those in the hour partitions of the run's
windows (results objects are partitioned by window start), of the input's shard when the
input is raw archive lines (they carry the shard; the run then windows as that shard did,
and the result ids match), else of every shard, merged per window and key as the merged
view does. Of those, the windows whose start lies within the run's first and last window
start: a window there that the run did not compute is "extra".

`compare` (pure) gives one "difference" line per window and key that differs: "missing"
(computed, not stored), "extra" (stored, not computed), "different" (the fields that differ,
count min max exactly, sum and mean to 1e-9 relative), and "open" lines for results the run
closed only because the input ended that are not stored (the service has not closed them
yet: not a difference); then one "comparison" line with the counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

from consumer.sinks.layout import decode_body, hour_partition, partition_prefix

WindowKey = tuple[str, int, int, tuple[str, ...]]
EXACT = ("count", "min", "max")
CLOSE = ("sum", "mean")


def parse_url(url: str, default_prefix: str) -> tuple[str, str]:
    """(bucket, results prefix) of s3://bucket[/prefix/]; no prefix: the settings' one."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"--against-archive {url!r}: not an s3://bucket/prefix URL")
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parsed.netloc, prefix or default_prefix


def window_key(row: dict[str, Any]) -> WindowKey:
    return (row["kind"], row["window_start_ms"], row["window_end_ms"], tuple(row["key"]))


def prefixes(results_prefix: str, results: Iterable[dict[str, Any]],
             shard: str | None) -> list[str]:
    """The listing prefixes that hold the stored results of these windows."""
    hours = sorted({hour_partition(r["window_start_ms"]) for r in results})
    if shard is not None:
        return [partition_prefix(results_prefix, h, shard) for h in hours]
    return [results_prefix + h for h in hours]


def merged(rows: Iterable[dict[str, Any]]) -> tuple[dict[WindowKey, dict[str, Any]], int]:
    """Stored final rows per window and key (one per result id; shards' parts combined),
    and how many rows repeated a result id already seen."""
    by_id: dict[str, dict[str, Any]] = {}
    repeated = 0
    for r in rows:
        if r.get("is_final"):
            repeated += r["result_id"] in by_id
            by_id[r["result_id"]] = r
    out: dict[WindowKey, dict[str, Any]] = {}
    for r in by_id.values():
        k = window_key(r)
        if k in out:
            a = out[k]
            r = {"count": a["count"] + r["count"], "sum": a["sum"] + r["sum"],
                 "min": min(a["min"], r["min"]), "max": max(a["max"], r["max"]),
                 "shard": f"{a['shard']}+{r['shard']}"}
        out[k] = {f: r[f] for f in ("count", "sum", "min", "max", "shard")} \
            | {"mean": r["sum"] / r["count"]}
    return out, repeated


def _fields_differing(got: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    out = {f: {"input": got[f], "stored": stored[f]} for f in EXACT if got[f] != stored[f]}
    out |= {f: {"input": got[f], "stored": stored[f]} for f in CLOSE
            if not math.isclose(got[f], stored[f], rel_tol=1e-9, abs_tol=1e-9)}
    return out


def _line(what: str, k: WindowKey, **extra: Any) -> dict[str, Any]:
    return {"type": "difference", "difference": what, "kind": k[0], "window_start_ms": k[1],
            "window_end_ms": k[2], "key": list(k[3])} | extra


def compare(results: Sequence[dict[str, Any]], stored: dict[WindowKey, dict[str, Any]]
            ) -> Iterator[dict[str, Any]]:
    """Difference lines, then the "comparison" counts (see the module docstring)."""
    got = {window_key(r): r for r in results}
    starts = [k[1] for k in got]
    counts = dict.fromkeys(("equal", "different", "missing", "extra", "open"), 0)
    for k, r in got.items():
        s = stored.get(k)
        if s is None:
            what = "open" if r["closed_by"] == "end_of_input" else "missing"
            counts[what] += 1
            line = _line(what, k, input={f: r[f] for f in (*EXACT, *CLOSE)})
            if what == "open":
                line["type"] = "open"
            yield line
            continue
        differing = _fields_differing(r, s)
        counts["different" if differing else "equal"] += 1
        if differing:
            yield _line("different", k, fields=differing, stored_shard=s["shard"])
    for k, s in sorted(stored.items()):
        if k not in got and starts and min(starts) <= k[1] <= max(starts):
            counts["extra"] += 1
            yield _line("extra", k, stored={f: s[f] for f in (*EXACT, *CLOSE)},
                        stored_shard=s["shard"])
    yield {"type": "comparison", "windows": len(got), **counts,
           "equal_overall": not (counts["different"] or counts["missing"] or counts["extra"])}


def read_stored(s3: Any, bucket: str, listing: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    """Every row of the results objects under these prefixes, and how many objects."""
    rows: list[dict[str, Any]] = []
    objects = 0
    for prefix in listing:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                rows += decode_body(obj["Key"], body)
                objects += 1
    return rows, objects
