"""Serve an ASGI app on 127.0.0.1 from a background thread (uvicorn), for tests, the demo and benchmarks."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class LoopbackServer:
    """`with LoopbackServer(app) as server: server.url` -> "http://127.0.0.1:PORT".

    With `ssl_certfile` and `ssl_keyfile` (PEM paths) it serves HTTPS, and `url` starts with https://.
    """

    def __init__(
        self,
        app: Any,
        port: int = 0,
        host: str = "127.0.0.1",
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            ws="none",
            access_log=False,
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="loopback-server", daemon=True)
        self.host = host
        self.port = port
        self.scheme = "https" if ssl_certfile else "http"

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> LoopbackServer:
        """Start and wait until the socket is listening."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("loopback server did not start")
            time.sleep(0.01)
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
