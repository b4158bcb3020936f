"""argparse value types: the rules of :mod:`coordinator.validate`, as argparse wants them.

argparse names the option in its error ("argument --deadline: ..."), and exits 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from coordinator import validate
from coordinator.protocol import base_url

T = TypeVar("T")


def _argtype(check: Callable[[str], T], name: str) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            return check(text)
        except ValueError as exc:
            # The rule's message starts with the field; argparse supplies the option name.
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value").strip()) from None

    parse.__name__ = name  # argparse's "invalid <name> value" fallback
    return parse


positive = _argtype(lambda t: validate.number(t, "value", positive=True), "positive")
non_negative = _argtype(lambda t: validate.number(t, "value", positive=False), "non_negative")
port = _argtype(lambda t: validate.port_text(t, "value"), "port")
bind_port = _argtype(lambda t: validate.port_text(t, "value", allow_zero=True), "bind_port")


def _count(text: str) -> int:
    n = validate.digits(text, "value")
    if n < 1:
        raise ValueError(f"value must be >= 1, got {n}")
    return n


count = _argtype(_count, "count")


def _target(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError(f"value must be dp,cp,tp,pp (four integers), got {text!r}")
    dp, cp, tp, pp = (validate.digits(part, "value") for part in parts)
    return dp, cp, tp, pp


target = _argtype(_target, "target")


def _host(text: str) -> str:
    return validate.host(text, "value")


def _host_port_text(text: str) -> str:
    validate.host_port(text, "value")
    return text


def _bootstrap(text: str) -> str:
    # Checked now, with Discovery's own rules: a bad address exits 2 before anything runs.
    base_url(text, "value")
    return text


def _non_empty(text: str) -> str:
    if not text.strip() or text != text.strip():
        raise ValueError(f"value must be a non-empty word without surrounding spaces, got {text!r}")
    return text


host = _argtype(_host, "host")
host_port = _argtype(lambda t: validate.host_port(t, "value"), "host_port")
host_port_text = _argtype(_host_port_text, "host_port")
bootstrap = _argtype(_bootstrap, "bootstrap")
kv_cache_dtype = _argtype(_non_empty, "kv_cache_dtype")
seed = _argtype(lambda t: validate.digits(t, "value"), "seed")
