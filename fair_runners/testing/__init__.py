"""Loopback servers that speak the backends' protocols, for the demo, the tests and the benchmark.

Needs the `local` extra (uvicorn, Starlette). Never imported by the Lambda handler.

- `AlquimiaAgent`: the Alquimia infer + SSE stream protocol, with latency and fault injection.
- `OpenAICompatServer`: an OpenAI-compatible `/v1/chat/completions` (also Groq's `/openai/v1/...`).
- `HostileBackend`: both protocols, misbehaving on purpose (`HostileMode`: gzip bombs, endless lines,
  truncated bodies, key echoes, odd SSE fields, ...), for hardening tests.
- `LoopbackServer`: serves any of them on 127.0.0.1 in a background thread (HTTPS too).
- `ForwardProxy`: a forward HTTP proxy (absolute-form and CONNECT, Basic auth, a log), for proxy tests.
- `BedrockEmulator`, `AnthropicEmulator`, `AzureOpenAIEmulator`: the Bedrock Converse REST API, the
  Anthropic Messages API and Azure OpenAI's deployment paths, for the real LangChain classes.
"""

from ._faults import Fault
from ._server import LoopbackServer
from .alquimia_agent import AlquimiaAgent
from .anthropic_api import AnthropicEmulator
from .azure_openai import AzureOpenAIEmulator
from .bedrock import BedrockEmulator
from .hostile import HostileBackend, HostileMode
from .openai_compat import OpenAICompatServer
from .proxy import ForwardProxy

__all__ = [
    "AlquimiaAgent",
    "AnthropicEmulator",
    "AzureOpenAIEmulator",
    "BedrockEmulator",
    "Fault",
    "ForwardProxy",
    "HostileBackend",
    "HostileMode",
    "LoopbackServer",
    "OpenAICompatServer",
]
