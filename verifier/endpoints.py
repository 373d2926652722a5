"""Request handlers: read the upload (bounded, in memory), run the checks in a worker
thread, answer with a page or JSON. Nothing from an upload is logged or stored."""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import jinja2
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

from keys.archive import ArchiveError
from verifier import i18n
from verifier import upload as uploads
from verifier.formdata import FormError, FormPart, parse_form
from verifier.log_check import LogUnavailable
from verifier.ratelimit import RateLimiter
from verifier.report import Report, Verdict
from verifier.serialize import openapi, report_json
from verifier.settings import FORM_OVERHEAD, Settings
from verifier.trust import Trust, TrustSource
from verifier.verify import not_email, verify_email, verify_pair

log = logging.getLogger("verifier")

CONCURRENT_CHECKS = 4
_FORM_OVERHEAD = FORM_OVERHEAD
# When the upload memory budget is full: uploads in progress end within their time bounds.
BUSY_RETRY_AFTER = 5


class TooLarge(Exception):
    pass


class Unavailable(Exception):
    pass


class HttpError(Exception):
    def __init__(self, status: int, key: str, **params: object) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.params = params
        self.headers: dict[str, str] = {}


@dataclass
class Services:
    settings: Settings
    trust: TrustSource
    limiter: RateLimiter
    templates: jinja2.Environment
    # Verifications running at once in this process: bounds the memory that parsed uploads
    # take under a burst; the rest wait their turn. Made on first use, inside the loop.
    checks: anyio.CapacityLimiter | None = None
    budget: uploads.MemoryBudget | None = None

    def check_slots(self) -> anyio.CapacityLimiter:
        if self.checks is None:
            self.checks = anyio.CapacityLimiter(CONCURRENT_CHECKS)
        return self.checks

    def upload_budget(self) -> uploads.MemoryBudget:
        if self.budget is None:
            self.budget = uploads.MemoryBudget(self.settings.limits.upload_memory_bytes)
        return self.budget


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def language(request: Request) -> str:
    return i18n.pick(request.query_params.get("lang"), request.headers.get("accept-language"))


def _human_size(size: int) -> str:
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 else f"{size // 1024} KB"


# --- reading uploads -----------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    pace = uploads.Pace.of(services(request).settings.limits)
    declared = request.headers.get("content-length", "")
    try:
        return await uploads.read_body(request.receive, declared, limit, pace)
    except uploads.TooLarge as exc:
        raise TooLarge from exc
    except uploads.Disconnected as exc:  # nobody is left to answer; no traceback in the log
        raise HttpError(400, "error_bad_request", detail="disconnected") from exc
    except uploads.TimedOut as exc:
        error = HttpError(408, "error_body_timeout", rate=pace.min_rate)
        error.headers["Connection"] = "close"  # the rest of a trickle is not waited for
        raise error from exc


@contextmanager
def _reserve(request: Request) -> Iterator[None]:
    """Holds this upload's share of the memory budget until the request is answered."""
    limit = services(request).settings.limits.max_upload_bytes + _FORM_OVERHEAD
    size = uploads.reservation(request.headers.get("content-length", ""), limit)
    budget = services(request).upload_budget()
    if not budget.take(size):
        error = HttpError(503, "error_busy", seconds=BUSY_RETRY_AFTER)
        error.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
        raise error
    try:
        yield
    finally:  # exceptions, cancellation and disconnects included
        budget.give_back(size)


def _rate_limit(request: Request) -> None:
    client = request.client.host if request.client else "unknown"
    wait = services(request).limiter.check(client)
    if wait:
        error = HttpError(429, "error_rate_limited", seconds=wait)
        error.headers["Retry-After"] = str(wait)
        raise error


def _trust(request: Request) -> Trust:
    try:
        return services(request).trust.get()
    except ArchiveError as exc:
        raise Unavailable from exc


@dataclass(frozen=True)
class Upload:
    """What was sent: an email, or a document with its .p7s."""

    email: bytes | None = None
    document: FormPart | None = None
    signature: FormPart | None = None


