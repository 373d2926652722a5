"""The web form and the JSON API, through a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keys import pki
from keys.signing import SigningMaterial
from tests.conftest import make_material
from tests.verifier.conftest import (
    KeyHistory,
    cms_detached,
    make_settings,
    pdf_block,
    reference_message,
    replace_header,
    seal,
    serve,
    tamper_document,
    write_archive,
)
from verifier import i18n
from verifier.app import create_app
from verifier.settings import Limits

pytestmark = pytest.mark.usefixtures("no_network")

EML = "message/rfc822"


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10) as c:
        yield c


def with_document(document: bytes) -> bytes:
    """The reference statement carrying `document` as its PDF."""
    raw = reference_message()
    start, end = pdf_block(raw)
    encoded = base64.encodebytes(document).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return raw[:start] + encoded + raw[end:]


def api(client: httpx.Client, raw: bytes, **params: str) -> httpx.Response:
    return client.post("/api/v1/verify", content=raw, headers={"Content-Type": EML}, params=params)


def form(client: httpx.Client, raw: bytes, name: str = "statement.eml", **params: str) -> str:
    response = client.post("/verify", files={"file": (name, raw, EML)}, params=params)
    assert response.status_code in (200, 422)
    return response.text


# --- the API -----------------------------------------------------------------------------


def pair_files(material: SigningMaterial) -> dict[str, tuple[str, bytes, str]]:
    """The multipart files of a pair upload: decompte-1.pdf and its .p7s, no email."""
    document = b"%PDF-1.4 statement"
    return {
        "document": ("decompte-1.pdf", document, "application/pdf"),
        "signature": ("decompte-1.pdf.p7s", cms_detached(document, material), "x/y"),
    }


def test_the_api_reports_a_sealed_statement_authentic(client: httpx.Client, sealed: bytes) -> None:
    response = api(client, sealed)
    assert response.status_code == 200
    report = response.json()
    assert report["verdict"] == "authentic"
    assert report["verdict_text"] == "Authentique"
    assert [d["status"] for d in report["dkim"]] == ["pass", "pass"]
    (document,) = report["documents"]
    assert document["status"] == "valid"
    assert len(document["sha256"]) == 64
    assert document["signer"]["subject"].startswith("CN=Caisses Sociales de Monaco")
    assert report["warnings"] == []


def test_the_api_takes_a_multipart_file_too(client: httpx.Client, sealed: bytes) -> None:
    response = client.post("/api/v1/verify", files={"file": ("x.eml", sealed, EML)})
    assert response.json()["verdict"] == "authentic"


def test_the_api_speaks_english_on_request(client: httpx.Client, sealed: bytes) -> None:
    by_header = client.post(
        "/api/v1/verify",
        content=tamper_document(sealed),
        headers={"Content-Type": EML, "Accept-Language": "en-GB,en;q=0.8"},
    ).json()
    assert by_header["verdict"] == "tampered"
    assert by_header["verdict_text"] == "Tampered"
    assert api(client, sealed, lang="en").json()["verdict_text"] == "Authentic"


def test_a_pair_upload_verifies_without_the_email(
    client: httpx.Client, material: SigningMaterial
) -> None:
    files = pair_files(material)
    report = client.post("/api/v1/verify", files=files).json()
    assert report["verdict"] == "authentic"
    assert report["documents"][0]["filename"] == "decompte-1.pdf"


def test_an_outlook_msg_gets_an_explanation(client: httpx.Client) -> None:
    msg = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 1024
    response = api(client, msg, lang="en")
    assert response.status_code == 422
    assert response.json()["verdict"] == "not_email"
    assert ".eml" in response.json()["reason_text"]
    page = form(client, msg, name="statement.msg")
    assert "Format Internet" in page


def test_openapi_and_health(client: httpx.Client) -> None:
    spec = client.get("/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    verdicts = spec["components"]["schemas"]["Report"]["properties"]["verdict"]["enum"]
    assert verdicts == ["authentic", "altered", "tampered", "unsigned", "not_email"]
    assert spec["components"]["securitySchemes"]["bearer"] == {
        **spec["components"]["securitySchemes"]["bearer"],
        "type": "http",
        "scheme": "bearer",
    }
    for path in ("/api/v1/verify", "/api/v1/verify-batch"):
        operation = spec["paths"][path]["post"]
        assert operation["security"] == [{}, {"bearer": []}]  # a token is optional
        assert {"401", "413", "429"} <= set(operation["responses"])
        assert "Retry-After" in operation["responses"]["429"]["headers"]
    batch = spec["paths"]["/api/v1/verify-batch"]["post"]
    files = batch["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["file"]
    assert files["maxItems"] == 50
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


def test_without_an_archive_the_service_says_so(tmp_path: Path, sealed: bytes) -> None:
    with serve(create_app(make_settings(tmp_path / "none"))) as url:
        assert httpx.get(url + "/healthz").status_code == 503
        response = httpx.post(url + "/api/v1/verify", content=sealed, headers={"Content-Type": EML})
        assert response.status_code == 503


# --- pages ---------------------------------------------------------------------------------


def test_the_form_page_is_french_by_default_with_a_switch(client: httpx.Client) -> None:
    page = client.get("/").text
    assert '<html lang="fr">' in page
    assert 'enctype="multipart/form-data"' in page
    assert 'href="/?lang=en"' in page
    english = client.get("/", params={"lang": "en"}).text
    assert "Check a statement" in english
    assert client.get("/", headers={"Accept-Language": "en-US"}).text.count("Check") >= 1


def test_the_result_page_shows_the_verdict_in_words_first(
    client: httpx.Client, sealed: bytes
) -> None:
    page = form(client, sealed)
    verdict = page.index('id="verdict-title"')
    assert page.index("Authentique", verdict) < page.index("s202611r")
    for expected in ("caisses.example", "rsa-sha256", "ed25519-sha256", "releve-2026-02.pdf"):
        assert expected in page


def test_the_result_page_says_tampered(client: httpx.Client, sealed: bytes) -> None:
    page = form(client, tamper_document(sealed), lang="en")
    assert "Tampered" in page
    assert "the document was changed after it was signed" in page
    # The switch cannot reload a POST: it leads to the form, which says so (below).
    assert 'id="switch-language" href="/verify?lang=fr"' in page
    assert client.get("/openssl", params={"lang": "en"}).text.count('href="/openssl?lang=fr"')


@pytest.mark.parametrize(
    ("lang", "words"), [("fr", "le fichier n'a jamais été enregistré"), ("en", "never stored")]
)
def test_the_result_address_reopened_leads_back_to_the_form(
    client: httpx.Client, lang: str, words: str
) -> None:
    """Refreshed or bookmarked: the result went with the request that carried the file, so
    the form, in the page's language, saying to upload it again (never a bare 405)."""
    response = client.get("/verify", params={"lang": lang})
    assert response.status_code == 200
    page = html.unescape(response.text)
    assert f'<html lang="{lang}">' in page
    assert 'id="upload-again"' in page
    assert words in page
    assert f'action="/verify?lang={lang}"' in page
    assert 'id="upload-again"' not in client.get("/").text


