"""StoreSettings: the embedded default, environment fallbacks, secrets kept out of sight, bad values."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

import kuya_store as ks
from kuya_store.settings import DEFAULT_DATABASE_URL, redact_url

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KUYA_DATABASE_URL", "DATABASE_URL", "KUYA_REDIS_URL", "REDIS_URL", "KUYA_MODE"):
        monkeypatch.delenv(name, raising=False)


def test_embedded_default() -> None:
    settings = ks.StoreSettings()
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite+aiosqlite:///./kuya_comps.db"
    assert settings.redis_url is None
    assert settings.mode == "read_through"
    assert settings.sold_ttl == timedelta(minutes=30)
    assert settings.active_ttl == timedelta(minutes=5)
    assert settings.sold_fresh_for == timedelta(minutes=30)
    assert settings.active_fresh_for == timedelta(minutes=5)


def test_kuya_variables_win_over_generic_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://app:pw@db.internal:5432/comps")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/1")
    generic = ks.StoreSettings()
    # A platform's postgres:// URL is accepted and given the async driver.
    assert generic.database_url == "postgresql+asyncpg://app:pw@db.internal:5432/comps"
    assert generic.redis_url == "redis://cache:6379/1"
    monkeypatch.setenv("KUYA_DATABASE_URL", "sqlite+aiosqlite:///./other.db")
    monkeypatch.setenv("KUYA_SOLD_TTL", "PT10M")
    monkeypatch.setenv("KUYA_MODE", "dual_write")
    specific = ks.StoreSettings()
    assert specific.database_url == "sqlite+aiosqlite:///./other.db"
    assert specific.sold_ttl == timedelta(minutes=10)
    assert specific.mode == "dual_write"


def test_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUYA_DATABASE_URL", "sqlite+aiosqlite:///./env.db")
    assert (
        ks.StoreSettings(database_url="sqlite:///arg.db").database_url
        == "sqlite+aiosqlite:///arg.db"
    )


def test_password_never_in_repr_str_or_store_repr() -> None:
    settings = ks.StoreSettings(
        database_url=f"postgresql+asyncpg://kuya:{SECRET}@db:5432/comps",
        redis_url=f"redis://default:{SECRET}@cache:6379/0",
    )
    for text in (
        repr(settings),
        str(settings),
        repr(settings.database),
        redact_url(settings.redis_url),
    ):
        assert SECRET not in text
        assert "***" in text
    store = ks.CompsStore(settings)
    assert SECRET not in repr(store)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"database_url": f"postgresql+asyncpg://kuya:{SECRET}@db:notaport/x"}, "database_url"),
        ({"database_url": f"mysql://root:{SECRET}@db/x"}, "database_url"),
        ({"database_url": f"::{SECRET}::"}, "database_url"),
        ({"database_url": ""}, "database_url"),
        ({"database_url": f"postgresql://kuya:{SECRET}@db"}, "database_url"),
        ({"redis_url": f"redis://:{SECRET}@cache:port/0"}, "redis_url"),
        ({"redis_url": f"http://:{SECRET}@cache/0"}, "redis_url"),
        ({"redis_url": f"redis://:{SECRET}@cache:6379/zero"}, "redis_url"),
        ({"sold_ttl": -5}, "sold_ttl"),
        ({"active_ttl": 0}, "active_ttl"),
        ({"sold_fresh_for": "-PT1M"}, "sold_fresh_for"),
        ({"sold_min_fresh_for": 0}, "sold_min_fresh_for"),
        ({"sold_min_fresh_for": "PT25H"}, "sold_max_fresh_for"),
        ({"pool_size": 0}, "pool_size"),
        ({"mode": "write_only"}, "mode"),
        ({"slow_query_threshold": "soon"}, "slow_query_threshold"),
        ({"no_such_knob": 1}, "no_such_knob"),
    ],
)
def test_bad_settings_name_the_field_and_hide_secrets(
    overrides: dict[str, object], field: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ks.InvalidInputError) as info:
        ks.StoreSettings(**overrides)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.field == field
    assert str(error).startswith(f"{field}:")
    assert SECRET not in str(error)
    assert error.__cause__ is None and error.__suppress_context__  # no driver stack trace
    assert SECRET not in caplog.text


def test_store_overrides_are_validated_too() -> None:
    with pytest.raises(ks.InvalidInputError, match="^near_cache_size"):
        ks.CompsStore(near_cache_size=-1)


def test_redact_url_handles_every_shape() -> None:
    assert redact_url(None) is None
    assert redact_url("sqlite+aiosqlite:///./x.db") == "sqlite+aiosqlite:///./x.db"
    assert redact_url(f"rediss://u:{SECRET}@h:6380/2") == "rediss://u:***@h:6380/2"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert SECRET not in (redact_url(f"garbage:{SECRET}") or "")