async def read_upload(request: Request, api: bool) -> Upload:
    settings = services(request).settings
    limit = settings.limits.max_upload_bytes
    content_type = request.headers.get("content-type", "")
    is_form = content_type.lower().startswith("multipart/form-data")
    body = await read_body(request, limit + (_FORM_OVERHEAD if is_form else 0))
    if not is_form:
        if not api:
            raise HttpError(400, "error_bad_request", detail="multipart/form-data")
        return Upload(email=body)
    try:
        parts = parse_form(body, content_type)
    except FormError as exc:
        raise HttpError(400, "error_bad_request", detail=str(exc)) from exc
    for part in parts.values():
        if len(part.data) > limit:
            raise TooLarge
    upload_part = parts.get("file") or parts.get("email")
    if upload_part is not None and upload_part.data:
        return Upload(email=bytes(upload_part.data))
    document, signature = parts.get("document"), parts.get("signature")
    if document is not None and signature is not None and document.data and signature.data:
        return Upload(document=document, signature=signature)
    raise HttpError(400, "error_no_file")


def _pair_name(document: FormPart, signature: FormPart) -> str:
    if document.filename:
        return document.filename
    if signature.filename and signature.filename.lower().endswith(".p7s"):
        return signature.filename[:-4]
    return "document"


async def run_checks(request: Request, upload: Upload) -> Report:
    trust = _trust(request)
    limits = services(request).settings.limits

    def work() -> Report:
        if upload.email is not None:
            return verify_email(upload.email, trust, limits)
        assert upload.document is not None
        assert upload.signature is not None
        return verify_pair(
            _pair_name(upload.document, upload.signature),
            bytes(upload.document.data),
            bytes(upload.signature.data),
            trust,
        )

    try:
        return await anyio.to_thread.run_sync(work, limiter=services(request).check_slots())
    except LogUnavailable as exc:
        # Whether these seals are in the statement log cannot be told now: no verdict rather
        # than a wrong one. The reason names a file of ours, never the upload.
        log.warning("statement log unavailable: %s", exc)
        error = HttpError(503, "error_log_unavailable")
        error.headers["Retry-After"] = "60"
        raise error from exc
    except Exception as exc:  # never a stack trace to the user; never the upload in a log
        log.error("verification failed with %s", type(exc).__name__)
        return not_email("unreadable")


def _status(report: Report) -> int:
    return 422 if report.verdict is Verdict.NOT_EMAIL else 200


# --- pages -----------------------------------------------------------------------------


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    lang = language(request)
    page = services(request).templates.get_template(template)
    # The language switch reloads the same page. An answer to an upload cannot be reloaded
    # (the file was never stored): its switch leads to GET /verify, the form saying so.
    here = request.url.path if request.method == "GET" else "/verify"
    html = page.render(
        t=i18n.translator(lang),
        lang=lang,
        here=here,
        when=lambda value, seconds=False: i18n.when(value, lang, seconds),
        day=lambda value: i18n.day(value, lang),
        number=lambda value: i18n.number(value, lang),
        **context,
    )
    return HTMLResponse(html, status_code=status)


def header_date(text: str) -> dt.datetime | None:
    """The message's Date field as a time, or None when it does not parse (then the page
    shows it as written)."""
    try:
        value = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    # RFC 5322 3.3: "-0000" means UTC with no claim about the sender's local zone.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


async def index(request: Request) -> Response:
    return render(request, "index.html", again=False)


async def verify_again(request: Request) -> Response:
    """GET on the result's address (refreshed, bookmarked, or the language switched): the
    result is gone with the request that carried the file, so the form, saying so."""
    return render(request, "index.html", again=True)


