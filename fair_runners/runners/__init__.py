"""One module per backend, each implementing the small `Runner` interface of `_base`.

`alquimia` is imported on demand; `llm` (LangChain) only when a request selects a connector.
"""

from ._base import Runner, TurnInput, TurnOutput

__all__ = ["Runner", "TurnInput", "TurnOutput"]
