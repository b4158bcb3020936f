"""Every field rule, in one place: ports, hosts, addresses, URLs, tokens, numbers.

Each check returns the clean value or raises ``ValueError``/``TypeError`` whose message
starts with the field's name (``--bootstrap``, ``port``, ``RetryPolicy.jitter``), so
the library, the bootstrap server and the CLI reject the same inputs the same way,
before anything touches the network.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import TypeGuard
from urllib.parse import urlsplit

# ASCII digits only: int() would also take "+1", " 1", "1_0" and "١" (an Arabic-Indic one).
_DIGITS = re.compile(r"[0-9]+")
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|\.[0-9]+([eE][-+]?[0-9]+)?")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def is_digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit()`` alone admits "²" and "١"."""
    return _DIGITS.fullmatch(text) is not None


def digits(text: object, field: str) -> int:
    """A non-negative integer written in ASCII digits only, nothing else."""
    if not isinstance(text, str) or not is_digits(text) or len(text) > 18:
        raise ValueError(f"{field} must be a non-negative integer in ASCII digits, got {text!r}")
    return int(text)


def integer(text: object, field: str) -> int:
    """An integer in ASCII digits with an optional leading '-'."""
    if not isinstance(text, str) or not _INTEGER.fullmatch(text) or len(text) > 19:
        raise ValueError(f"{field} must be an integer in ASCII digits, got {text!r}")
    return int(text)


def number(text: object, field: str, *, positive: bool) -> float:
    """A finite decimal number (``1``, ``0.5``, ``2e3``); no sign, no 'inf', no 'nan'."""
    if not isinstance(text, str) or not _NUMBER.fullmatch(text):
        raise ValueError(f"{field} must be a decimal number, got {text!r}")
    return finite(field, float(text), positive=positive)


def finite(field: str, value: object, *, positive: bool) -> float:
    """``value`` as a float, or an error naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field} must be a number, got {type(value).__name__}")
    try:
        as_float = float(value)
    except OverflowError:
        raise ValueError(f"{field} must be finite, got an integer too large for a float") from None
    if not math.isfinite(as_float) or as_float < 0 or (positive and as_float == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{field} must be finite and {bound}, got {value!r}")
    return as_float


def is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool: True as a rank or a size is a bug, not a 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_in(value: object, field: str, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool) within ``[low, high]`` (either end optional)."""
    if not is_int(value):
        raise TypeError(f"{field} must be an integer, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise ValueError(f"{field} must be {bound}, got {value}")
    return value


def of_type(value: object, kind: type, field: str) -> object:
    """``value`` if it is a ``kind`` as JSON means it: a bool is no int, and an int no bool."""
    if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
        raise TypeError(f"{field} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{field} must be a bool, got {type(value).__name__}")
    return value


def port(value: object, field: str = "port", *, allow_zero: bool = False) -> int:
    """A TCP port; 0 ("any free port") only where binding allows it."""
    low = 0 if allow_zero else 1
    if not is_int(value) or not low <= value <= 65535:
        raise ValueError(f"{field} must be an integer in [{low}, 65535], got {value!r}")
    return value


def port_text(text: object, field: str, *, allow_zero: bool = False) -> int:
    return port(digits(text, field), field, allow_zero=allow_zero)


def host(value: object, field: str = "host") -> str:
    """An IP address or a DNS name, as written without brackets; IPv6 may come in brackets."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if "%" in text:
        # A zoned IPv6 address (fe80::1%eth0) parses, then fails every connect: say so now.
        raise ValueError(f"{field}: zoned IPv6 addresses ('%' scope) are not supported, got {value!r}")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text != value:
        raise ValueError(f"{field}: only an IPv6 address goes in brackets, got {value!r}")
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{field} is not an IP address or a DNS name (ASCII letters, digits, '-', '.'), got {value!r}")
    return text


def host_port(text: object, field: str = "address") -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → (host, port)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{field} must be 'host:port' or '[ipv6]:port', got {text!r}")
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{field} must be '[ipv6]:port', got {text!r}")
        name, port_part = f"[{inner}]", rest[1:]
    else:
        name, sep, port_part = text.rpartition(":")
        if not sep:
            raise ValueError(f"{field} must be 'host:port' or '[ipv6]:port', got {text!r}")
        if ":" in name:
            raise ValueError(f"{field}: write an IPv6 address in brackets, '[ipv6]:port', got {text!r}")
    return host(name, field), port_text(port_part, field)


def url_host(name: str) -> str:
    """``name`` as written in a URL: an IPv6 address in brackets."""
    return f"[{name}]" if ":" in name else name


def url(value: object, field: str = "url") -> str:
    """An http(s) URL with a valid host and port and no credentials."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{field} must not contain whitespace or control characters, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{field} must use http or https, got {value!r}")
    if not parts.hostname:
        raise ValueError(f"{field} has no host: {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{field} must not carry credentials; pass token= instead")
    netloc = parts.netloc
    name, _, port_part = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
    if name and port_part:
        port_text(port_part, f"{field} port")
    else:
        name = netloc
    host(name, f"{field} host")
    return value


MAX_NAME_CHARS = 128


def name(value: object, field: str = "name") -> str:
    """A driver's name, shown in probes, logs, metrics and sd_notify: printable characters
    only (a newline would forge lines there), at most 128 of them."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable() or value != value.strip():
        raise ValueError(f"{field} must be 1 to {MAX_NAME_CHARS} printable characters without surrounding "
                         f"spaces, got {value[:40]!r}{'...' if len(value) > 40 else ''}")
    return value


def token(value: object, field: str = "token") -> str:
    """A bearer token: visible ASCII only (anything else would fail inside http.client
    with an error message that quotes the header, token and all). Never echoed."""
    if not isinstance(value, str) or not value or not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError(f"{field} must be a non-empty string of visible ASCII characters")
    return value
