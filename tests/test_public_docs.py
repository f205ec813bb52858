"""Every public name has a docstring of its own: the API reference is made of them."""

from __future__ import annotations

import enum
import importlib.util
import types
from pathlib import Path

from pydantic import BaseModel

import kuya_store as ks

HOOKS = Path(__file__).resolve().parent.parent / "scripts" / "docs_hooks.py"


def _hooks() -> types.ModuleType:
    # The same check fails the docs build; it is loaded from there so the two cannot drift.
    spec = importlib.util.spec_from_file_location("docs_hooks", HOOKS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_name_in_all_has_a_docstring_of_its_own() -> None:
    assert _hooks().inherited_or_missing(ks) == []
    for name in ks.__all__:
        if not name.startswith("__"):
            first_line = (getattr(ks, name).__doc__ or "").strip().splitlines()[0]
            assert len(first_line.split()) >= 3, f"{name}: {first_line!r} says too little"


def test_a_bare_class_an_inherited_docstring_and_a_bare_function_are_caught() -> None:
    class Bare:
        pass

    class BareError(ks.KuyaStoreError):
        pass

    class BareModel(BaseModel):
        pass

    class BareEnum(enum.StrEnum):
        A = "a"

    class Documented(Bare):
        """A class that says what it is for."""

    def bare() -> None:
        pass

    package = types.ModuleType("fake")
    members = {
        "Bare": Bare,
        "BareError": BareError,
        "BareModel": BareModel,
        "BareEnum": BareEnum,
        "Documented": Documented,
        "bare": bare,
        "DEFAULT_TIMEOUT": 5.0,  # a plain value carries only its type's docstring
        "__version__": "1.0",
    }
    vars(package).update(members, __all__=list(members))
    missing = _hooks().inherited_or_missing(package)
    assert missing == ["Bare", "BareError", "BareModel", "BareEnum", "bare", "DEFAULT_TIMEOUT"]
