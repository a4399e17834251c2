"""The `fair-runners` command line: `run`, `invoke`, `serve`, `demo` (needs the `local` extra).

`python -m fair_runners.cli --help`, or the `fair-runners` console script once the package is installed.
"""

from __future__ import annotations

import sys


def main() -> None:
    """The console script's entry point."""
    try:
        from ._app import app
    except ImportError as exc:  # typer, rich, uvicorn or starlette missing
        sys.stderr.write(
            f"fair-runners: the command line needs the `local` extra ({exc.name} is missing): "
            "pip install 'fair-runners[local]'\n"
        )
        raise SystemExit(2) from None
    app()


__all__ = ["main"]
