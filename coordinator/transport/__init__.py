"""The network edge: what the drivers need from it (:class:`Transport`, :class:`LookupTransport`),
and the real one over HTTP (:class:`HttpTransport`)."""

from coordinator.transport._classify import classify_exception
from coordinator.transport._http import MAX_ANSWER_BYTES, MAX_BODY_BYTES, HttpTransport
from coordinator.transport._protocols import LookupTransport, Transport

__all__ = ["MAX_ANSWER_BYTES", "MAX_BODY_BYTES", "HttpTransport", "LookupTransport", "Transport", "classify_exception"]
