"""The pure event-time window engine (tumbling, sliding, session) for one shard.

Emission and is_final semantics: see consumer.windows.engine.
"""

from consumer.windows.engine import WindowEngine
from consumer.windows.model import (
    Aggregates,
    StepOutput,
    WindowResult,
    WindowSpec,
    merge,
    merge_aggregates,
    result_id,
)
from consumer.windows.sketch import QuantileSketch

__all__ = [
    "Aggregates",
    "QuantileSketch",
    "StepOutput",
    "WindowEngine",
    "WindowResult",
    "WindowSpec",
    "merge",
    "merge_aggregates",
    "result_id",
]
