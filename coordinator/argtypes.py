"""argparse value types shared by the CLI and the simulator: bad values exit 2, naming the option."""

from __future__ import annotations

import argparse
import math

from coordinator.address import check_port


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def port(text: str) -> int:
    try:
        return check_port(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
