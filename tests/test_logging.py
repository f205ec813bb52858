"""Structured, secret-free logs: each record says its card, search type and source.

The whole suite's logs are scanned for the test passwords and keys (``tests/logscan.py``,
wired in ``tests/conftest.py``); the first tests here prove that scan would catch a leak.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import kuya_store as ks
from kuya_store.demo import FakeMarketplace
from kuya_store.logs import ContextFilter, redact_secrets
from kuya_store.testing.servers import free_port
from kuya_store.writer import WriteBehind
from logscan import SECRETS, TEST_API_KEY, SecretScanner, rendered

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
HARNESS_PASSWORD = "kuya-test-pw"  # tests/servers.py: PostgresServer's own
OTHER_API_KEY = "kuya-other-key-91Xz"  # collected by name, as any test module's would be
LEAKY_URL = f"postgresql+asyncpg://kuya:{HARNESS_PASSWORD}@127.0.0.1:5432/kuya"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(rendered(r) for r in self.records)


@pytest.fixture
def library_records() -> Iterator[_Records]:
    """Every record of the library's loggers while the test runs."""
    handler = _Records()
    logger = logging.getLogger("kuya_store")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def isolated() -> Iterator[tuple[logging.Logger, SecretScanner]]:
    """A logger outside the library, seen only by a scanner of its own."""
    logger = logging.getLogger("kuya_tests.leak")
    logger.propagate = False  # the session's scanner must not see these planted leaks
    logger.setLevel(logging.DEBUG)
    scanner = SecretScanner(SECRETS)
    logger.addHandler(scanner)
    try:
        yield logger, scanner
    finally:
        logger.removeHandler(scanner)
        logger.propagate = True


# -- the scan itself ----------------------------------------------------------------


def test_the_harness_password_and_the_api_key_are_scanned_for() -> None:
    assert HARNESS_PASSWORD in SECRETS and TEST_API_KEY in SECRETS
    # Module constants named like secrets are collected from every test module run.
    assert OTHER_API_KEY in SECRETS


@pytest.mark.parametrize(
    "log",
    [
        lambda logger: logger.warning("connecting to %s", LEAKY_URL),
        lambda logger: logger.error(f"connecting to {LEAKY_URL}"),
        lambda logger: logger.debug(
            "upstream: %s", f"https://api.example/s?api_key={TEST_API_KEY}"
        ),
        lambda logger: logger.info("opened", extra={"dsn": LEAKY_URL}),
    ],
    ids=["args", "message", "api-key", "extra"],
)
def test_the_scan_catches_a_secret_wherever_a_record_holds_it(
    isolated: tuple[logging.Logger, SecretScanner], log: Any
) -> None:
    logger, scanner = isolated
    log(logger)
    assert scanner.seen == 1 and len(scanner.leaks) == 1


def test_the_scan_catches_a_secret_in_a_traceback(
    isolated: tuple[logging.Logger, SecretScanner],
) -> None:
    logger, scanner = isolated
    try:
        raise ConnectionError(f"could not connect to {LEAKY_URL}")
    except ConnectionError:
        logger.exception("the database did not answer")
    assert len(scanner.leaks) == 1
    logger.warning("connecting to %s", redact_secrets(LEAKY_URL))
    assert len(scanner.leaks) == 1  # the redacted form is not a leak


# -- scrubbing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LEAKY_URL, "postgresql+asyncpg://kuya:***@127.0.0.1:5432/kuya"),
        ("redis://:hunter22@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://app:p%40ss@h:6380 and more", "rediss://app:***@h:6380 and more"),
        (
            "redis+sentinel://:pw@s1:26379,s2:26379/kuya",
            "redis+sentinel://:***@s1:26379,s2:26379/kuya",
        ),
        ("GET /s?engine=ebay&api_key=K3y-1&q=x", "GET /s?engine=ebay&api_key=***&q=x"),
        ("host=db password='two words' dbname=kuya", "host=db password=*** dbname=kuya"),
        ("PASSWORD: hunter2", "PASSWORD: ***"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("token=abcd, next", "token=***, next"),
        # Not secrets: left alone.
        ("http://127.0.0.1:8080/path", "http://127.0.0.1:8080/path"),
        ("result_key=ab12 card_key=cd34", "result_key=ab12 card_key=cd34"),
        ("invalidate('ohtani', 'sold') did not reach every tier", None),
        ("", ""),
    ],
)
def test_secrets_are_redacted_and_nothing_else(text: str, expected: str | None) -> None:
    assert redact_secrets(text) == (text if expected is None else expected)


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("kuya_store", "kuya_store.store"),
        ("kuya_store.redis", "kuya_store.tiers.redis"),
        ("kuya_store.writer", "kuya_store.writer"),
        ("kuya_store.repository", "kuya_store.repository"),
    ],
)
def test_a_library_record_leaves_without_the_secrets_it_was_given(
    name: str, module: str, library_records: _Records
) -> None:
    importlib.import_module(module)  # the module that logs there
    logger = logging.getLogger(name)
    logger.warning("the client raised %r", ConnectionError(f"error at {LEAKY_URL}"))
    logger.warning(f"upstream failed: https://api.example/s?api_key={TEST_API_KEY}")
    try:
        raise RuntimeError(f"cannot reach {LEAKY_URL}")
    except RuntimeError:
        logger.exception("failed")
    text = library_records.text()
    assert HARNESS_PASSWORD not in text and TEST_API_KEY not in text
    assert text.count("kuya:***@127.0.0.1") == 2 and "api_key=***" in text
    assert "Traceback" in text and "RuntimeError" in text  # the traceback is kept, scrubbed


