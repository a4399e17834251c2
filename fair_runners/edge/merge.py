"""The merge step's Lambda: the Map's ResultWriter output -> one result file in input order, with totals.

Invoked by the state machine's `MergeResults` task with the state after the Map (`$.map` holds
`ResultWriterDetails`). Errors keep their stable class names for the state machine's `Retry`/`Catch`.
Imports no LangChain and no runner: the merge function's package needs none of them.
"""

from __future__ import annotations

import uuid
from typing import Any

from aws_lambda_powertools import Logger

from .. import aws
from .._errors import FairRunnersError, InternalError, InvalidRequest

logger = Logger(service="fair-runners")


def merge_handler(event: Any, context: Any) -> dict[str, Any]:
    """Merge one run's batch results; return the small execution output (`result_uri`, totals)."""
    request_id = str(getattr(context, "aws_request_id", "") or uuid.uuid4())
    logger.clear_state()
    logger.set_correlation_id(request_id)
    if not isinstance(event, dict):
        raise InvalidRequest("the merge step's event must be the state machine's state (an object)")
    try:
        output = aws.merge_run(event, aws.AwsSettings.from_env())
    except FairRunnersError:
        logger.exception("merge failed")
        raise
    except Exception:
        logger.exception("internal error in the merge step")
        raise InternalError(f"internal error (request id {request_id})") from None
    logger.info("run merged", extra={k: v for k, v in output.items() if k != "totals"} | output["totals"])
    return output
