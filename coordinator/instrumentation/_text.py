"""Text that leaves the process line by line (verbose probes, sd_notify): one line per value."""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with each control or separator character escaped (``\\n``, ``\\x1b``, ``\\u2028``).

    A driver's name or an error message holding a newline would otherwise forge a line
    of its own: ``readyz check passed`` in a verbose probe, ``READY=1`` in an sd_notify
    datagram.
    """
    if text.isprintable():  # the usual case: nothing to copy
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