def test_every_logger_of_the_library_has_the_filter() -> None:
    source = Path(__file__).resolve().parent.parent / "src" / "kuya_store"
    bare = [
        str(path.relative_to(source))
        for path in source.rglob("*.py")
        if "logging.getLogger(" in path.read_text() and path.name != "logs.py"
    ]
    assert bare == [], "use kuya_store.logs.get_logger"


def test_the_filter_serves_other_libraries_records_on_a_handler() -> None:
    handler = _Records()
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("sqlalchemy.kuya_tests")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connect %s", LEAKY_URL)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    [record] = handler.records
    assert HARNESS_PASSWORD not in rendered(record)
    assert (record.card, record.search_type, record.source) == (None, None, None)  # type: ignore[attr-defined]
    formatted = logging.Formatter("%(card)s %(search_type)s %(source)s %(message)s").format(record)
    assert formatted.startswith("None None None connect postgresql+asyncpg://kuya:***@")


# -- fields -------------------------------------------------------------------------


def _fields(record: logging.LogRecord) -> tuple[Any, Any, Any]:
    return (
        getattr(record, "card", "missing"),
        getattr(record, "search_type", "missing"),
        getattr(record, "source", "missing"),
    )


async def test_records_logged_during_a_search_carry_its_card_type_and_source(
    migrated_url: str, library_records: _Records
) -> None:
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(
        database_url=migrated_url,
        api_budget=1,  # the first paid call spends all of it: a warning, inside the flight
        write_flush_interval=0.01,
        fetchers={"sold": market.sold},
    ) as store:
        await store.comps.search(QUERY, user_id=987_654)  # a user the database never had
        await store.flush()
        logging.getLogger("kuya_store").info("after the search")
    card = ks.normalize_card(QUERY)
    by_text = {r.getMessage().split(" ")[0]: r for r in library_records.records}
    budget = next(r for r in library_records.records if "API budget" in r.getMessage())
    assert _fields(budget) == (card, "sold", "api")
    # A buffered write is logged by the writer's task, about the search it came from.
    unknown_user = next(r for r in library_records.records if "without its user" in r.getMessage())
    assert _fields(unknown_user) == (card, "sold", "api")
    # Outside a search nothing is claimed, but the fields are there for a formatter.
    assert _fields(by_text["after"]) == (None, None, None)


async def test_a_record_about_an_invalidation_names_its_card(library_records: _Records) -> None:
    dead = f"redis://:{HARNESS_PASSWORD}@127.0.0.1:{free_port()}/0"
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=dead,
        redis_socket_timeout=0.1,
        redis_connect_timeout=0.1,
    ) as store:
        report = await store.comps.invalidate(QUERY, "active")
    assert not report.complete
    [warning] = [r for r in library_records.records if "did not reach" in r.getMessage()]
    assert _fields(warning) == (ks.normalize_card(QUERY), "active", None)
    assert HARNESS_PASSWORD not in library_records.text()


async def test_a_fetcher_error_does_not_repeat_the_api_key(library_records: _Records) -> None:
    def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        raise ConnectionError(f"GET https://api.example/search?q=x&api_key={TEST_API_KEY} failed")

    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        fetch_attempts=1,
        fetchers={"sold": fetch},
    ) as store:
        with pytest.raises(ks.FetcherError) as caught:
            await store.comps.search(QUERY)
    assert TEST_API_KEY not in str(caught.value) and "api_key=***" in str(caught.value)
    logging.getLogger("kuya_tests.app").error("search failed: %s", caught.value)  # as an app would


async def test_the_write_buffer_started_by_a_search_does_not_log_as_that_search(
    library_records: _Records,
) -> None:
    from kuya_store.logs import searching
    from kuya_store.metrics import Metrics
    from kuya_store.persistence import Database, SearchRecord

    dead = f"postgresql+asyncpg://kuya:{HARNESS_PASSWORD}@127.0.0.1:{free_port()}/gone"
    metrics = Metrics()
    database = Database(ks.StoreSettings(database_url=dead), metrics)
    buffer = WriteBehind(database, metrics, capacity=10, batch_size=5, interval=0.01, pause=0.05)
    record = SearchRecord(
        query=QUERY,
        card_identifier=ks.normalize_card(QUERY),
        search_type=ks.SearchType.SOLD,
        filters={},
        params={},
        created_at=datetime.now(UTC),
        execution_time_ms=1,
        cache_hit=True,
    )
    try:
        with searching("some-other-card", "active"):
            assert buffer.submit(record)  # starts the buffer's task, from inside a search
        deadline = time.monotonic() + 20
        while not any("unreachable" in r.getMessage() for r in library_records.records):
            assert time.monotonic() < deadline, "the buffer never reported the outage"
            await asyncio.sleep(0.05)
    finally:
        await buffer.close(timeout=0.5)
        await database.close()
    outage = next(r for r in library_records.records if "unreachable" in r.getMessage())
    assert _fields(outage) == (None, None, None)
    dropped = next(r for r in library_records.records if "unwritten records" in r.getMessage())
    assert _fields(dropped) == (None, None, None)
    assert HARNESS_PASSWORD not in library_records.text()
