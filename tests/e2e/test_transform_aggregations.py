"""End to end: a transform chain, two schema versions and two declared aggregations beside the
default one, through the real KCL MultiLangDaemon on the local stack.

The settings file (written below, modelled on examples/aggregations/settings.toml) declares:
- a contract with two schema versions chosen by `schema_version`: v1 carries `temp` and an
  ISO time `ts`, v2 `value` and an epoch-ms `time`;
- three transforms: a lookup of the device's site in a CSV file (an unknown device is
  rejected: quarantined with stage `transform`), a derive of `reading` (degrees F from either
  version's value) and a filter dropping the `battery` metric;
- the default aggregation (60 s tumbling over device and metric, the contract's value), and
  `per_device` (60 s tumbling; no `value`, so each record's own version's value field, as
  the default aggregation reads it) and `per_metric` (5-minute windows sliding by a minute
  over metric and site, with quantiles, measuring the derived `reading`).

The stream mixes both versions, unknown devices, battery readings, a v2 producer sending
`value` as a string (quarantined as a type change, counted as drift), records far behind the
watermark (late for every aggregation) and some just behind it (late for some windows only).
Event times are in the past; a last record per shard, an hour later, moves every watermark
past every window but its own, so the windows close by event time, not by the clock.

An oracle written here (the windows and lateness in plain Python from the engine's documented
rules, the measures by a Polars GROUP BY) gives every aggregation's results; each sink must
hold exactly those, by content: the S3 results (per aggregation prefix), Redshift's
`window_results[_<name>]` and the OpenSearch aliases. The counts reconcile: everything sent
but the type changes is archived, and archived = in the default aggregation + filtered +
quarantined (transform) + late, with the filter and late counters read from /metrics.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import psycopg2
import pytest

from consumer.aws import put_records
from consumer.local.emulators import LocalStack, boto3_client
from consumer.local.producer import iso_ms
from consumer.local.reconcile import redshift_raw_identities
from consumer.sinks.layout import decode_body
from consumer.sinks.opensearch import alias_name, results_kind
from consumer.sinks.redshift import ident, results_table
from tests.e2e.scenario import Scenario, identity, sample_sum

pytestmark = pytest.mark.e2e

NAME = "e2e-taggs"
T0 = 1_794_999_600_000  # 2026-11-18T11:00:00Z, a multiple of 5 minutes
N = 900  # readings, one every 1.3 s of event time (about 20 minutes)
SITES = {f"d{i}": "plant-a" if i < 4 else "plant-b" for i in range(8)}
GHOSTS = ("ghost-1", "ghost-2")  # not in sites.csv: the lookup rejects them
FAR_MS, NEAR_MS = 16 * 60_000, 50_000  # how far behind the stream the stragglers are
SENTINEL_MS = 3_600_000

VERSIONS = """[
  {"name": "v1", "when": 1, "value_field": "temp", "ts_format": "iso",
   "fields": {"schema_version": "integer", "seq": "integer", "device_id": "string",
              "metric": "string", "ts": "string", "temp": "number", "unit": "string"}},
  {"name": "v2", "when": 2, "ts_field": "time", "ts_format": "epoch_ms",
   "fields": {"schema_version": "integer", "seq": "integer", "device_id": "string",
              "metric": "string", "time": "integer", "value": "number"}}
]"""

SETTINGS = f"""
[contract]
key_fields = ["device_id", "metric"]
value_field = "value"
version_field = "schema_version"
versions = '''{VERSIONS}'''

[windows]
kind = "tumbling"
size_ms = 60000
allowed_lateness_ms = 10000
out_of_orderness_ms = 5000
idle_timeout_ms = 0

[[transform]]
name = "sites"
kind = "lookup"
source = "sites.csv"
key = "device_id"
columns = ["site"]
on_miss = "reject"
refresh_s = 0

[[transform]]
name = "reading"
kind = "derive"
field = "reading"
expr = "(schema_version == 1 ? temp : value) * 1.8 + 32.0"

[[transform]]
name = "no-battery"
kind = "filter"
expr = "metric != 'battery'"

[[aggregation]]
name = "per_device"
group_by = ["device_id"]
[aggregation.window]
kind = "tumbling"
size_ms = 60000
allowed_lateness_ms = 5000
out_of_orderness_ms = 5000

