"""The FastAPI lifespan composes with the host app's: its start-up and shut-down still run."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

import kuya_store as ks
from kuya_store.demo import FakeMarketplace
from kuya_store.integrations.fastapi import StoreDep, attach, lifespan, store_of

CARD = "2020 Prizm Justin Herbert #325"


def _routes(app: FastAPI, events: list[str]) -> None:
    @app.get("/comps")
    async def comps(query: str, store: StoreDep) -> dict[str, Any]:
        events.append("request")
        return (await store.comps.search(query)).model_dump(mode="json")


@pytest.fixture
def market() -> FakeMarketplace:
    return FakeMarketplace(listings=3)


@pytest.fixture
def recording(
    market: FakeMarketplace, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], dict[str, Any]]:
    """Events in order (the store's close among them), and the store's keyword arguments."""
    events: list[str] = []
    original_close = ks.CompsStore.close

    async def close(self: ks.CompsStore, timeout: float | None = 30.0) -> None:
        events.append("store closed")
        await original_close(self, timeout)

    monkeypatch.setattr(ks.CompsStore, "close", close)
    return events, {"fetchers": {"sold": market.sold}}


def test_host_lifespan_runs_inside_the_store(
    migrated_url: str, recording: tuple[list[str], dict[str, Any]]
) -> None:
    events, kwargs = recording

    @asynccontextmanager
    async def host(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        store = store_of(app)  # open already: the host's start-up may use it
        warm = await store.comps.search(CARD)
        events.append(f"host startup ({warm.source})")
        yield {"greeting": "hello"}
        await store.flush()
        stats = await store.analytics.search_stats()
        events.append(f"host shutdown ({stats.total} searches)")

    app = FastAPI(lifespan=lifespan(app_lifespan=host, database_url=migrated_url, **kwargs))
    _routes(app, events)

    with TestClient(app) as client:
        events.append("serving")
        body = client.get("/comps", params={"query": CARD}).json()
        assert body["source"] == "memory"  # the host's warm-up filled the cache
    assert events == [
        "host startup (api)",
        "serving",
        "request",
        "host shutdown (2 searches)",
        "store closed",
    ]
    assert not hasattr(app.state, "kuya_store")  # no closed store left behind


def test_host_lifespan_state_is_kept_next_to_the_store(migrated_url: str) -> None:
    @asynccontextmanager
    async def host(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello"}

    app = FastAPI(lifespan=lifespan(app_lifespan=host, database_url=migrated_url))

    @app.get("/state")
    async def state(request: Request, store: StoreDep) -> dict[str, Any]:
        return {"greeting": request.state.greeting, "store": isinstance(store, ks.CompsStore)}

    with TestClient(app) as client:
        assert client.get("/state").json() == {"greeting": "hello", "store": True}


def test_a_bare_async_generator_lifespan_is_accepted(migrated_url: str) -> None:
    events: list[str] = []

    async def host(app: FastAPI) -> AsyncIterator[None]:
        events.append(f"up {type(store_of(app)).__name__}")
        yield
        events.append("down")

    app = FastAPI(lifespan=lifespan(app_lifespan=host, database_url=migrated_url))
    with TestClient(app):
        pass
    assert events == ["up CompsStore", "down"]


def test_on_event_handlers_still_run_with_the_stores_lifespan(
    migrated_url: str, recording: tuple[list[str], dict[str, Any]]
) -> None:
    """FastAPI skips them once ``lifespan=`` is set; adding the store must not drop them."""
    events, kwargs = recording
    app = FastAPI(lifespan=lifespan(database_url=migrated_url, **kwargs))
    _routes(app, events)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        @app.on_event("startup")
        async def startup() -> None:
            result = await store_of(app).comps.search(CARD)
            events.append(f"startup ({result.source})")

        @app.on_event("shutdown")
        def shutdown() -> None:  # plain functions too
            events.append("shutdown")

    with TestClient(app) as client:
        assert client.get("/comps", params={"query": CARD}).json()["source"] == "memory"
    assert events == ["startup (api)", "request", "shutdown", "store closed"]


def test_fastapi_itself_skips_on_event_handlers_once_a_lifespan_is_set() -> None:
    """What docs/fastapi.md says about ``on_event``, checked against the installed FastAPI."""
    events: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        events.append("lifespan")
        yield

    app = FastAPI(lifespan=own)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        app.on_event("startup")(lambda: events.append("on_event"))
    with TestClient(app):
        pass
    assert events == ["lifespan"]


def test_attach_wraps_an_app_built_elsewhere(
    migrated_url: str, recording: tuple[list[str], dict[str, Any]]
) -> None:
    events, kwargs = recording

    @asynccontextmanager
    async def host(app: FastAPI) -> AsyncIterator[None]:
        events.append(f"host startup ({(await store_of(app).comps.search(CARD)).source})")
        yield
        events.append("host shutdown")

    app = FastAPI(lifespan=host)
    _routes(app, events)
    attach(app, database_url=migrated_url, **kwargs)
    with TestClient(app) as client:
        assert client.get("/comps", params={"query": CARD}).json()["source"] == "memory"
    assert events == ["host startup (api)", "request", "host shutdown", "store closed"]


def test_attach_keeps_on_event_handlers_of_an_app_without_lifespan(
    migrated_url: str, recording: tuple[list[str], dict[str, Any]]
) -> None:
    events, kwargs = recording
    app = FastAPI(on_startup=[lambda: events.append("startup")])
    _routes(app, events)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        app.on_event("shutdown")(lambda: events.append("shutdown"))
    attach(app, database_url=migrated_url, **kwargs)
    with TestClient(app) as client:
        assert client.get("/comps", params={"query": CARD}).status_code == 200
    assert events == ["startup", "request", "shutdown", "store closed"]  # each exactly once


def test_a_failing_host_startup_still_closes_the_store(
    migrated_url: str, recording: tuple[list[str], dict[str, Any]]
) -> None:
    events, kwargs = recording

    @asynccontextmanager
    async def host(app: FastAPI) -> AsyncIterator[None]:
        events.append("host startup")
        raise RuntimeError("the host could not start")
        yield  # pragma: no cover

    app = FastAPI(lifespan=lifespan(app_lifespan=host, database_url=migrated_url, **kwargs))
    with pytest.raises(RuntimeError, match="could not start"), TestClient(app):
        pass
    assert events == ["host startup", "store closed"]


def test_a_route_without_the_stores_lifespan_is_told_how_to_add_it() -> None:
    app = FastAPI()
    _routes(app, [])
    with (
        TestClient(app, raise_server_exceptions=True) as client,
        pytest.raises(RuntimeError, match="lifespan"),
    ):
        client.get("/comps", params={"query": CARD})
