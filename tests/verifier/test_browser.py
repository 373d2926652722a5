"""A real Chromium uses the form as an insurer's claims officer would: choose the saved
email, submit, read the verdict. Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.verifier.conftest import tamper_document

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("no_network")]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if shutil.which(CHROMIUM) is None:
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        try:
            yield chromium
        finally:
            chromium.close()


def _check(browser: object, server: str, email: Path, lang: str) -> tuple[str, object]:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.set_default_timeout(15_000)
    page.goto(f"{server}/?lang={lang}")
    page.set_input_files("#file", str(email))
    page.click("#submit")
    page.wait_for_selector("#verdict-title")
    return page.inner_text("#verdict-title"), page


def test_a_sealed_email_reads_authentique(
    browser: object, server: str, sealed: bytes, tmp_path: Path
) -> None:
    email = tmp_path / "decompte.eml"
    email.write_bytes(sealed)
    verdict, page = _check(browser, server, email, "fr")
    assert verdict == "Authentique"
    assert page.get_attribute("#verdict", "data-verdict") == "authentic"  # type: ignore[attr-defined]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "verifier-authentic.png"), full_page=True)  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]


def test_a_tampered_email_reads_tampered(
    browser: object, server: str, sealed: bytes, tmp_path: Path
) -> None:
    email = tmp_path / "decompte.eml"
    email.write_bytes(tamper_document(sealed))
    verdict, page = _check(browser, server, email, "en")
    assert verdict == "Tampered"
    assert "changed after it was signed" in page.inner_text("main")  # type: ignore[attr-defined]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "verifier-tampered.png"), full_page=True)  # type: ignore[attr-defined]
    page.close()  # type: ignore[attr-defined]


def test_the_page_runs_without_csp_violations(browser: object, server: str) -> None:
    """The strict Content-Security-Policy does not block our own script or style."""
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server + "/")
    page.wait_for_load_state("load")
    color = page.eval_on_selector("#dropzone", "e => getComputedStyle(e).borderStyle")
    assert color == "dashed"  # style.css applied
    assert not [e for e in errors if "Content Security Policy" in e]
    page.close()
