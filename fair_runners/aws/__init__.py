"""The AWS layer of fair-runners: S3 in and out, spill, secrets, idempotency, Step Functions runs, merge.

Importing this package imports no boto3: clients are created on first use (`clients()`), and can be
injected (`use_clients(AwsClients(s3=...))`). `import fair_runners` never imports this package.
"""

from ._clients import AwsClients, clients, use_clients
from ._errors import AwsServiceUnavailable, IdempotencyConflict, RunNotFound
from ._executions import check_run_id, describe_execution, execution_arn, start_execution
from ._idempotency import body_digest, idempotency_key, once
from ._inputs import load_request, read_datasets
from ._merge import merge_records, merge_run
from ._outputs import Channel, check_fits, destination, encoded_size, estimate_result_bytes, fit
from ._s3 import S3Location, dumps, parse_documents, presign, read_json, write_json
from ._secrets import read_secret, reset_cache, resolve_credentials
from ._settings import AwsSettings

__all__ = [
    "AwsClients",
    "AwsServiceUnavailable",
    "AwsSettings",
    "Channel",
    "IdempotencyConflict",
    "RunNotFound",
    "S3Location",
    "body_digest",
    "check_fits",
    "check_run_id",
    "clients",
    "describe_execution",
    "destination",
    "dumps",
    "encoded_size",
    "estimate_result_bytes",
    "execution_arn",
    "fit",
    "idempotency_key",
    "load_request",
    "merge_records",
    "merge_run",
    "once",
    "parse_documents",
    "presign",
    "read_datasets",
    "read_json",
    "read_secret",
    "reset_cache",
    "resolve_credentials",
    "start_execution",
    "use_clients",
    "write_json",
]
