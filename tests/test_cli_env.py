"""PREFILL_STARTUP_* variables and the new flags: good values taken (a flag over its variable
over the default), bad ones exit 2 naming the flag or the variable, never a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator import settings
from coordinator.cli import build_parser, main
from coordinator.cli._options import policy_from
from coordinator.settings import UNSET, SettingError, from_env
from coordinator.testing import example_payload

PAYLOAD = json.dumps(example_payload())
VARS = [s.var for s in settings.TABLE]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = saved


# -- the settings module, as an embedder (the SGLang plugin) reads it -----------------------


def test_defaults() -> None:
    s = from_env({})
    assert (s.deadline_s, s.attempt_timeout_s, s.max_attempts) == (UNSET, UNSET, UNSET)  # the policy's
    assert (s.log_format, s.log_level, s.health_host, s.health_port) == ("auto", "INFO", "127.0.0.1", None)
    assert (s.on_failure, s.watch) == ("raise", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.watch = False  # type: ignore[misc]


def test_values(tmp_path: Path) -> None:
    s = from_env({
        "PREFILL_STARTUP_DEADLINE": "none", "PREFILL_STARTUP_ATTEMPT_TIMEOUT": "0.5",
        "PREFILL_STARTUP_MAX_ATTEMPTS": "3", "PREFILL_STARTUP_LOG_FORMAT": "JSON",
        "PREFILL_STARTUP_LOG_LEVEL": "debug", "PREFILL_STARTUP_HEALTH_HOST": "[::1]",
        "PREFILL_STARTUP_HEALTH_PORT": "0", "PREFILL_STARTUP_ON_FAILURE": "return",
        "PREFILL_STARTUP_WATCH": "No",
    })
    assert (s.deadline_s, s.attempt_timeout_s, s.max_attempts) == (None, 0.5, 3)
    assert (s.log_format, s.log_level, s.health_host, s.health_port) == ("json", "DEBUG", "::1", 0)
    assert (s.on_failure, s.watch) == ("return", False)
    assert from_env({"PREFILL_STARTUP_DEADLINE": "30"}).deadline_s == 30.0
    assert from_env({"PREFILL_STARTUP_DEADLINE": ""}).deadline_s is UNSET  # empty: unset
    assert all(from_env({"PREFILL_STARTUP_WATCH": v}).watch for v in ("1", "true", "YES"))


def test_the_message_names_the_variable_and_the_value() -> None:
    with pytest.raises(SettingError) as info:
        from_env({"PREFILL_STARTUP_DEADLINE": "abc"})
    assert str(info.value).startswith("PREFILL_STARTUP_DEADLINE='abc': must be a decimal number or 'none'")
    assert isinstance(info.value, ValueError)


def test_every_setting_is_a_settings_field_and_documented() -> None:
    fields = [f.name for f in dataclasses.fields(settings.Settings)]
    assert [s.field for s in settings.TABLE] == fields
    assert all(s.var.startswith("PREFILL_STARTUP_") and s.help for s in settings.TABLE)


BAD = {
    "PREFILL_STARTUP_DEADLINE": ["abc", "0", "-1", "inf", "nan", "1_0", "١", " 1", "nonee", "1e308", "31536001"],
    "PREFILL_STARTUP_ATTEMPT_TIMEOUT": ["abc", "0", "-1", "inf", "3601", "1e10", "none", "1e-300", "0.0009"],
    "PREFILL_STARTUP_MAX_ATTEMPTS": ["0", "-1", "+1", "1.5", "9" * 30, "none"],
    "PREFILL_STARTUP_LOG_FORMAT": ["xml", "json "],
    "PREFILL_STARTUP_LOG_LEVEL": ["verbose", "CRITICAL", "10"],
    "PREFILL_STARTUP_HEALTH_HOST": ["a b", "[h]", "h:1", "no_such host"],
    "PREFILL_STARTUP_HEALTH_PORT": ["-1", "65536", "+1", "x"],
    "PREFILL_STARTUP_ON_FAILURE": ["ignore", "1"],
    "PREFILL_STARTUP_WATCH": ["maybe", "2", "on"],
}
ENV_CASES = [(var, value) for var, values in BAD.items() for value in values]


def test_every_variable_has_bad_cases() -> None:
    assert set(BAD) == set(VARS)


@pytest.mark.parametrize("var,value", ENV_CASES, ids=[f"{v}={x!r}" for v, x in ENV_CASES])
def test_bad_variable_raises_naming_it(var: str, value: str) -> None:
    with pytest.raises(SettingError, match=re.escape(f"{var}={value!r}: ")):
        from_env({var: value})


# The CLI's own variables (those with a flag; no NUL in a real environment).
CLI_VARS = {s.var for s in settings.TABLE if s.flag is not None}
CLI_ENV_CASES = [(var, value) for var, value in ENV_CASES if "\0" not in value and var in CLI_VARS]


@pytest.mark.parametrize("var,value", CLI_ENV_CASES, ids=[f"{v}={x!r}" for v, x in CLI_ENV_CASES])
def test_bad_variable_exits_2_naming_it(var: str, value: str, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(var, value)
    code = main(["wait", "--bootstrap", "127.0.0.1:1", "--deadline", "0.01"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{var}={value!r}" in err and "Traceback" not in err


# -- the CLI: flag > variable > default ---------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_variables_are_the_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    register = ["register", "--bootstrap", "h:1", "--payload", "{}"]
    assert policy_from(parse(*register)).deadline_s == 120.0
    assert policy_from(parse("wait", "--bootstrap", "h:1")).deadline_s == 600.0
    for var, value in [("PREFILL_STARTUP_DEADLINE", "7"), ("PREFILL_STARTUP_ATTEMPT_TIMEOUT", "2"),
                       ("PREFILL_STARTUP_MAX_ATTEMPTS", "4"), ("PREFILL_STARTUP_LOG_LEVEL", "warning"),
                       ("PREFILL_STARTUP_LOG_FORMAT", "console"), ("PREFILL_STARTUP_HEALTH_PORT", "0"),
                       ("PREFILL_STARTUP_HEALTH_HOST", "::1")]:
        monkeypatch.setenv(var, value)
    args = parse(*register)
    policy = policy_from(args)
    assert (policy.deadline_s, policy.attempt_timeout_s, policy.max_attempts) == (7.0, 2.0, 4)
    assert (args.log_level, args.log_format, args.health_port, args.health_host) == ("WARNING", "console", 0, "::1")
    args = parse("--log-level", "error", *register, "--deadline", "3", "--attempt-timeout", "1",
                 "--max-attempts", "9", "--health-port", "5", "--health-host", "127.0.0.1", "--log-format", "json")
    policy = policy_from(args)
    assert (policy.deadline_s, policy.attempt_timeout_s, policy.max_attempts) == (3.0, 1.0, 9)
    assert (args.log_level, args.log_format, args.health_port, args.health_host) == ("ERROR", "json", 5, "127.0.0.1")


def test_deadline_none_from_the_variable_or_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert policy_from(parse("wait", "--bootstrap", "h:1", "--deadline", "none")).deadline_s is None
    monkeypatch.setenv("PREFILL_STARTUP_DEADLINE", "none")
    assert policy_from(parse("wait", "--bootstrap", "h:1")).deadline_s is None
    assert policy_from(parse("wait", "--bootstrap", "h:1", "--deadline", "5")).deadline_s == 5.0


def test_demo_keeps_its_own_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFILL_STARTUP_DEADLINE", "none")
    assert parse("demo").deadline == 30.0


def test_log_level_in_any_case() -> None:
    assert parse("--log-level", "debug", "diagram").log_level == "DEBUG"
    assert parse("diagram", "--log-level", "Warning").log_level == "WARNING"


def _help_blocks(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help text, whitespace collapsed, by its flag."""
    blocks: dict[str, str] = {}
    flag = None
    for line in parser.format_help().splitlines():
        match = re.match(r"\s{2}(-{1,2}[a-z-]+)", line)
        if match:
            flag = match.group(1)
            blocks[flag] = ""
        if flag is not None:
            blocks[flag] += " " + line.strip()
    return blocks


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_help_names_each_variable_next_to_its_flag() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    for name, command in [("prefill-startup", parser), ("register", commands["register"]), ("wait", commands["wait"])]:
        blocks = _help_blocks(command)
        for setting in settings.TABLE:
            if setting.flag is not None and setting.flag in blocks:
                assert setting.var in blocks[setting.flag], (name, setting.flag)
    flagged = {s.flag for s in settings.TABLE if s.flag}
    assert flagged <= set(_help_blocks(commands["register"])) and flagged <= set(_help_blocks(commands["wait"]))


