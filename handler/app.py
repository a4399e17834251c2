"""The runner function's entry point, as template.yaml names it: `handler.app.lambda_handler`.

Thin on purpose: the Lambda edge lives in the library (`fair_runners.edge`).
"""

from fair_runners.edge.lambda_app import lambda_handler

__all__ = ["lambda_handler"]
