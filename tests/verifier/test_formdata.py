"""multipart/form-data parsed in memory."""

from __future__ import annotations

import pytest

from verifier.formdata import MAX_PARTS, FormError, TooManyParts, parse_form, parse_parts

CT = "multipart/form-data; boundary=XyZ"


def body(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += b"--XyZ\r\nContent-Disposition: " + disposition.encode() + b"\r\n"
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    return out + b"--XyZ--\r\n"


def test_files_and_fields_come_back_whole() -> None:
    data = bytes(range(256)) * 100 + b"\r\n--XyZ-not-a-boundary"
    parts = parse_form(body(("file", "a.eml", data), ("lang", None, b"en")), CT)
    assert parts["file"].filename == "a.eml"
    assert bytes(parts["file"].data) == data
    assert bytes(parts["lang"].data) == b"en"


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "text/plain; boundary=XyZ", "multipart/form-data; boundary="],
)
def test_a_wrong_content_type_is_refused(content_type: str) -> None:
    with pytest.raises(FormError):
        parse_form(body(("file", "a", b"x")), content_type)


def test_a_field_sent_twice_is_refused_not_picked() -> None:
    with pytest.raises(FormError, match="more than once"):
        parse_form(body(("file", "a.eml", b"one"), ("file", "b.eml", b"two")), CT)


def test_too_many_parts_are_refused() -> None:
    with pytest.raises(FormError):
        parse_form(body(*[(f"f{i}", None, b"x") for i in range(MAX_PARTS + 1)]), CT)


def test_parts_come_back_in_order_with_repeated_names() -> None:
    sent = [("file", f"{i}.eml", f"email {i}".encode()) for i in range(50)]
    parts = parse_parts(body(*sent), CT, max_parts=50)
    assert [(p.name, p.filename, bytes(p.data)) for p in parts] == sent


def test_one_part_too_many_is_refused_as_such() -> None:
    sent = [("file", f"{i}.eml", b"x") for i in range(51)]
    with pytest.raises(TooManyParts, match="more than 50 parts"):
        parse_parts(body(*sent), CT, max_parts=50)


def test_garbage_is_a_form_error_or_empty() -> None:
    try:
        parts = parse_form(b"--XyZ\r\nno headers end", CT)
    except FormError:
        return
    assert all(not p.data for p in parts.values())
