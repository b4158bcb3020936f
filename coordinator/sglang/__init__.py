"""The SGLang plugin: turn this library on inside SGLang with no fork of SGLang.

Installed with the package, it is the entry point ``prefill_startup`` of the group
``sglang.srt.plugins``. SGLang's ``load_plugins()`` calls :func:`plugin` in every process
it starts; ``SGLANG_PLUGINS`` (comma-separated names) restricts which plugins load, so
``SGLANG_PLUGINS=prefill_startup`` turns on this one alone, and a list without it turns it
off. Settings come from ``PREFILL_STARTUP_*`` variables (:mod:`coordinator.settings`).

What it hooks (sglang 0.5.23), through SGLang's own ``HookRegistry``:

- prefill, ``CommonKVManager._register_topology_row``: a :class:`~coordinator.Registration`
  of that URL and payload, run to the end; FAILED raises from the scheduler's init with
  the root cause (``PREFILL_STARTUP_ON_FAILURE=return``: upstream's carry-on, with an ERROR);
- decode, ``CommonKVManager.try_ensure_parallel_info`` and
  ``DecodePreallocQueue._ensure_prefill_info``: one background
  :class:`~coordinator.Discovery` per prefill address, never network I/O on the scheduler
  thread; upstream's own code fills its cache once the Discovery is complete;
- decode heartbeat, ``CommonKVManager._handle_node_failure``: that address is looked up anew.

SGLang never fails to start because of this plugin: a bad variable is one ERROR line
and no hook; a target that moved or changed its signature is one WARNING naming it,
and SGLang's own code runs there.
"""

from __future__ import annotations


def plugin() -> None:
    """The entry point SGLang calls; imports the rest only now (it runs in every SGLang process)."""
    from coordinator.sglang._install import install

    install()
