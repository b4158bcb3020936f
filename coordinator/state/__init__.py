"""Snapshots published across processes, for probes served in another one.

SGLang runs each scheduler in its own process and its HTTP server in the main one. Each
driver's snapshot is written, at every transition, to one small JSON file in a
per-instance directory (:class:`Publisher`, atomically: a reader never sees half a
file); :func:`read_published` reads them back as snapshots for the probes and for
``prefill-startup status``. A file whose writer process has died reads as FAILED,
reason ``gone``: never as healthy.
"""

from coordinator.state._publish import Publisher, clean_stale
from coordinator.state._read import Published, read_published

__all__ = ["Published", "Publisher", "clean_stale", "read_published"]
