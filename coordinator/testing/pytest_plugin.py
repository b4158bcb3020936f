"""pytest fixtures for transition-driven tests (registered through the ``pytest11`` entry point).

- ``fake_clock``: a :class:`~coordinator.FakeClock` at 0.
- ``scripted_registration(script, **kwargs)``: a :class:`~coordinator.Registration` on
  ``fake_clock`` whose attempts are answered by ``ScriptedTransport(script)``
  (``reg.transport`` records the calls); ``kwargs`` go to ``Registration`` (``payload=``
  replaces the example payload).
- ``scripted_discovery(script, **kwargs)``: the same for a :class:`~coordinator.Discovery`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pytest

# pytest loads this module in every run wherever the package is installed: the drivers are
# imported by the fixtures that use them, never at load.
if TYPE_CHECKING:
    from coordinator.clock import FakeClock
    from coordinator.discovery import Discovery
    from coordinator.registration import Registration
    from coordinator.testing._scripted import Step

URL = "http://bootstrap.test:8998/route"


@pytest.fixture
def fake_clock() -> FakeClock:
    """Virtual time at 0: sleeps return at once and are recorded in ``.sleeps``."""
    from coordinator.clock import FakeClock

    return FakeClock()


@pytest.fixture
def scripted_registration(fake_clock: FakeClock) -> Callable[..., Registration]:
    """``scripted_registration(script, **kwargs)``: a Registration on ``fake_clock`` answered by the script."""
    from coordinator.registration import Registration
    from coordinator.testing import ScriptedTransport, example_payload

    def make(script: Iterable[Step], **kwargs: Any) -> Registration:
        payload = kwargs.pop("payload", None) or example_payload()
        kwargs.setdefault("clock", fake_clock)
        return Registration(kwargs.pop("url", URL), payload,
                            transport=ScriptedTransport(script, clock=kwargs["clock"]), **kwargs)

    return make


@pytest.fixture
def scripted_discovery(fake_clock: FakeClock) -> Callable[..., Discovery]:
    """``scripted_discovery(script, **kwargs)``: a Discovery on ``fake_clock`` answered by the script."""
    from coordinator.discovery import Discovery
    from coordinator.testing import ScriptedTransport

    def make(script: Iterable[Step], **kwargs: Any) -> Discovery:
        kwargs.setdefault("clock", fake_clock)
        return Discovery(kwargs.pop("bootstrap", "bootstrap.test:8998"),
                         transport=ScriptedTransport(script, clock=kwargs["clock"]), **kwargs)

    return make
