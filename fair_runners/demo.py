"""Kept for `python -m fair_runners.demo`: the demo is now the CLI's `fair-runners demo` command."""

from __future__ import annotations

import sys

from .cli._demo import AGENT_PLACEHOLDER, LLM_PLACEHOLDER, retarget
from .cli._invoke import LambdaContext as FakeContext

__all__ = ["AGENT_PLACEHOLDER", "LLM_PLACEHOLDER", "FakeContext", "main", "retarget"]


def main(argv: list[str] | None = None) -> int:
    """Run `fair-runners demo` with `argv`; its exit code."""
    from .cli._app import app

    try:
        app(["demo", *(sys.argv[1:] if argv is None else argv)], prog_name="fair-runners")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