[[aggregation]]
name = "per_metric"
group_by = ["metric", "site"]
value = "reading"
quantiles = true
[aggregation.window]
kind = "sliding"
size_ms = 300000
slide_ms = 60000
allowed_lateness_ms = 30000
out_of_orderness_ms = 5000
"""


# --- what is sent -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    seq: int
    device: str
    metric: str
    ts_ms: int
    value: float  # the version's value field as sent
    data: bytes
    partition_key: str
    type_change: bool = False

    @property
    def reading(self) -> float:
        return self.value * 1.8 + 32.0


def record(seq: int, device: str, metric: str, ts: int, value: float, pk: str,
           type_change: bool = False) -> Sent:
    if seq % 3 == 0:
        body: dict[str, Any] = {"schema_version": 1, "seq": seq, "device_id": device,
                                "metric": metric, "ts": iso_ms(ts), "temp": value, "unit": "C"}
    else:
        body = {"schema_version": 2, "seq": seq, "device_id": device, "metric": metric,
                "time": ts, "value": str(value) if type_change else value}
    return Sent(seq, device, metric, ts, value, orjson.dumps(body), pk, type_change)


def stream() -> list[Sent]:
    """The readings in production order: both versions, unknown devices, battery readings,
    type changes, and stragglers far and near behind the stream."""
    rng = random.Random(11)
    out: list[Sent] = []
    for i in range(N):
        ts = T0 + i * 1300 + rng.randrange(2000)
        device = GHOSTS[i % 2] if i % 37 == 5 else f"d{rng.randrange(8)}"
        metric = "battery" if i % 11 == 3 else ("temp", "humidity")[rng.randrange(2)]
        value = round(rng.uniform(1.0, 100.0), 3)
        out.append(record(len(out), device, metric, ts, value, f"pk-{i}",
                          type_change=i % 97 == 50 and len(out) % 3 != 0))
        if i >= 120 and i % 45 == 0:
            out.append(record(len(out), f"d{i % 8}", "temp", ts - FAR_MS, value, f"far-{i}"))
        if i >= 120 and i % 31 == 0:
            out.append(record(len(out), f"d{i % 8}", "humidity", ts - NEAR_MS, value,
                              f"near-{i}"))
    return out


def shard_keys(kinesis: Any, stream_name: str) -> list[str]:
    """One partition key per shard (by the shard's hash key range), for the last records."""
    shards = kinesis.list_shards(StreamName=stream_name)["Shards"]
    keys = []
    for shard in shards:
        lo, hi = (int(shard["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
        keys.append(next(pk for pk in (f"last-{n}" for n in range(10_000))
                         if lo <= int(hashlib.md5(pk.encode()).hexdigest(), 16) <= hi))
    return keys


def send(kinesis: Any, stream_name: str, records: list[Sent]) -> None:
    for start in range(0, len(records), 250):
        put_records(kinesis, stream_name, [{"PartitionKey": r.partition_key, "Data": r.data}
                                           for r in records[start:start + 250]])


# --- the oracle ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Agg:
    """One aggregation as the settings file declares it, read here without the product."""

    name: str
    size: int
    slide: int
    lateness: int
    key: Callable[[Sent], tuple[str, ...]]
    value: Callable[[Sent], float]
    quantiles: bool = False
    ooo: int = 5000

    @property
    def kind(self) -> str:
        return "sliding" if self.slide != self.size else "tumbling"

    def windows(self, ts: int) -> list[tuple[int, int]]:
        last = ts - ts % self.slide
        return [(s, s + self.size) for s in range(last - self.size + self.slide, last + 1,
                                                  self.slide)]


AGGS = (
    Agg("", 60_000, 60_000, 10_000, lambda r: (r.device, r.metric), lambda r: r.value),
    Agg("per_device", 60_000, 60_000, 5_000, lambda r: (r.device,), lambda r: r.value),
    Agg("per_metric", 300_000, 60_000, 30_000, lambda r: (r.metric, SITES[r.device]),
        lambda r: r.reading, quantiles=True),
)
Where = tuple[str, int, int, tuple[str, ...]]  # shard, window start, end, key


@dataclass
class Oracle:
    expected: dict[str, dict[Where, dict[str, Any]]]  # aggregation -> window -> measures
    late: dict[str, set[int]]  # aggregation -> seqs late for all of their windows
    open_seqs: dict[str, set[int]]  # aggregation -> seqs only in windows still open
    quarantined: set[int]  # by the transform chain (the lookup)
    filtered: set[int]


def oracle(sent: list[Sent], where: dict[int, tuple[str, int, int]]) -> Oracle:
    """where: seq -> (shard, sequence, sub-sequence) of the archived records. Each engine
    sees, per shard in shard order, the records the chain kept; a record is late when every
    window of it has end + allowed lateness <= the watermark (the largest event time before
    it minus the out-of-orderness); a window is final once end + lateness <= the watermark."""
    quarantined = {r.seq for r in sent if not r.type_change and r.device not in SITES}
    filtered = {r.seq for r in sent if not r.type_change and r.device in SITES
                and r.metric == "battery"}
    kept = sorted((r for r in sent if r.seq in where and r.seq not in quarantined | filtered),
                  key=lambda r: (where[r.seq][0], where[r.seq][1], where[r.seq][2]))
    out = Oracle({}, {}, {}, quarantined, filtered)
    for agg in AGGS:
        rows: list[dict[str, Any]] = []
        marks: dict[str, tuple[float, float]] = {}  # shard -> (max event time, watermark)
        late: set[int] = set()
        for r in kept:
            shard = where[r.seq][0]
            top, wm = marks.get(shard, (-math.inf, -math.inf))
            fits = [w for w in agg.windows(r.ts_ms) if w[1] + agg.lateness > wm]
            if not fits:
                late.add(r.seq)
            rows += [{"shard": shard, "start": s, "end": e, "key": orjson.dumps(agg.key(r)),
                      "ts": r.ts_ms, "value": agg.value(r), "seq": r.seq} for s, e in fits]
            top = max(top, r.ts_ms)
            marks[shard] = (top, max(wm, top - agg.ooo))
        frame = pl.DataFrame(rows, schema={"shard": pl.String, "start": pl.Int64,
                                           "end": pl.Int64, "key": pl.Binary, "ts": pl.Int64,
                                           "value": pl.Float64, "seq": pl.Int64})
        final = frame.filter(pl.col("end") + agg.lateness
                             <= pl.col("shard").replace_strict(
                                 {s: m[1] for s, m in marks.items()}, return_dtype=pl.Float64))
        v = pl.col("value")
        quantiles = [v.quantile(q, interpolation="lower").alias(f"p{q * 100:g}")
                     for q in (0.5, 0.9, 0.99)]
        grouped = final.group_by(["shard", "start", "end", "key"]).agg(
            pl.len().alias("count"), v.sum().alias("sum"), v.min().alias("min"),
            v.max().alias("max"), v.mean().alias("mean"), pl.col("ts").min().alias("first_ts"),
            pl.col("ts").max().alias("last_ts"), *quantiles)
        expected = {}
        for g in grouped.iter_rows(named=True):
            measures = {k: g[k] for k in ("count", "sum", "min", "max", "mean", "first_ts",
                                          "last_ts")}
            measures["quantiles"] = {p: g[p] for p in ("p50", "p90", "p99")} \
                if agg.quantiles else {}
            expected[(g["shard"], g["start"], g["end"], tuple(orjson.loads(g["key"])))] = \
                measures
        out.expected[agg.name] = expected
        out.late[agg.name] = late
        in_final = set(final["seq"].to_list())
        out.open_seqs[agg.name] = set(frame["seq"].to_list()) - in_final
    return out


# --- what the sinks hold ------------------------------------------------------------------


def _stored(shard: str, kind: str, start: int, end: int, key: Any, count: int, total: float,
            lo: float, hi: float, mean: float, first: int, last: int, final: bool,
            quantiles: Any, rid: str) -> tuple[str, Where, dict[str, Any]]:
    q = orjson.loads(quantiles) if isinstance(quantiles, str) else quantiles
    return rid, (shard, int(start), int(end), tuple(key)), {
        "kind": kind, "count": int(count), "sum": float(total), "min": float(lo),
        "max": float(hi), "mean": float(mean), "first_ts": int(first), "last_ts": int(last),
        "is_final": bool(final), "quantiles": q or {}}


Held = list[tuple[str, Where, dict[str, Any]]]


def s3_held(sc: Scenario, agg: str) -> Held:
    s3, bucket = boto3_client("s3", sc.stack.endpoints), sc.name
    prefix = sc.settings.s3.results_prefix + (f"agg={agg}/" if agg else "")
    out: Held = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not agg and "/agg=" in obj["Key"]:
                continue  # a declared aggregation's
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out += [_stored(r["shard"], r["kind"], r["window_start_ms"], r["window_end_ms"],
                            r["key"], r["count"], r["sum"], r["min"], r["max"], r["mean"],
                            r["first_ts_ms"], r["last_ts_ms"], r["is_final"], r["quantiles"],
                            r["result_id"]) for r in decode_body(obj["Key"], body)]
    return out


def redshift_held(sc: Scenario, agg: str) -> Held:
    r = sc.settings.redshift
    with psycopg2.connect(r.connect_dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT shard_id, window_kind, window_start_ms, window_end_ms, window_key, "
                    "value_count, value_sum, value_min, value_max, value_mean, first_ts_ms, "
                    "last_ts_ms, is_final, quantiles_json, result_id "
                    f"FROM {ident(r.schema)}.{ident(results_table(agg).name)}")
        rows = cur.fetchall()
    conn.close()
    return [_stored(*row[:4], orjson.loads(row[4]), *row[5:]) for row in rows]


def opensearch_held(sc: Scenario, agg: str) -> Held:
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[sc.stack.endpoints.opensearch_url], timeout=30)
    alias = alias_name(sc.settings.opensearch.index_prefix, results_kind(agg))
    if not client.indices.exists_alias(name=alias):
        return []
    client.indices.refresh(index=alias)
    hits = client.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    return [_stored(s["shard_id"], s["kind"], s["window_start"], s["window_end"], s["key"],
                    s["count"], s["sum"], s["min"], s["max"], s["mean"], s["first_ts"],
                    s["last_ts"], s["is_final"], s.get("quantiles"), s["result_id"])
            for s in (h["_source"] for h in hits["hits"]["hits"])]


def differences(agg: Agg, held: Held, expected: dict[Where, dict[str, Any]]) -> list[str]:
    """Every way one sink's results of one aggregation differ from the oracle's."""
    out = []
    ids = Counter(rid for rid, _, _ in held)
    if twice := [rid for rid, n in ids.items() if n > 1]:
        out.append(f"{len(twice)} result ids held more than once, e.g. {twice[:3]}")
    got = {where: m for _, where, m in held}
    if missing := sorted(set(expected) - set(got)):
        out.append(f"{len(missing)} results missing, e.g. {missing[:3]}")
    if extra := sorted(set(got) - set(expected)):
        out.append(f"{len(extra)} results the oracle has not, e.g. {extra[:3]}")
    for where in sorted(set(got) & set(expected)):
        g, e = got[where], expected[where]
        same = (g["kind"], g["is_final"]) == (agg.kind, True) and all(
            g[k] == e[k] for k in ("count", "min", "max", "first_ts", "last_ts")) and all(
            math.isclose(g[k], e[k], rel_tol=1e-9) for k in ("sum", "mean"))
        # The sketch's quantiles are within its relative accuracy (1 %) of the exact ones.
        same = same and g["quantiles"].keys() == e["quantiles"].keys() and all(
            abs(g["quantiles"][p] - e["quantiles"][p]) <= 0.0101 * abs(e["quantiles"][p])
            for p in e["quantiles"])
        if not same:
            out.append(f"{where}: held {g}, expected {e}")
    return out


# --- the test -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("taggs")) as s:
        yield s


def settings_file(tmp_path: Path) -> Path:
    (tmp_path / "sites.csv").write_text(
        "device_id,site\n" + "".join(f"{d},{s}\n" for d, s in SITES.items()))
    path = tmp_path / "settings.toml"
    path.write_text(SETTINGS)
    return path


def test_chain_versions_and_aggregations_reach_every_sink(stack: LocalStack,
                                                          tmp_path: Path) -> None:
    config = settings_file(tmp_path)
    windows = {"size_ms": 60_000, "allowed_lateness_ms": 10_000, "out_of_orderness_ms": 5_000,
               "idle_timeout_ms": 0}
    sc = Scenario(stack, NAME, tmp_path / "run", shards=2, windows=windows, config=config,
                  aggregations=("per_device", "per_metric"))
    sent = stream()
    kinesis = boto3_client("kinesis", stack.endpoints)
    last = [record(len(sent) + n, "d0", "temp", T0 + N * 1300 + SENTINEL_MS, 50.0, pk)
            for n, pk in enumerate(shard_keys(kinesis, NAME))]
    sent += last
    changed = [r for r in sent if r.type_change]
    try:
        worker = sc.worker("a")
        sc.wait_leases(2)
        send(kinesis, NAME, sent[:-len(last)])
        send(kinesis, NAME, last)  # after everything else: each shard's last record
        sc.wait_archived(len(sent) - len(changed), timeout_s=90)
        archive, quarantine = sc.counters()
        where = {r["payload"]["seq"]: identity(r) for r in archive.rows}
        want = oracle(sent, where)
        deadline = time.monotonic() + 90
        while True:
            problems = [f"{sink} {agg.name or 'default'}: {p}"
                        for agg in AGGS for sink, read in (("s3", s3_held),
                                                            ("redshift", redshift_held),
                                                            ("opensearch", opensearch_held))
                        for p in differences(agg, read(sc, agg.name), want.expected[agg.name])]
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert problems == [], "\n".join(problems[:30])
        metrics = worker.metrics_url

        def filtered(name: str) -> float:
            return sample_sum(metrics, "aetherstream_records_filtered_total", filter=name)

        drift = sample_sum(metrics, "aetherstream_schema_drift_total", field="value",
                           kind="type_change")
        counted = {name: filtered(name) for name in
                   ("no-battery", "late:per_device", "late:per_metric",
                    "aggregation:per_device", "aggregation:per_metric")}
        all_drift = sample_sum(metrics, "aetherstream_schema_drift_total")
        archive, quarantine = sc.counters()
    finally:
        sc.stop_all()

    # The oracle's stream is the one designed: every kind of record is there.
    assert len(changed) >= 5 and want.quarantined and want.filtered
    assert len(want.late[""]) >= 10 and want.late["per_metric"] <= want.late[""]
    # Only the last records' own windows are still open, in every aggregation.
    assert all(want.open_seqs[a.name] == {r.seq for r in last} for a in AGGS), want.open_seqs

    # produced = archived (all but the type changes, which have no contract reading), each
    # payload once, as it was sent; Redshift's raw rows are the same identities.
    assert archive.duplicates == 0 and quarantine.duplicates == 0
    assert Counter(orjson.dumps(r["payload"], option=orjson.OPT_SORT_KEYS)
                   for r in archive.rows) == Counter(
        orjson.dumps(orjson.loads(r.data), option=orjson.OPT_SORT_KEYS)
        for r in sent if not r.type_change)
    assert redshift_raw_identities(sc.settings.redshift.connect_dsn(),
                                   sc.settings.redshift.schema) == Counter(archive.identities)
    # The type changes: quarantined by the contract with their bytes, and counted as drift.
    by_stage = Counter((q["stage"], q["reason"]) for q in quarantine.rows)
    assert by_stage == {("contract", "type_change"): len(changed),
                        ("transform", "sites:lookup_miss"): len(want.quarantined),
                        ("window", "late"): len(want.late[""])}
    assert sorted(base64.b64decode(q["data_b64"]) for q in quarantine.rows
                  if q["stage"] == "contract") == sorted(r.data for r in changed)
    assert drift == all_drift == len(changed)
    # archived = in the default aggregation + filtered + quarantined (transform) + late.
    seq_of = {identity(r): r["payload"]["seq"] for r in archive.rows}
    late = {seq_of[identity(q)] for q in quarantine.rows if q["stage"] == "window"}
    lookup = {seq_of[identity(q)] for q in quarantine.rows if q["stage"] == "transform"}
    assert late == want.late[""] and lookup == want.quarantined
    in_default = sum(m["count"] for m in want.expected[""].values()) + len(last)
    assert counted["no-battery"] == len(want.filtered)
    assert archive.distinct == in_default + counted["no-battery"] + len(lookup) + len(late)
    # The declared aggregations: their own late records, counted; none they could not read.
    assert counted == {"no-battery": len(want.filtered),
                       "late:per_device": len(want.late["per_device"]),
                       "late:per_metric": len(want.late["per_metric"]),
                       "aggregation:per_device": 0, "aggregation:per_metric": 0}
    per_device = sum(m["count"] for m in want.expected["per_device"].values())
    assert archive.distinct == (per_device + len(last) + counted["late:per_device"]
                                + counted["no-battery"] + len(lookup))
