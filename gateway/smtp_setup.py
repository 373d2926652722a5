"""Setting up an aiosmtpd SMTP protocol per connection without its per-connection
reflection.

aiosmtpd 1.4.6's `SMTP.__init__` finds its command methods, AUTH mechanisms and handler
hooks by reflection on every connection (`inspect.getmembers` of the protocol and the
handler, `dir` of both, `inspect.signature` of the EHLO hook): about a tenth of a
millisecond, 4% of the gateway's CPU when each message comes on its own connection. What
it finds depends only on the protocol's class and the handler, so `setup` finds it once
per (class, handler) and otherwise sets the same attributes `SMTP.__init__` sets, for the
options the gateway passes. Bound methods are still looked up per connection (by name),
so each connection's tables hold its own methods.

`setup` is a copy of that `__init__`; it applies to the aiosmtpd version it was read
from, and any other falls back to aiosmtpd's own. tests/gateway/test_smtp_setup.py
proves both leave the same attributes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from warnings import warn

import aiosmtpd
from aiosmtpd.smtp import SMTP, _AuthMechAttr, login_always_fail

# The aiosmtpd whose SMTP.__init__ `setup` repeats.
COPIED_VERSION = "1.4.6"

# aiosmtpd's own logger: its warnings and the AUTH notice come out where they always did.
_aiosmtpd_log = logging.getLogger("mail.log")


@dataclass(frozen=True)
class _Reflection:
    """What aiosmtpd's reflection finds for one protocol class and one handler."""

    handler: Any  # kept so that the handler's id is never reused while cached
    # (mechanism, attribute name, whether the protocol's own): the protocol's own are
    # looked up on each connection, the handler's are the same for every one.
    auth: tuple[tuple[str, str, bool], ...]
    auth_notice: str
    handle_hooks: dict[str, Any]
    ehlo_hook_ver: str | None
    smtp_names: tuple[tuple[str, str], ...]  # (command, attribute name)


_cache: dict[tuple[type, int], _Reflection] = {}
_cache_lock = threading.Lock()


def _reflect(protocol: SMTP, handler: Any) -> _Reflection:
    """aiosmtpd 1.4.6's reflection, as SMTP.__init__ does it."""
    auth: dict[str, tuple[str, bool]] = {}
    for obj in (protocol, handler):
        for name, member in inspect.getmembers(obj):
            if name.startswith("auth_"):
                mechanism = getattr(
                    member,
                    "__auth_mechanism_name__",
                    name.replace("auth_", "").replace("__", "-"),
                )
                auth[mechanism] = (name, obj is protocol)
    notice = "Available AUTH mechanisms: " + " ".join(
        m + "(builtin)" if builtin else m for m, (_, builtin) in sorted(auth.items())
    )
    hooks = {
        m.replace("handle_", ""): getattr(handler, m)
        for m in dir(handler)
        if m.startswith("handle_")
    }
    ehlo_hook = hooks.get("EHLO")
    ehlo_hook_ver: str | None = None
    if ehlo_hook is not None:
        count = len(inspect.signature(ehlo_hook).parameters)
        if count == 4:
            ehlo_hook_ver = "old"
        elif count == 5:
            ehlo_hook_ver = "new"
        else:
            raise RuntimeError("Unsupported EHLO Hook")
    return _Reflection(
        handler=handler,
        auth=tuple((m, name, builtin) for m, (name, builtin) in auth.items()),
        auth_notice=notice,
        handle_hooks=hooks,
        ehlo_hook_ver=ehlo_hook_ver,
        smtp_names=tuple(
            (m.replace("smtp_", ""), m) for m in dir(protocol) if m.startswith("smtp_")
        ),
    )


def _reflection(protocol: SMTP, handler: Any) -> _Reflection:
    key = (type(protocol), id(handler))
    found = _cache.get(key)
    if found is None or found.handler is not handler:
        found = _reflect(protocol, handler)
        with _cache_lock:
            _cache[key] = found
    return found


