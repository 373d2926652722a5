"""A real Chromium uses the form as an insurer's claims officer would, on a phone and on a
desk: choose the saved email (or the document and its .p7s), submit, read the verdict.

Screenshots of every result at 320, 390 and 1280 px, in French and English, go to the
directory in SEALPOST_SCREENSHOTS (a pytest temporary directory when unset); they are
never committed. In CI (the CI variable set) a missing Chromium or Playwright is an error:
the browser tests must not vanish as a skip.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import document_and_signature
from tests.verifier.conftest import reencode_document, tamper_document

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("no_network")]

CHROMIUM = os.environ.get("SEALPOST_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDTHS = (320, 390, 1280)
# The narrowest a value may be: a hash breaks over lines of 15 characters or more, a name
# or a date over a few words, never a column of two characters.
MIN_VALUE_WIDTH = 120


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: the browser tests cannot run (.ci/run installs it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if shutil.which(CHROMIUM) is None:
    _unavailable(f"Debian's chromium is not installed at {CHROMIUM}")

try:
    from playwright import sync_api as playwright_api
except ImportError:
    _unavailable("playwright is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("SEALPOST_SCREENSHOTS")
    directory = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    try:
        yield page
    finally:
        page.close()


def _check(page: Any, server: str, email: Path, lang: str) -> str:
    page.goto(f"{server}/?lang={lang}")
    page.set_input_files("#file", str(email))
    page.click("#submit")
    page.wait_for_selector("#verdict-title")
    text: str = page.inner_text("#verdict-title")
    return text


def test_a_sealed_email_reads_authentique(
    page: Any, server: str, sealed: bytes, tmp_path: Path
) -> None:
    email = tmp_path / "decompte.eml"
    email.write_bytes(sealed)
    assert _check(page, server, email, "fr") == "Authentique"
    assert page.get_attribute("#verdict", "data-verdict") == "authentic"


def test_a_tampered_email_reads_tampered(
    page: Any, server: str, sealed: bytes, tmp_path: Path
) -> None:
    email = tmp_path / "decompte.eml"
    email.write_bytes(tamper_document(sealed))
    assert _check(page, server, email, "en") == "Tampered"
    assert "changed after it was signed" in page.inner_text("main")


def test_the_page_runs_without_csp_violations(page: Any, server: str) -> None:
    """The strict Content-Security-Policy does not block our own script or style."""
    page.goto(server + "/")
    page.wait_for_load_state("load")
    color = page.eval_on_selector("#dropzone", "e => getComputedStyle(e).borderStyle")
    assert color == "dashed"  # style.css applied
    assert not [e for e in page.errors if "Content Security Policy" in e]


# --- every result, on every screen ---------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    verdict: str


CASES = (
    Case("authentic", "authentic"),
    Case("altered", "altered"),  # a relay re-wrapped the PDF's base64: documents still good
    Case("tampered", "tampered"),
    Case("pair", "authentic"),  # the PDF and its .p7s, without the email
)


def _upload(page: Any, server: str, case: Case, sealed: bytes, lang: str, tmp: Path) -> None:
    page.goto(f"{server}/?lang={lang}")
    if case.name == "pair":
        name, document, signature = document_and_signature(sealed)
        (tmp / name).write_bytes(document)
        (tmp / f"{name}.p7s").write_bytes(signature)
        page.click("details.pair summary")
        page.set_input_files("details.pair input[name=document]", str(tmp / name))
        page.set_input_files("details.pair input[name=signature]", str(tmp / f"{name}.p7s"))
        page.click("details.pair button[type=submit]")
    else:
        raw = {"authentic": sealed, "altered": reencode_document(sealed)}.get(
            case.name, tamper_document(sealed)
        )
        (tmp / "decompte.eml").write_bytes(raw)
        page.set_input_files("#file", str(tmp / "decompte.eml"))
        page.click("#submit")
    page.wait_for_selector("#verdict-title")


NARROW_VALUES = """() => [...document.querySelectorAll('dd')]
    .filter(dd => dd.getClientRects().length > 0)
    .map(dd => [dd.previousElementSibling.innerText, Math.round(dd.getBoundingClientRect().width)])
