"""Pydantic models of the external contract (see the README's "Contract" section).

`Dataset` and `Batch` follow the Fair-Forge schema and keep unknown fields (`extra="allow"`), so whatever a
caller sends comes back untouched. Request models forbid unknown keys so typos are reported, not ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

TurnStatus = Literal["ok", "error", "skipped", "kept"]

ERROR_PREFIX = "[ERROR] "  # how a failed turn's `assistant` starts
# s3://bucket/key (an object) and s3://bucket/ or s3://bucket/prefix/ (a place to write).
_S3_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_S3_OBJECT_URI = rf"^s3://{_S3_BUCKET}/[^\s]+$"
_S3_PREFIX_URI = rf"^s3://{_S3_BUCKET}(/[^\s]*)?$"


class Batch(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(extra="allow")

    qa_id: str
    query: str
    assistant: str = ""
    ground_truth_assistant: str = ""
    observation: str | None = None
    agentic: dict[str, Any] | None = None
    ground_truth_agentic: dict[str, Any] | None = None
    logprobs: dict[str, Any] | None = None
    weight: float | None = Field(default=None, ge=0)

    def has_answer(self) -> bool:
        """True when `assistant` holds a real answer (not empty, not an error marker)."""
        return bool(self.assistant.strip()) and not self.assistant.startswith(ERROR_PREFIX)


class Dataset(BaseModel):
    """One conversation: a session and its ordered turns."""

    model_config = ConfigDict(extra="allow")

    session_id: str = Field(min_length=1)
    assistant_id: str
    language: str | None = "english"
    context: str = ""
    conversation: list[Batch] = Field(default_factory=list)


class AlquimiaConfig(BaseModel):
    """Target of the Alquimia runner. `base_url` and `api_key` fall back to env.

    Unknown keys are ignored (with a warning in the response), as Fair-Forge ignores them.
    """

    model_config = ConfigDict(extra="allow")

    base_url: str | None = None
    api_key: SecretStr | None = None
    agent_id: str | None = None
    channel_id: str | None = "chat"
    api_version: str | None = ""


class ConnectorConfig(BaseModel):
    """Target of the LLM runner: an allowlisted LangChain chat model and its constructor params.

    The class is named by `class_path` (`langchain_openai.ChatOpenAI`) or by `model`, the spelling of
    LangChain's `init_chat_model` (`"openai:gpt-4o-mini"`, `"bedrock_converse:anthropic.claude-..."`):
    exactly one of the two.
    """

    model_config = ConfigDict(extra="forbid")

    class_path: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=3, max_length=2100)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_way_to_name_the_class(self) -> ConnectorConfig:
        if (self.class_path is None) == (self.model is None):
            raise ValueError(
                "give exactly one of `class_path` (a LangChain class path) and `model` "
                "('<provider>:<model>', as LangChain's init_chat_model spells it)"
            )
        if self.model is not None and "model" in self.params:
            raise ValueError("`params.model` cannot stand beside `connector.model`: the model is named once")
        return self


class RunOptions(BaseModel):
    """Execution options. `None` means "use the deployment's default" (env, then built-in)."""

    model_config = ConfigDict(extra="forbid")

    max_concurrency: int | None = Field(default=None, ge=1, le=1000)
    turn_timeout_s: float | None = Field(default=None, gt=0, le=900)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    history: bool = True
    skip_answered: bool = False
    # Rate budgets: for a key the caller brings they define its bucket; for the deployment's keys they can
    # only lower this run's draw below the deployer's (env FAIR_RUNNERS_RATE_LIMITS).
    requests_per_minute: float | None = Field(default=None, gt=0, le=10_000_000)
    tokens_per_minute: float | None = Field(default=None, gt=0, le=10_000_000_000)
    # The response cache: off (default), use (read, then write misses), refresh (call and overwrite),
    # only (replay: never call the backend; a miss is a `not_cached` turn error).
    cache: Literal["off", "use", "refresh", "only"] = "off"
    cache_ttl_s: float | None = Field(default=None, gt=0, le=10 * 365 * 86400)


class RunRequest(BaseModel):
    """A whole request: datasets plus one target (`connector` wins over `config`).

    Unknown top-level keys are ignored with a warning (Fair-Forge payloads may carry extra keys).
    """

    model_config = ConfigDict(extra="allow")

    # Declared before `datasets` so the `datasets` validator can see it (exactly one of the two is required).
    datasets_uri: str | None = Field(default=None, pattern=_S3_OBJECT_URI)
    datasets: list[Dataset] = Field(default_factory=list, validate_default=True)
    output_uri: str | None = Field(default=None, pattern=_S3_PREFIX_URI)
    config: AlquimiaConfig | None = None
    connector: ConnectorConfig | None = None
    options: RunOptions = Field(default_factory=RunOptions)
    run_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    # Set by the state machine on Map batches: how many batch invocations run at once (their even share of
    # a rate budget when the shared budget table cannot be reached).
    fan_out: int | None = Field(default=None, ge=1, le=10_000)

    @field_validator("datasets")
    @classmethod
    def _unique_sessions(cls, datasets: list[Dataset], info: ValidationInfo) -> list[Dataset]:
        uri = info.data.get("datasets_uri")
        if uri and datasets:
            raise ValueError(
                "give either `datasets` or `datasets_uri`, not both "
                "(datasets_uri names an S3 file holding the datasets)"
            )
        if not uri and not datasets:
            raise ValueError(
                "required: a non-empty list of datasets, or `datasets_uri` "
                "(s3://bucket/key of a JSON array or JSONL file of datasets)"
            )
        seen: set[str] = set()
        for index, dataset in enumerate(datasets):
            if dataset.session_id in seen:
                raise ValueError(
                    f"duplicate session_id {dataset.session_id!r} at datasets[{index}]: "
                    "session ids must be unique within a request"
                )
            seen.add(dataset.session_id)
        return datasets

    @model_validator(mode="before")
    @classmethod
    def _empty_connector_is_absent(cls, data: Any) -> Any:
        # Fair-Forge selects the LLM runner only for a truthy `connector`: `{}`, `null`, `""`, `[]`, `0` and
        # `false` mean "no connector" here too.
        if isinstance(data, dict) and "connector" in data and not data["connector"]:
            data = {k: v for k, v in data.items() if k != "connector"}
        return data

    def unknown_keys(self) -> list[str]:
        """Top-level and `config` keys this service does not use (reported as warnings)."""
        keys = sorted(self.model_extra or {})
        if self.config is not None:
            keys += [f"config.{k}" for k in sorted(self.config.model_extra or {})]
        return keys

    @property
    def mode(self) -> Literal["alquimia", "llm"]:
        """Which runner this request selects."""
        return "llm" if self.connector is not None else "alquimia"


class TurnRecord(BaseModel):
    """What happened to one turn."""

    qa_id: str
    status: TurnStatus
    latency_ms: float | None = None
    attempts: int = 0
    retry_wait_ms: float = 0.0
    queue_wait_ms: float = 0.0  # waiting for the rate budget (latency_ms is the request's own)
    error_type: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached: bool = False  # replayed from the response cache: no backend call


class SessionSummary(BaseModel):
    """Timing summary of one session (the Fair-Forge seed fields plus percentiles, tokens, turns)."""

    session_id: str
    total_batches: int
    successes: int
    failures: int
    skipped: int
    total_execution_time_ms: float
    avg_batch_time_ms: float
    p50_batch_time_ms: float
    p95_batch_time_ms: float
    max_batch_time_ms: float
    retries: int
    input_tokens: int
    output_tokens: int
    rate_limited_responses: int = 0  # attempts answered 429 / throttled
    cache_hits: int = 0
    turns: list[TurnRecord]


class RunTotals(BaseModel):
    """Run-level totals."""

    sessions: int
    turns: int
    successes: int
    failures: int
    skipped: int
    retries: int
    input_tokens: int
    output_tokens: int
    wall_time_ms: float
    rate_limited_responses: int = 0
    cache_hits: int = 0


class RunResult(BaseModel):
    """The response object."""

    success: bool = True
    complete: bool = True
    run_id: str
    mode: Literal["alquimia", "llm"]
    datasets: list[Dataset]
    summaries: list[SessionSummary]
    total_datasets: int
    totals: RunTotals
    warnings: list[str] = Field(default_factory=list)

    def __repr__(self) -> str:
        # Short on purpose: the default repr walks every turn, and CPython 3.11's `asyncio.run` builds the
        # main task's repr (its result included) twice on the way out.
        return (
            f"RunResult(run_id={self.run_id!r}, mode={self.mode!r}, complete={self.complete}, "
            f"sessions={self.total_datasets}, turns={self.totals.turns})"
        )
