"""Shared test hygiene."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consumer.metrics.logs import bind_context, reset_context


@pytest.fixture(autouse=True)
def _own_log_context() -> Iterator[None]:
    """A record processor driven in process binds its shard to the thread's log context (one
    processor per process in production): undo it after each test, so none leaks into the next."""
    token = bind_context()
    yield
    reset_context(token)
