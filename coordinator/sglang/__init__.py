"""The SGLang plugin: turn this library on inside SGLang with no fork of SGLang.

Installed with the package, it is the entry point ``prefill_startup`` of the group
``sglang.srt.plugins``. SGLang's ``load_plugins()`` calls :func:`plugin` in every process
it starts. ``SGLANG_PLUGINS`` is a whitelist (comma-separated names): leave it unset, or list
every plugin wanted (SGLang's own dependency ships ``smg-servicer`` and ``smg-zmq``); a list
without ``prefill_startup`` turns this one off. Settings come from ``PREFILL_STARTUP_*``
variables (:mod:`coordinator.settings`).

What it hooks (sglang 0.5.23), through SGLang's own ``HookRegistry``:

- prefill, ``CommonKVManager._register_topology_row``: a :class:`~coordinator.Registration`
  of that URL and payload, run to the end; FAILED raises from the scheduler's init with
  the root cause (``PREFILL_STARTUP_ON_FAILURE=return``: upstream's carry-on, with an ERROR);
- decode, ``CommonKVManager.try_ensure_parallel_info`` and
  ``DecodePreallocQueue._ensure_prefill_info``: one background
  :class:`~coordinator.Discovery` per prefill address, never network I/O on the scheduler
  thread; upstream's own code fills its cache once the Discovery is complete;
- decode heartbeat, ``CommonKVManager._handle_node_failure``: that address is looked up anew;
- the main process (the first of the tree to load it): the probes on a port of their own
  from load on, fed by the instance's processes (:mod:`coordinator.instance`); what
  readiness waits for from ``ServerArgs.resolve_once``; on node 0 the bootstrap server's
  table (``CommonKVBootstrapServer.__init__``); ``/startup`` on SGLang's app once
  ``Engine._launch_subprocesses`` returns.

SGLang never fails to start because of this plugin: a bad variable is one ERROR line
and no hook; a target that moved or changed its signature is one WARNING naming it,
and SGLang's own code runs there.
"""

from __future__ import annotations


def plugin() -> None:
    """The entry point SGLang calls; imports the rest only now (it runs in every SGLang process)."""
    from coordinator.sglang._install import install

    install()
