"""argparse value types: the rules of :mod:`coordinator.validate` (through
:mod:`coordinator.settings`, whose parsers the environment variables share), as argparse
wants them.

argparse names the option in its error ("argument --deadline: ..."), and exits 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from coordinator import settings, validate
from coordinator.protocol import base_url
from coordinator.sim import MAX_LATENCY_S, MAX_RANKS, MAX_SPAN_S, MAX_TRIALS

T = TypeVar("T")
N = TypeVar("N", int, float)


def argtype(check: Callable[[str], T], name: str) -> Callable[[str], T]:
    field_free = settings.rule(check)  # the message starts after the field: argparse names the option

    def parse(text: str) -> T:
        try:
            return field_free(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse's "invalid <name> value" fallback
    return parse


positive = argtype(settings.positive, "positive")
non_negative = argtype(settings.non_negative, "non_negative")
bind_port = argtype(settings.bind_port, "bind_port")
count = argtype(settings.count, "count")


def _at_most(parse: Callable[[str], N], high: N, unit: str = "") -> Callable[[str], N]:
    def check(text: str) -> N:
        value = parse(text)
        if value > high:
            raise ValueError(f"must be <= {high:g}{unit}, got {text!r}")
        return value
    return check


# example_payload gives rank i the port 17000 + i: past MAX_RANKS there is no port left.
ranks = argtype(_at_most(settings.count, MAX_RANKS), "ranks")
# The simulator's cost grows with the simulated span: an hour is the bound.
span = argtype(_at_most(settings.non_negative, MAX_SPAN_S, " s"), "span")
latency = argtype(_at_most(settings.non_negative, MAX_LATENCY_S, " s"), "latency")
trials = argtype(_at_most(settings.count, MAX_TRIALS), "trials")
# Each worker is a process, all forked at once: more than the cores would only cost memory.
CORES = os.cpu_count() or 1
workers = argtype(_at_most(settings.count, CORES), "workers")


def _target(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError(f"value must be dp,cp,tp,pp (four integers), got {text!r}")
    dp, cp, tp, pp = (validate.digits(part, "value") for part in parts)
    return dp, cp, tp, pp


target = argtype(_target, "target")


def _host_port_text(text: str) -> str:
    validate.host_port(text, "value")
    return text


def _bootstrap(text: str) -> str:
    # Checked now, with Discovery's own rules: a bad address exits 2 before anything runs.
    if "://" in text and "@" in urlsplit(text).netloc:
        raise ValueError("must not carry credentials (user:password@): wait sends none, and GET /route needs none")
    base_url(text, "value")
    return text


def _non_empty(text: str) -> str:
    if not text.strip() or text != text.strip():
        raise ValueError(f"value must be a non-empty word without surrounding spaces, got {text!r}")
    return text


host = argtype(settings.host, "host")
host_port = argtype(lambda t: validate.host_port(t, "value"), "host_port")
host_port_text = argtype(_host_port_text, "host_port")
bootstrap = argtype(_bootstrap, "bootstrap")
kv_cache_dtype = argtype(_non_empty, "kv_cache_dtype")
seed = argtype(lambda t: validate.digits(t, "value"), "seed")
name = argtype(lambda t: validate.name(t, "value"), "name")
# Linux's pid_max is at most 2**22.
pid = argtype(_at_most(settings.count, 2**22), "pid")
