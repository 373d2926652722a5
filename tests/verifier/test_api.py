"""The JSON API as insurers' intake systems use it, against the real `sealpost-verifier`
with two worker processes: Bearer tokens from the registry, a quota per organisation that
holds across the workers, the anonymous limit keyed on the client's real address behind
a configured proxy, batches, and the host's metrics.

Every request goes on a connection of its own, so the kernel spreads them over both
workers (SO_REUSEPORT): a limit or a counter kept per process would show.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from keys.signing import SigningMaterial
from orgs.registry import Registry
from tests.verifier.conftest import (
    KeyHistory,
    run_verifier,
    tamper_document,
    wait_until_up,
    write_archive,
)
from verifier.metrics import FLUSH_INTERVAL
from verifier.workers import free_port

EML = "message/rfc822"
ANONYMOUS_LIMIT = 2
ORG_LIMIT = 5
PROXY = "127.0.0.2"  # the reverse proxy's address; 127.0.0.1 is any other client
_SEQUENCE = itertools.count()


@dataclass
class Verifier:
    url: str
    metrics_url: str
    registry: Registry
    process: subprocess.Popen[bytes]

    def token(self, code: str) -> str:
        """A new organisation and a token of it."""
        self.registry.add(code, f"Mutuelle {code}")
        _, secret = self.registry.create_token(code)
        return secret


@pytest.fixture(scope="module")
def verifier(
    tmp_path_factory: pytest.TempPathFactory, material: SigningMaterial
) -> Iterator[Verifier]:
    base = tmp_path_factory.mktemp("api")
    archive = write_archive(base / "public", [(material, KeyHistory("active"))])
    registry = Registry(base / "orgs" / "registry.sqlite")
    port, metrics_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    process = run_verifier(
        "--port", str(port), "--archive", str(archive),
        "--workers", "2", "--rate-limit", str(ANONYMOUS_LIMIT),
        "--org-rate-limit", str(ORG_LIMIT), "--orgs", str(registry.path),
        "--trusted-proxies", PROXY, "--runtime-dir", str(base / "run"),
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_until_up(process, url + "/healthz")
        wait_until_up(process, metrics_url)
        yield Verifier(url, metrics_url, registry, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)
        registry.close()
    assert process.returncode == 0


def post(
    verifier: Verifier,
    raw: bytes,
    token: str | None = None,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One verification on a new connection from `source`."""
    sent = {"Content-Type": EML, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as client:
        return client.post(verifier.url + "/api/v1/verify", content=raw, headers=sent)


def batch(
    verifier: Verifier, emails: list[tuple[str, bytes]], token: str | None = None
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    files = [("file", (name, data, EML)) for name, data in emails]
    with httpx.Client(timeout=60) as client:
        return client.post(verifier.url + "/api/v1/verify-batch", files=files, headers=headers)


def scrape(verifier: Verifier) -> dict[str, float]:
    text = httpx.get(verifier.metrics_url, timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


# --- tokens ----------------------------------------------------------------------------


def test_an_organisation_quota_holds_across_both_workers(verifier: Verifier, sealed: bytes) -> None:
    token = verifier.token("QUOTA")
    statuses = [post(verifier, sealed, token).status_code for _ in range(ORG_LIMIT + 3)]
    assert statuses == [200] * ORG_LIMIT + [429] * 3
    refused = post(verifier, sealed, token)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["error"] == "rate_limited"
    assert str(ORG_LIMIT) in refused.json()["message"]
    # Another organisation has its own quota; anonymous clients keep theirs.
    assert post(verifier, sealed, verifier.token("OTHER")).status_code == 200


def test_a_token_replaces_the_per_address_limit(verifier: Verifier, sealed: bytes) -> None:
    token = verifier.token("INTAKE")
    forwarded = {"X-Forwarded-For": "198.51.100.77"}
    anonymous = [post(verifier, sealed, None, PROXY, forwarded) for _ in range(ANONYMOUS_LIMIT)]
    assert [r.status_code for r in anonymous] == [200] * ANONYMOUS_LIMIT
    assert post(verifier, sealed, None, PROXY, forwarded).status_code == 429
    # The same client address with its token: the organisation's quota, not the address's.
    with_token = [post(verifier, sealed, token, PROXY, forwarded) for _ in range(ORG_LIMIT)]
    assert [r.status_code for r in with_token] == [200] * ORG_LIMIT


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer spt_" + "A" * 43,  # well formed, never issued
        "Bearer not a token",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer spt_" + "A" * 43 + "\u00e9",
    ],
)
def test_a_wrong_token_gets_401_never_the_anonymous_quota(
    verifier: Verifier, sealed: bytes, authorization: str
) -> None:
    with httpx.Client(timeout=30) as client:
        response = client.post(
            verifier.url + "/api/v1/verify",
            content=sealed,
            headers=[(b"Content-Type", EML.encode()), (b"Authorization", authorization.encode())],
        )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response.json()["message"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert "spt_" not in challenge


def test_a_revoked_token_or_an_ended_organisation_is_refused_at_once(
    verifier: Verifier, sealed: bytes
) -> None:
    token = verifier.token("REVOKED")
    assert post(verifier, sealed, token).status_code == 200
    (listed,) = verifier.registry.tokens("REVOKED")
    verifier.registry.revoke_token("REVOKED", listed.id)
    assert post(verifier, sealed, token).status_code == 401

    token = verifier.token("ENDED")
    assert post(verifier, sealed, token).status_code == 200
    verifier.registry.end("ENDED")
    response = post(verifier, sealed, token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("where", ["second-header", "query"])
def test_a_token_anywhere_but_one_authorization_header_is_refused(
    verifier: Verifier, sealed: bytes, where: str
) -> None:
    """Two Authorization headers: a proxy may have checked one and we would read the other.
    A token in the URL (RFC 6750 2.3): it ends up in access logs, and served as anonymous
    the caller would never learn. Either is a 401, whatever the token's worth."""
    token = verifier.token(f"ELSEWHERE{next(_SEQUENCE)}")
    headers: list[tuple[bytes, bytes]] = [(b"Content-Type", EML.encode())]
    url = verifier.url + "/api/v1/verify"
    if where == "second-header":
        headers += [(b"Authorization", f"Bearer {token}".encode())] * 2
    else:
        url += f"?access_token={token}"
    with httpx.Client(timeout=30) as client:
        response = client.post(url, content=sealed, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_token"
        assert "Authorization" in response.json()["message"]
        assert token not in response.headers["www-authenticate"]
        # The same token, once, in its header: served.
        good = client.post(
            verifier.url + "/api/v1/verify",
            content=sealed,
            headers={"Content-Type": EML, "Authorization": f"Bearer {token}"},
        )
        assert good.status_code == 200


@pytest.mark.parametrize(
    "fields",
    [("file", "file"), ("file", "email"), ("file", "document", "signature"), ("email", "document")],
)
def test_one_request_is_judged_as_one_upload_never_the_first_of_two(
    verifier: Verifier, sealed: bytes, fields: tuple[str, ...]
) -> None:
    """An intake system sending an email beside another, or beside a document and its
    .p7s, would get one verdict and could believe it covers both: refused, precisely."""
    files = [(name, (f"{name}.bin", sealed, "application/octet-stream")) for name in fields]
    token = verifier.token(f"ONEUPLOAD{next(_SEQUENCE)}")
    with httpx.Client(timeout=30) as client:
        response = client.post(
            verifier.url + "/api/v1/verify",
            files=files,
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


# --- the client's address ----------------------------------------------------------------


def test_a_forwarded_address_counts_only_from_the_configured_proxy(
    verifier: Verifier, sealed: bytes
) -> None:
    # Through the proxy, each client address has its own limit.
    for client in ("192.0.2.10", "192.0.2.11"):
        for _ in range(ANONYMOUS_LIMIT):
            response = post(verifier, sealed, None, PROXY, {"X-Forwarded-For": client})
            assert response.status_code == 200
        assert post(verifier, sealed, None, PROXY, {"X-Forwarded-For": client}).status_code == 429
    # A client that writes its own X-Forwarded-For before the proxy's entry gains nothing:
    # the right-most address not of a proxy is the one counted.
    spoofed = {"X-Forwarded-For": "203.0.113.1, 192.0.2.10"}
    assert post(verifier, sealed, None, PROXY, spoofed).status_code == 429
    # From any other peer the header is ignored: every request is 127.0.0.1's.
    for i in range(ANONYMOUS_LIMIT):
        direct = post(verifier, sealed, None, "127.0.0.1", {"X-Forwarded-For": f"192.0.2.{50 + i}"})
        assert direct.status_code == 200
    direct = post(verifier, sealed, None, "127.0.0.1", {"X-Forwarded-For": "192.0.2.99"})
    assert direct.status_code == 429


# --- batches -------------------------------------------------------------------------------


def test_a_batch_answers_one_report_per_email_in_order(verifier: Verifier, sealed: bytes) -> None:
    token = verifier.token("BATCH")
    emails = [
        ("one.eml", sealed),
        ("two.eml", tamper_document(sealed)),
        ("three.eml", b"not an email at all"),
        ("four.eml", sealed),
    ]
    response = batch(verifier, emails, token)
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 4
    verdicts = [report["verdict"] for report in body["reports"]]
    assert verdicts == ["authentic", "tampered", "not_email", "authentic"]
    single = post(verifier, sealed, verifier.token("SINGLE")).json()
    assert body["reports"][0].keys() == single.keys()
    # Each email counted: one left of five.
    assert post(verifier, sealed, token).status_code == 200
    assert post(verifier, sealed, token).status_code == 429


def test_a_batch_that_does_not_fit_the_quota_counts_nothing(
    verifier: Verifier, sealed: bytes
) -> None:
    token = verifier.token("BATCHQ")
    assert batch(verifier, [("a.eml", sealed)] * 3, token).status_code == 200
    refused = batch(verifier, [("a.eml", sealed)] * 3, token)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert batch(verifier, [("a.eml", sealed)] * 2, token).status_code == 200

    too_big = batch(verifier, [("a.eml", sealed)] * (ORG_LIMIT + 1), verifier.token("BATCHB"))
    assert too_big.status_code == 429
    assert too_big.json()["error"] == "batch_over_quota"
    assert "retry-after" not in too_big.headers


def test_more_than_fifty_emails_are_refused_with_413(verifier: Verifier) -> None:
    tiny = b"From: a@b.example\r\n\r\nx\r\n"
    response = batch(verifier, [("m.eml", tiny)] * 51, verifier.token("FIFTYONE"))
    assert response.status_code == 413
    assert response.json()["error"] == "too_many_emails"
    assert "50" in response.json()["message"]


@pytest.mark.parametrize(
    ("files", "content_type", "status", "error"),
    [
        ([], "multipart/form-data; boundary=x", 400, "bad_request"),
        ([("comment", ("c.txt", b"hello", "text/plain"))], None, 400, "bad_request"),
        ([("file", ("e.eml", b"", EML))], None, 400, "bad_request"),
        (None, EML, 415, "unsupported_media_type"),
    ],
)
def test_a_malformed_batch_gets_a_precise_error(
    verifier: Verifier,
    sealed: bytes,
    files: list[tuple[str, tuple[str, bytes, str]]] | None,
    content_type: str | None,
    status: int,
    error: str,
) -> None:
    headers = {"Authorization": f"Bearer {verifier.token(f'MALFORMED{next(_SEQUENCE)}')}"}
    with httpx.Client(timeout=30) as client:
        if files is None or content_type is not None:
            headers["Content-Type"] = content_type or EML
            body = b"--x--\r\n" if files is not None else sealed
            response = client.post(
                verifier.url + "/api/v1/verify-batch", content=body, headers=headers
            )
        else:
            response = client.post(
                verifier.url + "/api/v1/verify-batch", files=files, headers=headers
            )
    assert response.status_code == status
    assert response.json()["error"] == error


def test_a_batch_is_bounded_like_one_upload(verifier: Verifier, sealed: bytes) -> None:
    big = b"From: a@b.example\r\n\r\n" + b"x" * (6 * 1024 * 1024)
    response = batch(verifier, [("a.eml", big), ("b.eml", big)], verifier.token("HUGE"))
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


# --- metrics -------------------------------------------------------------------------------


def test_the_metrics_are_the_hosts_totals(verifier: Verifier, sealed: bytes) -> None:
    token = verifier.token("METRICS")
    before = scrape(verifier)
    for _ in range(3):
        assert post(verifier, sealed, token).status_code == 200
    assert post(verifier, tamper_document(sealed), token).status_code == 200
    assert post(verifier, sealed, token).status_code == 200
    assert post(verifier, sealed, token).status_code == 429
    assert post(verifier, sealed, "spt_" + "B" * 43).status_code == 401
    authentic = 'sealpost_verifier_verifications_total{org="METRICS",verdict="authentic"}'
    tampered = 'sealpost_verifier_verifications_total{org="METRICS",verdict="tampered"}'

    def grew(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    rate_limited = 'sealpost_verifier_rejections_total{reason="rate_limited"}'
    unauthorized = 'sealpost_verifier_rejections_total{reason="unauthorized"}'

    def counted() -> bool:
        return (grew(authentic), grew(tampered)) == (4, 1) and (
            grew(rate_limited) >= 1
            and grew(unauthorized) >= 1
            and after["sealpost_verifier_uploads_in_progress"] == 0
        )

    # Each worker adds its counts to the host's totals every FLUSH_INTERVAL.
    deadline = time.monotonic() + 10 * FLUSH_INTERVAL
    after = scrape(verifier)
    while not counted() and time.monotonic() < deadline:
        time.sleep(0.1)
        after = scrape(verifier)
    assert (grew(authentic), grew(tampered)) == (4, 1)
    assert grew(rate_limited) >= 1
    assert grew(unauthorized) >= 1
    assert grew("sealpost_verifier_verification_seconds_count") >= 5
    assert (
        after['sealpost_verifier_verification_seconds_bucket{le="+Inf"}']
        == (after["sealpost_verifier_verification_seconds_count"])
    )
    assert after["sealpost_verifier_uploads_in_progress"] == 0


def test_the_metrics_say_nothing_of_the_uploads(verifier: Verifier, sealed: bytes) -> None:
    post(verifier, sealed, verifier.token("PRIVACY"))
    text = httpx.get(verifier.metrics_url, timeout=10).text
    for label in re.findall(r'="([^"]*)"', text):
        assert label in {"anonymous", "+Inf"} or re.fullmatch(r"[A-Z0-9_-]+|[a-z_]+|[0-9.]+", label)
    assert "decompte" not in text
    assert "caisses.example" not in text
