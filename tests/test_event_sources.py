"""Events in the shapes other projects record them (the API Gateway REST v1, HTTP API v2 and Function URL
samples in Powertools' own test suite: IAM authorizer contexts, multi-value headers, cookies, stage
variables, `version: "1.0"` on REST events, base64 bodies, trailing slashes) work with `POST /run`, and are
read through Powertools' event source data classes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from fair_runners.edge._sources import detect, http_payload

from .conftest import alquimia_request, make_datasets
from .security_support import invoke


def rest_v1(body: str, *, path: str = "/run", method: str = "POST", encoded: bool = False) -> dict[str, Any]:
    """A REST API (v1) proxy event as API Gateway sends it (the shape of Powertools' apiGatewayProxyEvent)."""
    return {
        "version": "1.0",
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {
            "Content-Type": "application/json",
            "Header2": "value2",
            "Origin": "https://aws.amazon.com",
        },
        "multiValueHeaders": {"Content-Type": ["application/json"], "Header2": ["value1", "value2"]},
        "queryStringParameters": {"parameter1": "value1"},
        "multiValueQueryStringParameters": {"parameter1": ["value1", "value2"]},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "id",
            "authorizer": {"claims": None, "scopes": None},
            "domainName": "id.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "id",
            "extendedRequestId": "request-id",
            "httpMethod": method,
            "identity": {"sourceIp": "192.168.0.1/32", "userAgent": "user-agent", "accessKey": None},
            "path": path,
            "protocol": "HTTP/1.1",
            "requestId": "id=",
            "requestTime": "04/Mar/2020:19:15:17 +0000",
            "requestTimeEpoch": 1583349317135,
            "resourceId": None,
            "resourcePath": path,
            "stage": "$default",
        },
        "pathParameters": None,
        "stageVariables": None,
        "body": base64.b64encode(body.encode()).decode() if encoded else body,
        "isBase64Encoded": encoded,
    }


def http_v2(
    body: str,
    *,
    path: str = "/run",
    method: str = "POST",
    domain: str = "id.execute-api.us-east-1.amazonaws.com",
) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event with an IAM authorizer (Powertools' apiGatewayProxyV2IamEvent)."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "parameter1=value1&parameter1=value2",
        "cookies": ["cookie1", "cookie2"],
        "headers": {"content-type": "application/json", "header2": "value1,value2"},
        "queryStringParameters": {"parameter1": "value1,value2"},
        "pathParameters": {"proxy": "run"},
        "requestContext": {
            "routeKey": "$default",
            "accountId": "123456789012",
            "stage": "$default",
            "requestId": "id",
            "authorizer": {
                "iam": {
                    "accessKey": "ARIA2ZJZYVUEREEIHAKY",
                    "accountId": "1234567890",
                    "callerId": "AROA7ZJZYVRE7C3DUXHH6:CognitoIdentityCredentials",
                    "cognitoIdentity": None,
                    "principalOrgId": "AwsOrgId",
                    "userArn": "arn:aws:iam::1234567890:user/Admin",
                    "userId": "AROA2ZJZYVRE7Y3TUXHH6",
                }
            },
            "apiId": "api-id",
            "domainName": domain,
            "domainPrefix": domain.split(".", 1)[0],
            "time": "12/Mar/2020:19:03:58+0000",
            "timeEpoch": 1583348638390,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.168.0.1/32",
                "userAgent": "agent",
            },
        },
        "stageVariables": {"stageVariable1": "value1"},
        "body": body,
        "isBase64Encoded": False,
    }


def function_url(body: str, *, path: str = "/", method: str = "POST") -> dict[str, Any]:
    """A Function URL event (Powertools' lambdaFunctionUrlIAMEvent): payload 2.0 on a lambda-url domain."""
    event = http_v2(body, path=path, method=method, domain="abcdefgh.lambda-url.us-west-2.on.aws")
    event["requestContext"]["authentication"] = None
    event.pop("pathParameters")
    return event


@pytest.mark.parametrize(
    "shape",
    [
        "rest_v1",
        "rest_v1_base64",
        "rest_v1_trailing_slash",
        "http_v2",
        "http_v2_trailing_slash",
        "function_url",
        "function_url_run",
    ],
)
def test_foreign_event_shapes_run_a_request(agent: Any, shape: str) -> None:
    body = json.dumps(alquimia_request(agent, make_datasets(sessions=2, turns=2)))
    event = {
        "rest_v1": lambda: rest_v1(body),
        "rest_v1_base64": lambda: rest_v1(body, encoded=True),
        "rest_v1_trailing_slash": lambda: rest_v1(body, path="/run/"),
        "http_v2": lambda: http_v2(body),
        "http_v2_trailing_slash": lambda: http_v2(body, path="/run/"),
        "function_url": lambda: function_url(body),
        "function_url_run": lambda: function_url(body, path="/run"),
    }[shape]()
    outcome = invoke(event)
    assert outcome.status == 200, outcome.body
    assert outcome.body["totals"]["successes"] == 4
    assert len(agent.infer_requests()) == 4


def test_the_data_classes_read_the_events() -> None:
    from aws_lambda_powertools.utilities.data_classes import (
        APIGatewayProxyEvent,
        APIGatewayProxyEventV2,
        LambdaFunctionUrlEvent,
    )

    for event, kind, cls in (
        (rest_v1("{}"), "rest_v1", APIGatewayProxyEvent),
        (http_v2("{}"), "http_v2", APIGatewayProxyEventV2),
        (function_url("{}"), "function_url", LambdaFunctionUrlEvent),
    ):
        source = detect(event)
        assert source.kind == kind and isinstance(source.http, cls)
        assert source.method == "POST" and source.headers is not None
        assert source.headers["content-type"] == "application/json"  # any case in, lower case out
        assert http_payload(source) == {}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("build", [rest_v1, http_v2, function_url])
def test_other_methods_are_405(build: Any, method: str) -> None:
    outcome = invoke(build("{}", method=method, path="/run"))
    assert outcome.status == 405 and "use POST" in outcome.body["error"]


@pytest.mark.parametrize("build", [rest_v1, http_v2])
def test_unknown_paths_are_404(build: Any) -> None:
    outcome = invoke(build("{}", path="/my/path"))
    assert outcome.status == 404
