"""gateway/smtp_setup.py: a connection's protocol set up without aiosmtpd's per-connection
reflection is the protocol aiosmtpd's own SMTP.__init__ would have made."""

from __future__ import annotations

import asyncio
import inspect
import ssl
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from gateway import smtp_setup
from gateway.metrics import Metrics
from gateway.settings import ClientSettings, hash_password
from gateway.smtp_handler import AuthGuard, GatewaySMTP, Handler, SessionLimits, Sessions

LIMITS = SessionLimits(
    max_message_size=64 * 1024, max_recipients=3, command_timeout=5.0, data_timeout=5.0,
    max_line_length=998,
)  # fmt: skip


def make_handler() -> Handler:
    return Handler(
        clients=[
            ClientSettings(
                "app", password_hash=hash_password("pw"), sender_domains=("caisse.example",)
            )
        ],
        signing_domains=lambda: ["caisse.example"],
        sealer=None,  # type: ignore[arg-type]  # never reached while setting up
        spool=None,  # type: ignore[arg-type]
        metrics=Metrics(),
        auth_guard=AuthGuard(3, 5, lockout=60.0, delay=0.01),
        max_recipients=3,
        max_line_length=998,
    )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("gateway.test").configure_cert(context)
    return context


RELAY_OPTIONS: dict[str, Any] = {
    "tls_context": None, "require_starttls": False, "auth_required": False,
    "auth_require_tls": True, "proxy_protocol_timeout": None,
}  # fmt: skip


def listener_options(tls: ssl.SSLContext) -> dict[str, dict[str, Any]]:
    """What server.py passes for each kind of listener."""
    return {
        "relay": {
            "tls_context": tls, "require_starttls": False, "auth_required": False,
            "auth_require_tls": True, "proxy_protocol_timeout": None,
        },
        "relay behind a balancer": {
            "tls_context": None, "require_starttls": False, "auth_required": False,
            "auth_require_tls": True, "proxy_protocol_timeout": 5.0,
        },
        "submission": {
            "tls_context": tls, "require_starttls": True, "auth_required": True,
            "auth_require_tls": True, "proxy_protocol_timeout": None,
        },
        "smtps": {
            "tls_context": None, "require_starttls": False, "auth_required": True,
            "auth_require_tls": False, "proxy_protocol_timeout": None,
        },
    }  # fmt: skip


def build(
    handler: Handler, loop: asyncio.AbstractEventLoop, options: dict[str, Any]
) -> tuple[GatewaySMTP, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        protocol = GatewaySMTP(
            handler,
            sessions=Sessions(20, 10),
            limits=LIMITS,
            hostname="gateway.test",
            ident="Sealpost",
            loop=loop,
            **options,
        )
    return protocol, [f"{w.category.__name__}: {w.message}" for w in caught]


def normalised(value: Any, protocol: GatewaySMTP, shared: tuple[object, ...]) -> Any:
    """`value` with the protocol itself, its own bound methods and wrappers made
    comparable between two protocols; objects made per connection reduced to their type."""
    if value is protocol:
        return "<the protocol>"
    if any(value is s for s in shared):
        return value
    if inspect.ismethod(value):
        return ("method", normalised(value.__self__, protocol, shared), value.__func__)
    if hasattr(value, "__wrapped__"):
        return ("wrapped", normalised(value.__wrapped__, protocol, shared))
    if isinstance(value, dict):
        return {k: normalised(v, protocol, shared) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return (type(value), [normalised(v, protocol, shared) for v in value])
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    return type(value)


def state(protocol: GatewaySMTP, shared: tuple[object, ...]) -> dict[str, Any]:
    return {k: normalised(v, protocol, shared) for k, v in vars(protocol).items()}


@pytest.mark.parametrize("listener", ["relay", "relay behind a balancer", "submission", "smtps"])
def test_a_protocol_is_set_up_as_aiosmtpds_own_init_would(
    listener: str,
    loop: asyncio.AbstractEventLoop,
    tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = make_handler()
    options = listener_options(tls)[listener]
    shared = (handler, loop, tls, LIMITS)
    build(handler, loop, options)  # the first of its kind: reflection, then cached
    cached, cached_warnings = build(handler, loop, options)
    with monkeypatch.context() as patch:
        patch.setattr(smtp_setup, "COPIED_VERSION", "another aiosmtpd")
        own, own_warnings = build(handler, loop, options)
    assert state(cached, shared) == state(own, shared)
    assert cached_warnings == own_warnings
    # The tables the reflection fills, spelled out.
    assert set(cached._smtp_methods) >= {"EHLO", "MAIL", "RCPT", "DATA", "AUTH", "STARTTLS"}
    assert cached._smtp_methods["AUTH"] == cached.smtp_AUTH
    assert cached._handle_hooks["AUTH"] == handler.handle_AUTH
    assert {m: a.is_builtin for m, a in cached._auth_methods.items()} == {
        "LOGIN": True,
        "PLAIN": True,
    }
    assert cached._auth_methods["PLAIN"].method == cached.auth_PLAIN
    assert cached._ehlo_hook_ver == "new"
    reader = getattr(cached, "_stream_reader")  # noqa: B009 (not in the stubs)
    assert type(reader).__name__ == "_StrictLineReader"


def test_the_reflection_runs_once_per_class_and_handler(
    loop: asyncio.AbstractEventLoop, tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = inspect.getmembers

    def counting(obj: object) -> list[tuple[str, Any]]:
        calls.append(obj)
        return real(obj)

    monkeypatch.setattr(inspect, "getmembers", counting)
    options = listener_options(tls)["relay"]
    first, second = make_handler(), make_handler()
    for _ in range(3):
        build(first, loop, options)
    assert len(calls) == 2  # the protocol and the handler, once
    protocol, _ = build(second, loop, options)
    assert len(calls) == 4  # another handler is reflected on anew
    assert protocol._handle_hooks["DATA"] == second.handle_DATA
