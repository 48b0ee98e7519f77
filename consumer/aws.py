"""boto3 clients built the same way everywhere: region and endpoints from the environment
(boto3's own AWS_REGION / AWS_ENDPOINT_URL_<SERVICE> conventions), adaptive retries."""

from __future__ import annotations

import os
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
