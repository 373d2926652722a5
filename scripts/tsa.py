#!/usr/bin/env python3
"""A local RFC 3161 Time-Stamp Authority for tests and `make run`, built on `openssl ts`.

    scripts/tsa.py DIR [--port N]

On first start it creates in DIR a self-made CA (ca.pem: the root to configure in the
verifier), a TSA key and certificate (tsa.key, tsa.pem, with the critical extendedKeyUsage
timeStamping that `openssl ts` requires) and the openssl configuration (openssl.cnf). It
then answers POSTed time-stamp queries (application/timestamp-query) on 127.0.0.1 only and
prints "listening on http://127.0.0.1:PORT/" once ready. Not for production: the key sits
unprotected on disk. Standard library only, so any python3 can run it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# A query is about a hundred bytes (hash, nonce, flags); anything much larger is not one.
MAX_QUERY_BYTES = 8192
OPENSSL_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 10.0
# A test policy OID (the arc OpenSSL's own example uses): this TSA promises nothing.
POLICY_OID = "1.2.3.4.1"

CONFIG = """\
# Written by scripts/tsa.py; `openssl ts` reads the [tsa] sections, req/x509 the rest.
[ req ]
distinguished_name = req_dn
prompt = no

[ req_dn ]

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ v3_tsa ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = critical, timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
serial = {dir}/tsaserial
crypto_device = builtin
signer_cert = {dir}/tsa.pem
# No "certs": the reply carries the TSA certificate alone. openssl writes a SET OF several
# certificates unsorted, which strict DER readers such as rfc3161-client refuse, and the
# root is configured at the verifier anyway.
signer_key = {dir}/tsa.key
signer_digest = sha256
default_policy = {policy}
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["openssl", *args],
        input=stdin,
        capture_output=True,
        timeout=OPENSSL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def ensure_authority(directory: Path) -> Path:
    """Create the CA, TSA key and certificate and config in `directory` unless present."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "openssl.cnf"
    if all((directory / name).exists() for name in ("ca.pem", "tsa.pem", "tsa.key", "openssl.cnf")):
        return config
    # openssl's config syntax would expand "$" and cut at "#": refuse such paths up front.
    if any(ch in str(directory.resolve()) for ch in "$#\n\"'\\"):
        raise SystemExit(f"tsa.py: unusable characters in the directory path {directory}")
    config.write_text(CONFIG.format(dir=directory.resolve(), policy=POLICY_OID))
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    tsa_key, tsa_csr, tsa_pem = directory / "tsa.key", directory / "tsa.csr", directory / "tsa.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl(
        "req", "-config", str(config), "-x509", *ec, "-keyout", str(ca_key),
        "-out", str(ca_pem), "-days", "3650", "-extensions", "v3_ca",
        "-subj", "/O=Sealpost test/CN=Sealpost test TSA root",
    )  # fmt: skip
    _openssl(
        "req", "-config", str(config), "-new", *ec, "-keyout", str(tsa_key),
        "-out", str(tsa_csr), "-subj", "/O=Sealpost test/CN=Sealpost test TSA",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(tsa_csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "3650",
        "-extfile", str(config), "-extensions", "v3_tsa", "-out", str(tsa_pem),
    )  # fmt: skip
    tsa_csr.unlink()
    return config


def _der_header(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, content offset, content length) of the DER element at `offset`."""
    tag, first = data[offset], data[offset + 1]
    if first < 0x80:
        return tag, offset + 2, first
    size = first & 0x7F
    if not 0 < size <= 4:
        raise ValueError("unsupported DER length")
    length = int.from_bytes(data[offset + 2 : offset + 2 + size], "big")
    return tag, offset + 2 + size, length


def reply_status(reply: bytes) -> int | None:
    """The PKIStatus of a TimeStampResp (0 granted, 1 with mods, 2+ refused), None if unreadable."""
    try:
        tag, inner, _ = _der_header(reply, 0)  # TimeStampResp ::= SEQUENCE
        tag2, status_at, _ = _der_header(reply, inner) if tag == 0x30 else (0, 0, 0)
        tag3, value_at, size = _der_header(reply, status_at) if tag2 == 0x30 else (0, 0, 0)
    except (IndexError, ValueError):
        return None
    if tag3 != 0x02 or size != 1:
        return None
    return reply[value_at]


class TsaHandler(http.server.BaseHTTPRequestHandler):
    server_version = "sealpost-test-tsa"
    timeout = CLIENT_TIMEOUT_S  # a client that stalls mid-request is dropped
    config: Path
    # openssl ts -reply increments the serial file: one query at a time.
    lock = threading.Lock()

    def do_POST(self) -> None:
        try:
            self._answer()
        except TimeoutError:
            self.close_connection = True  # the client stalled: nobody to answer
        except Exception as exc:  # a test server answers, it never dies
            self.log_message("internal error: %s", exc)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send(500, b"internal error\n", "text/plain")

    def do_GET(self) -> None:
        self._send(405, b"POST a time-stamp query (application/timestamp-query)\n", "text/plain")

    def _answer(self) -> None:
        if self.headers.get_content_type() != "application/timestamp-query":
            self._send(415, b"expected application/timestamp-query\n", "text/plain")
            return
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit():
            self._send(411, b"Content-Length required\n", "text/plain")
            return
        length = int(length_text)
        if not 0 < length <= MAX_QUERY_BYTES:
            self.close_connection = True
            self._send(400, b"query size out of bounds\n", "text/plain")
            return
        query = self.rfile.read(length)
        if len(query) != length:
            self.close_connection = True
            return
        with tempfile.TemporaryDirectory() as tmp:
            query_file, reply_file = Path(tmp, "q.tsq"), Path(tmp, "r.tsr")
            query_file.write_bytes(query)
            with self.lock:
                done = subprocess.run(
                    [
                        "openssl", "ts", "-reply", "-config", str(self.config),
                        "-queryfile", str(query_file), "-out", str(reply_file),
                    ],
                    capture_output=True,
                    timeout=OPENSSL_TIMEOUT_S,
                    check=False,
                )  # fmt: skip
            reply = reply_file.read_bytes() if reply_file.exists() else b""
        # openssl answers garbage with a well-formed "rejection" reply; a client that sent
        # garbage gets a plain 400 instead, as a web server would.
        if done.returncode != 0 or reply_status(reply) not in (0, 1):
            self._send(400, b"not a time-stamp query this TSA can grant\n", "text/plain")
            return
        self._send(200, reply, "application/timestamp-reply")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"tsa: {self.address_string()} {format % args}\n")


class TsaServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # One line, not socketserver's traceback: a client hanging up is not news.
        sys.stderr.write(f"tsa: {client_address}: {sys.exc_info()[1]!r}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Local RFC 3161 TSA for tests (openssl ts).")
    parser.add_argument("directory", type=Path, help="where the CA, TSA key and config live")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    args = parser.parse_args(argv)
    try:
        config = ensure_authority(args.directory)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"tsa.py: cannot create the TSA in {args.directory}: {exc}", file=sys.stderr)
        return 1
    TsaHandler.config = config
    server = TsaServer(("127.0.0.1", args.port), TsaHandler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
