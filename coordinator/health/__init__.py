"""Health probes: snapshots → answers (pure), served by a stdlib server or an ASGI app.

``probe()``/``probe_all()``/``verbose()`` are pure functions; ``serve()`` runs them on a
stdlib server thread; ``asgi()`` returns an ASGI 3 app to mount in FastAPI. Both serve
``/livez``, ``/readyz``, ``/startupz`` (``?verbose``, ``?exclude=NAME``), ``/status``
and ``/metrics``.
"""

from coordinator.health._asgi import ASGIApp, asgi
from coordinator.health._probe import PATHS, probe, probe_all, verbose
from coordinator.health._server import HealthServer, serve

__all__ = ["PATHS", "ASGIApp", "HealthServer", "asgi", "probe", "probe_all", "serve", "verbose"]
