"""Request handlers: read the upload (bounded, in memory), run the checks in a worker
thread, answer with a page or JSON. Nothing from an upload is logged or stored."""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import logging
import re
import time
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
from verifier.auth import TokenOwners
from verifier.clientaddr import ClientAddress, rate_bucket
from verifier.formdata import FormError, FormPart, parse_form
from verifier.log_check import LogUnavailable
from verifier.metrics import Metrics
from verifier.ratelimit import RateLimiter
from verifier.report import Report, Verdict
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

    @property
    def code(self) -> str:
        """The stable code of the API's JSON error, and the metrics' rejection reason."""
        if self.key == "error_log_unavailable":
            return "log_unavailable"
        if self.key in ("error_too_many_emails", "error_batch_over_quota"):
            return self.key.removeprefix("error_")
        if self.params.get("detail") == "disconnected":
            return "disconnected"
        codes = {
            400: "bad_request",
            408: "timeout",
            413: "too_large",
            415: "unsupported_media_type",
            429: "rate_limited",
            503: "busy",
        }
        return codes.get(self.status, "error")


@dataclass
class Services:
    settings: Settings
    trust: TrustSource
    anonymous: RateLimiter  # per client address (per /64 for IPv6)
    organisations: RateLimiter  # per organisation, for its API tokens
    clients: ClientAddress
    owners: TokenOwners
    metrics: Metrics
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


def human_size(size: int) -> str:
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
def reserve(request: Request) -> Iterator[None]:
    """Holds this upload's share of the memory budget until the request is answered."""
    limit = services(request).settings.limits.max_upload_bytes + _FORM_OVERHEAD
    size = uploads.reservation(request.headers.get("content-length", ""), limit)
    budget = services(request).upload_budget()
    if not budget.take(size):
        error = HttpError(503, "error_busy", seconds=BUSY_RETRY_AFTER)
        error.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
        raise error
    metrics = services(request).metrics
    metrics.upload(+1)
    try:
        yield
    finally:  # exceptions, cancellation and disconnects included
        budget.give_back(size)
        metrics.upload(-1)


def client_address(request: Request) -> str:
    """The client's address, taken from a forwarding header only when the peer is one of
    the configured proxies."""
    peer = request.client.host if request.client else "unknown"
    return services(request).clients.of(peer, request.scope["headers"])


def limiter_and_bucket(request: Request, org: str | None) -> tuple[RateLimiter, str]:
    if org is not None:
        return services(request).organisations, f"org:{org}"
    return services(request).anonymous, rate_bucket(client_address(request))


def rate_limited(request: Request, org: str | None, seconds: int) -> HttpError:
    if org is None:
        error = HttpError(429, "error_rate_limited", seconds=seconds)
    else:
        limit = services(request).organisations.per_minute
        error = HttpError(429, "error_org_rate_limited", seconds=seconds, limit=limit)
    error.headers["Retry-After"] = str(seconds)
    return error


def admit(request: Request, org: str | None = None, count: int = 1) -> None:
    """Counts `count` verifications against the caller's quota, or raises 429."""
    limiter, bucket = limiter_and_bucket(request, org)
    wait = limiter.take(bucket, count)
    if wait:
        raise rate_limited(request, org, wait)


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
    emails = [parts[name] for name in ("file", "email") if name in parts]
    if len(emails) > 1 or (emails and ("document" in parts or "signature" in parts)):
        # One upload, one verdict: an email beside another, or beside a document pair, would
        # leave one of them unjudged while the answer seems to cover both.
        raise HttpError(400, "error_bad_request", detail="one email, or one document and its .p7s")
    upload_part = emails[0] if emails else None
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


async def run_checks(request: Request, upload: Upload, org: str | None = None) -> Report:
    """The report on one upload; counted in the metrics by verdict and organisation."""
    started = time.monotonic()
    report = await _checks(request, upload)
    services(request).metrics.verification(report.verdict.value, org, time.monotonic() - started)
    return report


async def _checks(request: Request, upload: Upload) -> Report:
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


def status_of(report: Report) -> int:
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
    metrics = services(request).metrics
    try:
        admit(request)  # the page is anonymous, whatever Authorization it carries
        with reserve(request):
            upload = await read_upload(request, api=False)
            report = await run_checks(request, upload)
    except TooLarge:
        metrics.rejection("too_large")
        return render(
            request, "error.html", 413, key="error_too_large", params={"limit": human_size(limit)}
        )
    except HttpError as exc:
        metrics.rejection(exc.code)
        response = render(request, "error.html", exc.status, key=exc.key, params=exc.params)
        response.headers.update(exc.headers)
        return response
    except Unavailable:
        metrics.rejection("unavailable")
        return render(request, "error.html", 503, key="error_unavailable", params={})
    return render(
        request,
        "result.html",
        status_of(report),
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


async def healthz(request: Request) -> Response:
    try:
        trust = _trust(request)
    except Unavailable:
        return JSONResponse({"status": "no_archive"}, status_code=503)
    generated = trust.archive.generated_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return JSONResponse({"status": "ok", "archive_generated_at": generated})
