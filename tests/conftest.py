"""Shared fixtures: real loopback servers (Alquimia agent, OpenAI-compatible endpoint), events, contexts."""

from __future__ import annotations

import datetime
import importlib
import ipaddress
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fair_runners.cli._invoke import LambdaContext
from fair_runners.testing import AlquimiaAgent, LoopbackServer, OpenAICompatServer

ROOT = Path(__file__).resolve().parent.parent
EVENTS_DIR = ROOT / "events"
ALQUIMIA_KEY = "demo-alq-key-7Hq2v9XrL4mN"
LLM_KEY = "demo-llm-key-Vb83Nq1ZcT6y"

os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "FairRunnersTest")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "fair-runners-test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(autouse=True)
def _no_real_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a real provider or pick up a developer's keys."""
    for name in (
        "OPENAI_API_KEY",
        "GROQ_API_KEY",
        "LLM_API_KEY",
        "ALQUIMIA_API_KEY",
        "ALQUIMIA_BASE_URL",
        "OPENAI_BASE_URL",
        "GROQ_BASE_URL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAIR_RUNNERS_BACKOFF_BASE_S", "0.05")
    monkeypatch.setenv("FAIR_RUNNERS_BACKOFF_MAX_S", "0.5")
    for name in ("FAIR_RUNNERS_RATE_LIMITS", "FAIR_RUNNERS_RATE_TABLE", "FAIR_RUNNERS_CACHE_TABLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's response cache (the local SQLite store) lives in its own folder, never ~/.cache."""
    monkeypatch.setenv("FAIR_RUNNERS_CACHE_DIR", str(tmp_path / "fair-runners-cache"))


# Names the fake resolver knows; any other name "does not resolve". No test ever asks real DNS.
FAKE_DNS: dict[str, list[str]] = {
    "public.test": ["93.184.215.14"],
    "public6.test": ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "loopback.test": ["127.0.0.1"],
    "loopback6.test": ["::1"],
    "metadata.test": ["169.254.169.254"],
    "metadata6.test": ["fd00:ec2::254"],
    "private.test": ["10.0.0.7"],
    "cgnat.test": ["100.64.1.2"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    "mixed.test": ["93.184.215.14", "10.1.2.3"],
    "zero.test": ["0.0.0.0"],
    "garbage.test": ["not-an-ip"],
}


@pytest.fixture(autouse=True)
def _no_real_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Replace the network guard's resolver: names resolve from `FAKE_DNS` (a copy tests may edit)."""
    import socket as _socket

    from fair_runners import _netguard

    table = {name: list(addresses) for name, addresses in FAKE_DNS.items()}

    def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return list(table[host])
        raise _socket.gaierror(_socket.EAI_NONAME, "Name or service not known (fake resolver)")

    monkeypatch.setattr(_netguard, "_resolve", resolve)
    return table


@pytest.fixture(scope="session")
def _agent_server() -> Iterator[tuple[AlquimiaAgent, LoopbackServer]]:
    agent = AlquimiaAgent(api_key=ALQUIMIA_KEY)
    with LoopbackServer(agent.app) as server:
        yield agent, server


@pytest.fixture
def agent(
    _agent_server: tuple[AlquimiaAgent, LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> AlquimiaAgent:
    """The loopback Alquimia agent, reset for each test (no faults, no latency, empty logs)."""
    agent, server = _agent_server
    agent.faults.clear()
    agent.requests.clear()
    agent.sessions.clear()
    agent.latency_s = 0.0
    agent.api_key = ALQUIMIA_KEY
    agent.url = server.url  # type: ignore[attr-defined]
    _allow(monkeypatch, server)
    return agent


@pytest.fixture(scope="session")
def _llm_server() -> Iterator[tuple[OpenAICompatServer, LoopbackServer]]:
    llm = OpenAICompatServer(api_key=LLM_KEY)
    with LoopbackServer(llm.app) as server:
        yield llm, server


@pytest.fixture
def llm(
    _llm_server: tuple[OpenAICompatServer, LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> OpenAICompatServer:
    """The loopback OpenAI-compatible endpoint, reset for each test."""
    llm, server = _llm_server
    llm.faults.clear()
    llm.requests.clear()
    llm.latency_s = 0.0
    llm.api_key = LLM_KEY
    llm.url = server.url  # type: ignore[attr-defined]
    _allow(monkeypatch, server)
    return llm


def _allow(monkeypatch: pytest.MonkeyPatch, server: LoopbackServer) -> None:
    current = os.environ.get("FAIR_RUNNERS_ALLOWED_HOSTS", "")
    hosts = {h for h in current.split(",") if h} | {f"{server.host}:{server.port}"}
    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", ",".join(sorted(hosts)))


def make_datasets(sessions: int = 2, turns: int = 3, prefix: str = "s", **extra: Any) -> list[dict[str, Any]]:
    """Fair-Forge datasets with distinct session ids and queries."""
    return [
        {
            "session_id": f"{prefix}{i}",
            "assistant_id": "bot",
            "conversation": [
                {"qa_id": f"{prefix}{i}-q{j}", "query": f"question {j} of {prefix}{i}"} for j in range(turns)
            ],
            **extra,
        }
        for i in range(sessions)
    ]


def alquimia_request(agent: AlquimiaAgent, datasets: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """A request for the loopback agent."""
    return {
        "datasets": datasets,
        "config": {"base_url": agent.url, "api_key": ALQUIMIA_KEY, "agent_id": "bot"},  # type: ignore[attr-defined]
        "options": options,
    }


def llm_request(
    llm: OpenAICompatServer, datasets: list[dict[str, Any]], provider: str = "openai", **options: Any
) -> dict[str, Any]:
    """A request for the loopback OpenAI-compatible endpoint through ChatOpenAI or ChatGroq."""
    if provider == "openai":
        connector = {
            "class_path": "langchain_openai.chat_models.ChatOpenAI",
            "params": {"model": "test-model", "api_key": LLM_KEY, "base_url": f"{llm.url}/v1"},  # type: ignore[attr-defined]
        }
    else:
        connector = {
            "class_path": "langchain_groq.chat_models.ChatGroq",
            "params": {"model": "test-model", "api_key": LLM_KEY, "base_url": llm.url},  # type: ignore[attr-defined]
        }
    return {"datasets": datasets, "connector": connector, "options": options}


class FakeLambdaContext(LambdaContext):
    """The context `fair-runners invoke` gives the handler (a real countdown), with the tests' defaults."""

    def __init__(self, timeout_s: float = 60.0, request_id: str = "test-request-id") -> None:
        super().__init__(timeout_s=timeout_s, function_name="fair-runners-test", aws_request_id=request_id)


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    """A context with 60 s left."""
    return FakeLambdaContext()


def load_event(name: str) -> dict[str, Any]:
    """An event from `events/`."""
    return json.loads((EVENTS_DIR / name).read_text())  # type: ignore[no-any-return]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every `importlib.import_module` call made while the test runs."""
    seen: list[str] = []
    real = importlib.import_module

    def recording(name: str, package: str | None = None) -> Any:
        seen.append(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", recording)
    return seen


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("loopback-tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path
