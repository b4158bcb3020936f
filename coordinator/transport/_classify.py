"""Failure classification: which :class:`~coordinator.Failure` an exception of the HTTP stack means."""

from __future__ import annotations

import http.client
import socket

import requests
import urllib3

from coordinator.outcome import Failure, chain

_KINDS: tuple[tuple[tuple[type[BaseException], ...], Failure], ...] = (
    ((ConnectionRefusedError,), Failure.REFUSED),
    ((socket.gaierror, urllib3.exceptions.NameResolutionError), Failure.DNS),
    ((requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError), Failure.TIMEOUT),
    (
        (
            ConnectionResetError,
            BrokenPipeError,
            http.client.HTTPException,
            urllib3.exceptions.ProtocolError,
            requests.exceptions.ChunkedEncodingError,
        ),
        Failure.RESET,
    ),
    ((OSError, requests.RequestException, urllib3.exceptions.HTTPError), Failure.CONNECTION),
)


def classify_exception(exc: BaseException) -> Failure:
    """The most specific failure any exception of the chain names, innermost first."""
    innermost_first = chain(exc)[::-1]
    for types, kind in _KINDS:
        if any(isinstance(e, types) for e in innermost_first):
            return kind
    return Failure.INTERNAL
