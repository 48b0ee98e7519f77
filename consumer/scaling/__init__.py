"""Capacity planning for the ECS service: `aetherstream scale recommend`.

`model` is pure (hypothesis-tested); `shell` reads Kinesis ListShards and CloudWatch
GetMetricData and calls it. `main` is the CLI entry point the `scale recommend` command wires.
"""

from consumer.scaling.model import Recommendation, ShardLoad, recommend
from consumer.scaling.shell import main

__all__ = ["Recommendation", "ShardLoad", "main", "recommend"]
