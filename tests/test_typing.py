"""The package is typed for its users: mypy --strict sees real types, sync and async alike."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import kuya_store as ks
from kuya_store import sync_parts
from kuya_store.store import CompsStore

PARTS = {
    "comps": (ks.CompsRepository, sync_parts.SyncCompsRepository),
    "analytics": (ks.Analytics, sync_parts.SyncAnalytics),
    "accounts": (ks.Accounts, sync_parts.SyncAccounts),
    "backup": (ks.Backup, sync_parts.SyncBackup),
    "collections": (ks.Collections, sync_parts.SyncCollections),
    "cards": (ks.Cards, sync_parts.SyncCards),
}

# What an app would write: every part of the sync store, and the async store beside it.
# ``assert_type`` fails on ``Any``, so each line proves a real type reaches the caller.
APP = """
from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import assert_type

import kuya_store as ks


def fetch_sold(request: ks.FetchRequest) -> ks.FetchResult:
    return ks.FetchResult(listings=[ks.Listing(item_id="1", title=request.query, price=Decimal("1.00"))])


async def fetch_active(request: ks.FetchRequest) -> ks.FetchResult:
    return ks.FetchResult(listings=[])


def blocking(url: str) -> None:
    fetchers: dict[ks.SearchType, ks.Fetcher] = {
        ks.SearchType.SOLD: fetch_sold,  # a plain function
        ks.SearchType.ACTIVE: fetch_active,  # a coroutine function
    }
    with ks.SyncCompsStore(database_url=url, fetchers=fetchers) as store:
        assert_type(store.comps.search("2023 topps chrome wemby 1"), ks.CompsResult)
        assert_type(store.comps.search("x", ks.SearchType.ACTIVE, refresh=True).source, ks.Source)
        assert_type(store.analytics.price_history("wemby", date(2026, 1, 1)), list[ks.PriceSnapshot])
        assert_type(store.analytics.search_stats(), ks.SearchStats)
        user = store.accounts.create_user("a@example.com", "a long passphrase")
        assert_type(user, ks.User)
        assert_type(store.accounts.authenticate("a@example.com", "x"), ks.User | None)
        assert_type(store.backup.count_snapshots(), int)
        assert_type(store.collections.list_binders(user.id), list[ks.Binder])
        assert_type(store.cards.search("wemby"), list[ks.CardMatch])
        assert_type(store.health(), ks.Health)
        assert_type(store.maintain(), ks.MaintenanceReport)
        assert_type(store.flush(5.0), bool)
        assert_type(store.settings, ks.StoreSettings)
        store.comps.register_fetcher(ks.SearchType.SOLD, fetch_sold)


async def awaiting(url: str) -> None:
    async with ks.CompsStore(database_url=url, fetchers={"sold": fetch_active}) as store:
        assert_type(await store.comps.search("wemby"), ks.CompsResult)
        assert_type(await store.backup.count_snapshots(), int)
"""

MISTAKES = """
from __future__ import annotations

import kuya_store as ks


def mistakes(store: ks.SyncCompsStore) -> None:
    store.comps.search(42)
    store.comps.serach("wemby")
    total: str = store.backup.count_snapshots()
    store.accounts.create_user("a@example.com")
    ks.SyncCompsStore(fetchers={ks.SearchType.SOLD: "not a fetcher"})
"""


def test_every_method_of_every_async_part_has_its_typed_sync_twin() -> None:
    for attribute, (async_part, sync_part) in PARTS.items():
        assert sync_part._attribute == attribute
        for name, member in inspect.getmembers(async_part):
            if name.startswith("_") or not callable(member):
                continue
            declared = inspect.getattr_static(sync_part, name, None)
            assert isinstance(declared, sync_parts._Blocking | sync_parts._Same | staticmethod), (
                f"{sync_part.__name__} does not name {name}"
            )
            if inspect.iscoroutinefunction(member):
                assert isinstance(declared, sync_parts._Blocking), f"{name} must block"
    hints = inspect.get_annotations(ks.SyncCompsStore, eval_str=True)
    for attribute, (_, sync_part) in PARTS.items():
        assert hints[attribute] is sync_part
    # The store's own methods; ``start`` is what constructing the sync store does.
    for name, member in inspect.getmembers(CompsStore):
        if not name.startswith("_") and callable(member) and name != "start":
            assert name in vars(ks.SyncCompsStore), f"SyncCompsStore does not name {name}"


def test_the_sync_store_takes_the_arguments_of_the_async_one() -> None:
    sync_params = inspect.signature(ks.SyncCompsStore.__init__).parameters
    async_params = inspect.signature(CompsStore.__init__).parameters
    assert list(sync_params.values()) == list(async_params.values())


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Runs mypy --strict over one module of a throwaway project, as its CI would."""
    root = tmp_path_factory.mktemp("downstream")
    cache = root / "mypy-cache"
    packages = sysconfig.get_paths()["purelib"]

    def run(name: str, code: str, *, site: Path) -> subprocess.CompletedProcess[str]:
        project = root / name
        project.mkdir()
        (project / "app.py").write_text(textwrap.dedent(code))
        # The project's interpreter sees the package only in ``site``, as installed
        # packages are seen: without site processing, the ``.pth`` of an editable install
        # of this checkout is not read, so no other copy of kuya_store can stand in.
        python = project / "python"
        path = f"{site}{os.pathsep}{packages}"
        python.write_text(f'#!/bin/sh\nPYTHONPATH="{path}" exec "{sys.executable}" -S "$@"\n')
        python.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
        command = [sys.executable, "-m", "mypy", "--strict", "--python-executable", str(python)]
        command += ["--cache-dir", str(cache), "--no-error-summary", "--show-error-codes"]
        return subprocess.run(
            [*command, "app.py"], cwd=project, env=env, capture_output=True, text=True, timeout=600
        )

    return run


def _installed(root: Path, *, marked: bool) -> Path:
    """A copy of this package laid out as in site-packages, with or without ``py.typed``."""
    site = root / ("site-typed" if marked else "site-unmarked")
    package = site / "kuya_store"
    shutil.copytree(Path(ks.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    if not marked:
        (package / "py.typed").unlink()
    return site


def test_a_downstream_project_type_checks_against_the_package(mypy_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert (Path(ks.__file__).parent / "py.typed").is_file()
    done = mypy_run("clean", APP, site=_installed(tmp_path, marked=True))
    assert done.returncode == 0, done.stdout + done.stderr


def test_mistakes_in_a_downstream_project_are_reported(mypy_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    done = mypy_run("mistakes", MISTAKES, site=_installed(tmp_path, marked=True))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    expected = {
        8: "[arg-type]",  # an int where the query goes
        9: "[attr-defined]",  # a misspelt method is not waved through as Any
        10: "[assignment]",  # the count is an int
        11: "[call-arg]",  # the password is missing
        12: "[arg-type]",  # a string is not a fetcher
    }
    for line, code in expected.items():
        assert any(f"app.py:{line}:" in out and code in out for out in lines), (line, lines)


def test_without_the_py_typed_marker_the_package_would_not_be_checked(  # type: ignore[no-untyped-def]
    mypy_run, tmp_path: Path
) -> None:
    done = mypy_run("unmarked", APP, site=_installed(tmp_path, marked=False))
    assert done.returncode == 1
    assert "missing library stubs or py.typed marker" in done.stdout, done.stdout
