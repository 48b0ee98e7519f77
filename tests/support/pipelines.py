"""Build a real ShardPipeline for tests: the same routes the processor opens."""

from __future__ import annotations

import time
from typing import Any

from consumer.commit.state import SnapshotStore
from consumer.config import Settings
from consumer.pipeline import ShardPipeline, window_spec
from consumer.records.model import Position
from consumer.sinks.routes import ShardRetriers, open_routes
from consumer.transform.stage import TransformStage
from consumer.windows.aggregations import AggregationSet
from consumer.windows.engine import WindowEngine


def make_pipeline(settings: Settings, shard_id: str, s3_client: Any,
                  start: Position | None = None, engine: WindowEngine | None = None,
                  snapshots: SnapshotStore | None = None,
                  transform: TransformStage | None = None,
                  aggregations: AggregationSet | None = None) -> ShardPipeline:
    names = [a.name for a in aggregations.aggregations] if aggregations else []
    routes = open_routes(settings, shard_id, ShardRetriers(), lambda: int(time.time() * 1000),
                         s3_client, aggregations=names)
    if engine is None and settings.windows.enabled:
        engine = WindowEngine(window_spec(settings), shard_id)
    return ShardPipeline(settings, shard_id, routes, engine, start, snapshots=snapshots,
                         transform=transform, aggregations=aggregations)
