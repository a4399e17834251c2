"""The local SQLite response cache: round trips, TTL, corrupt rows, a broken file, the cache directory,
the event loop kept free, fork, and two processes sharing one file."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fair_runners.cache import CachedAnswer, SqliteStore, cache_dir, open_store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "responses.sqlite3"


def rows(path: Path) -> dict[str, tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return {row[0]: row[1:] for row in conn.execute("SELECT * FROM answers")}


def test_put_then_get_round_trips_every_field(path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(path) as store:
            assert await store.get("k1") is None
            before = time.time()
            assert await store.put("k1", CachedAnswer("héllo 😀", input_tokens=12, output_tokens=34), None)
            got = await store.get("k1")
            assert got is not None
            assert (got.content, got.input_tokens, got.output_tokens) == ("héllo 😀", 12, 34)
            assert before <= got.created_at <= time.time()  # stamped by put
            assert await store.put("k2", CachedAnswer("x" * 2_000_000, created_at=123.5), 3600)
            assert await store.get("k2") == CachedAnswer("x" * 2_000_000, created_at=123.5)
            assert await store.put("k1", CachedAnswer("replaced"), None)
            assert (await store.get("k1") or CachedAnswer("")).content == "replaced"
            assert store.errors == 0

    asyncio.run(main())


def test_expired_entries_are_misses_and_are_deleted(path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(path) as store:
            await store.put("short", CachedAnswer("a"), 0.2)
            await store.put("forever", CachedAnswer("b"), None)
            await store.put("long", CachedAnswer("c"), 3600)
            assert await store.get("short") is not None
            await asyncio.sleep(0.3)
            assert await store.get("short") is None
            assert "short" not in rows(path)
            assert await store.get("forever") is not None and await store.get("long") is not None

    asyncio.run(main())


def test_expired_rows_are_purged_when_the_file_is_opened(path: Path) -> None:
    SqliteStore(path).put_sync("alive", CachedAnswer("a"), 3600)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO answers VALUES ('old', 'x', 0, 0, 1.0, ?)", (time.time() - 5,))
    assert set(rows(path)) == {"alive", "old"}
    assert SqliteStore(path).get_sync("alive") is not None
    assert set(rows(path)) == {"alive"}


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), "60"])
def test_a_ttl_that_keeps_nothing_is_refused(path: Path, ttl: object) -> None:
    with pytest.raises(ValueError, match="ttl_s must be a positive number"):
        SqliteStore(path).put_sync("k", CachedAnswer("a"), ttl)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "row",
    [
        ("k", b"\x00bytes", 1, 2, 3.0, None),
        ("k", "text", -1, 2, 3.0, None),
        ("k", "text", "many", 2, 3.0, None),
        ("k", "text", 1, 2.5, 3.0, None),
        ("k", "text", 1, 2, "yesterday", None),
        ("k", "text", 1, 2, 3.0, "tomorrow"),
    ],
)
def test_corrupt_rows_are_misses_and_are_deleted(path: Path, row: tuple[object, ...]) -> None:
    store = SqliteStore(path)
    store.put_sync("other", CachedAnswer("fine"), None)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?)", row)
    assert store.get_sync("k") is None
    assert set(rows(path)) == {"other"}
    assert store.errors == 0


def test_a_broken_file_makes_misses_and_failed_puts_never_exceptions(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)

    async def main() -> None:
        store = SqliteStore(path)
        assert await store.get("k") is None
        assert await store.put("k", CachedAnswer("a"), None) is False
        assert store.errors == 2
        await store.aclose()

    asyncio.run(main())


def test_text_sqlite_cannot_hold_is_a_failed_put_not_an_exception(path: Path) -> None:
    store = SqliteStore(path)
    assert store.put_sync("k", CachedAnswer("lone \ud800 surrogate"), None) is False
    assert store.errors == 1 and store.get_sync("k") is None


def test_use_after_close_is_a_programming_error(path: Path) -> None:
    store = SqliteStore(path)
    store.put_sync("k", CachedAnswer("a"), None)
    store.close()
    with pytest.raises(RuntimeError, match="was closed"):
        store.get_sync("k")


def test_cache_dir_comes_from_env_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FAIR_RUNNERS_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "fair-runners"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "fair-runners"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fair-runners"
    monkeypatch.setenv("FAIR_RUNNERS_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"


def test_the_default_store_is_a_private_wal_file_in_the_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_CACHE_DIR", str(tmp_path / "c"))
    store = open_store(lambda_env=False)
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "c" / "responses.sqlite3"
    assert store.put_sync("k", CachedAnswer("a"), None)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_a_waiting_call_leaves_the_event_loop_free(path: Path) -> None:
    """Another connection holds the write lock for 0.4 s: `put` waits (busy timeout, no "database is
    locked") in a worker thread while the loop goes on running other tasks."""
    store = SqliteStore(path)
    store.put_sync("warm", CachedAnswer("a"), None)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    async def main() -> tuple[bool, int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        loop.call_later(0.4, blocker.execute, "COMMIT")
        start = time.monotonic()
        stored = await store.put("k", CachedAnswer("b"), None)
        waited = time.monotonic() - start
        task.cancel()
        return stored, ticks, waited

    stored, ticks, waited = asyncio.run(main())
    blocker.close()
    assert stored and store.errors == 0
    assert waited >= 0.35 and ticks >= 15
    assert rows(path)["k"][0] == "b"


def test_opening_waits_for_another_process_writing_the_new_file(path: Path) -> None:
    """Another process has just made the file and is writing it (rollback journal, RESERVED lock): SQLite
    fails the switch to WAL at once with SQLITE_BUSY, busy timeout or not; the store waits and retries."""
    path.parent.mkdir(parents=True)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE unrelated (x)")
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, other.execute, ("COMMIT",))
    timer.start()
    store = SqliteStore(path)
    start = time.monotonic()
    try:
        assert store.put_sync("k", CachedAnswer("a"), None)
    finally:
        timer.join()
        other.close()
    assert time.monotonic() - start >= 0.25
    assert store.errors == 0 and store.get_sync("k") is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(path: Path) -> None:
    store = SqliteStore(path)
    store.put_sync("parent", CachedAnswer("p"), None)
    inherited = store._conn  # the store's own connection (white box: nothing outside shows which one it uses)
    assert inherited is not None
    pid = os.fork()
    if pid == 0:  # the child: must not use the parent's connection
        ok = store.get_sync("parent") is not None and store.put_sync("child", CachedAnswer("c"), None)
        os._exit(0 if ok and store.errors == 0 and store._conn is not inherited else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert rows(path)["child"][0] == "c"
    assert store.get_sync("parent") is not None and store.errors == 0


WORKER = """
import asyncio, json, sys, time
from pathlib import Path
from fair_runners.cache import CachedAnswer, SqliteStore

path, me, other, count = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
folder = path.parent

async def main():
    (folder / f"ready-{me}").touch()
    while not (folder / "go").exists():
        await asyncio.sleep(0.001)
    store = SqliteStore(path)
    began = time.time()
    await store.put(f"{me}-0", CachedAnswer(f"{me}-0"), None)
    (folder / f"started-{me}").touch()
    start = time.perf_counter()
    lost = i = 0
    # At least `count` rounds, and on until the other process has started: the two always overlap.
    while i < count or not (folder / f"started-{other}").exists():
        shared = f"shared-{i % count}"
        await store.put(shared, CachedAnswer(f"{me}-{i % count}", 1, 2), 3600)
        await store.put(f"{me}-{i}", CachedAnswer(f"{me}-{i}"), None)
        got = await store.get(shared)
        lost += got is None or not got.content.endswith(f"-{i % count}")
        lost += await store.get(f"{me}-{i}") is None
        i += 1
    elapsed = time.perf_counter() - start
    await store.aclose()
    report = {"rounds": i, "ops": 4 * i, "seconds": elapsed, "lost": lost, "errors": store.errors}
    print(json.dumps({**report, "began": began, "ended": time.time()}))

asyncio.run(main())
"""


def test_two_processes_share_one_file_without_errors_or_lost_entries(path: Path) -> None:
    count = 300
    folder = path.parent
    folder.mkdir(parents=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), me, other, str(count)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((folder / f"ready-{me}").exists() for me in ("a", "b")):  # both up and waiting
            assert time.monotonic() < deadline and all(proc.poll() is None for proc in procs)
            time.sleep(0.005)
        (folder / "go").touch()  # they open the new file at the same moment
        outputs = [proc.communicate(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err and "Traceback" not in err, err
    results = [json.loads(out) for out, _ in outputs]
    print("two-process sqlite:", results)
    assert all(r["lost"] == 0 and r["errors"] == 0 for r in results)
    assert max(r["began"] for r in results) < min(r["ended"] for r in results)  # they did run at once
    stored = rows(path)
    assert len(stored) == count + sum(r["rounds"] for r in results)
    for i in range(count):
        assert stored[f"shared-{i}"][0] in (f"a-{i}", f"b-{i}")
    for me, r in zip("ab", results, strict=True):
        assert all(stored[f"{me}-{i}"][0] == f"{me}-{i}" for i in range(r["rounds"]))
