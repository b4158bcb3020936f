"""Every flag of every command, with bad values: exit 2 and a message naming the flag, never a traceback."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import pytest

from coordinator.cli import main
from coordinator.testing import example_payload

PAYLOAD = json.dumps(example_payload())
BASE = {
    "register": ["register", "--bootstrap", "127.0.0.1:1", "--payload", PAYLOAD, "--deadline", "0.01"],
    "wait": ["wait", "--bootstrap", "127.0.0.1:1", "--deadline", "0.01"],
    "bootstrap-server": ["bootstrap-server"],
    "demo": ["demo"],
    "simulate": ["simulate", "--ranks", "2", "--trials", "1"],
    "diagram": ["diagram"],
}

PORT = ["+1", "1_0", "١", " 1", "", "-1", "99999999999999999999999", "65536"]
HOST_PORT = ["::1:8998", "h:+1", "h:1_0", "h:١", "h\t:1", "h :1", "", ":1", "h:", "[h]:1",
             "h:99999999999999999999999", "[::1]", "h"]
NUMBER = ["+1", "1_0", "١", " 1", "", "inf", "nan", "-1", "1e999", "0x10"]
COUNT = ["+1", "1_0", "١", " 1", "", "0", "-1", "9" * 30]
# Unresolvable, not an address of this host (bind only: nothing is sent), malformed.
HOST = ["no-such-host.invalid", "10.255.255.1", "a b", "", "host\t", "[h]", "h:1"]

CASES = [
    *[("register", "--bootstrap", v) for v in HOST_PORT],
    *[("register", "--dist-init-addr", v) for v in HOST_PORT],
    *[("register", "--health-port", v) for v in PORT],
    *[("register", "--health-host", v) for v in HOST],  # with --health-port 0, below
    *[("register", flag, v) for flag in ("--deadline", "--attempt-timeout") for v in NUMBER],
    *[("register", "--max-attempts", v) for v in COUNT],
    *[("wait", "--bootstrap", v) for v in [*HOST_PORT, "ftp://h:1", "http://h:1/x", "http://h:+1"]],
    *[("wait", "--target", v) for v in ["1,2,3", "+1,0,0,0", "١,0,0,0", "", " 0,0,0,0", "0,0,0,-1", "a,b,c,d",
                                         "0,0,0,0,0", "9" * 30 + ",0,0,0"]],
    *[("wait", "--expect-page-size", v) for v in COUNT],
    *[("wait", "--expect-kv-cache-dtype", v) for v in ["", " auto"]],
    *[("wait", "--health-host", v) for v in HOST],
    *[("wait", "--health-port", v) for v in PORT],
    *[("wait", flag, v) for flag in ("--deadline", "--attempt-timeout") for v in NUMBER],
    *[("bootstrap-server", "--host", v) for v in HOST],
    *[("bootstrap-server", "--port", v) for v in PORT],
    *[("demo", "--ranks", v) for v in COUNT],
    *[("demo", flag, v) for flag in ("--server-delay", "--deadline") for v in NUMBER],
    *[("simulate", flag, v) for flag in ("--ranks", "--trials", "--capacity", "--decode-ranks", "--workers")
      for v in COUNT],
    *[("simulate", flag, v) for flag in ("--server-up-at", "--unavailable", "--hang", "--start-window", "--latency")
      for v in NUMBER],
    *[("simulate", "--seed", v) for v in ["+1", "1_0", "١", "", "-1"]],
    ("simulate", "--ranks", "1000000"),
    # Bounded because the work grows with them: the simulated span, processes, ranks x trials.
    *[("simulate", "--latency", v) for v in ["1.001", "1e9"]],
    *[("simulate", "--trials", v) for v in ["100001", "600000"]],  # 600000: 2 ranks x 600000 > 1,000,000
    ("simulate", "--workers", str((os.cpu_count() or 1) + 1)),
    ("diagram", "--output", "/dev/null/state_machine.md"),  # under a file
    ("diagram", "--output", "/"),
]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = saved


@pytest.mark.parametrize("command,flag,value", CASES, ids=[f"{c}{f}={v!r}" for c, f, v in CASES])
def test_bad_value_exits_2_naming_the_flag(command: str, flag: str, value: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = list(BASE[command])
    if flag in argv:  # replace the base's value
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    if flag == "--health-host":
        argv += ["--health-port", "0"]  # the host is bound only when probes are served
    code: int | str | None
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert flag in err or flag.lstrip("-").replace("-", "_") in err, err
    assert "Traceback" not in err


def test_bracketed_ipv6_health_host_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator import BootstrapServer
    from coordinator.testing import ipv6_available

    if not ipv6_available():
        pytest.skip("no IPv6 loopback")
    with BootstrapServer() as server:
        code = main(["register", "--bootstrap", f"127.0.0.1:{server.port}", "--payload", PAYLOAD,
                     "--health-host", "[::1]", "--health-port", "0"])
    assert code == 0, capsys.readouterr().err
