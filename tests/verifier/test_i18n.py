"""Every string in both languages; the language a visitor gets."""

from __future__ import annotations

import datetime as dt
import re
import string
from pathlib import Path

import pytest

from verifier import i18n
from verifier.report import DkimStatus, DocStatus, Verdict

TEMPLATES = Path(__file__).resolve().parents[2] / "verifier" / "templates"


def test_every_message_has_both_languages_with_the_same_placeholders() -> None:
    for key, (fr, en) in i18n.MESSAGES.items():
        assert fr.strip(), key
        assert en.strip(), key
        names = {f[1] for f in string.Formatter().parse(fr) if f[1]}
        assert names == {f[1] for f in string.Formatter().parse(en) if f[1]}, key


def test_every_verdict_status_and_reason_is_translated() -> None:
    keys = set(i18n.MESSAGES)
    assert {f"verdict_{v.value}" for v in Verdict} <= keys
    assert {f"dkim_{s.value}" for s in DkimStatus} <= keys
    assert {f"doc_{s.value}" for s in DocStatus} <= keys
    states = ("pending", "active", "retired", "withdrawn", "revoked")  # keys/archive.py
    assert {f"state_{s}" for s in states} <= keys
    package = Path(i18n.__file__).parent
    modules = ("report.py", "verify.py", "intake.py", "cms_check.py", "dkim_check.py")
    source = "".join((package / name).read_text() for name in modules)
    for reason in set(re.findall(r'reason="(\w+)"', source)):
        assert f"dkim_reason_{reason}" in keys or f"doc_reason_{reason}" in keys, reason
    for key in set(re.findall(r'"((?:reason|warning)_\w+)"', source)):
        assert key in keys, key
    for reason in set(re.findall(r'NotEmail\("(\w+)"\)', source)) | {"unreadable"}:
        assert f"reason_not_email_{reason}" in keys, reason


def test_every_key_the_templates_use_exists() -> None:
    used = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r't\("(\w+)"\s*[,)]', template.read_text()))
    assert used
    assert used <= set(i18n.MESSAGES), used - set(i18n.MESSAGES)


@pytest.mark.parametrize(
    ("query", "header", "expected"),
    [
        (None, None, "fr"),
        ("en", "fr", "en"),
        ("de", None, "fr"),
        (None, "en-GB,en;q=0.9", "en"),
        (None, "de-DE,en;q=0.5,fr;q=0.8", "fr"),
        (None, "fr;q=0.1, en;q=0.9", "en"),
        (None, "en;q=0", "fr"),
        (None, "en;q=banana", "fr"),
        (None, "*", "fr"),
    ],
)
def test_pick(query: str | None, header: str | None, expected: str) -> None:
    assert i18n.pick(query, header) == expected


def test_translate_formats_parameters() -> None:
    assert i18n.translator("en")("error_rate_limited", seconds=7).endswith("in 7 seconds.")
    assert "7 secondes" in i18n.translator("fr")("error_rate_limited", seconds=7)


# --- dates and punctuation, as each language writes them ----------------------------------


def test_dates_read_as_each_language_writes_them() -> None:
    at = dt.datetime(2026, 11, 30, 10, 14, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert i18n.when(at, "fr") == "30 novembre 2026 à 09:14 UTC"
    assert i18n.when(at, "en") == "30 November 2026 at 09:14 UTC"
    assert i18n.when(at, "en", seconds=True) == "30 November 2026 at 09:14:05 UTC"
    first = dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.UTC)
    assert i18n.day(first, "fr") == "1er décembre 2026"
    assert i18n.day(first, "en") == "1 December 2026"
    assert i18n.day(dt.datetime(2027, 8, 2, tzinfo=dt.UTC), "fr") == "2 août 2027"


def test_numbers_are_grouped_as_each_language_groups_them() -> None:
    assert i18n.number(1234567, "fr") == "1\u202f234\u202f567"
    assert i18n.number(19243, "en") == "19,243"
    assert i18n.number(512, "fr") == "512"


def test_english_never_takes_french_punctuation() -> None:
    """No space before ':', ';', '?', '!' and no guillemets in English; French keeps its
    space before them (header syntax quoted as code aside)."""
    for key, (fr, en) in i18n.MESSAGES.items():
        assert not re.search(r"\s[:;?!]", en), (key, en)
        assert not re.search("[«»]", en), key
        quoted_code = re.sub(r"« [^»]* »", "", fr)
        assert not re.search(r"\w[;?!](\s|$)|\w:\s", quoted_code), (key, fr)


def test_templates_write_no_punctuation_of_their_own_language() -> None:
    """Text around values comes from MESSAGES; a template writing ' : ' would be French in
    English pages."""
    for template in TEMPLATES.glob("*.html"):
        text = re.sub(r"{[{%#].*?[}%#]}", "", template.read_text(), flags=re.S)
        assert not re.search(r"\s:\s", text), template.name


def test_french_marks_never_start_a_line() -> None:
    french = i18n.translator("fr")
    for key in i18n.MESSAGES:
        text = french(key)
        assert not re.search(r" [:;?!»]|« ", text), (key, text)
    assert french("openssl_step_root").endswith("empreinte\u00a0:")
    assert "«\u00a0CMS Verification successful\u00a0»" in french("openssl_success")
    assert french("error_bad_request", detail="a : b").endswith("a : b")  # values as given
