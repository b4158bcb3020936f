"""The prefill side: register one rank with the bootstrap server (``PUT /route``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import requests

from coordinator import validate
from coordinator.clock import Clock, Rng
from coordinator.driver import Driver, StartupFailed
from coordinator.instrumentation import Hook
from coordinator.outcome import Outcome
from coordinator.policy import Policy
from coordinator.protocol import encode_payload, validate_payload
from coordinator.snapshot import Kind, Snapshot
from coordinator.transport import HttpTransport, Transport


class RegistrationFailed(StartupFailed):
    """Raised by ``Registration.run()`` (with ``on_exhausted="raise"``) when it ends FAILED."""


class Registration(Driver[Transport, Snapshot]):
    """Register one prefill rank with the bootstrap server, retrying by ``policy``.

    ``run()`` blocks until REGISTERED or FAILED; ``poll()`` takes one step (an attempt
    blocks at most for its timeout; backoff is never waited on); ``start()`` runs it
    on a daemon thread. ``snapshot()`` may be called from any thread at any time.

    Parameters (everything is checked here, before any network call; a bad value raises
    ``ValueError``/``TypeError`` naming it):

    - ``url``: the ``PUT /route`` URL (:func:`~coordinator.bootstrap_url` computes it as SGLang does).
    - ``payload``: the registration body; SGLang's fields are checked (``PayloadError`` names
      the field), unknown ones pass through.
    - ``policy``: a :class:`~coordinator.RetryPolicy` (default: unlimited attempts within 120 s).
    - ``clock``, ``rng``: where time and jitter come from (a ``FakeClock`` in tests).
    - ``session``: a ``requests.Session`` of yours (proxies, TLS); ``token``: sent as
      ``Authorization: Bearer``; ``transport``: replaces both (tests, simulations).
    - ``logger``: a structlog-style logger for the default hooks; ``hooks``: the record
      hooks instead of the defaults (``()`` for none).
    - ``on_exhausted``: ``"raise"`` (``run()`` raises :class:`RegistrationFailed` on FAILED)
      or ``"return"``.
    - ``name``: how probes, logs, metrics and sd_notify label it (printable, at most 128).
    - ``watch``: allow ``invalidate()`` to register it again after REGISTERED.
    """

    kind = Kind.REGISTRATION
    failure = RegistrationFailed

    def __init__(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        policy: Policy | None = None,
        clock: Clock | None = None,
        rng: Rng | None = None,
        session: requests.Session | None = None,
        logger: Any = None,
        hooks: Sequence[Hook] | None = None,
        token: str | None = None,
        on_exhausted: Literal["raise", "return"] = "raise",
        transport: Transport | None = None,
        name: str | None = None,
        watch: bool = False,
    ) -> None:
        url = validate.url(url)
        self._body = encode_payload(validate_payload(payload))
        if transport is not None and (session is not None or token is not None):
            raise ValueError("transport excludes session and token: configure the transport itself")
        token = None if token is None else validate.token(token)
        # Watching, a rank only re-registers when asked (invalidate()): no round checks anything,
        # for its own bootstrap server restarting is for its owner to notice; checking it from
        # every rank would multiply the load.
        super().__init__(url, policy=policy, clock=clock, rng=rng, logger=logger, hooks=hooks,
                         on_exhausted=on_exhausted, name=name,
                         transport=transport or HttpTransport(session, token=token), watch=watch)

    def start(self) -> Registration:
        super().start()
        return self

    def _first_snapshot(self, **fields: Any) -> Snapshot:
        return Snapshot(**fields)

    def _perform(self, timeout: float) -> Outcome:
        return self._transport.attempt(self._url, self._body, timeout)

