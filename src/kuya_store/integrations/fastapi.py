"""FastAPI: a lifespan that opens and closes the store, and a dependency that hands it out.

```python
from fastapi import Depends, FastAPI
from kuya_store.integrations.fastapi import StoreDep, lifespan

app = FastAPI(lifespan=lifespan(fetchers={"sold": fetch_sold}, create_schema=True))

@app.get("/comps")
async def comps(q: str, store: StoreDep):
    return await store.comps.search(q)
```
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from kuya_store.store import CompsStore

__all__ = ["STATE_KEY", "StoreDep", "get_store", "lifespan"]

STATE_KEY = "kuya_store"


def lifespan(
    factory: Callable[[], CompsStore] | None = None,
    *,
    create_schema: bool = False,
    **store_kwargs: Any,
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    """A FastAPI ``lifespan``: the store starts with the app and is flushed and closed with it.

    Args:
        factory: builds the store; by default ``CompsStore(**store_kwargs)``.
        create_schema: migrate the database to head at start-up.
    """

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        store = factory() if factory is not None else CompsStore(**store_kwargs)
        await store.start()
        try:
            if create_schema:
                await store.create_schema()
            setattr(app.state, STATE_KEY, store)
            yield {STATE_KEY: store}
        finally:
            await store.close()

    return _lifespan


async def get_store(request: Request) -> AsyncIterator[CompsStore]:
    """Dependency yielding the app's store (opened by :func:`lifespan`)."""
    store = getattr(request.state, STATE_KEY, None) or getattr(request.app.state, STATE_KEY, None)
    if store is None:
        raise RuntimeError(
            "no kuya-store on this app: pass lifespan=kuya_store.integrations.fastapi.lifespan(...)"
        )
    yield store


StoreDep = Annotated[CompsStore, Depends(get_store)]
"""``store: StoreDep`` in a route's parameters."""
