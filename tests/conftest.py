"""Shared fixtures: a real local HTTP server for driver tests, and a way to run coroutines."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from nova.events import STRICT_ENV
from tests.fakeserver import FakeServer

# An event name the catalogue does not declare raises where it is emitted, in every process the
# tests start (actor systems inherit the environment).
os.environ.setdefault(STRICT_ENV, "1")

T = TypeVar("T")


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a fresh event loop."""
    return asyncio.run(coro)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s