"""


@pytest.mark.parametrize("lang", ["fr", "en"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_result_reads_on_every_screen(
    page: Any, server: str, sealed: bytes, tmp_path: Path, screenshots: Path, case: Case, lang: str
) -> None:
    """From 320 px up: no value narrower than 120 px, no sideways scrolling, the summary
    first and the technical details closed until asked for."""
    _upload(page, server, case, sealed, lang, tmp_path)
    assert page.get_attribute("#verdict", "data-verdict") == case.verdict
    assert page.get_attribute("#verdict", "data-kind") == (
        "document" if case.name == "pair" else "email"
    )
    assert page.eval_on_selector("#technical", "d => d.open") is False
    assert page.is_visible("#summary")
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 844})
        page.eval_on_selector("#technical", "d => { d.open = false; }")
        page.screenshot(path=str(screenshots / f"{case.name}-{lang}-{width}.png"), full_page=True)
        page.eval_on_selector("#technical", "d => { d.open = true; }")
        page.screenshot(
            path=str(screenshots / f"{case.name}-{lang}-{width}-details.png"), full_page=True
        )
        values = page.evaluate(NARROW_VALUES)
        assert values, "no value shown"
        narrow = [(label, w) for label, w in values if w < MIN_VALUE_WIDTH]
        assert not narrow, (width, narrow)
        sideways = page.evaluate("() => document.documentElement.scrollWidth - innerWidth")
        assert sideways <= 0, (width, sideways)
    assert not page.errors


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_the_form_and_the_openssl_page_fit_a_phone(
    page: Any, server: str, screenshots: Path, lang: str
) -> None:
    page.set_viewport_size({"width": 320, "height": 844})
    for name, path in (("form", "/"), ("again", "/verify"), ("openssl", "/openssl")):
        page.goto(f"{server}{path}?lang={lang}")
        page.screenshot(path=str(screenshots / f"{name}-{lang}-320.png"), full_page=True)
        sideways = page.evaluate("() => document.documentElement.scrollWidth - innerWidth")
        assert sideways <= 0, (path, sideways)


# --- no dead ends ----------------------------------------------------------------------------


def test_the_result_address_reopened_and_the_language_switched(
    page: Any, server: str, sealed: bytes, tmp_path: Path
) -> None:
    _upload(page, server, CASES[0], sealed, "fr", tmp_path)
    page.click("#switch-language")
    page.wait_for_selector("#upload-again")
    assert page.get_attribute("html", "lang") == "en"
    assert "upload it again" in page.inner_text("#upload-again")
    response = page.goto(f"{server}/verify?lang=fr")  # a bookmark, or a reload
    assert response.status == 200
    assert page.get_attribute("html", "lang") == "fr"
    assert page.is_visible("#file")
    assert "jamais été enregistré" in page.inner_text("#upload-again")


# --- accessibility basics ----------------------------------------------------------------------

HEADINGS = "() => [...document.querySelectorAll('h1,h2,h3,h4,h5,h6')].map(h => +h.tagName[1])"

# WCAG 2.x contrast of every visible text against the background it is drawn on.
CONTRASTS = """() => {
  const rgb = s => s.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const found = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.getClientRects().length === 0) continue;
    const style = getComputedStyle(el);
    const [a, b] = [lum(rgb(style.color).slice(0, 3)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), bold = +style.fontWeight >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    found.push([el.tagName + '.' + el.className, Math.round(ratio * 100) / 100, large]);
  }
  return found;
}"""


def _accessible(page: Any, lang: str) -> None:
    assert page.get_attribute("html", "lang") == lang
    levels = page.evaluate(HEADINGS)
    assert levels[0] == 1
    assert levels.count(1) == 1
    assert all(b <= a + 1 for a, b in itertools.pairwise(levels)), levels
    contrasts = page.evaluate(CONTRASTS)
    assert contrasts
    poor = [(what, ratio) for what, ratio, large in contrasts if ratio < (3 if large else 4.5)]
    assert not poor, poor


def _tab_to(page: Any, selector: str) -> None:
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate(f"() => document.activeElement.matches({selector!r})"):
            return
    raise AssertionError(f"{selector} cannot be reached with the keyboard")


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_the_pages_meet_accessibility_basics(
    page: Any, server: str, sealed: bytes, tmp_path: Path, lang: str
) -> None:
    """The language declared, headings in order, text contrast (WCAG AA), and every
    <details> opened and closed with the keyboard alone."""
    page.goto(f"{server}/?lang={lang}")
    _accessible(page, lang)
    _tab_to(page, "details.pair summary")
    page.keyboard.press("Enter")
    assert page.eval_on_selector("details.pair", "d => d.open") is True

    _upload(page, server, CASES[2], sealed, lang, tmp_path)  # tampered: every colour shows
    _accessible(page, lang)
    _tab_to(page, "#technical summary")
    page.keyboard.press("Enter")
    assert page.eval_on_selector("#technical", "d => d.open") is True
    _accessible(page, lang)  # the technical details too
    page.keyboard.press("Space")
    assert page.eval_on_selector("#technical", "d => d.open") is False
    page.goto(f"{server}/openssl?lang={lang}")
    _accessible(page, lang)
