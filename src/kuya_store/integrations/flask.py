"""Flask: an extension that opens a :class:`~kuya_store.SyncCompsStore` for the app.

```python
from flask import Flask
from kuya_store.integrations.flask import KuyaStore

kuya = KuyaStore(fetchers={"sold": fetch_sold})
app = Flask(__name__)
app.config["KUYA_DATABASE_URL"] = "sqlite+aiosqlite:///./kuya_comps.db"
kuya.init_app(app)

@app.get("/comps")
def comps():
    return kuya.store.comps.search(request.args["q"]).model_dump(mode="json")
```

Settings come from ``app.config`` keys ``KUYA_<SETTING>`` (``KUYA_DATABASE_URL``,
``KUYA_REDIS_URL``, ``KUYA_MODE``, ...), then the environment, then the defaults.

One ``KuyaStore`` serves any number of apps (an app factory): each app gets its own store,
which lives as long as the app does. A store made before the server forks its workers
(``gunicorn --preload``) re-opens itself in each worker; see :class:`SyncCompsStore`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from kuya_store.settings import StoreSettings
from kuya_store.sync import SyncCompsStore

__all__ = ["EXTENSION_KEY", "KuyaStore"]

EXTENSION_KEY = "kuya_store"


def _config_settings(app: Flask) -> dict[str, Any]:
    fields = StoreSettings.model_fields
    found = {}
    for key, value in app.config.items():
        if key.startswith("KUYA_") and key[5:].lower() in fields:
            found[key[5:].lower()] = value
    return found


class KuyaStore:
    """The Flask extension: ``app.extensions["kuya_store"]`` is a :class:`SyncCompsStore`."""

    def __init__(
        self, app: Flask | None = None, *, create_schema: bool = False, **store_kwargs: Any
    ) -> None:
        self._create_schema = create_schema
        self._store_kwargs = store_kwargs
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Open the store for ``app``; it is flushed and closed with the app or at process exit."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"kuya-store is already set up on the app {app.name!r}")
        store = SyncCompsStore(**{**_config_settings(app), **self._store_kwargs})
        try:
            if self._create_schema:
                store.create_schema()
        except BaseException:
            store.close()
            raise
        # Only the app holds the store: one that is dropped closes it (SyncCompsStore closes
        # what nobody closed when it is collected or the process exits).
        app.extensions[EXTENSION_KEY] = store

    @property
    def store(self) -> SyncCompsStore:
        """The current app's store."""
        store: SyncCompsStore | None = current_app.extensions.get(EXTENSION_KEY)
        if store is None:
            raise RuntimeError(
                f"no kuya-store on the app {current_app.name!r}: call KuyaStore.init_app(app)"
            )
        return store

    @staticmethod
    def close(app: Flask) -> None:
        """Flush and close ``app``'s store now (also done when the app goes or at exit)."""
        store: SyncCompsStore | None = app.extensions.pop(EXTENSION_KEY, None)
        if store is not None:
            store.close()
