"""Loading lookup tables (the shell): from a local file or an S3 object, .gz allowed, and
refreshing them on an interval. A refresh that fails keeps the table already loaded (the
error is logged and counted in aetherstream_lookup_refresh_failures_total): a flaky read
must not stop the shard, and the last good table is the best guess. A refresh that finds the
same version (file mtime and size, S3 ETag) parses nothing."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.metrics import registry as m
from consumer.transform.lookup import LookupTable, TableError, parse_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LookupSource:
    step: str  # the lookup step's name
    source: str  # a path (absolute, or resolved against the settings file) or s3://bucket/key
    key: str  # the table's key column
    refresh_s: float  # 0: loaded at start only


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise TableError(f"{url}: an S3 source is s3://bucket/key")
    return bucket, key


def read_source(source: str, s3: Callable[[], Any] | None = None) -> tuple[bytes, str]:
    """(bytes, version) of a table source; raises TableError."""
    try:
        if source.startswith("s3://"):
            if s3 is None:
                raise TableError(f"{source}: no S3 client")
            bucket, key = _split_s3(source)
            obj = s3().get_object(Bucket=bucket, Key=key)
            data, version = obj["Body"].read(), str(obj.get("ETag", ""))
        else:
            path = Path(source)
            stat = path.stat()
            data, version = path.read_bytes(), f"{stat.st_mtime_ns}:{stat.st_size}"
        return (gzip.decompress(data) if source.endswith(".gz") else data), version
    except TableError:
        raise
    except Exception as exc:  # OSError, botocore's errors, gzip's: all "cannot read it"
        raise TableError(f"{source}: cannot read: {type(exc).__name__}: {exc}") from None


def load_table(src: LookupSource, s3: Callable[[], Any] | None = None) -> LookupTable:
    data, version = read_source(src.source, s3)
    return parse_table(data, src.key, src.source, version)


class Refresher:
    """Holds the current tables; `due(now)` reloads those whose interval has passed."""

    def __init__(self, sources: tuple[LookupSource, ...], tables: dict[str, LookupTable],
                 now_s: float, s3: Callable[[], Any] | None = None) -> None:
        self.sources = {s.step: s for s in sources}
        self.tables = dict(tables)
        self._next = {s.step: now_s + s.refresh_s for s in sources if s.refresh_s > 0}
        self._s3 = s3

    def refresh(self, now_s: float) -> dict[str, LookupTable]:
        """The tables that changed since the last call (by step name); empty most times."""
        changed: dict[str, LookupTable] = {}
        for step, at in self._next.items():
            if now_s < at:
                continue
            src = self.sources[step]
            self._next[step] = now_s + src.refresh_s
            try:
                data, version = read_source(src.source, self._s3)
                if version and version == self.tables[step].version:
                    continue
                changed[step] = parse_table(data, src.key, src.source, version)
            except TableError as exc:
                m.LOOKUP_REFRESH_FAILURES.labels(step).inc()
                log.warning("lookup %s: refresh failed, keeping the loaded table: %s", step, exc)
        self.tables.update(changed)
        return changed