def test_switching_language_on_a_result_says_to_upload_again(
    client: httpx.Client, sealed: bytes
) -> None:
    page = form(client, sealed, lang="fr")
    switch = re.search(r'id="switch-language" href="([^"]+)"', page)
    assert switch is not None
    english = client.get(switch.group(1))
    assert english.status_code == 200
    assert '<html lang="en">' in english.text
    assert "upload it again to see the result" in english.text


def test_the_summary_comes_first_and_the_technical_details_are_closed(
    client: httpx.Client, sealed: bytes, material: SigningMaterial
) -> None:
    page = form(client, sealed, lang="en")
    summary = page.index('id="summary"')
    details = page.index('<details id="technical">')  # no `open`: closed until asked
    for first in ("message-from", "message-subject", "message-date", "documents"):
        assert summary < page.index(f'id="{first}"') < details, first
    assert summary < page.index("releve-2026-02.pdf") < details
    sealed_on = re.search(
        r"Sealed by the fund on (\d{1,2} [A-Z][a-z]+ \d{4} at \d\d:\d\d UTC)", page
    )
    assert sealed_on is not None
    assert summary < sealed_on.start() < details
    document = api(client, sealed).json()["documents"][0]
    for technical in (
        material.rsa_selector,
        "rsa-sha256",
        "ed25519-sha256",
        document["sha256"],
        document["signer"]["sha256"],
    ):
        assert page.index(technical) > details, technical


