"""`aetherstream transform test`: the configured chain over a file, shown record by record.

The pure part, `report`, turns input records and the chain into jq-friendly NDJSON objects:
one "record" line per input record, in input order (its provenance, "before", "after", and
its outcome: kept, filtered with the filter's name, or rejected with stage, reason and
message), then one "summary" line with the counts and the filtered counts by filter.
Window results and `--against-archive` come with the transform stage's integration into the
pipeline (issue 11); until then this shows the chain alone.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from consumer.records.model import RawRecord, Rejected
from consumer.transform.chain import Chain
from consumer.transform.inputs import from_raw, raw_records
from consumer.transform.model import TRecord


def _provenance(line: int, rec: RawRecord) -> dict[str, Any]:
    return {"type": "record", "line": line, "position": str(rec.position),
            "partition_key": rec.partition_key}


def _before(rec: RawRecord, decoded: TRecord | Rejected) -> Any:
    if isinstance(decoded, TRecord):
        return decoded.fields
    return rec.data.decode("utf-8", "replace")


def _rejected(r: Rejected) -> dict[str, Any]:
    return {"outcome": "rejected", "stage": r.stage, "reason": r.reason, "message": r.message}


def report(chain: Chain, records: Sequence[tuple[int, RawRecord]],
           batch_size: int = 500) -> Iterator[dict[str, Any]]:
    totals: Counter[str] = Counter()
    filtered: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for start in range(0, len(records), batch_size):
        part = records[start:start + batch_size]
        decoded = [from_raw(rec) for _, rec in part]
        result = chain.apply([d for d in decoded if isinstance(d, TRecord)])
        filtered.update(result.filtered)
        after = {id(t.record): t.fields for t in result.records}
        refused = {id(r.record): r for r in result.rejected}
        for (line, rec), d in zip(part, decoded, strict=True):
            out = _provenance(line, rec) | {"before": _before(rec, d)}
            if isinstance(d, Rejected):
                out |= _rejected(d) | {"after": None}
            elif id(rec) in after:
                out |= {"outcome": "kept", "after": after[id(rec)]}
            elif id(rec) in refused:
                out |= _rejected(refused[id(rec)]) | {"after": None}
            else:  # which filter: this record alone through the chain (same result, tested)
                alone = chain.apply([d]).filtered
                out |= {"outcome": "filtered", "filter": next(iter(alone), None), "after": None}
            totals[out["outcome"]] += 1
            if out["outcome"] == "rejected":
                reasons[f"{out['stage']}/{out['reason']}"] += 1
            yield out
    yield {"type": "summary", "input": len(records), "kept": totals["kept"],
           "filtered": dict(filtered), "rejected": totals["rejected"],
           "rejected_by_reason": dict(reasons),
           "not_yet": "window results and --against-archive come with the pipeline integration"}


def read_lines(path: Path) -> Iterable[bytes]:
    """A file's lines; .gz (our raw archive's .ndjson.gz objects) is decompressed."""
    data = path.read_bytes()
    return (gzip.decompress(data) if path.name.endswith(".gz") else data).splitlines()


def run(chain: Chain, path: Path, batch_size: int = 500) -> Iterator[dict[str, Any]]:
    return report(chain, list(raw_records(read_lines(path))), batch_size)
