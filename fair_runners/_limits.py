"""Size limits on requests, set by env, checked before the expensive work they protect.

| env variable                      | default   | what it bounds                                          |
|-----------------------------------|-----------|---------------------------------------------------------|
| FAIR_RUNNERS_MAX_BODY_BYTES       | 6291456   | HTTP body, in bytes, checked before JSON parsing        |
| FAIR_RUNNERS_MAX_DATASETS         | 10000     | datasets (sessions) per request                         |
| FAIR_RUNNERS_MAX_TURNS            | 10000     | turns per request, all datasets together                |
| FAIR_RUNNERS_MAX_QUERY_CHARS      | 100000    | characters in one turn's `query`                        |
| FAIR_RUNNERS_MAX_CONTEXT_CHARS    | 200000    | characters in one dataset's `context`                   |
| FAIR_RUNNERS_MAX_JSON_DEPTH       | 32        | nesting of objects/arrays in the request                |
| FAIR_RUNNERS_MAX_CONCURRENCY_CAP  | 256       | `options.max_concurrency` (see `Settings`)              |

Over a limit is `PayloadTooLarge` (HTTP 413); its message names the limit, its value and the env variable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import InvalidRequest, PayloadTooLarge
from ._schemas import RunRequest
from ._settings import _env_number
from ._text import is_text, to_text


@dataclass(frozen=True)
class Limits:
    """Effective request limits."""

    max_body_bytes: int = 6 * 1024 * 1024
    max_datasets: int = 10_000
    max_turns: int = 10_000
    max_query_chars: int = 100_000
    max_context_chars: int = 200_000
    max_json_depth: int = 32

    @classmethod
    def from_env(cls) -> Limits:
        """Read the limits from the environment (see the module docstring)."""
        d = cls()
        return cls(
            max_body_bytes=int(_env_number("FAIR_RUNNERS_MAX_BODY_BYTES", d.max_body_bytes, 1)),
            max_datasets=int(_env_number("FAIR_RUNNERS_MAX_DATASETS", d.max_datasets, 1)),
            max_turns=int(_env_number("FAIR_RUNNERS_MAX_TURNS", d.max_turns, 1)),
            max_query_chars=int(_env_number("FAIR_RUNNERS_MAX_QUERY_CHARS", d.max_query_chars, 1)),
            max_context_chars=int(_env_number("FAIR_RUNNERS_MAX_CONTEXT_CHARS", d.max_context_chars, 0)),
            max_json_depth=int(_env_number("FAIR_RUNNERS_MAX_JSON_DEPTH", d.max_json_depth, 4)),
        )


def _too_large(loc: str, what: str, value: int, env: str, got: int | None = None) -> PayloadTooLarge:
    seen = f", got {got}" if got is not None else ""
    msg = f"{what} is over this deployment's limit of {value}{seen} (env {env})"
    return PayloadTooLarge(f"payload too large: {msg}", [{"loc": loc, "msg": msg}])


def check_body(raw: str, *, base64: bool, limits: Limits | None = None) -> None:
    """Refuse an HTTP body over `max_body_bytes` without decoding or parsing it."""
    limit = (limits or Limits.from_env()).max_body_bytes
    # Base64 carries 3 bytes in 4 characters; a str has at least one UTF-8 byte per character.
    ceiling = limit * 4 // 3 + 4 if base64 else limit
    if len(raw) > ceiling or (
        not base64 and len(raw) * 4 > limit and len(raw.encode("utf-8", "replace")) > limit
    ):
        raise _too_large("body", "the request body (bytes)", limit, "FAIR_RUNNERS_MAX_BODY_BYTES")


def check_decoded_body(body: str, limits: Limits | None = None) -> None:
    """Refuse a decoded (base64) body over `max_body_bytes`."""
    limit = (limits or Limits.from_env()).max_body_bytes
    if len(body) > limit or (len(body) * 4 > limit and len(body.encode("utf-8", "replace")) > limit):
        raise _too_large("body", "the request body (bytes)", limit, "FAIR_RUNNERS_MAX_BODY_BYTES")


def check_depth(payload: Any, limits: Limits | None = None) -> None:
    """Refuse nesting deeper than `max_json_depth`, and values JSON text cannot carry.

    One iterative walk (no recursion to exhaust) also refuses a number that is not finite (`1e400` parses
    to infinity, which no JSON response can hold) and a string or key holding an unpaired UTF-16 surrogate
    (`"\\ud800"` parses, but is not Unicode text and cannot be written as UTF-8): `InvalidRequest` naming it.
    """
    limit = (limits or Limits.from_env()).max_json_depth
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
            for key in node:
                if isinstance(key, str) and not is_text(key):
                    raise _refused(payload, key, limit, _NOT_TEXT)
        elif isinstance(node, list | tuple):
            children = node
        elif isinstance(node, str):
            if not is_text(node):
                raise _refused(payload, node, limit, _NOT_TEXT)
            continue
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise _refused(payload, node, limit, _NOT_FINITE)
            continue
        else:
            continue
        if depth > limit:
            raise _too_large("", "the nesting depth of the request", limit, "FAIR_RUNNERS_MAX_JSON_DEPTH")
        stack.extend((child, depth + 1) for child in children)


# (what is wrong, the detail's message) for each value JSON text cannot carry
_NOT_TEXT = (
    "the text is not valid Unicode",
    "holds an unpaired UTF-16 surrogate (such as \\ud800), which is not valid Unicode",
)
_NOT_FINITE = (
    "a number is not finite",
    "numbers must be finite (NaN, Infinity and out-of-range numbers such as 1e400 are not JSON values)",
)


def _refused(payload: Any, bad: object, limit: int, why: tuple[str, str]) -> InvalidRequest:
    """`InvalidRequest` naming where `bad` is (repaired text: a bad key is part of its own `loc`)."""
    loc = to_text(_path_to(payload, bad, limit + 2) or "")
    return InvalidRequest(f"invalid request: {loc or 'body'}: {why[0]}", [{"loc": loc, "msg": why[1]}])


def _path_to(node: Any, target: Any, depth: int, path: tuple[str, ...] = ()) -> str | None:
    """Dotted location of `target` (by identity; a key counts as its own location), `depth` levels deep."""
    if node is target:
        return ".".join(path)
    if depth <= 0:
        return None
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = (*path, str(key))
            if key is target:
                return ".".join(here)
            found = _path_to(value, target, depth - 1, here)
            if found is not None:
                return found
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            found = _path_to(value, target, depth - 1, (*path, str(i)))
            if found is not None:
                return found
    return None


def check_payload(payload: Any, limits: Limits | None = None) -> None:
    """Checks on the raw payload before validation: nesting depth, dataset and turn counts."""
    limits = limits or Limits.from_env()
    check_depth(payload, limits)
    if not isinstance(payload, Mapping):
        return
    datasets = payload.get("datasets")
    if not isinstance(datasets, list):
        return
    if len(datasets) > limits.max_datasets:
        raise _too_large(
            "datasets",
            "the number of datasets",
            limits.max_datasets,
            "FAIR_RUNNERS_MAX_DATASETS",
            len(datasets),
        )
    turns = sum(
        len(d["conversation"])
        for d in datasets
        if isinstance(d, Mapping) and isinstance(d.get("conversation"), list)
    )
    if turns > limits.max_turns:
        raise _too_large("datasets", "the number of turns", limits.max_turns, "FAIR_RUNNERS_MAX_TURNS", turns)


def check_request(request: RunRequest, limits: Limits | None = None) -> None:
    """Checks on the validated request: query and context lengths."""
    limits = limits or Limits.from_env()
    for i, dataset in enumerate(request.datasets):
        if len(dataset.context) > limits.max_context_chars:
            raise _too_large(
                f"datasets.{i}.context",
                "a context (characters)",
                limits.max_context_chars,
                "FAIR_RUNNERS_MAX_CONTEXT_CHARS",
                len(dataset.context),
            )
        for j, batch in enumerate(dataset.conversation):
            if len(batch.query) > limits.max_query_chars:
                raise _too_large(
                    f"datasets.{i}.conversation.{j}.query",
                    "a query (characters)",
                    limits.max_query_chars,
                    "FAIR_RUNNERS_MAX_QUERY_CHARS",
                    len(batch.query),
                )
