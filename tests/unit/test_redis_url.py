"""registry.redis_url: the `redis+sentinel://` form and credential-free URLs for logs."""

from __future__ import annotations

import pytest

from gateway.settings import Settings
from registry.redis_url import describe_url, is_sentinel, parse_sentinel_url


def test_sentinel_url_parses_hosts_service_db_and_passwords() -> None:
    url = "redis+sentinel://:s3cret@10.0.0.1:26379,[::1]:26380/loragate/3?sentinel_password=x"
    spec = parse_sentinel_url(url)
    assert spec.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert spec.service == "loragate"
    assert spec.db == 3
    assert spec.password == "s3cret"
    assert spec.username is None
    assert spec.sentinel_password == "x"
    assert is_sentinel(url)


def test_sentinel_url_database_defaults_to_zero() -> None:
    assert parse_sentinel_url("redis+sentinel://h:26379/svc").db == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379", "service name"),
        ("redis+sentinel://h/svc", "host:port"),
        ("redis+sentinel://h:26379/svc/zero", "not a number"),
        ("redis://h:6379/0", "not a redis"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sentinel_url(url)


def test_urls_for_logs_carry_no_password() -> None:
    assert describe_url("redis://:pw@redis:6379/0") == "redis://redis:6379/0"
    described = describe_url("redis+sentinel://:pw@a:1,b:2/svc/1")
    assert described == "redis+sentinel://a:1,b:2/svc/1"
    assert "pw" not in described


def test_writes_wait_for_a_replica_behind_sentinel_by_default() -> None:
    assert Settings(redis_url="redis+sentinel://a:1/svc").wait_replicas == 1
    assert Settings(redis_url="redis://a:6379/0").wait_replicas == 0
    assert Settings(redis_url="redis+sentinel://a:1/svc", redis_wait_replicas=0).wait_replicas == 0
