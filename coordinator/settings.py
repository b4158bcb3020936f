"""``PREFILL_STARTUP_*`` environment variables: one table, read by the CLI and by embedders.

Each :class:`Setting` is a variable, the CLI flag it stands in for (if any), its parser
(the rules of :mod:`coordinator.validate`), its default and its help. The CLI takes a
flag over its variable over the default. :func:`from_env` reads them all into a frozen
:class:`Settings`; a bad value raises :class:`SettingError` naming the variable. An empty
variable counts as unset, as Python's own ``PYTHON*`` variables do.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from coordinator import validate
from coordinator.policy import (
    DISCOVER_DEADLINE_S,
    MAX_ATTEMPT_TIMEOUT_S,
    MAX_DEADLINE_S,
    MIN_ATTEMPT_TIMEOUT_S,
    REGISTER_DEADLINE_S,
    RetryPolicy,
)

PREFIX: Final = "PREFILL_STARTUP_"
LOG_FORMATS: Final = ("auto", "console", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")
T = TypeVar("T")


class SettingError(ValueError):
    """A ``PREFILL_STARTUP_*`` variable with a bad value; the message names both."""


class Unset(enum.Enum):
    """The default of a setting whose default belongs to the side's policy (a deadline: 120 s
    to register, 600 s to wait)."""

    UNSET = "unset"


UNSET: Final = Unset.UNSET


def rule(check: Callable[[str], T]) -> Callable[[str], T]:
    """A validate rule called with the field "value", its message without that field
    (the caller names the variable or the flag)."""
    def parse(text: str) -> T:
        try:
            return check(text)
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("value").lstrip(":").strip()) from None
    return parse


positive = rule(lambda t: validate.number(t, "value", positive=True))
non_negative = rule(lambda t: validate.number(t, "value", positive=False))
host = rule(lambda t: validate.host(t, "value"))
bind_port = rule(lambda t: validate.port_text(t, "value", allow_zero=True))
_digits = rule(lambda t: validate.digits(t, "value"))


def deadline(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        seconds = positive(text)
    except ValueError:
        raise ValueError(f"must be a decimal number or 'none' (seconds > 0), got {text!r}") from None
    if seconds > MAX_DEADLINE_S:
        raise ValueError(f"must be <= {MAX_DEADLINE_S:g} seconds (a year) or 'none', got {text!r}")
    return seconds


def attempt_timeout(text: str) -> float:
    seconds = positive(text)
    if not MIN_ATTEMPT_TIMEOUT_S <= seconds <= MAX_ATTEMPT_TIMEOUT_S:
        # Sockets take the timeout in C: a huge one overflows there, mid-attempt; below a
        # millisecond no connection can be made.
        raise ValueError(f"must be in [{MIN_ATTEMPT_TIMEOUT_S:g}, {MAX_ATTEMPT_TIMEOUT_S:g}] seconds, got {text!r}")
    return seconds


def count(text: str) -> int:
    n = _digits(text)
    if n < 1:
        raise ValueError(f"must be >= 1, got {n}")
    return n


def _choice(options: tuple[str, ...], *, upper: bool) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.upper() if upper else text.lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(o.lower() for o in options)} (any case), got {text!r}")
        return value
    return parse


log_format = _choice(LOG_FORMATS, upper=False)
log_level = _choice(LOG_LEVELS, upper=True)
on_failure = _choice(("raise", "return"), upper=False)


def boolean(text: str) -> bool:
    value = text.lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"must be one of {'/'.join(_TRUE + _FALSE)}, got {text!r}")
    return value in _TRUE


@dataclass(frozen=True)
class Setting:
    field: str  # on Settings
    var: str
    flag: str | None  # the CLI flag it stands in for; None: embedders only
    parse: Callable[[str], Any]
    default: Any
    help: str


TABLE: Final = (
    Setting("deadline_s", PREFIX + "DEADLINE", "--deadline", deadline, UNSET,
            "total budget in seconds from the first attempt; 'none': no deadline "
            f"(default: register {REGISTER_DEADLINE_S:g}, wait {DISCOVER_DEADLINE_S:g})"),
    Setting("attempt_timeout_s", PREFIX + "ATTEMPT_TIMEOUT", "--attempt-timeout", attempt_timeout, UNSET,
            f"limit of one attempt in seconds, {MIN_ATTEMPT_TIMEOUT_S:g} to {MAX_ATTEMPT_TIMEOUT_S:g} "
            f"(default {RetryPolicy.attempt_timeout_s:g})"),
    Setting("max_attempts", PREFIX + "MAX_ATTEMPTS", "--max-attempts", count, UNSET,
            "give up after N attempts (default: unlimited, the deadline rules)"),
    Setting("log_format", PREFIX + "LOG_FORMAT", "--log-format", log_format, "auto",
            "auto, console or json: console on a terminal, JSON otherwise (default auto)"),
    Setting("log_level", PREFIX + "LOG_LEVEL", "--log-level", log_level, "INFO",
            "debug, info, warning or error, any case (default info)"),
    Setting("health_host", PREFIX + "HEALTH_HOST", "--health-host", host, "127.0.0.1",
            "the probes' bind address (default 127.0.0.1)"),
    Setting("health_port", PREFIX + "HEALTH_PORT", "--health-port", bind_port, None,
            "serve the probes on this port, 0 for any free one (default: the CLI none, the SGLang "
            "plugin 8990 in each node's main process)"),
    Setting("on_failure", PREFIX + "ON_FAILURE", None, on_failure, "raise",
            "raise or return: a prefill rank that fails to register raises from the scheduler's init, "
            "or carries on with an ERROR (SGLang plugin; default raise)"),
    Setting("watch", PREFIX + "WATCH", None, boolean, True,
            "1/0, true/false or yes/no, any case: once the prefill instance is complete, a decode "
            "process keeps checking that it still is (SGLang plugin; default true)"),
)


# The settings that bound a driver's retries, laid over a side's policy by over().
POLICY_FIELDS: Final = ("deadline_s", "attempt_timeout_s", "max_attempts")


def over(base: RetryPolicy, values: Mapping[str, Any]) -> RetryPolicy:
    """``base`` (a side's defaults) with the retry bounds in ``values`` (a Settings' fields or
    the CLI's flags, by field name; ``deadline_s`` None: no deadline, UNSET: ``base``'s).
    The one place settings meet a policy, for the CLI and the SGLang plugin alike."""
    changes = {k: values[k] for k in POLICY_FIELDS if k in values and values[k] is not UNSET}
    return dataclasses.replace(base, **changes)


def var(field: str) -> str:
    """The variable of the setting ``field`` (e.g. ``var("deadline_s")``)."""
    return next(s.var for s in TABLE if s.field == field)


@dataclass(frozen=True)
class Settings:
    """Every setting's value, from its variable or its default (see :data:`TABLE`)."""

    # The retry bounds: UNSET where no variable sets them, so a side's policy keeps its own.
    deadline_s: float | None | Unset  # None: no deadline
    attempt_timeout_s: float | Unset
    max_attempts: int | None | Unset  # None: unlimited
    log_format: str
    log_level: str
    health_host: str
    health_port: int | None  # None: no probes
    on_failure: Literal["raise", "return"]
    watch: bool


def read(environ: Mapping[str, str] = os.environ, fields: Collection[str] | None = None) -> dict[str, Any]:
    """The settings whose variable is set (and not empty), by field; SettingError on a bad one.
    With ``fields``, only those are read: a consumer answers only for the variables it uses."""
    values: dict[str, Any] = {}
    for setting in TABLE:
        if fields is not None and setting.field not in fields:
            continue
        text = environ.get(setting.var, "")
        if not text:
            continue
        try:
            values[setting.field] = setting.parse(text)
        except ValueError as exc:
            raise SettingError(f"{setting.var}={text!r}: {exc}") from None
    return values


def from_env(environ: Mapping[str, str] = os.environ, fields: Collection[str] | None = None) -> Settings:
    """Every setting: from ``environ`` where set (of ``fields``, when given), else its default."""
    values = read(environ, fields)
    return Settings(**{s.field: values.get(s.field, s.default) for s in TABLE})
