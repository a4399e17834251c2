"""The local response cache: one SQLite file (stdlib `sqlite3`, WAL), shared safely by several processes.

The file is `<cache dir>/responses.sqlite3`, the cache dir being env `FAIR_RUNNERS_CACHE_DIR`, else
`$XDG_CACHE_HOME/fair-runners`, else `~/.cache/fair-runners` (created 0700; the file is 0600). One table::

    answers(key TEXT PRIMARY KEY, content TEXT, input_tokens INTEGER, output_tokens INTEGER,
            created_at REAL, expires_at REAL NULL)

WAL lets readers and one writer work at once across processes; a busy timeout (`BUSY_TIMEOUT_S`) makes a
writer wait for another instead of failing with "database is locked" (and the switch to WAL, for which
SQLite calls no busy handler, is retried for as long). Every statement runs alone in
autocommit, so no transaction ever upgrades from reading to writing (the one case a busy timeout cannot
help). Expired and malformed rows are misses, deleted when met; all expired rows are deleted when the file
is opened and every `PURGE_EVERY` puts. A failing database never fails a run: the call is a miss or a
skipped write, counted in `errors` and logged. The connection is made in the first call, in a worker
thread, and remade in a forked child (a SQLite connection must not cross `fork`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ._store import BlockingStore, CachedAnswer, answer_from, check_answer, expires_at, stamped

if TYPE_CHECKING:
    import sqlite3

logger = logging.getLogger("fair_runners.cache")

FILE_NAME = "responses.sqlite3"
BUSY_TIMEOUT_S = 10.0
PURGE_EVERY = 1000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY NOT NULL,
    content TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_expires_at ON answers (expires_at) WHERE expires_at IS NOT NULL;
"""


def cache_dir() -> Path:
    """The user's cache directory for fair-runners (env, XDG, home; see the module docstring)."""
    explicit = os.environ.get("FAIR_RUNNERS_CACHE_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is to be ignored
        return Path(xdg) / "fair-runners"
    return Path.home() / ".cache" / "fair-runners"


class SqliteStore(BlockingStore):
    """A `CacheStore` in a local SQLite file (`path`, default `cache_dir() / FILE_NAME`)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / FILE_NAME
        self.errors = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._puts = 0
        self._closed = False

    def get_sync(self, key: str) -> CachedAnswer | None:
        """`get`, blocking."""
        with self._lock:
            conn = self._connection()
            try:
                conn = conn or self._open()
                row = conn.execute(
                    "SELECT content, input_tokens, output_tokens, created_at, expires_at "
                    "FROM answers WHERE key = ?",
                    (key,),
                ).fetchone()
                if row is None:
                    return None
                content, input_tokens, output_tokens, created_at, expiry = row
                now = time.time()
                try:
                    if expiry is not None and not (isinstance(expiry, float | int) and expiry > now):
                        raise ValueError("expired")
                    return answer_from(
                        {
                            "content": content,
                            "input_tokens": input_tokens,
                            "output_tokens": output_tokens,
                            "created_at": created_at,
                        }
                    )
                except ValueError:  # expired, or a row this store did not write: a miss, and gone
                    conn.execute("DELETE FROM answers WHERE key = ? AND expires_at IS ?", (key, expiry))
                    return None
            except self._errors() as exc:
                self._failed("get", exc)
                return None

    def put_sync(self, key: str, answer: CachedAnswer, ttl_s: float | None) -> bool:
        """`put`, blocking."""
        answer = stamped(check_answer(answer))
        expiry = expires_at(ttl_s, time.time())
        with self._lock:
            conn = self._connection()
            try:
                conn = conn or self._open()
                conn.execute(
                    "INSERT OR REPLACE INTO answers "
                    "(key, content, input_tokens, output_tokens, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        answer.content,
                        answer.input_tokens,
                        answer.output_tokens,
                        answer.created_at,
                        expiry,
                    ),
                )
                self._puts += 1
                if self._puts % PURGE_EVERY == 0:
                    self._purge(conn)
                return True
            except self._errors() as exc:
                self._failed("put", exc)
                return False

    def close(self) -> None:
        """Close the connection (blocking); later calls raise `RuntimeError`."""
        with self._lock:
            self._closed = True
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection | None:
        if self._closed:
            raise RuntimeError(f"SqliteStore({str(self.path)!r}) was closed")
        if self._conn is not None and self._pid != os.getpid():
            self._conn = None  # inherited through fork: never touch it here
        return self._conn

    def _open(self) -> sqlite3.Connection:
        import sqlite3

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
            self._purge(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL. When several processes open a new file at once, the switch can fail at
        once with SQLITE_BUSY (SQLite does not call the busy handler for it): retry until the busy timeout."""
        import sqlite3

        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = 0.001
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                busy = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                continue
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL for {self.path} (journal mode {mode})")
            return

    @staticmethod
    def _purge(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM answers WHERE expires_at IS NOT NULL AND expires_at <= ?", (time.time(),))

    @staticmethod
    def _errors() -> tuple[type[Exception], ...]:
        import sqlite3

        return (sqlite3.Error, OSError, UnicodeError)  # UnicodeError: text with a lone surrogate

    def _failed(self, op: str, exc: Exception) -> None:
        self.errors += 1
        log = logger.warning if self.errors == 1 or self.errors % 100 == 0 else logger.debug
        log(
            "response cache %s failed in %s (%s: %s); %d failure(s) so far",
            op,
            self.path,
            type(exc).__name__,
            exc,
            self.errors,
        )

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"