def test_every_flag_of_every_command_has_help() -> None:
    parser = build_parser()
    for name, command in [("prefill-startup", parser), *_subparsers(parser).items()]:
        for action in command._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings)


# -- the new flags, with bad values: exit 2 naming the flag (as test_cli_sweep.py) ----------

BASE = {
    "register": ["register", "--bootstrap", "127.0.0.1:1", "--payload", PAYLOAD, "--deadline", "0.01"],
    "wait": ["wait", "--bootstrap", "127.0.0.1:1", "--deadline", "0.01"],
    "simulate": ["simulate", "--ranks", "2", "--trials", "1"],
    "diagram": ["diagram"],
}
NAME = ["", " x", "x ", "a\nb", "tab\there", "x" * 129]
SPAN = ["3600.5", "1e7", "1e300"]
FLAG_CASES = [
    *[(c, "--name", v) for c in ("register", "wait") for v in NAME],
    *[(c, "--attempt-timeout", v) for c in ("register", "wait") for v in ("3601", "1e10")],
    *[(c, "--log-level", v) for c in ("register", "wait", "diagram") for v in ("verbose", "")],
    *[(c, "--log-format", v) for c in ("register", "diagram") for v in ("xml", "")],
    *[("simulate", flag, v) for flag in ("--server-up-at", "--unavailable", "--hang", "--start-window") for v in SPAN],
    *[("simulate", flag, "48537") for flag in ("--ranks", "--decode-ranks")],
    ("diagram", "--output", "/nonexistent/state_machine.md"),
    ("wait", "--bootstrap", "http://user:secret@h:1"),
]


