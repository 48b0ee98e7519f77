"""A `transform test` case: a settings file (a lookup, a filter and a derive; 10 s tumbling
windows with lateness > 0), records with bad ones and stragglers, and an oracle that computes
what the chain and the windows should make of them directly, in plain Python."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

SIZE_MS, LATENESS_MS, OOO_MS = 10_000, 4_000, 2_000
T0 = 1_794_999_600_000  # a multiple of SIZE_MS
FACTORS = {"d0": 1.5, "d1": 2.0, "d2": -0.5}  # d3 is not in the lookup table

SETTINGS = f"""
[contract]
key_fields = ["device_id", "metric"]
value_field = "value"

[windows]
size_ms = {SIZE_MS}
allowed_lateness_ms = {LATENESS_MS}
out_of_orderness_ms = {OOO_MS}
idle_timeout_ms = 0

[[transform]]
name = "factors"
kind = "lookup"
source = "factors.ndjson"
key = "device_id"
on_miss = "reject"

[[transform]]
name = "no-battery"
kind = "filter"
expr = "metric != 'battery'"

[[transform]]
name = "scaled"
kind = "derive"
field = "value"
expr = "raw * factor"
"""


def settings_file(tmp: Path, extra: str = "") -> Path:
    (tmp / "factors.ndjson").write_bytes(b"".join(
        orjson.dumps({"device_id": d, "factor": f}) + b"\n" for d, f in FACTORS.items()))
    path = tmp / "aetherstream.toml"
    path.write_text(SETTINGS + extra)
    return path


def payloads() -> list[bytes]:
    """~120 readings over 4 devices and 2 metrics, 250 ms apart with jitter; every 23rd is
    followed by a straggler 15 s older (late past the lateness, or within it), and a few bad
    records: not JSON, no timestamp, a raw value that is not a number."""
    out: list[bytes] = []
    for i in range(120):
        ts = T0 + i * 250 + (i * 7919) % 1_500
        body = {"device_id": f"d{i % 4}", "metric": "battery" if i % 5 == 0 else "temp",
                "ts": ts, "raw": round(10 + (i * 37) % 50 / 3, 3)}
        out.append(orjson.dumps(body))
        if i % 23 == 22:
            out.append(orjson.dumps(body | {"ts": ts - 15_000 + (i % 2) * 9_000}))
        if i % 41 == 40:
            bad = body | {"device_id": "d1", "metric": "temp"}
            out += [b"{not json", orjson.dumps({k: v for k, v in bad.items() if k != "ts"}),
                    orjson.dumps(bad | {"raw": "n/a"})]
    return out


def oracle(data: list[bytes]) -> dict[str, Any]:
    """Outcome per input index, and the results per (device, metric, start): the watermark
    is judged per record before its own time counts (consumer/windows/engine.py)."""
    outcome: dict[int, str] = {}
    rows: dict[tuple[str, str, int], list[float]] = {}
    watermark = -math.inf
    for n, line in enumerate(data):
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            outcome[n] = "quarantined"
            continue
        # the chain's order: lookup, filter, derive; then the contract reads the output
        if body["device_id"] not in FACTORS:
            outcome[n] = "quarantined"
            continue
        if body["metric"] == "battery":
            outcome[n] = "filtered"
            continue
        if not isinstance(body["raw"], float | int) or "ts" not in body:
            outcome[n] = "quarantined"
            continue
        t = body["ts"]
        start = t - t % SIZE_MS
        if start + SIZE_MS + LATENESS_MS <= watermark:
            outcome[n] = "late"
            continue
        watermark = max(watermark, t - OOO_MS)
        outcome[n] = "record"
        rows.setdefault((body["device_id"], body["metric"], start), []).append(
            body["raw"] * FACTORS[body["device_id"]])
    results = {k: {"count": len(v), "sum": sum(v), "min": min(v), "max": max(v),
                   "closed_by": "watermark" if k[2] + SIZE_MS + LATENESS_MS <= watermark
                   else "end_of_input"} for k, v in rows.items()}
    return {"outcome": outcome, "results": results, "watermark": watermark}
