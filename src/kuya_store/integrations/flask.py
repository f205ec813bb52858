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
"""

from __future__ import annotations

import atexit
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
        """Open the store for ``app``; it is flushed and closed when the process exits."""
        store = SyncCompsStore(**{**_config_settings(app), **self._store_kwargs})
        if self._create_schema:
            store.create_schema()
        app.extensions[EXTENSION_KEY] = store
        atexit.register(store.close)

    @property
    def store(self) -> SyncCompsStore:
        """The current app's store."""
        store: SyncCompsStore = current_app.extensions[EXTENSION_KEY]
        return store

    @staticmethod
    def close(app: Flask) -> None:
        """Flush and close ``app``'s store now (also done at process exit)."""
        store: SyncCompsStore | None = app.extensions.pop(EXTENSION_KEY, None)
        if store is not None:
            store.close()
