"""Field checks shared by the frozen, validated config objects (RetryPolicy, Backoff, Scenario)."""

from __future__ import annotations

import math


def finite(owner: str, name: str, value: object, *, positive: bool) -> float:
    """``value`` as a float, or an error naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{owner}.{name} must be finite and {bound}, got {value!r}")
    return float(value)
