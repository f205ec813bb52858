"""SyncCompsStore's life: closed under load, forked before use, forgotten at exit or dropped."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, request
from sqlalchemy.ext.asyncio import create_async_engine

import kuya_store as ks
from kuya_store.demo import FakeMarketplace
from kuya_store.integrations.flask import EXTENSION_KEY, KuyaStore

ROOT = Path(__file__).resolve().parent.parent
CARDS = [
    "2020 Prizm Justin Herbert #325",
    "2018 Topps Update Shohei Ohtani #US1",
    "2003 Topps Chrome LeBron James #111",
]
CHILD_CARD = "1986 Fleer Michael Jordan #57"
LATE_CARD = "2023 Topps Chrome Victor Wembanyama #1"


async def _search_rows(url: str) -> dict[str, int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text("SELECT query, count(*) FROM searches GROUP BY query")
            )
            return {query: int(count) for query, count in rows}
    finally:
        await engine.dispose()


def search_rows(url: str) -> dict[str, int]:
    return asyncio.run(_search_rows(url))


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kuya-store-loop" and t.is_alive()]


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def no_leftover_loops() -> Iterator[None]:
    before = set(_loop_threads())
    yield
    assert _wait_for(lambda: set(_loop_threads()) <= before, 30), "a loop thread was left behind"


def _collected(ref: weakref.ref[Any]) -> bool:
    """Whether the object is gone after a few collections (a cycle may need more than one)."""
    for _ in range(5):
        gc.collect()
        if ref() is None:
            return True
    return False


def _wait_child(pid: int, timeout: float) -> int:
    """The child's exit code; a child still running after ``timeout`` is killed (a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung for {timeout} s")


def _in_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child; its exit code (0 when ``work`` returned)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return _wait_child(pid, 60)


# -- close() while calls are running -------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_close_cancels_a_call_waiting_on_a_hung_fetcher(
    migrated_url: str, kind: str, no_leftover_loops: None
) -> None:
    entered = threading.Event()
    release = threading.Event()  # lets the sync fetcher's worker thread end after the test

    async def hung_async(request: ks.FetchRequest) -> ks.FetchResult:
        entered.set()
        await asyncio.sleep(3600)
        raise AssertionError("never")

    def hung_sync(request: ks.FetchRequest) -> ks.FetchResult:
        entered.set()
        release.wait(3600)
        return ks.FetchResult(listings=[])

    fetcher = hung_async if kind == "async" else hung_sync
    store = ks.SyncCompsStore(
        database_url=migrated_url, fetchers={"sold": fetcher}, fetch_timeout=timedelta(hours=1)
    )
    outcome: list[BaseException | object] = []

    def search() -> None:
        try:
            outcome.append(store.comps.search(CARDS[0]))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=search, daemon=True)
    caller.start()
    try:
        assert entered.wait(30)
        started = time.monotonic()
        store.close(timeout=5)
        assert time.monotonic() - started < 20  # bounded: the hung fetcher does not hold it
        caller.join(10)
        assert not caller.is_alive(), "the caller still hangs after close()"
        [error] = outcome
        assert isinstance(error, ks.StoreClosedError) and isinstance(error, ks.KuyaStoreError)
        assert "closed" in str(error)
        for call in (
            lambda: store.comps.search(CARDS[1]),
            store.health,
            store.flush,
            lambda: store.analytics.search_stats(),
        ):
            started = time.monotonic()
            with pytest.raises(ks.StoreClosedError, match="closed"):
                call()
            assert time.monotonic() - started < 5
        store.close()  # again: harmless
    finally:
        release.set()
        caller.join(10)


def test_a_call_that_finishes_within_the_close_timeout_gets_its_answer(
    migrated_url: str, no_leftover_loops: None
) -> None:
    entered = threading.Event()
    release = threading.Event()
    market = FakeMarketplace(listings=3)

    async def slow(request: ks.FetchRequest) -> ks.FetchResult:
        entered.set()
        await asyncio.to_thread(release.wait, 60)
        return await market.sold(request)

    store = ks.SyncCompsStore(database_url=migrated_url, fetchers={"sold": slow})
    outcome: list[object] = []
    caller = threading.Thread(target=lambda: outcome.append(store.comps.search(CARDS[0])))
    closer = threading.Thread(target=store.close, kwargs={"timeout": 120})
    caller.start()
    assert entered.wait(30)
    closer.start()

    def refusing() -> bool:
        try:
            store.health()
        except ks.StoreClosedError:
            return True
        return False

    assert _wait_for(refusing, 30)  # closing has begun: new calls are refused...
    release.set()  # ...while the call in flight is let finish
    caller.join(30)
    closer.join(60)
    assert not caller.is_alive() and not closer.is_alive()
    [result] = outcome
    assert isinstance(result, ks.CompsResult) and result.source == "api"
    assert search_rows(migrated_url) == {CARDS[0]: 1}  # and it was persisted by the close


