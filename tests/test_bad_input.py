"""Bad input fails at construction, naming the field, before any network call."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from coordinator import FakeClock, PayloadError, Registration, RetryPolicy, bootstrap_url, health
from coordinator.protocol import REQUIRED_FIELDS
from coordinator.testing import ScriptedTransport, example_payload


def untouchable() -> ScriptedTransport:
    """An empty script: any attempt at all fails the test (bad input must fail before one)."""
    return ScriptedTransport([])


@pytest.mark.parametrize("url,needle", [
    ("ftp://h:1/route", "http or https"), ("127.0.0.1:8998/route", "http or https"),
    ("http:///route", "no host"), ("http://h:99999/route", "port"), ("http://h:abc/route", "port"),
    ("http://user:pw@h:1/route", "credentials"), (b"http://h/route", "url"),
])
def test_bad_url(url: str | bytes, needle: str, payload: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError), match=needle):
        Registration(url, payload, transport=untouchable())  # type: ignore[arg-type]  # the point: a bytes URL raises


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_missing_required_field_is_named(field: str) -> None:
    p = example_payload()
    del p[field]
    with pytest.raises(PayloadError, match=field) as info:
        Registration("http://h:1/route", p, transport=untouchable())
    assert info.value.field == field


@pytest.mark.parametrize("field,value", [
    ("attn_tp_size", 0), ("attn_tp_rank", 1), ("attn_tp_rank", -1), ("attn_tp_size", "2"),
    ("pp_rank", True), ("rank_port", 0), ("rank_port", 65536), ("rank_ip", ""), ("page_size", 0),
    ("kv_cache_dtype", None), ("prefill_http_port", 70000), ("enable_dsa_cache_layer_split", "yes"),
    ("load_balance_method", 3),
])
def test_mistyped_field_is_named(field: str, value: object) -> None:
    with pytest.raises(PayloadError, match=field):
        Registration("http://h:1/route", {**example_payload(), field: value}, transport=untouchable())


def test_payload_not_json_serialisable_names_the_field() -> None:
    with pytest.raises(TypeError, match="extra"):
        Registration("http://h:1/route", {**example_payload(), "extra": {1, 2}}, transport=untouchable())
    with pytest.raises(TypeError, match="extra"):
        Registration("http://h:1/route", {**example_payload(), "extra": math.nan},
                     transport=untouchable())


def test_payload_must_be_an_object() -> None:
    with pytest.raises(PayloadError, match="payload"):
        Registration("http://h:1/route", [1, 2], transport=untouchable())  # type: ignore[arg-type]  # the point: a list payload raises


def test_unknown_payload_keys_are_forwarded(payload: dict[str, Any]) -> None:
    t = ScriptedTransport([], then=200)
    Registration("http://h:1/route", {**payload, "future_field": 1}, transport=t, clock=FakeClock()).run()
    body = t.calls[0].body
    assert body is not None and b'"future_field":1' in body


@pytest.mark.parametrize("kwargs,needle", [
    ({"policy": {"max_attempts": 3}}, "policy"), ({"on_exhausted": "crash"}, "on_exhausted"),
    ({"rng": 42}, "rng"), ({"clock": object()}, "clock"), ({"name": 3}, "name"),
])
def test_bad_registration_arguments(kwargs: dict[str, Any], needle: str, payload: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError), match=needle):
        Registration("http://h:1/route", payload, transport=untouchable(), **kwargs)


def test_transport_excludes_session_and_token(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="transport"):
        Registration("http://h:1/route", payload, transport=untouchable(), token="abc")


def test_health_serve_rejects_bad_port(payload: dict[str, Any]) -> None:
    reg = Registration("http://h:1/route", payload, transport=untouchable())
    with pytest.raises(ValueError, match="port"):
        health.serve(reg, port=70000)
    with pytest.raises(ValueError, match="registration"):
        health.serve([])


def test_rng_and_policy_values_are_accepted(payload: dict[str, Any]) -> None:
    Registration("https://h:1/route", payload, rng=random.Random(1), policy=RetryPolicy(max_attempts=1),
                 transport=ScriptedTransport([], then=200))
    assert bootstrap_url("h", 1).endswith(":1/route")
