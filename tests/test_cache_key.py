"""The response cache key: canonical, deterministic, sensitive to all that decides an answer, never to a
credential, a timeout or a retry count."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fair_runners._connectors import allowlist
from fair_runners.cache import is_denied, key_material, normalise_origin, turn_key

ROOT = Path(__file__).resolve().parent.parent

BASE: dict[str, Any] = {
    "runner": "llm",
    "origin": "https://api.example.com",
    "target": "langchain_openai.chat_models.ChatOpenAI",
    "credential": "sk-test-credential-0123456789",
    "params": {"model": "gpt-x", "temperature": 0.2, "base_url": "https://api.example.com/v1"},
    "sent": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how are you?"},
    ],
}
# Pinned: a change of this digest changes every key, so it must come with a new KEY_FORMAT.
GOLDEN = "906e1782c926f064e71b2ef2c46ebfbcfcfca944abd0fdbce2681f65025b94e0"

DENIED_EXAMPLES = [
    "api_key",
    "apikey",
    "API-Key",
    "x-api-key",
    "openai_api_key",
    "groq_api_key",
    "google_api_key",
    "anthropic_api_key",
    "key",
    "secret",
    "client_secret",
    "password",
    "token",
    "access_token",
    "auth_token",
    "session_token",
    "Authorization",
    "credential",
    "credentials",
    "timeout",
    "request_timeout",
    "connect_timeout_s",
    "turn_timeout_s",
    "max_retries",
    "max_attempts",
    "session_id",
    "alquimia_session_id",
]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    json_scalars | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
kept_names = st.text(min_size=1, max_size=16).filter(lambda name: not is_denied(name))
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()}),
    min_size=1,
    max_size=6,
)


def key(**changes: Any) -> str:
    return turn_key(**{**BASE, **changes})


def reversed_dicts(value: Any) -> Any:
    """The same data with every dict built in reverse insertion order."""
    if isinstance(value, dict):
        return {k: reversed_dicts(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_dicts(item) for item in value]
    return value


def test_key_is_the_sha256_of_the_documented_canonical_text() -> None:
    credential = hmac.new(
        b"fair-runners/cache/credential/v1", BASE["credential"].encode(), hashlib.sha256
    ).hexdigest()
    expected = (
        '{"credential":"' + credential + '","origin":"https://api.example.com:443",'
        '"params":{"base_url":"https://api.example.com/v1","model":"gpt-x","temperature":0.2},'
        '"runner":"llm","sent":[{"content":"be brief","role":"system"},{"content":"hi","role":"user"},'
        '{"content":"hello","role":"assistant"},{"content":"how are you?","role":"user"}],'
        '"target":"langchain_openai.chat_models.ChatOpenAI","v":1}'
    )
    assert key_material(**BASE) == expected
    assert key() == hashlib.sha256(expected.encode()).hexdigest() == GOLDEN
    assert '"credential":"none"' in key_material(**{**BASE, "credential": None})


def test_key_is_the_same_in_other_processes_whatever_their_hash_seed() -> None:
    code = (
        "import json, sys\n"
        "from fair_runners.cache import turn_key\n"
        "for kwargs in json.loads(sys.stdin.read()): print(turn_key(**kwargs))\n"
    )
    cases = [BASE, {**BASE, "runner": "alquimia", "target": "chat/bot", "credential": None, "params": {}}]
    expected = [turn_key(**case) for case in cases]
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps([reversed_dicts(case) for case in cases]),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=60,
            check=True,
        )
        assert done.stdout.split() == expected


@settings(max_examples=50)
@given(params=st.dictionaries(kept_names, json_values, max_size=6), sent=messages)
def test_dict_order_does_not_matter(params: dict[str, Any], sent: list[dict[str, Any]]) -> None:
    assert key(params=params, sent=sent) == key(params=reversed_dicts(params), sent=reversed_dicts(sent))


@given(name=kept_names, a=json_values, b=json_values)
def test_any_change_of_a_kept_param_changes_the_key(name: str, a: Any, b: Any) -> None:
    assume(a != b)
    assert key(params={**BASE["params"], name: a}) != key(params={**BASE["params"], name: b})
    assume(name not in BASE["params"])
    assert key(params={**BASE["params"], name: a}) != key()  # adding one changes it too


@pytest.mark.parametrize("name", DENIED_EXAMPLES)
def test_every_denied_name_is_left_out_at_every_depth(name: str) -> None:
    assert is_denied(name)
    secret = "sk-do-not-keep-9f8e7d6c"
    with_it = {**BASE["params"], name: secret, "extra": {"nested": 1, name: secret}}
    without = {**BASE["params"], "extra": {"nested": 1}}
    assert key(params=with_it) == key(params=without)
    assert secret not in key_material(**{**BASE, "params": with_it})


def test_every_connector_param_but_credentials_timeout_and_retries_changes_the_key() -> None:
    names = {name for spec in allowlist().values() for name in spec.params}
    names |= {"max_output_tokens", "top_k", "num_predict", "num_ctx", "max_new_tokens", "agent_id"}
    credentials = {
        name for spec in allowlist().values() for name, rule in spec.params.items() if rule.kind == "secret"
    }
    assert credentials == {"api_key", "azure_ad_token"}
    left_out = {"timeout", "max_retries", *credentials}
    assert {name for name in names if is_denied(name)} == left_out
    for name in sorted(names - left_out):
        assert key(params={**BASE["params"], name: 7}) != key(params={**BASE["params"], name: 8}), name
        without = {k: v for k, v in BASE["params"].items() if k != name}
        assert key(params={**without, name: 7}) != key(params=without), name


@given(sent=messages, index=st.integers(min_value=0), text=st.text())
def test_any_change_of_a_message_changes_the_key(sent: list[dict[str, Any]], index: int, text: str) -> None:
    index %= len(sent)
    assume(sent[index]["content"] != text)
    changed = [dict(m) for m in sent]
    changed[index]["content"] = text
    assert key(sent=sent) != key(sent=changed)
    assert key(sent=sent) != key(sent=sent[:-1])
    roles = [dict(m) for m in sent]
    roles[index]["role"] = "tool"
    assert key(sent=sent) != key(sent=roles)


@given(
    bodies=st.lists(
        st.fixed_dictionaries({"query": st.text(), "session_id": st.just("s1"), "extra_data": json_values}),
        min_size=2,
        max_size=5,
    ),
    text=st.text(),
)
def test_alquimia_keys_depend_on_every_earlier_infer_body(bodies: list[dict[str, Any]], text: str) -> None:
    assume(bodies[0]["query"] != text)
    earlier = [{**bodies[0], "query": text}, *bodies[1:]]
    kwargs = {"runner": "alquimia", "target": "chat/bot", "params": {"channel_id": "chat"}}
    assert key(sent=bodies, **kwargs) != key(sent=earlier, **kwargs)


@given(a=st.text(), b=st.text())
def test_any_change_of_credential_changes_the_key(a: str, b: str) -> None:
    assume(a != b)
    assert key(credential=a) != key(credential=b)
    assert key(credential=a) != key(credential=None)


def test_runner_and_target_and_origin_change_the_key() -> None:
    assert key(runner="alquimia") != key()
    assert key(target="langchain_groq.chat_models.ChatGroq") != key()
    assert key(origin="https://api.example.org") != key()
    assert key(origin="https://api.example.com:8443") != key()
    assert key(origin="http://api.example.com") != key()
    with pytest.raises(ValueError, match="runner must be one of"):
        key(runner="bedrock")


@pytest.mark.parametrize(
    ("given_origin", "normal"),
    [
        ("https://api.example.com", "https://api.example.com:443"),
        ("HTTPS://API.Example.COM:443/v1/chat?x=1#f", "https://api.example.com:443"),
        ("https://api.example.com.", "https://api.example.com:443"),
        ("http://127.0.0.1", "http://127.0.0.1:80"),
        ("http://localhost:8080/", "http://localhost:8080"),
        ("http://[::0001]:9000", "http://[::1]:9000"),
        ("https://[2001:DB8::1]", "https://[2001:db8::1]:443"),
    ],
)
def test_origins_are_normalised(given_origin: str, normal: str) -> None:
    assert normalise_origin(given_origin) == normal
    assert key(origin=given_origin) == key(origin=normal)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("api.example.com", "must look like"),
        ("https://user:pw@api.example.com", "user name or password"),
        ("ftp://files.example.com", "no default port"),
        ("https://api.example.com:99999", "not a URL"),
        ("https://:443", "no host"),
    ],
)
def test_bad_origins_are_refused(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        key(origin=bad)


@settings(max_examples=200)
@given(
    body=st.text(alphabet=st.characters(codec="utf-8"), min_size=12, max_size=40),
    params=st.dictionaries(kept_names, json_values, max_size=4),
    sent=messages,
)
def test_a_credential_never_appears_in_the_canonical_text(
    body: str, params: dict[str, Any], sent: list[dict[str, Any]]
) -> None:
    credential = "sk-" + body
    escaped = json.dumps(credential)[1:-1]  # how the canonical JSON would write it
    for form in {credential, escaped}:
        assume(form not in json.dumps(params) and form not in json.dumps(sent))
    leaky = {**params, "api_key": credential, "openai_api_key": credential, "nested": {"token": credential}}
    text = key_material(**{**BASE, "credential": credential, "params": leaky, "sent": sent})
    assert credential not in text and escaped not in text
    assert json.loads(text)["credential"] != credential


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"params": {"t": float("nan")}}, "params.t"),
        ({"params": {"t": [1, float("inf")]}}, r"params.t\[1\]"),
        ({"params": {"b": b"bytes"}}, "params.b is a bytes"),
        ({"params": {"s": {1, 2}}}, "params.s is a set"),
        ({"params": {"o": object()}}, "params.o is a object"),
        ({"params": {"d": {1: "one"}}}, "keys must be str"),
        ({"sent": [{"role": "user", "content": b"x"}]}, r"sent\[0\].content"),
        ({"sent": "just a string"}, "sent must be a list"),
        ({"params": [("model", "x")]}, "params must be a mapping"),
        ({"target": None}, "target must be a string"),
        ({"credential": 12345}, "credential must be a string"),
    ],
)
def test_values_json_cannot_carry_are_refused(change: dict[str, Any], where: str) -> None:
    with pytest.raises(ValueError, match=where):
        key(**change)


def test_tuples_read_as_lists_and_numbers_keep_their_type() -> None:
    as_tuples = [("user", "hi")]
    assert key(sent=as_tuples) == key(sent=[["user", "hi"]])
    assert key(params={"seed": 1}) != key(params={"seed": 1.0}) != key(params={"seed": True})