def test_close_under_load_gives_each_caller_an_answer_or_the_clear_error(
    migrated_url: str, no_leftover_loops: None
) -> None:
    market = FakeMarketplace(listings=3)
    store = ks.SyncCompsStore(database_url=migrated_url, fetchers={"sold": market.sold})
    answers: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Event()

    def hammer(worker: int) -> None:
        go.wait()
        for i in range(10_000):
            try:
                result = store.comps.search(f"{CARDS[i % 3]} lot {worker}-{i % 7}")
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                answers.append(result)

    workers = [threading.Thread(target=hammer, args=(w,), daemon=True) for w in range(8)]
    for worker in workers:
        worker.start()
    go.set()
    assert _wait_for(lambda: len(answers) >= 50, 60)
    store.close(timeout=10)
    for worker in workers:
        worker.join(20)
    assert not any(worker.is_alive() for worker in workers), "a caller hangs after close()"
    assert len(errors) == 8  # every worker stopped on the error, none on anything else
    assert all(isinstance(e, ks.StoreClosedError) for e in errors), errors


def test_calling_from_the_stores_own_loop_is_a_clear_error(migrated_url: str) -> None:
    seen: list[BaseException] = []
    market = FakeMarketplace(listings=2)

    async def nested(request: ks.FetchRequest) -> ks.FetchResult:
        try:
            store.health()  # the loop would wait on itself
        except BaseException as exc:
            seen.append(exc)
        return await market.sold(request)

    with ks.SyncCompsStore(database_url=migrated_url, fetchers={"sold": nested}) as store:
        assert store.comps.search(CARDS[0]).source == "api"
    [error] = seen
    assert isinstance(error, RuntimeError) and "own event loop" in str(error)


# -- fork ----------------------------------------------------------------------------------


def test_store_opened_before_fork_reopens_in_the_child(
    migrated_url: str, no_leftover_loops: None
) -> None:
    market = FakeMarketplace(listings=4)
    store = ks.SyncCompsStore(
        database_url=migrated_url,
        fetchers={"sold": market.sold},
        # Keep the parent's writes buffered across the fork: a child that wrote its copy of
        # them would duplicate every one.
        write_flush_interval=timedelta(seconds=5),
    )
    for card in CARDS:
        assert store.comps.search(card).source == "api"
    assert store.metrics()["writes"]["pending"] > 0

    def child() -> None:
        result = store.comps.search(CHILD_CARD)
        assert result.source == "api" and result.listings
        assert store.comps.search(CHILD_CARD.lower()).source == "memory"
        assert store.health().status == "healthy"
        assert store.flush(timeout=30)
        store.close()

    assert _in_child(child) == 0
    # The parent goes on with its own loop, connections and buffer.
    assert store.comps.search(CARDS[0]).source == "memory"
    assert store.comps.search(LATE_CARD).source == "api"
    store.close()
    # Every search logged once, by the process that made it: none lost, none written twice.
    expected = Counter([*CARDS, CHILD_CARD, CHILD_CARD.lower(), CARDS[0], LATE_CARD])
    assert search_rows(migrated_url) == dict(expected)


def test_a_child_that_never_uses_the_store_leaves_the_parents_alone(
    migrated_url: str, no_leftover_loops: None
) -> None:
    market = FakeMarketplace(listings=2)
    store = ks.SyncCompsStore(
        database_url=migrated_url,
        fetchers={"sold": market.sold},
        write_flush_interval=timedelta(seconds=5),
    )
    store.comps.search(CARDS[0])

    def child() -> None:
        store.close()  # closes nothing of the parent's: not its loop, not its connections
        with pytest.raises(ks.StoreClosedError):
            store.health()

    assert _in_child(child) == 0
    assert store.health().status == "healthy"
    store.close()
    assert search_rows(migrated_url) == {CARDS[0]: 1}


