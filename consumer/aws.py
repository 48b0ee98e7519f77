"""boto3 clients built the same way everywhere: region and endpoints from the environment
(boto3's own AWS_REGION / AWS_ENDPOINT_URL_<SERVICE> conventions), adaptive retries."""

from __future__ import annotations

import os
import time
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    s3={"addressing_style": "path"},  # emulators serve path-style; real S3 accepts it too
    connect_timeout=5,
    read_timeout=30,
)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def client(service: str, **kwargs: Any) -> Any:
    kwargs.setdefault("region_name", region())
    return boto3.client(service, config=_CONFIG, **kwargs)


def put_records(kinesis: Any, stream: str, entries: list[dict[str, Any]]) -> None:
    """PutRecords (at most 500 entries), retrying failed entries: throttling is per entry."""
    pending = entries
    for attempt in range(20):
        resp = kinesis.put_records(StreamName=stream, Records=pending)
        if not resp.get("FailedRecordCount"):
            return
        pending = [e for e, r in zip(pending, resp["Records"], strict=True) if "ErrorCode" in r]
        time.sleep(min(2.0, 0.05 * 2**attempt))
    raise RuntimeError(f"{len(pending)} records still failing after retries")
