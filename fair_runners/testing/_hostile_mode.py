"""What the hostile backend does wrong, and on which protocol step: `HostileMode`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ._hostile_bodies import KEY_ECHO_VARIANTS, Step

HostileKind = Literal[
    "gzip_bomb",
    "endless_line",
    "huge_body",
    "truncated_body",
    "truncated_event",
    "key_echo",
    "odd_sse_fields",
    "dotdot_stream_id",
    "slow_drip",
]
DOTDOT_IDS = ("..", "../x", "%2e%2e", "a/b", "x" * 10_240)
"""Stream ids worth trying with `dotdot_stream_id`."""

_DEFAULT_SIZE: dict[HostileKind, int | None] = {
    "gzip_bomb": 1 << 30,
    "huge_body": 32 << 20,
    "endless_line": None,
    "truncated_body": 4096,
    "slow_drip": 0,
}
_ENDLESS_OK = ("gzip_bomb", "huge_body", "endless_line")
_ONLY_STEP: dict[HostileKind, Step] = {
    "truncated_event": "stream",
    "odd_sse_fields": "stream",
    "dotdot_stream_id": "infer",
}
_VARIANTS: dict[HostileKind, tuple[str, ...]] = {
    "key_echo": KEY_ECHO_VARIANTS,
    "truncated_event": ("line", "mid"),
}
_DEFAULT_VARIANT: dict[HostileKind, str] = {"key_echo": "all", "truncated_event": "line"}


@dataclass(frozen=True)
class HostileMode:
    """How to misbehave on `step` (`infer`, `stream` or `completion`; the other steps answer well).

    - `gzip_bomb`: one gzip member (Content-Encoding: gzip, ~1 MB) inflating to the step's reply with a
      `size`-byte (default 1 GiB) string of "a" as its answer; `complete=False` stops after the "a"s (one
      endless line: an unclosed JSON string, no line end).
    - `endless_line`: the step's reply opened, then "a" forever (or `size` bytes) with no line end; `gzip`.
    - `huge_body`: the reply with a `size`-byte (default 32 MiB) answer, uncompressed.
    - `truncated_body`: the reply with `size` "a"s (default 4096) after the answer, of which only the first
      `cut_at` bytes are sent before the connection is closed (short of Content-Length, or no 0-chunk).
    - `truncated_event` (stream only): two answer events, then a further event without its blank line
      (`variant` "line": a whole `data:` line; "mid": cut mid-line), then a clean end of the body.
    - `key_echo`: `status` (default 401) whose body leaks the Authorization key (`variant`, one of
      `KEY_ECHO_VARIANTS`, default "all"; "cut": the key straddles byte `cut_at`); with status 200 the
      answer (infer: its `detail`) leaks it.
    - `odd_sse_fields` (stream only): see `odd_events`.
    - `dotdot_stream_id` (infer only): the reply's `stream_id` is `stream_id` (see `DOTDOT_IDS`).
    - `slow_drip`: the reply (its answer followed by `size` "a"s) one byte every `interval_s` seconds.

    `step=None` means the kind's only step, else "stream". `size=-1` means the kind's default, `None` no
    end. `chunked` picks chunked transfer encoding over Content-Length (None: chunked for the stream step
    and for `endless_line`). Invalid combinations raise ValueError at construction.
    """

    kind: HostileKind
    step: Step | None = None
    size: int | None = -1
    gzip: bool = False
    chunked: bool | None = None
    complete: bool = True
    status: int = 401
    variant: str | None = None
    stream_id: str = ".."
    interval_s: float = 0.05
    cut_at: int = 300

    def __post_init__(self) -> None:
        if self.kind not in get_args(HostileKind):
            raise ValueError(f"HostileMode kind={self.kind!r}: use one of {', '.join(get_args(HostileKind))}")
        only = _ONLY_STEP.get(self.kind)
        step = self.step or only or "stream"
        if step not in get_args(Step) or (only is not None and step != only):
            allowed = only or " / ".join(get_args(Step))
            raise ValueError(f"HostileMode {self.kind}: step={self.step!r} is not supported; use {allowed}")
        object.__setattr__(self, "step", step)
        if self.size == -1:
            object.__setattr__(self, "size", _DEFAULT_SIZE.get(self.kind, 0))
        if self.size is None and self.kind not in _ENDLESS_OK:
            raise ValueError(
                f"HostileMode {self.kind}: size=None (no end) is not supported; give a byte count"
            )
        if self.size is not None and self.size < 0:
            raise ValueError(f"HostileMode {self.kind}: size={self.size}; give a byte count >= 0 (or -1)")
        if self.kind == "truncated_body" and not 0 < self.cut_at <= (self.size or 0):
            raise ValueError(f"HostileMode truncated_body: cut_at={self.cut_at}; give 0 < cut_at <= size")
        allowed_variants = _VARIANTS.get(self.kind, ())
        if self.variant is None:
            object.__setattr__(self, "variant", _DEFAULT_VARIANT.get(self.kind))
        if self.variant not in (*allowed_variants, None):
            choices = ", ".join(allowed_variants) or "none (leave it None)"
            raise ValueError(f"HostileMode {self.kind}: variant={self.variant!r}; use one of: {choices}")

    @property
    def on(self) -> Step:
        """The step that misbehaves."""
        assert self.step is not None  # set in __post_init__
        return self.step