def test_flask_app_built_before_fork_serves_in_the_worker(
    sqlite_url: str, no_leftover_loops: None
) -> None:
    """``gunicorn --preload``: the app (and its store) is made once, workers are forked."""
    market = FakeMarketplace(listings=3)
    app = Flask(__name__)
    app.config["KUYA_DATABASE_URL"] = sqlite_url
    kuya = KuyaStore(app, create_schema=True, fetchers={"sold": market.sold})

    @app.get("/comps")
    def comps() -> dict[str, Any]:
        return dict(kuya.store.comps.search(request.args["query"]).model_dump(mode="json"))

    def worker() -> None:
        with app.test_client() as client:
            response = client.get("/comps", query_string={"query": CHILD_CARD})
            assert response.status_code == 200, response.text
            assert response.json["source"] == "api"
        KuyaStore.close(app)

    assert _in_child(worker) == 0
    with app.test_client() as client:
        assert client.get("/comps", query_string={"query": CARDS[0]}).json["source"] == "api"
    KuyaStore.close(app)
    assert search_rows(sqlite_url) == {CHILD_CARD: 1, CARDS[0]: 1}


# -- forgotten close() ---------------------------------------------------------------------


def test_a_script_that_forgets_close_still_persists_its_searches(
    sqlite_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "forgetful.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from datetime import timedelta

            import kuya_store as ks

            def fetch(request):  # a plain function, as scripts write them
                return ks.FetchResult(listings=[
                    ks.Listing(item_id=f"{len(request.query)}-{i}", title=request.query,
                               price="12.50", sold=True)
                    for i in range(3)
                ])

            store = ks.SyncCompsStore(
                database_url=sys.argv[1],
                fetchers={"sold": fetch},
                write_flush_interval=timedelta(seconds=2),  # all still buffered at exit
            )
            store.create_schema()
            for card in sys.argv[2:]:
                store.comps.search(card)
                store.comps.search(card.upper())  # a memory hit, logged too
            print(store.metrics()["writes"]["pending"])
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(script), sqlite_url, *CARDS],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 0  # the buffer was not empty when the script ended
    rows = search_rows(sqlite_url)
    assert sum(rows.values()) == 2 * len(CARDS)


def test_a_dropped_store_is_closed_and_not_kept_alive(
    migrated_url: str, no_leftover_loops: None
) -> None:
    market = FakeMarketplace(listings=2)
    store = ks.SyncCompsStore(
        database_url=migrated_url,
        fetchers={"sold": market.sold},
        write_flush_interval=timedelta(seconds=2),
    )
    store.comps.search(CARDS[0])
    ref = weakref.ref(store)
    del store
    assert _collected(ref)  # nothing registered for exit keeps it alive
    assert search_rows(migrated_url) == {CARDS[0]: 1}  # closed on collection: buffer written


# -- Flask app factory ---------------------------------------------------------------------


def test_flask_factory_apps_each_own_a_store_that_goes_with_the_app(
    tmp_path: Path, no_leftover_loops: None
) -> None:
    market = FakeMarketplace(listings=2)
    kuya = KuyaStore(create_schema=True, fetchers={"sold": market.sold})

    def create_app(name: str) -> Flask:
        app = Flask(name)
        app.config["KUYA_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / name}.db"

        @app.get("/comps")
        def comps() -> dict[str, Any]:
            return dict(kuya.store.comps.search(request.args["query"]).model_dump(mode="json"))

        kuya.init_app(app)
        return app

    first, second = create_app("first"), create_app("second")
    assert first.extensions[EXTENSION_KEY] is not second.extensions[EXTENSION_KEY]
    with pytest.raises(RuntimeError, match="already"):
        kuya.init_app(first)
    for app in (first, second):
        assert app.test_client().get("/comps", query_string={"query": CARDS[0]}).status_code == 200
    KuyaStore.close(first)
    with first.app_context(), pytest.raises(RuntimeError, match="init_app"):
        kuya.store  # noqa: B018
    assert second.test_client().get("/comps", query_string={"query": CARDS[1]}).status_code == 200

    dropped = weakref.ref(second.extensions[EXTENSION_KEY])
    del app, second
    assert _collected(dropped)  # a discarded app's store is closed and freed, not kept for exit
    assert search_rows(f"sqlite+aiosqlite:///{tmp_path / 'second'}.db") == {
        CARDS[0]: 1,
        CARDS[1]: 1,
    }
