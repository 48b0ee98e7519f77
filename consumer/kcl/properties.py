"""Render the MultiLangDaemon's .properties file from our settings (pure).

The property names are the daemon's own (setters of MultiLangDaemonConfiguration, checked
against the jar in tests/unit/test_kcl_properties.py). Endpoints follow boto3's conventions,
AWS_ENDPOINT_URL_<SERVICE> then AWS_ENDPOINT_URL, so one environment steers both SDKs.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Mapping

from consumer.config import Settings


def service_endpoint(service: str, env: Mapping[str, str]) -> str | None:
    """boto3's lookup order for an endpoint override: per service, then global."""
    return env.get(f"AWS_ENDPOINT_URL_{service.upper()}") or env.get("AWS_ENDPOINT_URL") or None


def region_of(env: Mapping[str, str]) -> str:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def processor_command(python: str = sys.executable) -> str:
    # The daemon splits executableName on spaces, so the interpreter path must have none.
    if " " in python:
        raise ValueError(f"python path {python!r} contains a space; the KCL daemon cannot run it")
    return f"{python} -m consumer.kcl"


def default_worker_id() -> str:
    # Unique per start: a restarted worker must not pass for the one whose leases it inherits.
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def render_properties(settings: Settings, env: Mapping[str, str], executable: str) -> str:
    kcl = settings.kcl
    props: dict[str, str] = {
        "executableName": executable,
        "streamName": settings.stream.name,
        "applicationName": settings.stream.app_name,
        "workerId": kcl.worker_id or default_worker_id(),
        "processingLanguage": f"python/{sys.version_info.major}.{sys.version_info.minor}",
        "AWSCredentialsProvider": "DefaultAWSCredentialsProviderChain",
        "regionName": region_of(env),
        "retrievalMode": kcl.retrieval_mode,
        "initialPositionInStream": kcl.initial_position,
        "maxRecords": str(kcl.max_records),
        "idleTimeBetweenReadsInMillis": str(kcl.idle_time_between_reads_ms),
        "failoverTimeMillis": str(kcl.failover_time_ms),
        "shardSyncIntervalMillis": str(kcl.shard_sync_interval_ms),
        "parentShardPollIntervalMillis": "1000",
        "shutdownGraceMillis": str(kcl.shutdown_grace_ms),
        # Empty batches reach the processor, so idle shards still flush by age and tick windows.
        "callProcessRecordsEvenForEmptyRecordList": "true",
        "metricsLevel": kcl.metrics_level,
    }
    if kcl.max_leases_for_worker:
        props["maxLeasesForWorker"] = str(kcl.max_leases_for_worker)
    for prop, service in (("kinesisEndpoint", "kinesis"), ("dynamoDBEndpoint", "dynamodb")):
        endpoint = service_endpoint(service, env)
        if endpoint:
            props[prop] = endpoint
    cloudwatch = service_endpoint("cloudwatch", env) or service_endpoint("monitoring", env)
    if cloudwatch and kcl.metrics_level != "NONE":
        props["cloudWatchClient.endpointOverride"] = cloudwatch
    lines = ["# Rendered by aetherstream from its settings; do not edit."]
    lines += [f"{key} = {value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"
