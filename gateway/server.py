"""The SMTP listeners, served in the program's own event loop, and their TLS.

Three kinds of listener share one handler and one set of connection limits:
- relay: for allow-listed networks; STARTTLS offered, AUTH offered after it;
- submission: STARTTLS required before anything else, then AUTH required;
- smtps: implicit TLS from the first byte, then AUTH required.

The smtps listener accepts plain sockets and starts TLS itself (`_ImplicitTls`) rather
than through ``create_server(ssl=...)``: there the session only exists once the
handshake is over, so connections in their handshake were not counted against the
connection limits, and a client that never finished one held its socket for asyncio's
default 60 s. Now a connection counts from accept and its handshake has
``limits.tls_handshake_timeout`` seconds.

The servers are created with ``loop.create_server`` rather than aiosmtpd's threaded
``Controller``: in the program's loop aiosmtpd answers about 490 messages/s here against
340 behind the Controller's thread hop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.smtp_handler import GatewaySMTP, Handler, SessionLimits, Sessions

log = logging.getLogger("sealpost.gateway.server")

Mode = Literal["relay", "submission", "smtps"]
BANNER = "ESMTP Sealpost"
SELF_SIGNED_DAYS = 3 * 365


@dataclass(frozen=True)
class ListenerSpec:
    mode: Mode
    host: str
    port: int
    proxy_protocol_timeout: float | None = None  # None: no PROXY header expected


class _ImplicitTlsNotice(logging.Filter):
    """aiosmtpd warns on every connection when AUTH is required without STARTTLS; on an
    implicit-TLS listener the whole connection is already encrypted, so that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "auth_require_tls == False" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_ImplicitTlsNotice())


class Receiver:
    """The running listeners."""

    def __init__(self, servers: dict[Mode, asyncio.Server], sessions: Sessions) -> None:
        self._servers = servers
        self.sessions = sessions

    def address(self, mode: Mode) -> tuple[str, int]:
        """Where a listener is bound (useful with port 0)."""
        host, port = self._servers[mode].sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self, grace: float) -> None:
        """Stop accepting, let sessions finish their message (up to `grace` seconds)."""
        for server in self._servers.values():
            server.close()
        await self.sessions.drain(grace)
        for server in self._servers.values():
            await server.wait_closed()


async def start(
    handler: Handler,
    listeners: list[ListenerSpec],
    *,
    hostname: str,
    tls: ssl.SSLContext | None,
    limits: SessionLimits,
    sessions: Sessions,
    reuse_port: bool = False,
) -> Receiver:
    """`reuse_port`: other processes (lanes) listen on the same ports; the kernel spreads
    the connections over them."""
    loop = asyncio.get_running_loop()
    servers: dict[Mode, asyncio.Server] = {}
    try:
        for spec in listeners:
            if spec.mode != "relay" and tls is None:
                raise ValueError(f"the {spec.mode} listener needs a TLS certificate")
            factory = _factory(handler, spec, hostname, tls, limits, sessions, loop)
            servers[spec.mode] = await loop.create_server(
                factory,
                spec.host,
                spec.port,
                reuse_address=True,
                reuse_port=reuse_port or None,
            )
            log.info("listening mode=%s address=%s:%d", spec.mode, spec.host, spec.port)
    except BaseException:
        for server in servers.values():
            server.close()
        raise
    return Receiver(servers, sessions)


def _factory(
    handler: Handler,
    spec: ListenerSpec,
    hostname: str,
    tls: ssl.SSLContext | None,
    limits: SessionLimits,
    sessions: Sessions,
    loop: asyncio.AbstractEventLoop,
) -> Callable[[], asyncio.Protocol]:
    implicit = spec.mode == "smtps"

    def make() -> asyncio.Protocol:
        if implicit:
            assert tls is not None
            # aiosmtpd warns of AUTH without TLS (the implicit-TLS notice above) only here;
            # catching warnings costs a few microseconds, so only here.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                session = smtp()
            return _ImplicitTls(session, tls, limits.tls_handshake_timeout, loop)
        return smtp()

    def smtp() -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            sessions=sessions,
            limits=limits,
            hostname=hostname,
            ident=BANNER,
            tls_context=None if implicit else tls,
            require_starttls=spec.mode == "submission",
            auth_required=spec.mode != "relay",
            # AUTH only over TLS: after STARTTLS, or from the start on smtps.
            auth_require_tls=not implicit,
            proxy_protocol_timeout=spec.proxy_protocol_timeout,
            loop=loop,
        )

    return make


class _ImplicitTls(asyncio.Protocol):
    """The smtps listener's first protocol: counts the connection against the limits at
    accept, runs the TLS handshake under a timeout, then hands the TLS transport to the
    SMTP session. A failed or slow handshake is one log line and frees its place."""

    def __init__(
        self,
        session: GatewaySMTP,
        tls: ssl.SSLContext,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._session = session
        self._tls = tls
        self._timeout = timeout
        self._loop = loop
        self._handshake: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._session.admit(transport, reply=False):
            return
        transport.pause_reading()  # the ClientHello is for the TLS layer, not for us
        self._handshake = self._loop.create_task(self._start_tls(transport))

    def connection_lost(self, error: Exception | None) -> None:
        # Only before start_tls has taken the transport over: the client left at once.
        if self._handshake is not None:
            self._handshake.cancel()
        self._session.release()

    async def _start_tls(self, transport: asyncio.Transport) -> None:
        try:
            secure = await self._loop.start_tls(
                transport,
                self._session,
                self._tls,
                server_side=True,
                ssl_handshake_timeout=self._timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as error:
            # start_tls has closed the socket; the session never started.
            log.info("event=tls_failed client_ip=%s error=%r", self._session.client_ip, error)
            self._session.release()
            return
        except asyncio.CancelledError:
            transport.close()
            self._session.release()
            raise
        if secure is None:  # the transport was closed during the handshake
            self._session.release()
            return
        self._session.connection_made(secure)


# ---------------------------------------------------------------------------- TLS


def tls_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """The listeners' TLS (STARTTLS and implicit TLS alike): TLS 1.2 and 1.3, AEAD only.

    For TLS 1.2, Mozilla's "intermediate" suites with ECDHE: forward secrecy, and AES-GCM
    or ChaCha20-Poly1305 only. The CBC suites the default list keeps (ECDHE-*-AES*-SHA256
    and -SHA384) are left out, as their MAC-then-encrypt padding is what LUCKY13 times.
    DHE suites are left out too: no DH parameters are loaded, so they could not be used.
    ECDSA and RSA suites both stay, so either kind of certificate works. TLS 1.3 suites
    are all AEAD and set apart by OpenSSL (set_ciphers does not touch them).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    )
    context.load_cert_chain(certificate, key)
    return context


def ensure_self_signed(certificate: Path, key: Path, hostname: str) -> bool:
    """Make a self-signed certificate when neither file exists; True when one was made.

    Only for the embedded default: clients must be told to trust this certificate (or
    not to verify), so production configs name a real certificate instead.
    """
    if certificate.exists() or key.exists():
        return False
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    key.parent.mkdir(parents=True, exist_ok=True)
    certificate.parent.mkdir(parents=True, exist_ok=True)
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(key, key_pem, 0o600)
    _write_new(certificate, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite a certificate or key someone put there meanwhile.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