def setup(
    protocol: SMTP,
    handler: Any,
    reader: Callable[[asyncio.AbstractEventLoop], asyncio.StreamReader],
    *,
    data_size_limit: int | None,
    enable_SMTPUTF8: bool,
    decode_data: bool,
    hostname: str,
    ident: str | None,
    tls_context: ssl.SSLContext | None,
    require_starttls: bool,
    timeout: float,
    auth_required: bool,
    auth_require_tls: bool,
    proxy_protocol_timeout: float | None,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Set `protocol` up as `SMTP.__init__(handler, ...)` would, its stream reader made
    by `reader`."""
    if aiosmtpd.__version__ != COPIED_VERSION:
        SMTP.__init__(
            protocol,
            handler,
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=enable_SMTPUTF8,
            decode_data=decode_data,
            hostname=hostname,
            ident=ident,
            tls_context=tls_context,
            require_starttls=require_starttls,
            timeout=timeout,
            auth_required=auth_required,
            auth_require_tls=auth_require_tls,
            proxy_protocol_timeout=proxy_protocol_timeout,
            loop=loop,
        )
        asyncio.StreamReaderProtocol.__init__(
            protocol, reader(loop), client_connected_cb=protocol._cb_client_connected, loop=loop
        )
        return
    # From here on, SMTP.__init__ of aiosmtpd 1.4.6, in its order, but its reflection.
    p: Any = protocol  # aiosmtpd's attributes are untyped
    p.__ident__ = ident or aiosmtpd.smtp.__ident__
    p.loop = loop
    asyncio.StreamReaderProtocol.__init__(
        protocol, reader(loop), client_connected_cb=protocol._cb_client_connected, loop=loop
    )
    p.event_handler = handler
    p.data_size_limit = data_size_limit
    p.enable_SMTPUTF8 = enable_SMTPUTF8
    p._decode_data = decode_data
    p.command_size_limits.clear()
    p.hostname = hostname or socket.getfqdn()
    p.tls_context = tls_context
    if tls_context:
        if tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
            _aiosmtpd_log.warning(
                "tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}; "
                "this might cause client connection problems"
            )
        elif tls_context.check_hostname:
            _aiosmtpd_log.warning(
                "tls_context.check_hostname == True; this might cause client connection problems"
            )
    p.require_starttls = tls_context and require_starttls
    p._timeout_duration = timeout
    p._timeout_handle = None
    p._tls_handshake_okay = True
    p._tls_protocol = None
    p._original_transport = None
    p.session = None
    p.envelope = None
    p.transport = None
    p._handler_coroutine = None
    if not auth_require_tls and auth_required:
        warn(
            "Requiring AUTH while not requiring TLS can lead to security vulnerabilities!",
            stacklevel=2,
        )
        _aiosmtpd_log.warning("auth_required == True but auth_require_tls == False")
    p._auth_require_tls = auth_require_tls
    if proxy_protocol_timeout is not None:
        if proxy_protocol_timeout <= 0:
            raise ValueError("proxy_protocol_timeout must be > 0")
        if proxy_protocol_timeout < 3.0:
            _aiosmtpd_log.warning("proxy_protocol_timeout < 3.0")
    p._proxy_timeout = proxy_protocol_timeout
    p._authenticator = None
    p._auth_callback = login_always_fail
    p._auth_required = auth_required
    found = _reflection(protocol, handler)
    p._auth_methods = {
        mechanism: _AuthMechAttr(getattr(protocol if own else handler, name), own)
        for mechanism, name, own in found.auth
    }
    _aiosmtpd_log.info(found.auth_notice)
    p._handle_hooks = dict(found.handle_hooks)
    p._ehlo_hook_ver = found.ehlo_hook_ver
    if found.ehlo_hook_ver == "old":
        warn(
            "Use the 5-argument handle_EHLO() hook instead of the 4-argument handle_EHLO() "
            "hook; support for the 4-argument handle_EHLO() hook will be removed in "
            "version 2.0",
            DeprecationWarning,
            stacklevel=2,
        )
    p._smtp_methods = {command: getattr(protocol, name) for command, name in found.smtp_names}
    p._enforce_call_limit = False
