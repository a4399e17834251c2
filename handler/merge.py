"""The merge step's entry point, as template.yaml names it: `handler.merge.lambda_handler`."""

from fair_runners.edge.merge import merge_handler as lambda_handler

__all__ = ["lambda_handler"]
