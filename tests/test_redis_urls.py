"""Redis URLs for one server, Sentinel and Cluster: parsed, validated, and never leaking a password."""

from __future__ import annotations

import pytest

import kuya_store as ks
from kuya_store.settings import redact_url
from kuya_store.tiers.redis_urls import parse_redis_url

SECRET = "hunter2-s3cr3t"


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    target = parse_redis_url(f"redis+sentinel://app:{SECRET}@s1:26379,s2,[::1]:26380/kuya/2")
    assert target.kind == "sentinel"
    assert target.nodes == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (target.service, target.db, target.username, target.password) == (
        "kuya",
        2,
        "app",
        SECRET,
    )
    assert parse_redis_url("redis+sentinel://s1:26379/kuya").db == 0


def test_a_cluster_url_names_its_seed_nodes() -> None:
    target = parse_redis_url(f"redis+cluster://:{SECRET}@c1:7000,c2:7001,c3")
    assert target.kind == "cluster"
    assert target.nodes == (("c1", 7000), ("c2", 7001), ("c3", 6379))
    assert target.password == SECRET and target.username is None
    assert parse_redis_url("redis+cluster://c1:7000/0").db == 0


def test_a_percent_encoded_password_is_decoded() -> None:
    assert parse_redis_url("redis+cluster://:p%40ss%3Aword@c1:7000").password == "p@ss:word"


def test_single_server_urls_keep_working() -> None:
    assert parse_redis_url("redis://cache:6380/3").nodes == (("cache", 6380),)
    assert parse_redis_url("redis://cache:6380/3").db == 3
    assert parse_redis_url("rediss://cache").tls is True
    assert parse_redis_url("unix:///run/redis.sock?db=1").socket_path == "/run/redis.sock"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"redis+sentinel://:{SECRET}@s1:26379,s2:26379", "names no master service"),
        (f"redis+sentinel://:{SECRET}@s1:26379/kuya/zero", "not a non-negative integer"),
        (f"redis+cluster://:{SECRET}@c1:7000/1", "database other than 0"),
        (f"redis+cluster://:{SECRET}@c1:port", "bad host or port"),
        (f"redis+cluster://:{SECRET}@c1:70000", "bad host or port"),
        (f"redis://:{SECRET}@h1:6379,h2:6379/0", "names several hosts"),
        (f"redis+sentinel://:{SECRET}@/kuya", "names no host"),
        (f"memcached://:{SECRET}@m1:11211", "unsupported scheme"),
    ],
)
def test_bad_urls_are_refused_naming_the_setting_without_the_password(
    url: str, reason: str
) -> None:
    with pytest.raises(ks.InvalidInputError) as info:
        ks.StoreSettings(redis_url=url)
    assert info.value.field == "redis_url"
    assert reason in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"redis+sentinel://app:{SECRET}@s1:26379,s2:26380/kuya/0",
            "redis+sentinel://app:***@s1:26379,s2:26380/kuya/0",
        ),
        (f"redis+cluster://:{SECRET}@c1:7000,c2:7001", "redis+cluster://:***@c1:7000,c2:7001"),
        (f"redis://h:6379/0?password={SECRET}&db=1", "redis://h:6379/0?password=***&db=1"),
        (f"redis://h?password={SECRET}", "redis://h?password=***"),
        ("redis+cluster://c1:7000,c2:7001", "redis+cluster://c1:7000,c2:7001"),
    ],
)
def test_passwords_are_redacted_in_every_shape(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    settings = ks.StoreSettings(redis_url=url)
    for text in (repr(settings), str(settings), repr(settings.redis_target)):
        assert SECRET not in text
    assert SECRET not in repr(ks.CompsStore(settings))
