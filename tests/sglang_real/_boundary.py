"""Run one of SGLang's real entry points in this process, standing in only for what needs a GPU.

    python _boundary.py launch_server ARGS...   as `python -m sglang.launch_server ARGS...`
    python _boundary.py serve ARGS...           as `sglang serve ARGS...`
    python _boundary.py engine JSON             as `sglang.Engine(**JSON)`

Real: the entry point itself, its load_plugins() (our plugin found through its entry
point), prepare_server_args, run_server, ServerArgs.resolve_once, http_server and its
FastAPI app, Engine.__init__, and inside Engine._launch_subprocesses its first steps
(configure_logger, resolve_once, _set_envs_and_config, publish, PortArgs.init_new), the
real start_disagg_service() (the CommonKVBootstrapServer the TokenizerManager starts),
and in each scheduler process load_plugins(), configure_logger and the hooked
CommonKVManager._register_topology_row.

Stood in, at the GPU boundary: the body of Engine._launch_subprocesses past those steps
(scheduler processes that register one rank each instead of loading a model; no
TokenizerManager, detokenizer or watchdog), and http_server._setup_and_run_http_server
(the real app is asked in-process instead of served by uvicorn). The patch is applied
the moment SGLang's module is imported (an import hook), so the import order is SGLang's.

The test talks to it over stdio: this prints one JSON event per line on stdout, and
waits for the line "bootstrap" on stdin before starting the bootstrap server, so the test
sees the ranks waiting for it; once launched, it runs until the line "stop".
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import multiprocessing
import os
import runpy
import sys
import threading
from types import SimpleNamespace
from typing import Any

ENGINE = "sglang.srt.entrypoints.engine"
HTTP_SERVER = "sglang.srt.entrypoints.http_server"


def event(name: str, **fields: Any) -> None:
    print(json.dumps({"event": name, **fields}), flush=True)


def payload(rank: int, tp_size: int) -> dict[str, Any]:
    return {"attn_tp_size": tp_size, "attn_tp_rank": rank, "attn_cp_size": 1, "attn_cp_rank": 0,
            "attn_dp_size": 1, "attn_dp_rank": 0, "pp_size": 1, "pp_rank": 0, "system_dp_size": 1,
            "system_dp_rank": 0, "rank_ip": "127.0.0.1", "rank_port": 17000 + rank, "page_size": 1,
            "kv_cache_dtype": "auto"}


def scheduler(server_args: Any, url: str, rank: int, tp_size: int, ready: Any) -> None:
    """A scheduler process: its init up to its registration (run_scheduler_process's order),
    then "ready" to the launcher, then it runs (here: waits) until the instance stops.
    The rank named in BOUNDARY_STUCK_RANK never gets to register (as if its model load hung)."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.utils.common import configure_logger

    load_plugins()
    configure_logger(server_args, prefix=f" TP{rank}")
    if os.environ.get("BOUNDARY_STUCK_RANK") == str(rank):
        threading.Event().wait()
    from sglang.srt.disaggregation.common.conn import CommonKVManager

    # _register_topology_row uses nothing on self (sglang 0.5.23): no manager is built.
    CommonKVManager._register_topology_row(object.__new__(CommonKVManager), url, payload(rank, tp_size))
    ready.send("ready")
    threading.Event().wait()  # a daemon process: it ends with the launcher


def launch_subprocesses(cls: Any, server_args: Any, *args: Any, **kwargs: Any) -> Any:
    engine = sys.modules[ENGINE]
    # The real method's first steps.
    engine.configure_logger(server_args)
    server_args.resolve_once()
    engine._set_envs_and_config(server_args)
    engine.publish(server_args, role="tokenizer")
    port_args = engine.PortArgs.init_new(server_args)
    # Stood in: the schedulers (one rank each, on this node), then the TokenizerManager's
    # start of the bootstrap server.
    from sglang.srt.runtime_context import get_disagg, get_parallel, get_serving

    parallel = get_parallel()
    tp = parallel.tp_size
    _, ranks, _, _ = engine._calculate_rank_ranges(parallel.node_rank)  # SGLang's split across nodes
    # As register_to_bootstrap: multi-node, the bootstrap server is on dist_init_addr's host.
    host = parallel.dist_init_addr.rsplit(":", 1)[0] if parallel.dist_init_addr else get_serving().host
    url = f"http://{host}:{get_disagg().disaggregation_bootstrap_port}/route"
    spawn = multiprocessing.get_context("spawn")
    # By its module's name: under runpy, __main__ is SGLang's module, not this file.
    target = importlib.import_module("_boundary").scheduler
    pipes = [spawn.Pipe(duplex=False) for _ in ranks]
    procs = [spawn.Process(target=target, args=(server_args, url, rank, tp, writer), daemon=True)
             for rank, (_, writer) in zip(ranks, pipes)]
    for proc in procs:
        proc.start()
    event("launching", pid=os.getpid(), ranks=list(ranks), children=[p.pid for p in procs])
    if sys.stdin.readline().strip() == "bootstrap" and parallel.node_rank == 0:
        from sglang.srt.managers.disagg_service import start_disagg_service

        server = start_disagg_service()
        event("bootstrap_started", started=server is not None)
    ready = []
    for (reader, writer), proc in zip(pipes, procs):
        writer.close()
        try:  # as _wait_for_scheduler_ready: a scheduler that dies in its init fails the launch
            ready.append(reader.recv() if reader.poll(180) else "no answer")
        except EOFError:
            proc.join(5)
            ready.append(f"exited {proc.exitcode}")
    event("schedulers_ready", ready=ready)
    if any(r != "ready" for r in ready):
        raise RuntimeError(f"Rank scheduler init failed: {ready}")
    return None, None, port_args, SimpleNamespace(scheduler_infos=[{}], all_child_pids=[]), None, []


def setup_and_run_http_server(*args: Any, **kwargs: Any) -> None:
    """Ask the real app (with whatever is mounted on it) instead of serving it; then run (here:
    wait for the line "stop") as SGLang's server would, the schedulers and probes with it."""
    from starlette.testclient import TestClient

    client = TestClient(sys.modules[HTTP_SERVER].app)  # no `with`: SGLang's lifespan needs its engine
    answers = {path: (r.status_code, r.text) for path in ("/startup/readyz?verbose", "/startup/livez")
               for r in [client.get(path)]}
    event("http_app", answers=answers)
    sys.stdin.readline()


class _Patch(importlib.abc.MetaPathFinder):
    """Replace the stood-in functions right after SGLang's module is executed."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in (ENGINE, HTTP_SERVER):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        loader: Any = None if spec is None else spec.loader
        if loader is None:
            return None
        real_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            real_exec(module)
            if name == ENGINE:
                module.Engine._launch_subprocesses = classmethod(launch_subprocesses)
            else:
                module._setup_and_run_http_server = setup_and_run_http_server

        loader.exec_module = exec_module
        return spec


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.meta_path.insert(0, _Patch())
    entry, args = sys.argv[1], sys.argv[2:]
    if entry == "launch_server":
        sys.argv = ["sglang.launch_server", *args]
        runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)
    elif entry == "serve":
        sys.argv = ["sglang", "serve", *args]
        from sglang.cli.main import main as sglang_main

        sglang_main()
    elif entry == "engine":
        import sglang

        sglang.Engine(**json.loads(args[0]))
        event("engine_ready", http_server_imported=HTTP_SERVER in sys.modules)
        sys.stdin.readline()  # the instance runs until the test is done with it
    else:
        raise SystemExit(f"unknown entry point {entry!r}")
    event("exited")


if __name__ == "__main__":
    main()
