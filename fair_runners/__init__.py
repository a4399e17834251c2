"""fair-runners: run Fair-Forge test conversations against Alquimia agents and LangChain chat models.

The library needs no AWS: `run_sync(request_dict)` runs a request and returns a `RunResult`.
"""

from ._errors import (
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
from ._events import Event, RunFinished, RunStarted, SessionFinished, TurnFinished, TurnRetrying
from ._progress import RunProgress
from ._run import PreparedRun, execute, iter_sessions, parse_request, prepare, run, run_sync
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
from ._timing import Deadline

__version__ = "0.1.0"

__all__ = [
    "AlquimiaConfig",
    "AuthenticationFailed",
    "BackendError",
    "Batch",
    "ConfigurationError",
    "ConnectorConfig",
    "Dataset",
    "Deadline",
    "EmptyAnswer",
    "Event",
    "FairRunnersError",
    "InternalError",
    "InvalidRequest",
    "PayloadTooLarge",
    "PermanentBackendError",
    "PreparedRun",
    "ProtocolError",
    "RateLimited",
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
    "run",
    "run_sync",
]
