"""How many tokens a request will count against a provider's tokens-per-minute limit, before it is sent.

The estimate is `prompt + 4 per message + 3 + max_tokens` (OpenAI's accounting of chat messages: each message
costs a few tokens of framing, the reply is primed with 3, and providers reserve `max_tokens` for the answer
when the request is admitted). The prompt is counted with tiktoken when it is installed AND the encoding's
file is already in tiktoken's cache on disk; otherwise it is `ceil(characters / 4)`, a fair average for
English with OpenAI/Llama-style tokenizers.

tiktoken downloads an encoding on its first use; that must never happen during a run (no network to spare,
and none at all in some deployments). So the cache is looked up exactly as tiktoken does
(`tiktoken.load.read_file_cached`): the directory is `TIKTOKEN_CACHE_DIR`, else `DATA_GYM_CACHE_DIR`, else
`<tempdir>/data-gym-cache` (an empty value disables tiktoken's cache, and so the tiktoken count); the file is
named by the SHA-1 of the encoding's URL; and its SHA-256 must be the one tiktoken expects (else tiktoken
would fetch it again). Only then is `tiktoken.get_encoding` called.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
TIKTOKEN_MAX_CHARS = 200_000  # longer prompts are estimated from characters (tiktoken would take ~0.1 s+)

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/"
# encoding -> (URL tiktoken reads it from, SHA-256 tiktoken expects); from tiktoken_ext/openai_public.py.
ENCODING_FILES: dict[str, tuple[str, str]] = {
    "cl100k_base": (
        _BLOB + "cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
    "o200k_base": (
        _BLOB + "o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "p50k_base": (
        _BLOB + "p50k_base.tiktoken",
        "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    ),
    "r50k_base": (
        _BLOB + "r50k_base.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    ),
}
DEFAULT_ENCODING = "cl100k_base"  # for models tiktoken does not know (Llama, Mixtral, ...): close enough

_lock = threading.Lock()
_verified: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) -> the file's hash is right


def estimate_tokens(texts: Sequence[str], *, max_tokens: int | None, model: str | None = None) -> int:
    """Tokens a chat request with these message texts will be charged (see the module docstring).

    `max_tokens` None adds no answer allowance (the reported usage settles it afterwards).
    """
    chars = sum(len(text) for text in texts)
    prompt = None
    if chars <= TIKTOKEN_MAX_CHARS:
        prompt = tiktoken_count(texts, model)
    if prompt is None:
        prompt = math.ceil(chars / CHARS_PER_TOKEN)
    answer = max(0, max_tokens) if max_tokens else 0
    return prompt + TOKENS_PER_MESSAGE * len(texts) + TOKENS_PER_REPLY + answer


def tiktoken_count(texts: Sequence[str], model: str | None) -> int | None:
    """tiktoken's count of `texts`, or None when tiktoken is missing or its encoding is not cached."""
    encoding = cached_encoding(model)
    if encoding is None:
        return None
    return sum(len(encoding.encode_ordinary(text)) for text in texts)


def cached_encoding(model: str | None) -> Any:
    """tiktoken's encoding for `model` when it can be loaded without network, else None."""
    if importlib.util.find_spec("tiktoken") is None:
        return None
    import tiktoken

    name = DEFAULT_ENCODING
    if model:
        try:
            name = tiktoken.encoding_name_for_model(model)
        except KeyError:
            name = DEFAULT_ENCODING
    if name == "o200k_harmony":  # the o200k_base file with more special tokens
        name = "o200k_base"
    files = ENCODING_FILES.get(name)
    if files is None or not _is_cached(*files):
        return None
    try:
        return tiktoken.get_encoding(name)
    except Exception:  # a broken install or a plugin error: the character estimate will do
        return None


def cache_path(url: str) -> str | None:
    """Where tiktoken caches `url` (None when its cache is disabled)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        directory = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        directory = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        directory = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if directory == "":
        return None
    return os.path.join(directory, hashlib.sha1(url.encode()).hexdigest())


def _is_cached(url: str, sha256: str) -> bool:
    path = cache_path(url)
    if path is None:
        return False
    try:
        stat = os.stat(path)
    except OSError:
        return False
    key = (path, stat.st_size, stat.st_mtime_ns)
    with _lock:
        known = _verified.get(key)
    if known is None:
        try:
            with open(path, "rb") as file:
                known = hashlib.sha256(file.read()).hexdigest() == sha256
        except OSError:
            return False
        with _lock:
            _verified[key] = known
    return known
