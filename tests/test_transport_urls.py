"""Redis URLs: one URL means one thing, so an option the transport ignores is refused."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from _helpers import dead_url, needs_openssl, self_signed_certificate
from daebus import Daebus, SetupError
from daebus.transport import (
    REDIS_URL_OPTIONS,
    TLS_URL_OPTIONS,
    check_url_options,
    transport_from_url,
)
from daebus.transport._endpoint import Endpoint
from daebus.transport.memory import MemoryTransport
from daebus.transport.redis import RedisTransport


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://user:secret@localhost/2?db=3",
        "redis://localhost?username=user&password=secret&db=1",
        "valkey://localhost/0?db=4",
        "unix:///tmp/redis.sock?db=2&password=secret",
        "rediss://localhost?ssl_cert_reqs=none&ssl_check_hostname=false",
        "valkeys://localhost?ssl_cert_reqs=optional&db=1",
    ],
)
def test_the_options_the_transport_honours_are_accepted(url: str) -> None:
    check_url_options(url)
    assert isinstance(transport_from_url(url), RedisTransport)


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("redis://localhost/0?client_name=svc&protocol=3", "client_name"),
        ("redis://localhost/0?protocol=3", "protocol"),
        ("redis://localhost?socket_timeout=1", "socket_timeout"),
        ("redis://localhost?health_check_interval=5", "health_check_interval"),
        ("redis://localhost?decode_responses=false", "decode_responses"),
        ("unix:///tmp/redis.sock?max_connections=2", "max_connections"),
        ("rediss://localhost?ssl_cert_reqs=none&ssl_min_version=3", "ssl_min_version"),
        ("redis://localhost?db=1&client_name=", "client_name"),  # named, even without a value
    ],
)
def test_an_option_the_transport_would_ignore_is_refused_by_name(url: str, option: str) -> None:
    with pytest.raises(SetupError, match=f"option '{option}' is not supported") as caught:
        transport_from_url(url)
    assert "db, password, username" in str(caught.value)  # and says what is supported


def test_tls_options_on_a_plain_url_are_refused() -> None:
    with pytest.raises(SetupError, match="'ssl_cert_reqs' applies to rediss:// URLs only"):
        transport_from_url("redis://localhost?ssl_cert_reqs=none")


def test_a_password_is_never_shown_in_the_refusal() -> None:
    with pytest.raises(SetupError) as caught:
        transport_from_url("redis://localhost?password=hunter2&client_name=svc")
    assert "hunter2" not in str(caught.value)


def test_memory_urls_are_not_redis_urls() -> None:
    check_url_options("memory://name?anything=1")
    assert isinstance(transport_from_url("memory://urls-test"), MemoryTransport)


def test_an_app_given_such_a_url_fails_to_start_at_once() -> None:
    app = Daebus("url-check")
    url = f"{dead_url()}?client_name=svc"
    with pytest.raises(SetupError, match="client_name"):
        app.start("url-check", redis_url=url, ready_timeout=10)
    assert not app.is_running()


# -- the accepted options are the ones Endpoint reads ------------------------------------


def test_every_accepted_option_changes_the_endpoint() -> None:
    plain = Endpoint.from_url("redis://localhost")
    given = {"db": "3", "password": "secret", "username": "user"}
    assert sorted(REDIS_URL_OPTIONS) == list(given)
    for option, value in given.items():
        endpoint = Endpoint.from_url(f"redis://localhost?{option}={value}")
        assert endpoint != plain, option
        assert str(getattr(endpoint, option)) == value


def test_every_accepted_tls_option_changes_the_tls_context(tmp_path: Path) -> None:
    tested = ["ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_check_hostname", "ssl_keyfile"]
    assert sorted(TLS_URL_OPTIONS) == tested  # each has its check below

    def context(query: str) -> ssl.SSLContext:
        made = Endpoint.from_url(f"rediss://localhost?{query}").ssl_context
        assert made is not None
        return made

    assert context("").verify_mode == ssl.CERT_REQUIRED
    assert context("ssl_cert_reqs=none").verify_mode == ssl.CERT_NONE
    assert context("ssl_check_hostname=false").check_hostname is False
    missing = tmp_path / "missing.pem"
    for option in ("ssl_ca_certs", "ssl_certfile"):
        with pytest.raises(FileNotFoundError):  # read: the file it names is opened
            context(f"{option}={missing}")


@needs_openssl
def test_the_key_file_is_read(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with pytest.raises(ssl.SSLError):  # a certificate without its key
        Endpoint.from_url(f"rediss://localhost?ssl_certfile={cert}")
    endpoint = Endpoint.from_url(f"rediss://localhost?ssl_certfile={cert}&ssl_keyfile={key}")
    assert endpoint.ssl_context is not None
