"""multipart/form-data parsed entirely in memory.

Starlette's `request.form()` spools file parts larger than 1 MB to a temporary file on
disk; an upload here is health data and must never touch the disk. The body is read
(bounded) by the endpoint, and python-multipart's streaming parser fills bytearrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_PARTS = 8  # the form has at most three fields; anything more is not our form


class FormError(ValueError):
    """The body is not a well-formed form of the expected shape."""


class TooManyParts(FormError):
    """More parts than the form may have: refused as soon as the one too many begins."""


@dataclass
class FormPart:
    name: str
    filename: str | None
    content_type: str
    data: bytearray = field(default_factory=bytearray)


def boundary_of(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise FormError("not multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise FormError("missing or invalid boundary")
    return boundary


def parse_form(body: bytes, content_type: str) -> dict[str, FormPart]:
    """The form's parts by field name. A name sent twice is refused: whichever of the two
    were judged, the sender could believe it was the other."""
    found: dict[str, FormPart] = {}
    for part in parse_parts(body, content_type):
        if part.name in found:
            raise FormError(f"the field {part.name[:40]!r} is sent more than once")
        found[part.name] = part
    return found


def parse_parts(body: bytes, content_type: str, max_parts: int = MAX_PARTS) -> list[FormPart]:
    """The form's parts in the order sent."""
    boundary = boundary_of(content_type)
    parts: list[FormPart] = []
    headers: dict[bytes, bytes] = {}
    field_name = bytearray()
    field_value = bytearray()

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise TooManyParts(f"more than {max_parts} parts")
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        field_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(field_name).lower()] = bytes(field_value)
        field_name.clear()
        field_value.clear()

    def on_headers_finished() -> None:
        _, params = parse_options_header(headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = params.get(b"filename")
        filename = None if raw_filename is None else raw_filename.decode("utf-8", "replace")
        content_type = headers.get(b"content-type", b"application/octet-stream")
        parts.append(
            FormPart(name=name, filename=filename, content_type=content_type.decode("latin-1"))
        )

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise FormError("malformed multipart body") from exc
    return parts