@pytest.mark.parametrize("command,flag,value", FLAG_CASES, ids=[f"{c}{f}={v!r}" for c, f, v in FLAG_CASES])
def test_bad_value_exits_2_naming_the_flag(command: str, flag: str, value: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = list(BASE[command])
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    code: int | str | None
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert flag in err and "Traceback" not in err, err
    assert ": : " not in err and "token=" not in err and "secret" not in err, err


@pytest.mark.parametrize("values", [["0", "3601"], ["3601", "3602"], ["0", "1e7"]])
def test_late_start_is_bounded(values: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--ranks", "2", "--trials", "1", "--late-start", *values])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--late-start" in err and "3600" in err


def test_the_simulate_help_states_the_bounds() -> None:
    blocks = _help_blocks(_subparsers(build_parser())["simulate"])
    for flag in ("--late-start", "--server-up-at", "--unavailable", "--hang", "--start-window"):
        assert "at most 3600" in blocks[flag], flag
    assert "over a minute" not in blocks["--trials"]


def test_the_simulated_span_is_bounded() -> None:
    from coordinator.sim import MAX_SPAN_S, Scenario

    Scenario(late_start=(0.0, MAX_SPAN_S), start_window_s=MAX_SPAN_S, unavailable_s=MAX_SPAN_S, hang_s=MAX_SPAN_S)
    over = MAX_SPAN_S + 1
    cases: list[tuple[Callable[[], Scenario], str]] = [
        (lambda: Scenario(start_window_s=over), "Scenario.start_window_s must be <= 3600"),
        (lambda: Scenario(unavailable_s=over), "Scenario.unavailable_s must be <= 3600"),
        (lambda: Scenario(hang_s=over), "Scenario.hang_s must be <= 3600"),
        (lambda: Scenario(late_start=(0.0, over)), "Scenario.late_start max must be <= 3600"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()


def test_each_consumer_answers_only_for_its_own_variables(capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.cli import main
    from coordinator.sglang._install import FIELDS

    # A plugin-only variable with a bad value is none of the CLI's business, and the reverse.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFILL_STARTUP_WATCH", "maybe")
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0
    assert from_env({"PREFILL_STARTUP_LOG_LEVEL": "loud"}, FIELDS).watch is True
    with pytest.raises(SettingError, match="PREFILL_STARTUP_WATCH"):
        from_env({"PREFILL_STARTUP_WATCH": "maybe"}, FIELDS)


def test_the_cli_and_the_plugin_lay_the_variables_over_a_policy_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator.policy import RetryPolicy

    env = {"PREFILL_STARTUP_DEADLINE": "7", "PREFILL_STARTUP_ATTEMPT_TIMEOUT": "2", "PREFILL_STARTUP_MAX_ATTEMPTS": "4"}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    cli = policy_from(parse("register", "--bootstrap", "h:1", "--payload", "{}"))
    plugin = settings.over(RetryPolicy(), dataclasses.asdict(from_env(env)))
    assert cli == plugin == dataclasses.replace(RetryPolicy(), deadline_s=7.0, attempt_timeout_s=2.0, max_attempts=4)
    assert settings.over(RetryPolicy(), dataclasses.asdict(from_env({}))) == RetryPolicy()  # nothing set: the side's
