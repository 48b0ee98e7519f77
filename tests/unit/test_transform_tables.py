"""Lookup tables loaded and refreshed from real files and from a real S3 protocol server
(moto's ThreadedMotoServer on 127.0.0.1 stands in for S3: there is no AWS here)."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.aws import client
from consumer.records.model import Position, RawRecord
from consumer.transform import TRecord
from consumer.transform.config import load_chain
from consumer.transform.tables import LookupSource, Refresher, load_table


def _settings(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f'[[transform]]\nname = "sites"\nkind = "lookup"\nsource = "{source}"\n'
                    'key = "device_id"\nrefresh_s = 60\n')
    return path


def _site(configured_chain: Any, device: str) -> Any:
    out = configured_chain.apply([TRecord({"device_id": device},
                                          RawRecord(b"", "", Position(1, 0), 0))])
    return out.records[0].fields.get("site")


def test_file_table_relative_to_the_settings_refreshes_on_interval(tmp_path: Path) -> None:
    table = tmp_path / "sites.csv"
    table.write_text("device_id,site\nd1,a\n")
    configured = load_chain(_settings(tmp_path, "sites.csv"))
    assert _site(configured.chain, "d1") == "a"
    (src,) = configured.sources
    assert src == LookupSource("sites", str(tmp_path / "sites.csv"), "device_id", 60.0)
    refresher = Refresher(configured.sources, {"sites": load_table(src)}, now_s=1000.0)
    table.write_text("device_id,site\nd1,b\n")
    os.utime(table, ns=(1, 2))  # a new mtime whatever the clock's resolution
    assert refresher.refresh(1059.0) == {}  # not yet due
    changed = refresher.refresh(1060.0)
    assert _site(configured.chain.with_tables(changed), "d1") == "b"
    assert refresher.refresh(1120.0) == {}  # same version: nothing reparsed
    table.write_text("device_id,site\nd1,c\nd1,d\n")  # broken: the last good table stays
    os.utime(table, ns=(3, 4))
    assert refresher.refresh(1180.0) == {}
    assert _site(configured.chain.with_tables(refresher.tables), "d1") == "b"


@pytest.fixture
def s3() -> Iterator[Any]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        host, port = server.get_host_and_port()
        yield client("s3", endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_s3_table_gzip_ndjson_and_refresh_by_etag(tmp_path: Path, s3: Any) -> None:
    s3.create_bucket(Bucket="ref")
    s3.put_object(Bucket="ref", Key="sites.ndjson.gz",
                  Body=gzip.compress(b'{"device_id": "d1", "site": "a"}\n'))
    configured = load_chain(_settings(tmp_path, "s3://ref/sites.ndjson.gz"), s3=lambda: s3)
    assert _site(configured.chain, "d1") == "a"
    refresher = Refresher(configured.sources, {"sites": configured.chain.lookups()["sites"].table},
                          now_s=0.0, s3=lambda: s3)
    assert refresher.refresh(60.0) == {}  # same ETag
    s3.put_object(Bucket="ref", Key="sites.ndjson.gz",
                  Body=gzip.compress(b'{"device_id": "d1", "site": "b"}\n'))
    assert _site(configured.chain.with_tables(refresher.refresh(120.0)), "d1") == "b"
    s3.delete_object(Bucket="ref", Key="sites.ndjson.gz")
    assert refresher.refresh(180.0) == {}  # gone: keeps the loaded table, logs a warning
    assert _site(configured.chain.with_tables(refresher.tables), "d1") == "b"