def test_french_pages_write_french_dates(client: httpx.Client, sealed: bytes) -> None:
    page = html.unescape(form(client, sealed, lang="fr"))
    months = "|".join(i18n.MONTHS["fr"])
    date = rf"\d{{1,2}}(er)? ({months}) \d{{4}} à \d\d:\d\d UTC"
    assert re.search(r"Scellé par la Caisse le " + date, page)
    assert re.search(r'id="message-date">' + date + "<", page)
    assert not re.search(r"\d{4}-\d\d-\d\d", page.split('<details id="technical">')[0])


def test_a_pair_upload_shows_a_document_result(
    client: httpx.Client, material: SigningMaterial
) -> None:
    files = pair_files(material)
    response = client.post("/verify", files=files, params={"lang": "en"})
    assert response.status_code == 200
    page = response.text
    assert 'data-verdict="authentic"' in page
    assert 'data-kind="document"' in page
    assert "The document" in page
    assert "decompte-1.pdf" in page
    assert "Sealed by the fund on" in page
    for email_only in ("DKIM", 'id="dkim"', 'id="message"', "Check another email"):
        assert email_only not in page


def test_a_retired_key_is_said_in_plain_words(
    tmp_path: Path, material: SigningMaterial, sealed: bytes
) -> None:
    retired_at = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    archive = write_archive(
        tmp_path / "public", [(material, KeyHistory("retired", retired_at=retired_at))]
    )
    with serve(create_app(make_settings(archive))) as url, httpx.Client(base_url=url) as c:
        english = form(c, sealed, lang="en")
        french = html.unescape(form(c, sealed, lang="fr"))
    assert 'data-verdict="authentic"' in english
    day = i18n.day(retired_at, "en")
    assert f"Key retired on {day}: signatures made before that date stay valid." in english
    assert f"Clé retirée le {i18n.day(retired_at, 'fr')}\u00a0: les signatures" in french


def test_every_page_links_a_small_favicon_that_is_served(
    client: httpx.Client, sealed: bytes
) -> None:
    link = '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
    for page in (client.get("/"), client.get("/openssl"), client.get("/nowhere")):
        assert link in page.text
    assert link in form(client, sealed)
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")
    assert len(icon.content) < 1024
    assert icon.content.startswith(b'<svg xmlns="http://www.w3.org/2000/svg"')


def test_the_openssl_page_offers_the_root_and_its_fingerprint(
    client: httpx.Client, material: SigningMaterial
) -> None:
    page = client.get("/openssl").text
    assert pki.fingerprint(material.chain[-1]) in page
    assert "openssl cms -verify -binary -inform DER" in page
    assert "-attime" in page
    root = client.get("/root.pem")
    assert root.headers["content-type"].startswith("application/x-pem-file")
    assert root.content == pki.certificate_pem(material.chain[-1])


def test_security_headers_everywhere(client: httpx.Client, sealed: bytes) -> None:
    for response in (client.get("/"), api(client, sealed), client.get("/nowhere")):
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in client.get("/").text  # only <script src=...>
    assert "style=" not in form(client, sealed)


# --- hostile values are escaped ------------------------------------------------------------

