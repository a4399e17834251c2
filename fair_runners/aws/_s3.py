"""S3 in and out: `s3://` locations, dataset files (JSON array or JSONL), JSON results, presigned links."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .._errors import InvalidRequest, PayloadTooLarge
from ._clients import AwsClients
from ._errors import AwsServiceUnavailable

_TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
}


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key (an object) or a key prefix (a folder ending in `/`, or empty)."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        """`s3://bucket/key`."""
        return f"s3://{self.bucket}/{self.key}"

    @classmethod
    def parse(cls, uri: str, loc: str, *, prefix: bool = False) -> S3Location:
        """Parse `s3://bucket/key` (or a prefix, which gains a trailing `/`); `InvalidRequest` otherwise."""
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise InvalidRequest(
                f"{loc} must be an s3:// URI", [{"loc": loc, "msg": "expected s3://bucket/key"}]
            )
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or (not key and not prefix):
            raise InvalidRequest(
                f"{loc} must name a bucket and a key", [{"loc": loc, "msg": "expected s3://bucket/key"}]
            )
        if prefix and key and not key.endswith("/"):
            key += "/"
        return cls(bucket, key)

    def child(self, name: str) -> S3Location:
        """A key under this prefix."""
        return S3Location(self.bucket, f"{self.key}{name}")


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def storage_error(exc: Exception, action: str, location: S3Location, loc: str) -> Exception:
    """Translate a botocore error into our families: the caller's fault, or worth a retry."""
    code = _code(exc)
    if code in ("NoSuchKey", "404", "NotFound"):
        return InvalidRequest(
            f"{loc}: {location.uri} does not exist", [{"loc": loc, "msg": "no such object"}]
        )
    if code in ("NoSuchBucket",):
        return InvalidRequest(
            f"{loc}: bucket {location.bucket} does not exist", [{"loc": loc, "msg": "no such bucket"}]
        )
    if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidObjectState"):
        return InvalidRequest(
            f"{loc}: cannot {action} {location.uri} ({code}): this deployment's role has no access there",
            [{"loc": loc, "msg": f"{code}: use the deployment's results bucket"}],
        )
    if code in _TRANSIENT_CODES or not code:
        return AwsServiceUnavailable(
            f"S3 {action} {location.uri} failed ({code or type(exc).__name__}); retry"
        )
    return AwsServiceUnavailable(f"S3 {action} {location.uri} failed ({code})")


def _botocore_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def read_bytes(aws: AwsClients, location: S3Location, *, max_bytes: int, loc: str) -> bytes:
    """An object's bytes, refusing anything over `max_bytes` before downloading it."""
    errors = _botocore_errors()
    try:
        response = aws.s3.get_object(Bucket=location.bucket, Key=location.key)
        size = int(response.get("ContentLength", 0))
        if size > max_bytes:
            response["Body"].close()
            raise PayloadTooLarge(
                f"{loc}: {location.uri} is {size} bytes, over this deployment's {max_bytes}",
                [
                    {
                        "loc": loc,
                        "msg": f"at most {max_bytes} bytes (env FAIR_RUNNERS_MAX_INPUT_BYTES): split it",
                    }
                ],
            )
        return response["Body"].read()
    except errors as exc:
        raise storage_error(exc, "read", location, loc) from None


def parse_documents(data: bytes, location: S3Location, loc: str) -> list[Any]:
    """A JSON array, or JSONL (one JSON value per line; blank lines ignored)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest(
            f"{loc}: {location.uri} is not UTF-8", [{"loc": loc, "msg": "not UTF-8"}]
        ) from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"{loc}: {location.uri} is not valid JSON: {exc.msg} at line {exc.lineno}",
                [{"loc": loc, "msg": f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"}],
            ) from None
        if not isinstance(value, list):  # pragma: no cover - '[' always parses to a list
            raise InvalidRequest(f"{loc}: expected a JSON array", [{"loc": loc, "msg": "not an array"}])
        return value
    items: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"{loc}: {location.uri} line {number} is not valid JSON: {exc.msg}",
                [
                    {
                        "loc": loc,
                        "msg": f"JSONL line {number}: {exc.msg} (a JSON array or one dataset per line)",
                    }
                ],
            ) from None
    return items


def read_json(aws: AwsClients, location: S3Location, *, max_bytes: int, loc: str) -> Any:
    """One JSON document from S3."""
    data = read_bytes(aws, location, max_bytes=max_bytes, loc=loc)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"{loc}: {location.uri} is not valid JSON", [{"loc": loc, "msg": str(exc)}]
        ) from None


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the form every size limit here is measured on."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_json(aws: AwsClients, location: S3Location, value: Any, *, loc: str = "output_uri") -> int:
    """Write a JSON document (server-side encrypted); return its size in bytes."""
    body = value if isinstance(value, bytes) else dumps(value)
    errors = _botocore_errors()
    try:
        aws.s3.put_object(
            Bucket=location.bucket,
            Key=location.key,
            Body=body,
            ContentType="application/json",
            ServerSideEncryption="AES256",
        )
    except errors as exc:
        raise storage_error(exc, "write", location, loc) from None
    return len(body)


def presign(aws: AwsClients, location: S3Location, expires_s: int) -> str:
    """A time-limited GET link to an object."""
    return aws.s3.generate_presigned_url(
        "get_object", Params={"Bucket": location.bucket, "Key": location.key}, ExpiresIn=expires_s
    )
