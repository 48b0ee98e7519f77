"""AWS clients built the same way everywhere: region and endpoints from the environment
(the SDKs' AWS_REGION / AWS_ENDPOINT_URL_<SERVICE> conventions), explicit connect and read
timeouts, TCP keepalive and botocore's standard retry mode with bounded attempts.

They are botocore clients, the same objects boto3.client returns without boto3's extras
(s3transfer's upload_file and kin, which nothing here uses; importing boto3 on top of botocore
costs about 0.03 CPU-s), and their service models are parsed with orjson rather than the
stdlib's json: making the S3 and DynamoDB clients took 0.13 CPU-s instead of 0.19, a third of
a record processor's start-up before it is initialized. Their loader also finds a service's
model without listing every service botocore ships first (_ModelLoader).
"""

from __future__ import annotations

import functools
import gzip
import os
import random
import time
from typing import Any

import botocore.loaders
import botocore.session
import orjson
from botocore.config import Config
from botocore.exceptions import DataNotFoundError

from consumer.sinks.errors import RETRYABLE_KINDS, aws_code_kind, describe, is_retryable

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0  # per attempt: the worst single call is attempts x (connect + read) + backoff
MAX_ATTEMPTS = 5  # botocore counts the first call: 1 call + 4 retries


def client_config(
    *,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
    max_attempts: int = MAX_ATTEMPTS,
) -> Config:
    if connect_timeout_s <= 0 or read_timeout_s <= 0 or max_attempts < 1:
        raise ValueError(
            f"invalid AWS client bounds: connect {connect_timeout_s}s, read {read_timeout_s}s, "
            f"{max_attempts} attempts"
        )
    return Config(
        # total_max_attempts counts the first call; botocore's "max_attempts" counts retries only.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        s3={"addressing_style": "path"},  # emulators serve path-style; real S3 accepts it too
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        tcp_keepalive=True,
    )


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class _OrjsonFileLoader(botocore.loaders.JSONFileLoader):  # type: ignore[misc]
    """botocore's model files (plain or gzipped JSON), parsed with orjson."""

    def load_file(self, file_path: str) -> Any:
        for ext, opener in ((".json", open), (".json.gz", gzip.open)):
            if os.path.isfile(file_path + ext):
                with opener(file_path + ext, "rb") as fp:
                    return orjson.loads(fp.read())
        return None


class _ModelLoader(botocore.loaders.Loader):  # type: ignore[misc]
    """botocore's loader, but a service's model is found from its own directory.

    botocore first checks the name against the list of every service it ships, built by
    listing ~450 directories and their API versions (0.03 CPU-s of each processor's start-up,
    for the S3 client's two model types). The service's own API versions answer the same
    question; only a name that has none takes botocore's path, which raises its
    UnknownServiceError naming the services it knows."""

    @botocore.loaders.instance_cache  # type: ignore[untyped-decorator]
    def load_service_model(self, service_name: str, type_name: str,
                           api_version: str | None = None) -> Any:
        try:
            latest = self.determine_latest_version(service_name, type_name)
        except DataNotFoundError:
            return super().load_service_model(service_name, type_name, api_version)
        version = api_version or latest
        model = self.load_data(os.path.join(service_name, version, type_name))
        self._extras_processor.process(
            model, self._find_extras(service_name, type_name, version))
        return model


def model_loader(data_path: str | None = None) -> _ModelLoader:
    """What botocore.loaders.create_loader makes of AWS_DATA_PATH, with our loader classes."""
    paths = ([os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
             if data_path else None)
    return _ModelLoader(extra_search_paths=paths, file_loader=_OrjsonFileLoader())


@functools.cache
def session() -> botocore.session.Session:
    """The process's one botocore session: the default credential chain, read once."""
    s = botocore.session.get_session()
    s.register_component("data_loader", model_loader(s.get_config_variable("data_path")))
    return s


def client(service: str, **kwargs: Any) -> Any:
    """A client of `service`; pass `config=client_config(...)` for other bounds than the
    defaults."""
    kwargs.setdefault("region_name", region())
    kwargs.setdefault("config", client_config())
    return session().create_client(service, **kwargs)


class PutRecordsError(RuntimeError):
    """PutRecords left records undelivered: rejected for good, or throttled past the bound."""


_BASE_S = 0.05
_CAP_S = 2.0


def put_records(
    kinesis: Any, stream: str, entries: list[dict[str, Any]], *, max_attempts: int = 10
) -> None:
    """PutRecords (at most 500 entries), retrying what is transient, a bounded number of times.

    A call that fails as a whole is retried only if errors.is_retryable says so (botocore has
    already retried it within the call); a fatal error is raised as it is. Entries that fail
    one by one (ProvisionedThroughputExceededException, InternalFailure) are resent alone,
    since a 200 answer is never retried by botocore. Backoff is full jitter, capped at 2 s.
    """
    pending = entries
    last = "no attempt made"
    for attempt in range(max_attempts):
        if attempt:
            time.sleep(random.random() * min(_CAP_S, _BASE_S * 2**attempt))
        try:
            resp = kinesis.put_records(StreamName=stream, Records=pending)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if attempt == max_attempts - 1:
                raise PutRecordsError(
                    f"PutRecords to {stream}: {len(pending)} records not sent after "
                    f"{max_attempts} attempts: {describe(exc)}"
                ) from exc
            last = describe(exc)
            continue
        if not resp.get("FailedRecordCount"):
            return
        failed = [(e, r) for e, r in zip(pending, resp["Records"], strict=True) if "ErrorCode" in r]
        rejected = [r for _, r in failed if aws_code_kind(r["ErrorCode"]) not in RETRYABLE_KINDS]
        if rejected:
            first = rejected[0]
            raise PutRecordsError(
                f"PutRecords to {stream}: {len(rejected)} of {len(pending)} records rejected, "
                f"first: {first['ErrorCode']}: {first.get('ErrorMessage', '')}"
            )
        pending = [e for e, _ in failed]
        last = f"{failed[0][1]['ErrorCode']}: {failed[0][1].get('ErrorMessage', '')}"
    raise PutRecordsError(
        f"PutRecords to {stream}: {len(pending)} records still failing after {max_attempts} "
        f"attempts, last: {last}"
    )
