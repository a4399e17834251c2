"""fair-runners: run Fair-Forge test conversations against Alquimia agents and LangChain chat models.

The library needs no AWS: `run_sync(request_dict)` runs a request and returns a `RunResult`.
"""

from ._api import execute, iter_sessions, run, run_sync
from ._errors import (
    AnswerTooLarge,
    AuthenticationFailed,
    BackendError,
    ConfigurationError,
    EmptyAnswer,
    FairRunnersError,
    InternalError,
    InvalidRequest,
    PayloadTooLarge,
    PermanentBackendError,
    ProtocolError,
    RateLimited,
    TransientBackendError,
    TurnTimeout,
)
from ._progress import (
    ProgressCallback,
    ProgressEvent,
    RunFinished,
    RunProgress,
    RunStarted,
    SessionFinished,
    TurnFinished,
    TurnRetrying,
)
from ._request import PreparedRun, parse_request, prepare
from ._rundir import RunDirectory, resume_request
from ._schemas import (
    AlquimiaConfig,
    Batch,
    ConnectorConfig,
    Dataset,
    RunOptions,
    RunRequest,
    RunResult,
    RunTotals,
    SessionSummary,
    TurnRecord,
)
from ._settings import Settings
from .engine import Deadline

__version__ = "0.1.0"

__all__ = [
    "AlquimiaConfig",
    "AnswerTooLarge",
    "AuthenticationFailed",
    "BackendError",
    "Batch",
    "ConfigurationError",
    "ConnectorConfig",
    "Dataset",
    "Deadline",
    "EmptyAnswer",
    "FairRunnersError",
    "InternalError",
    "InvalidRequest",
    "PayloadTooLarge",
    "PermanentBackendError",
    "PreparedRun",
    "ProgressCallback",
    "ProgressEvent",
    "ProtocolError",
    "RateLimited",
    "RunDirectory",
    "RunFinished",
    "RunOptions",
    "RunProgress",
    "RunRequest",
    "RunResult",
    "RunStarted",
    "RunTotals",
    "SessionFinished",
    "SessionSummary",
    "Settings",
    "TransientBackendError",
    "TurnFinished",
    "TurnRecord",
    "TurnRetrying",
    "TurnTimeout",
    "execute",
    "iter_sessions",
    "parse_request",
    "prepare",
    "resume_request",
    "run",
    "run_sync",
]
