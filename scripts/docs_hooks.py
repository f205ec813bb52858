"""MkDocs hooks: the build fails when a public name of ``kuya_store`` has no docstring of its own.

The API reference is generated from the docstrings, so a name without one would appear
as a bare signature; ``tests/test_public_docs.py`` runs the same check in the suite.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def inherited_or_missing(package: ModuleType) -> list[str]:
    """The names in ``package.__all__`` whose docstring is empty or a base class's default."""
    missing = []
    for name in package.__all__:
        if name.startswith("__"):
            continue  # dunder data such as __version__ documents itself
        value = getattr(package, name)
        doc = value.__doc__
        if not (doc or "").strip():
            missing.append(name)
            continue
        # A class's docstring is its own; any other value's is its type's unless it has one.
        bases = value.__mro__[1:] if isinstance(value, type) else (type(value),)
        if any(doc == base.__doc__ for base in bases):
            missing.append(name)
    return missing


def on_pre_build(config: Any) -> None:
    """Stop the build before any page is rendered (MkDocs calls this)."""
    from mkdocs.exceptions import PluginError

    import kuya_store

    if missing := inherited_or_missing(kuya_store):
        raise PluginError(f"public names without a docstring of their own: {', '.join(missing)}")