async def verify_form(request: Request) -> Response:
    limit = services(request).settings.limits.max_upload_bytes
    try:
        _rate_limit(request)
        with _reserve(request):
            upload = await read_upload(request, api=False)
            report = await run_checks(request, upload)
    except TooLarge:
        return render(
            request, "error.html", 413, key="error_too_large", params={"limit": _human_size(limit)}
        )
    except HttpError as exc:
        response = render(request, "error.html", exc.status, key=exc.key, params=exc.params)
        response.headers.update(exc.headers)
        return response
    except Unavailable:
        return render(request, "error.html", 503, key="error_unavailable", params={})
    return render(
        request,
        "result.html",
        _status(report),
        report=report,
        # A document and its .p7s: a document's result, with no message to speak of.
        pair=upload.email is None,
        sent_at=header_date(report.message.date) if report.message.date else None,
    )


async def openssl_page(request: Request) -> Response:
    try:
        trust = _trust(request)
    except Unavailable:
        return render(request, "openssl.html", roots=[])
    roots = [
        {"sha256": hashlib.sha256(r.public_bytes(Encoding.DER)).hexdigest(), "subject": r.subject}
        for r in trust.roots
    ]
    return render(request, "openssl.html", roots=roots)


async def root_pem(request: Request) -> Response:
    try:
        trust = _trust(request)
    except Unavailable:
        return render(request, "error.html", 503, key="error_unavailable", params={})
    return Response(
        trust.roots_pem(),
        media_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="root.pem"'},
    )


_LOG_PATH = re.compile(r"[A-Za-z0-9.-]+(/[A-Za-z0-9.-]+)*")


async def log_file(request: Request) -> Response:
    """The statement logs as published (C2SP tlog-tiles), read-only: tiles, checkpoints,
    their timestamps and the index, for witnesses, insurers and their own tools."""
    relative = request.path_params["path"]
    if not _LOG_PATH.fullmatch(relative) or ".." in relative.split("/"):
        raise HTTPException(404)
    root = (services(request).settings.archive_dir / "log").resolve()
    path = (root / relative).resolve()
    if root not in path.parents or not path.is_file() or path.name.startswith("."):
        raise HTTPException(404)
    name = path.name
    if relative.split("/")[1:2] == ["tile"]:
        media_type = "application/octet-stream"
    elif name.endswith(".tsr"):
        media_type = "application/timestamp-reply"
    else:
        media_type = "text/plain; charset=utf-8"
    return FileResponse(path, media_type=media_type)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) as a page or JSON."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": "http_error", "message": str(status)}, status_code=status)
    key = "error_not_found" if status == 404 else "error_bad_request"
    return render(request, "error.html", status, key=key, params={"detail": str(status)})


# --- API -------------------------------------------------------------------------------


def _api_error(request: Request, status: int, code: str, key: str, **params: object) -> Response:
    t = i18n.translator(language(request))
    return JSONResponse({"error": code, "message": t(key, **params)}, status_code=status)


async def api_verify(request: Request) -> Response:
    limit = services(request).settings.limits.max_upload_bytes
    try:
        _rate_limit(request)
        with _reserve(request):
            upload = await read_upload(request, api=True)
            report = await run_checks(request, upload)
    except TooLarge:
        return _api_error(request, 413, "too_large", "error_too_large", limit=_human_size(limit))
    except HttpError as exc:
        code = {429: "rate_limited", 400: "bad_request", 408: "timeout", 503: "busy"}.get(
            exc.status, "error"
        )
        if exc.key == "error_log_unavailable":
            code = "log_unavailable"
        response = _api_error(request, exc.status, code, exc.key, **exc.params)
        response.headers.update(exc.headers)
        return response
    except Unavailable:
        return _api_error(request, 503, "unavailable", "error_unavailable")
    lang = language(request)
    body = report_json(report, i18n.translator(lang), lang)
    return JSONResponse(body, status_code=_status(report))


async def api_openapi(request: Request) -> Response:
    return JSONResponse(openapi())


async def healthz(request: Request) -> Response:
    try:
        trust = _trust(request)
    except Unavailable:
        return JSONResponse({"status": "no_archive"}, status_code=503)
    generated = trust.archive.generated_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return JSONResponse({"status": "ok", "archive_generated_at": generated})
