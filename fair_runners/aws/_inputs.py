"""Requests whose parts live in S3: `datasets_uri` (the datasets) and `request_uri` (the rest).

`request_uri` is how the state machine hands each Map batch its target and options without putting keys in
the execution history: `POST /runs` stores the request (without datasets) in the results bucket.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import InvalidRequest
from .._request import parse_request
from .._schemas import RunRequest
from ._clients import AwsClients, clients
from ._s3 import S3Location, parse_documents, read_bytes, read_json
from ._settings import AwsSettings

_REQUEST_MAX_BYTES = 1024 * 1024


def _from_file(exc: InvalidRequest, uri: str) -> InvalidRequest:
    details = [{**d, "loc": f"{d.get('loc')}", "file": uri} for d in exc.details]
    return type(exc)(f"in {uri}: {exc.message}", details)


def read_datasets(uri: str, settings: AwsSettings, aws: AwsClients | None = None) -> list[Any]:
    """The raw datasets of a `datasets_uri` file (JSON array or JSONL), size-checked."""
    location = S3Location.parse(uri, "datasets_uri")
    settings.check_bucket(location.bucket, "datasets_uri")
    data = read_bytes(aws or clients(), location, max_bytes=settings.max_input_bytes, loc="datasets_uri")
    return parse_documents(data, location, "datasets_uri")


def load_request(payload: Any, settings: AwsSettings, aws: AwsClients | None = None) -> RunRequest:
    """Validate a payload, reading `request_uri` and `datasets_uri` from S3 when present."""
    if isinstance(payload, Mapping) and "request_uri" in payload:
        payload = dict(payload)
        uri = payload.pop("request_uri")
        location = S3Location.parse(uri, "request_uri") if isinstance(uri, str) else None
        if location is None:
            raise InvalidRequest(
                "request_uri must be an s3:// URI", [{"loc": "request_uri", "msg": "not a string"}]
            )
        settings.check_bucket(location.bucket, "request_uri")
        stored = read_json(aws or clients(), location, max_bytes=_REQUEST_MAX_BYTES, loc="request_uri")
        if not isinstance(stored, dict):
            raise InvalidRequest(
                f"request_uri: {uri} must hold a JSON object",
                [{"loc": "request_uri", "msg": "not an object"}],
            )
        payload = {**stored, **payload}
    request = parse_request(payload)
    if not request.datasets_uri:
        return request
    assert isinstance(payload, Mapping)
    uri = request.datasets_uri
    items = read_datasets(uri, settings, aws)
    resolved = {k: v for k, v in payload.items() if k != "datasets_uri"}
    resolved["datasets"] = items
    try:
        return parse_request(resolved)
    except InvalidRequest as exc:
        raise _from_file(exc, uri) from None
