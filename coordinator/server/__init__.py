"""The bootstrap server: SGLang's registry rules (pure, :mod:`._registry`) served over
HTTP by the shared stdlib server base (:mod:`._http`)."""

from coordinator.server._http import MAX_BODY_BYTES, BootstrapServer

__all__ = ["MAX_BODY_BYTES", "BootstrapServer"]
