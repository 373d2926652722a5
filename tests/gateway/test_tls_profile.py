"""The listeners' TLS profile (gateway.server.tls_context), through real handshakes with
the gateway on 127.0.0.1: AEAD suites only, on STARTTLS and on implicit TLS.

A client that offers only CBC suites (TLS 1.2 at most) must fail the handshake; a
control shows the same client succeeding against a default server context, and an
in-memory handshake shows the server's reason (no shared cipher), so the failure is the
profile's and not the client's. (asyncio aborts the connection on a failed server
handshake without flushing OpenSSL's alert, so the client sees the connection close
rather than a handshake_failure alert.) Certificates are trustme's, ECDSA (the
default, as the gateway's self-signed certificate) and RSA, so both suite families are
tried.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from gateway import server
from keys.signing import SigningMaterial
from tests.gateway.test_smtp_handler import HOST, Gateway, Raw, running_gateway

# Every CBC suite OpenSSL still builds, with and without ECDHE, SHA-1 and SHA-2 MACs.
CBC_ONLY = (
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:"
    "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:"
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:"
    "AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA"
)
# Mozilla "intermediate" for TLS 1.2 (the ECDHE part), and the TLS 1.3 suites.
TLS12_AEAD = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
}
TLS13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}

Listener = str  # "starttls" (the relay listener) or "smtps"
LISTENERS = ["starttls", "smtps"]


@pytest.fixture(params=[trustme.KeyType.ECDSA, trustme.KeyType.RSA], ids=["ecdsa", "rsa"])
def issuer(request: pytest.FixtureRequest) -> trustme.CA:
    return trustme.CA(key_type=request.param)


@pytest.fixture
def pem(issuer: trustme.CA, tmp_path: Path) -> Path:
    """The server's key and certificate chain in one file, as tls_context loads them."""
    path = tmp_path / "server.pem"
    issuer.issue_cert(HOST, "localhost").private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def gateway(signing_material: SigningMaterial, pem: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(signing_material, server.tls_context(pem, pem)) as running:
        yield running


def client(issuer: trustme.CA, ciphers: str | None = None, tls12: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    issuer.configure_trust(context)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


async def handshake(gateway: Gateway, listener: Listener, context: ssl.SSLContext) -> str:
    """Connect, get TLS up, check that SMTP goes on inside it; the (version, suite)
    negotiated. A failed handshake raises ssl.SSLError."""
    async with asyncio.timeout(10):
        if listener == "smtps":
            reader, writer = await asyncio.open_connection(
                HOST, gateway.port("smtps"), ssl=context, server_hostname=HOST
            )
            session = Raw(reader, writer)
        else:
            session = await Raw.connect(gateway.port("relay"))
            await session.greet()
            assert (await session.command("STARTTLS")).startswith("220 ")
            await session.writer.start_tls(context, server_hostname=HOST)
        try:
            if listener == "smtps":
                assert (await session.reply()).startswith("220 ")
            assert (await session.command("EHLO client.test")).startswith("250")
            assert (await session.command("QUIT")).startswith("221 ")
            ssl_object = session.writer.get_extra_info("ssl_object")
            name, version, _ = ssl_object.cipher()
            return f"{version} {name}"
        finally:
            session.close()


def server_side_error(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> str:
    """Run a handshake in memory (no asyncio in between); the server's error reason, or ""
    if the handshake completed. Bounded: a handshake takes a few round trips."""
    # One buffer each way: what one side writes is what the other reads.
    client_to_server, server_to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client_context.wrap_bio(server_to_client, client_to_server, server_hostname=HOST)
    tls_server = server_context.wrap_bio(client_to_server, server_to_client, server_side=True)
    client_done = server_done = False
    for _ in range(10):
        if not client_done:
            try:
                tls_client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        if not server_done:
            try:
                tls_server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as error:
                return str(error.reason)
        if client_done and server_done:
            return ""
    raise AssertionError("the handshake neither finished nor failed")


@pytest.mark.parametrize("listener", LISTENERS)
async def test_a_client_offering_only_cbc_is_refused(
    gateway: Gateway, issuer: trustme.CA, listener: Listener
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(gateway, listener, client(issuer, CBC_ONLY, tls12=True))
    # The listener is unharmed: the next, ordinary client gets through.
    assert (await handshake(gateway, listener, client(issuer))).split()[1] in TLS13


@pytest.mark.parametrize("listener", LISTENERS)
async def test_tls12_clients_get_an_aead_suite(
    gateway: Gateway, issuer: trustme.CA, listener: Listener
) -> None:
    # The client offers CBC first, then everything else it has: the server's list decides.
    context = client(issuer, CBC_ONLY + ":ALL", tls12=True)
    version, suite = (await handshake(gateway, listener, context)).split()
    assert version == "TLSv1.2"
    assert suite in TLS12_AEAD
    # Each of the profile's suites for this certificate's key type can be had on its own.
    kind = "ECDSA" if "-ECDSA-" in suite else "RSA"
    for wanted in sorted(s for s in TLS12_AEAD if f"-{kind}-" in s):
        context = client(issuer, wanted, tls12=True)
        assert await handshake(gateway, listener, context) == f"TLSv1.2 {wanted}"


@pytest.mark.parametrize("listener", LISTENERS)
async def test_a_default_client_gets_tls13(
    gateway: Gateway, issuer: trustme.CA, listener: Listener
) -> None:
    version, suite = (await handshake(gateway, listener, client(issuer))).split()
    assert version == "TLSv1.3"
    assert suite in TLS13


async def test_the_cbc_client_is_refused_for_the_profile_not_for_itself(
    signing_material: SigningMaterial, issuer: trustme.CA, pem: Path
) -> None:
    # Control: the same CBC-only client against a server context with Python's defaults
    # (what tls_context was before) negotiates a CBC suite.
    default = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    default.load_cert_chain(pem)
    async with running_gateway(signing_material, default) as gateway:
        version, suite = (
            await handshake(gateway, "starttls", client(issuer, CBC_ONLY, tls12=True))
        ).split()
    assert version == "TLSv1.2"
    assert suite in CBC_ONLY.split(":")


def test_the_server_refuses_the_cbc_client_for_want_of_a_shared_suite(
    issuer: trustme.CA, pem: Path
) -> None:
    profile = server.tls_context(pem, pem)
    assert server_side_error(profile, client(issuer, CBC_ONLY, tls12=True)) == "NO_SHARED_CIPHER"
    assert server_side_error(profile, client(issuer, tls12=True)) == ""


def test_the_profile_offers_aead_suites_only(pem: Path) -> None:
    offered = server.tls_context(pem, pem).get_ciphers()
    assert all(suite["aead"] for suite in offered)
    assert {s["name"] for s in offered if s["protocol"] == "TLSv1.2"} == TLS12_AEAD
    assert {s["name"] for s in offered if s["protocol"] == "TLSv1.3"} == TLS13


# ---------------------------------------------------------------------------- openssl


async def s_client(port: int, ca: Path, cipher: str, starttls: bool) -> tuple[int, str]:
    """`openssl s_client -tls1_2 -cipher ...` against the listener: (exit code, output).
    Its stdin is empty, so it closes right after the handshake."""
    command = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-tls1_2", "-cipher", cipher]
    command += ["-CAfile", str(ca), "-verify_return_error", "-brief"]
    command += ["-starttls", "smtp"] if starttls else []
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(15):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize("listener", LISTENERS)
async def test_openssl_s_client_with_cbc_only_fails_and_with_aead_succeeds(
    gateway: Gateway, issuer: trustme.CA, tmp_path: Path, listener: Listener
) -> None:
    ca = tmp_path / "ca.pem"
    issuer.cert_pem.write_to_path(str(ca))
    starttls = listener == "starttls"
    port = gateway.port("relay" if starttls else "smtps")

    code, output = await s_client(port, ca, CBC_ONLY, starttls)
    assert code != 0, output
    assert "CONNECTION ESTABLISHED" not in output, output

    code, output = await s_client(
        port, ca, "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305", starttls
    )
    assert code == 0, output
    assert "Protocol version: TLSv1.2" in output, output
    assert re.search(r"Ciphersuite: ECDHE-(ECDSA|RSA)-CHACHA20-POLY1305", output), output