HOSTILE = "<script>alert(1)</script>"


def _hostile_material() -> SigningMaterial:
    return make_material(org=f'Evil "{HOSTILE}" & Co')


def test_hostile_header_filename_and_certificate_values_are_escaped(
    tmp_path: Path,
) -> None:
    material = _hostile_material()
    raw = reference_message().replace(
        b'"releve-2026-02.pdf"', b'"<img src=x onerror=alert(2)>.pdf"'
    )
    raw = replace_header(raw, b"Subject", HOSTILE.encode())
    raw = replace_header(raw, b"From", b'"<b onmouseover=alert(3)>" <statements@caisses.example>')
    sealed = seal(raw, material)
    archive = write_archive(tmp_path / "public", [(material, KeyHistory())])
    with serve(create_app(make_settings(archive))) as url, httpx.Client(base_url=url) as c:
        page = form(c, sealed)
        assert "Authentique" in page
        for needle in ("<script>alert", "<img src=x", "<b onmouseover"):
            assert needle not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # subject and certificate
        assert "&lt;img src=x onerror=alert(2)&gt;.pdf" in page
        assert "&lt;b onmouseover=alert(3)&gt;" in page
        assert page.count("&lt;script&gt;") >= 2
        report = api(c, sealed).json()
        assert HOSTILE in report["documents"][0]["signer"]["subject"]  # JSON keeps the value


# --- limits --------------------------------------------------------------------------------


def test_an_upload_over_the_limit_gets_a_readable_413(tmp_path: Path, sealed: bytes) -> None:
    archive = write_archive(tmp_path / "public", [(make_material(), KeyHistory())])
    settings = make_settings(archive, limits=Limits(max_upload_bytes=16 * 1024))
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=10) as c:
        response = c.post("/verify", files={"file": ("x.eml", sealed, EML)})
        assert response.status_code == 413
        assert "taille maximale (16 KB)" in response.text
        response = c.post("/api/v1/verify", content=sealed, headers={"Content-Type": EML})
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds
            yield sealed

        response = c.post("/api/v1/verify", content=chunks(), headers={"Content-Type": EML})
        assert response.status_code == 413


def test_the_rate_limit_answers_429_with_retry_after(tmp_path: Path, sealed: bytes) -> None:
    archive = write_archive(tmp_path / "public", [(make_material(), KeyHistory())])
    with (
        serve(create_app(make_settings(archive, rate_limit_per_minute=2))) as url,
        httpx.Client(base_url=url, timeout=10) as c,
    ):
        assert api(c, sealed).status_code == 200
        assert api(c, sealed).status_code == 200
        refused = api(c, sealed)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        page = c.post("/verify", files={"file": ("x.eml", sealed, EML)})
        assert page.status_code == 429
        assert "Réessayez dans" in page.text
        assert c.get("/healthz").status_code == 200  # only verifications are limited


def test_uploads_never_touch_the_disk(
    client: httpx.Client, material: SigningMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2.8 MB upload (Starlette would spool anything over 1 MB) with every way to create a
    temporary file made to fail: the verification still answers."""
    import starlette.formparsers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was about to be written to disk")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    big = seal(with_document(os.urandom(2 * 1024 * 1024)), material)
    assert len(big) > 2 * 1024 * 1024
    response = client.post("/verify", files={"file": ("big.eml", big, EML)})
    assert response.status_code == 200
    assert "Authentique" in response.text
    assert api(client, big).json()["verdict"] == "authentic"


def test_a_new_archive_is_picked_up_without_restart(
    client: httpx.Client, archive_dir: Path, material: SigningMaterial
) -> None:
    newer = make_material(generation="202705")
    fresh = seal(reference_message(), newer)
    assert api(client, fresh).json()["verdict"] != "authentic"
    write_archive(archive_dir, [(material, KeyHistory("retired")), (newer, KeyHistory())])
    assert api(client, fresh).json()["verdict"] == "authentic"
