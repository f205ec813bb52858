"""Lua scripts run by their digest, sent whole only to a node that lacks them.

The hot tier (:mod:`kuya_store.tiers.redis`) and the write journal
(:mod:`kuya_store.tiers.journal`) run their scripts through :class:`Script`.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["Script"]


class Script:
    """A Lua script run by its digest, sent in full only to a node that lacks it.

    Unlike redis-py's ``register_script``, a missing script is not loaded on every
    Cluster primary first, so a node that is down cannot fail a script on another.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        # Imported here: redis is an optional extra, and this module loads with the package.
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.text, len(keys), *keys, *args)

    def queue(self, pipe: Any, keys: list[str], args: list[Any], whole: bool = False) -> None:
        """Add a run to a pipeline: by digest, or ``whole`` for a node that said NOSCRIPT."""
        if whole:
            pipe.eval(self.text, len(keys), *keys, *args)
        else:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
