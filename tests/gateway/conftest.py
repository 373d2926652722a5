"""A recording SMTP peer: a real aiosmtpd server in the test's own event loop on port 0.

It can be told to refuse a recipient (``peer.refuse[address] = "550 ..."``), to fail the
next N transactions at DATA (``peer.fail_next(3, "451 ...")``), and to offer STARTTLS
with a trustme certificate (the ``tls_peer`` fixture); ``data_delay`` keeps a transaction
in flight; ``withhold`` names EHLO extensions it does not advertise (``{"SMTPUTF8"}``: a
hop without internationalised mail), ``advertise`` those it adds (``["PIPELINING"]``:
aiosmtpd takes pipelined commands in order but does not say so). It counts connections,
records the RSET and QUIT commands it sees, and records each accepted message with
whether it came over TLS.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult

PEER_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    login: str | None = None  # the AUTH user, if the client authenticated
    mail_options: tuple[str, ...] = ()  # the MAIL FROM parameters, upper-cased


@dataclass
class Peer:
    host: str = PEER_HOST
    port: int = 0
    messages: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    connections: int = 0
    transactions: int = 0  # DATA commands seen
    rcpt_attempts: list[str] = field(default_factory=list)  # every RCPT TO, in order
    auth_attempts: list[str] = field(default_factory=list)  # every AUTH user name, in order
    credentials: dict[str, str] = field(default_factory=dict)  # AUTH user -> password
    data_delay: float = 0.0  # seconds to sit on DATA before answering
    withhold: set[str] = field(default_factory=set)  # EHLO keywords not advertised
    advertise: list[str] = field(default_factory=list)  # EHLO keywords added ("PIPELINING")
    sessions: list[SMTP] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # "RSET" and "QUIT", in order
    _failures_left: int = 0
    _failure_reply: str = ""
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def fail_next(self, count: int, reply: str = "451 4.3.0 Try again later") -> None:
        self._failures_left, self._failure_reply = count, reply

    def drop_connections(self) -> None:
        """Close every connection from the server side, as an idle timeout would."""
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()

    def open_sessions(self) -> int:
        """Connections not yet closed (aiosmtpd drops the transport when one is lost)."""
        return sum(1 for s in self.sessions if s.transport is not None)

    def delivered_to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.recipients]

    async def wait_for(self, count: int, within: float = 5.0) -> list[Received]:
        """Wait until at least ``count`` messages were accepted; fail after ``within`` seconds."""
        async with asyncio.timeout(within):
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.messages

    # aiosmtpd handler hooks
    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        kept = [r for r in responses if r[4:].split(" ")[0].upper() not in self.withhold]
        kept += [f"250 {keyword}" for keyword in self.advertise]
        # The last line of a multi-line reply is "250 ", the others "250-".
        return [*(f"250-{r[4:]}" for r in kept[:-1]), f"250 {kept[-1][4:]}"]

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.commands.append("RSET")
        return "250 OK"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.commands.append("QUIT")
        return "221 Bye"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.rcpt_attempts.append(address)
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.transactions += 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self._failures_left > 0:
            self._failures_left -= 1
            return self._failure_reply
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        tls = session.ssl is not None
        login = session.login_data.decode() if session.authenticated else None
        self.messages.append(
            Received(
                sender,
                list(envelope.rcpt_tos),
                envelope.content,
                tls,
                login,
                tuple(envelope.mail_options),
            )
        )
        self._arrived.set()
        return "250 2.0.0 Accepted"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        user, password = auth_data.login.decode(), auth_data.password.decode()
        self.auth_attempts.append(user)
        ok = self.credentials.get(user) == password
        # handled=False: aiosmtpd itself answers 535 on failure.
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


async def start_peer(
    tls_context: ssl.SSLContext | None = None, *, auth: bool = False
) -> tuple[Peer, asyncio.Server]:
    peer = Peer()

    def factory() -> SMTP:
        peer.connections += 1
        session = SMTP(
            peer,
            hostname="peer.test",
            tls_context=tls_context,
            enable_SMTPUTF8=True,
            authenticator=peer.authenticate if auth else None,
            auth_require_tls=True,
        )
        peer.sessions.append(session)
        return session

    server = await asyncio.get_running_loop().create_server(factory, PEER_HOST, 0)
    peer.port = server.sockets[0].getsockname()[1]
    return peer, server


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts only the test CA, with certificate checks on."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    """A peer without STARTTLS."""
    found, server = await start_peer()
    yield found
    server.close()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(PEER_HOST, "localhost").configure_cert(context)
    return context


@pytest.fixture
async def tls_peer(ca: trustme.CA) -> AsyncIterator[Peer]:
    """A peer offering STARTTLS with a certificate for 127.0.0.1 and localhost."""
    found, server = await start_peer(server_context(ca))
    yield found
    server.close()


@pytest.fixture
async def auth_peer(ca: trustme.CA) -> AsyncIterator[Peer]:
    """A STARTTLS peer offering AUTH (after TLS only) for user "gw", password "s3cret"."""
    found, server = await start_peer(server_context(ca), auth=True)
    found.credentials["gw"] = "s3cret"
    yield found
    server.close()
