"""HttpTransport: one HTTP attempt (a PUT, or a lookup GET) through a requests.Session,
turned into an Outcome. No retry logic here; the total time limit and the abort are
:mod:`._cutoff`'s, the failure names :mod:`._classify`'s.
"""

from __future__ import annotations

import requests

from coordinator.outcome import Cause, Failure, Outcome, cause_of
from coordinator.protocol import EXTENSION_PREFIX
from coordinator.transport._classify import classify_exception
from coordinator.transport._cutoff import AbortableAdapter, Cutoff

MAX_BODY_BYTES = 64 * 1024  # read no more of a PUT's answer than this
# A lookup's answer is parsed whole; a topology with DSpark layouts can pass 64 KiB.
MAX_ANSWER_BYTES = 1024 * 1024
_EXCERPT_CHARS = 1024
_REDACTED = "[redacted]"


class _NoRedirectSession(requests.Session):
    """Even with ``allow_redirects=False``, requests reads a 3xx body in full to build
    ``response.next``; with no redirect target it never does, and our read cap holds."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


class HttpTransport:
    """PUTs through a requests.Session: connections reused, redirects never followed.

    Proxy variables are ignored by default (``trust_env=False``): bootstrap traffic
    stays inside the cluster, and an inherited ``HTTP_PROXY`` would send it astray.
    A caller's own ``session`` is used as given (its proxies, TLS and adapters); the
    hard total time limit then holds only for sessions whose adapter we mounted.
    """

    def __init__(self, session: requests.Session | None = None, *, token: str | None = None) -> None:
        self._cutoff = Cutoff()
        self._own_session = session is None
        if session is None:
            session = _NoRedirectSession()
            session.trust_env = False
            adapter = AbortableAdapter(self._cutoff)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session
        self._headers = {"Content-Type": "application/json"}
        self._get_headers: dict[str, str] = {}  # lookups are open upstream: never send the token
        self._token = token
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        # The token lives in the headers: never show them.
        return f"HttpTransport(own_session={self._own_session})"

    @property
    def in_flight(self) -> bool:
        """Whether an attempt has a socket open right now."""
        return self._cutoff.busy

    def abort(self) -> None:
        self._cutoff.abort()

    def peer_closed(self) -> bool:
        """Whether the server closed the connection the last answer left open (a non-blocking
        poll): a watching Discovery then checks at once, for a server process that exited
        closes its connections as it goes, while nothing listens any more."""
        return self._cutoff.peer_closed()

    def attempt(self, url: str, body: bytes, timeout: float) -> Outcome:
        """One PUT; ``Outcome.body`` holds an excerpt of the answer, for messages."""
        return self._request("PUT", url, body, timeout, MAX_BODY_BYTES, _EXCERPT_CHARS)

    def get(self, url: str, timeout: float) -> Outcome:
        """One GET; ``Outcome.body`` holds the answer whole, to be parsed. An answer over
        :data:`MAX_ANSWER_BYTES` is an ``invalid`` outcome naming the cap."""
        return self._request("GET", url, None, timeout, MAX_ANSWER_BYTES, MAX_ANSWER_BYTES)

    def _request(self, method: str, url: str, body: bytes | None, timeout: float, cap: int, keep: int) -> Outcome:
        # The total limit: per-read socket timeouts alone let a trickling server go on forever.
        self._cutoff.arm(timeout)
        try:
            return self._send(method, url, body, timeout, cap, keep)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an Outcome
            ending = self._cutoff.ending
            failure = classify_exception(exc)
            # Past the limit, whatever broke last (a late DNS error, a read cut short): a timeout.
            if ending is Failure.TIMEOUT or (ending is None and self._cutoff.expired):
                cause = Cause("TimeoutError", f"no complete answer within {timeout:.3g} s")
                return Outcome.of_failure(Failure.TIMEOUT, cause)
            if ending is Failure.CANCELLED:
                return Outcome.of_failure(Failure.CANCELLED, Cause("Cancelled", "stop() was called"))
            return Outcome.of_failure(failure, cause_of(exc))
        finally:
            self._cutoff.attach(None)

    def _send(self, method: str, url: str, body: bytes | None, timeout: float, cap: int, keep: int) -> Outcome:
        response = self._session.request(
            method,
            url,
            data=body,
            headers=self._headers if body is not None else self._get_headers,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        )
        try:
            data = response.raw.read(cap + 1, decode_content=True) or b""
        finally:
            if response.raw.closed or response.raw.isclosed():
                response.raw.release_conn()
            else:
                # Unread body left on the socket: the connection cannot be reused.
                response.close()
        if len(data) > cap and keep == cap:  # an answer to be parsed whole, and cut: say so
            return Outcome(status=response.status_code, failure=Failure.INVALID,
                           cause=Cause("AnswerTooLarge", f"the answer exceeds {cap} bytes"))
        text = data[:keep * 4].decode("utf-8", "replace")[:keep]
        if self._token is not None:  # a server echoing the request must not put the token in our logs
            text = text.replace(self._token, _REDACTED)
        return Outcome.of_status(
            response.status_code,
            text,
            retry_after=response.headers.get("Retry-After"),
            date=response.headers.get("Date"),
            headers={k.lower(): v for k, v in response.headers.items() if k.lower().startswith(EXTENSION_PREFIX)},
        )

    def close(self) -> None:
        if self._own_session:
            self._session.close()
