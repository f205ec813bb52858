"""FastAPI: a lifespan that opens and closes the store around the app's own, and a dependency.

```python
from fastapi import Depends, FastAPI
from kuya_store.integrations.fastapi import StoreDep, lifespan

app = FastAPI(lifespan=lifespan(app_lifespan=my_lifespan, fetchers={"sold": fetch_sold}))

@app.get("/comps")
async def comps(q: str, store: StoreDep):
    return await store.comps.search(q)
```

The store opens before the app's own start-up code runs and closes after its shut-down
code, so both can use it. FastAPI runs ``@app.on_event`` handlers only when the app has no
lifespan of its own; the store's lifespan keeps that rule as if it were not there: without
``app_lifespan`` it runs those handlers itself, and :func:`attach` wraps whatever the app
already had.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.applications import Starlette

from kuya_store.store import CompsStore

__all__ = ["STATE_KEY", "AppLifespan", "StoreDep", "attach", "get_store", "lifespan", "store_of"]

STATE_KEY = "kuya_store"
TEST_FACTORY_KEY = "kuya_store_test_factory"
"""``app.state`` attribute a test sets to a store factory the lifespan uses instead of its
own (the ``kuya_app`` fixture of :mod:`kuya_store.testing` does)."""

AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]
"""What FastAPI takes as ``lifespan``: ``app -> async context manager`` yielding state or None."""


def _as_context(app_lifespan: Callable[[Any], Any]) -> AppLifespan:
    """An ``@asynccontextmanager`` lifespan as it is; a bare async generator function wrapped."""
    if inspect.isasyncgenfunction(app_lifespan):
        return asynccontextmanager(app_lifespan)
    return app_lifespan


async def _run_handlers(handlers: list[Callable[[], Any]]) -> None:
    for handler in handlers:
        outcome = handler()
        if inspect.isawaitable(outcome):
            await outcome


@asynccontextmanager
async def _event_handlers(app: Starlette) -> AsyncIterator[None]:
    """The app's ``on_event`` handlers, which FastAPI skips once a lifespan is set."""
    await _run_handlers(list(getattr(app.router, "on_startup", [])))
    try:
        yield
    finally:
        await _run_handlers(list(getattr(app.router, "on_shutdown", [])))


def lifespan(
    factory: Callable[[], CompsStore] | None = None,
    *,
    app_lifespan: Callable[[Any], Any] | None = None,
    create_schema: bool = False,
    **store_kwargs: Any,
) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """A FastAPI ``lifespan``: the store opens first and closes last, around the app's own.

    Args:
        factory: builds the store; by default ``CompsStore(**store_kwargs)``.
        app_lifespan: the app's own lifespan (an ``@asynccontextmanager`` function taking the
            app, or an async generator function); it runs inside, with the store open and on
            ``app.state.kuya_store``, and the state it yields is kept. Without it, the app's
            ``on_event`` handlers run there instead.
        create_schema: migrate the database to head at start-up.
    """
    inner = _as_context(app_lifespan) if app_lifespan is not None else _event_handlers

    @asynccontextmanager
    async def _lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        substitute = getattr(app.state, TEST_FACTORY_KEY, None)
        if substitute is not None:
            store = substitute()
        else:
            store = factory() if factory is not None else CompsStore(**store_kwargs)
        await store.start()
        try:
            if create_schema or substitute is not None:
                await store.create_schema()
            setattr(app.state, STATE_KEY, store)
            async with inner(app) as state:
                yield {**(state or {}), STATE_KEY: store}
        finally:
            try:
                await store.close()
            finally:
                if getattr(app.state, STATE_KEY, None) is store:
                    delattr(app.state, STATE_KEY)

    return _lifespan


def attach(
    app: Starlette,
    factory: Callable[[], CompsStore] | None = None,
    *,
    create_schema: bool = False,
    **store_kwargs: Any,
) -> None:
    """Give an app built elsewhere a store, around whatever lifespan it already has.

    Wraps ``app.router.lifespan_context``: the app's lifespan (or, without one, FastAPI's
    running of its ``on_event`` handlers) runs as before, inside the store's.
    """
    app.router.lifespan_context = lifespan(
        factory,
        app_lifespan=app.router.lifespan_context,
        create_schema=create_schema,
        **store_kwargs,
    )


def store_of(app: Starlette) -> CompsStore:
    """The app's open store, e.g. in its own lifespan code."""
    store = getattr(app.state, STATE_KEY, None)
    if not isinstance(store, CompsStore):
        raise RuntimeError(
            "no kuya-store on this app: pass lifespan=kuya_store.integrations.fastapi.lifespan(...)"
            " or call kuya_store.integrations.fastapi.attach(app, ...)"
        )
    return store


async def get_store(request: Request) -> CompsStore:
    """Dependency giving the app's store (opened by :func:`lifespan` or :func:`attach`).

    A plain coroutine, not a generator: the store outlives the request, so there is
    nothing to tear down, and FastAPI runs a generator dependency in an exit stack of its
    own on every request.
    """
    store = getattr(request.state, STATE_KEY, None)
    return store if isinstance(store, CompsStore) else store_of(request.app)


StoreDep = Annotated[CompsStore, Depends(get_store)]
"""``store: StoreDep`` in a route's parameters."""
