"""Shared fixtures; helpers (transports, servers, ports) come from coordinator.testing."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.testing import FakeClock, example_payload


@pytest.fixture
def payload() -> dict[str, Any]:
    return example_payload()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
