"""The JSON API: one email per request, or a batch of them, for an organisation named by
its Bearer token or for an anonymous client. Same checks, same report as the page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from verifier import i18n
from verifier.auth import RegistryUnavailable, Unauthorized, organisation
from verifier.endpoints import (
    HttpError,
    TooLarge,
    Unavailable,
    Upload,
    admit,
    human_size,
    language,
    limiter_and_bucket,
    rate_limited,
    read_body,
    read_upload,
    reserve,
    run_checks,
    services,
    status_of,
)
from verifier.formdata import FormError, TooManyParts, parse_parts
from verifier.report import Report
from verifier.serialize import API_VERSION, openapi, report_json
from verifier.settings import FORM_OVERHEAD

# An intake system receives a mailbox's worth at once; 50 statements of ~30 KB are 1.5 MB,
# well within one upload's size limit, which bounds the whole batch.
MAX_BATCH = 50
BATCH_FIELDS = ("file", "email")


# What a request may end in instead of a report.
REFUSALS = (Unauthorized, TooLarge, HttpError, Unavailable, RegistryUnavailable)


def _error(request: Request, status: int, code: str, key: str, **params: object) -> JSONResponse:
    t = i18n.translator(language(request))
    return JSONResponse({"error": code, "message": t(key, **params)}, status_code=status)


def _refusal(request: Request, exc: Exception) -> Response:
    """The JSON answer to a request we do not verify, counted by reason."""
    metrics = services(request).metrics
    if isinstance(exc, Unauthorized):
        metrics.rejection("unauthorized")
        response = _error(request, 401, "invalid_token", exc.key)
        response.headers["WWW-Authenticate"] = exc.challenge()
        return response
    if isinstance(exc, TooLarge):
        metrics.rejection("too_large")
        limit = human_size(services(request).settings.limits.max_upload_bytes)
        return _error(request, 413, "too_large", "error_too_large", limit=limit)
    if isinstance(exc, HttpError):
        metrics.rejection(exc.code)
        response = _error(request, exc.status, exc.code, exc.key, **exc.params)
        response.headers.update(exc.headers)
        return response
    assert isinstance(exc, Unavailable | RegistryUnavailable)
    metrics.rejection("unavailable")
    return _error(request, 503, "unavailable", "error_unavailable")


# RFC 6750 2.3: the URL query form of a token. Never served: a URL ends up in access logs
# and browser histories, and a request carrying credentials must not run as anonymous.
_QUERY_TOKEN = "access_token"  # noqa: S105 - a parameter name, not a secret


def _organisation(request: Request) -> str | None:
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        # RFC 9110 11.6.2 allows one; which one a proxy checked and which one we would read
        # need not be the same.
        raise Unauthorized("more than one Authorization header", "error_token_elsewhere")
    if _QUERY_TOKEN in request.query_params:
        raise Unauthorized("token in the URL", "error_token_elsewhere")
    return organisation(values[0] if values else None, services(request).owners)


async def api_verify(request: Request) -> Response:
    try:
        org = _organisation(request)
        admit(request, org)
        with reserve(request):
            upload = await read_upload(request, api=True)
            report = await run_checks(request, upload, org)
    except REFUSALS as exc:
        return _refusal(request, exc)
    return JSONResponse(_report(request, report), status_code=status_of(report))


def _report(request: Request, report: Report) -> dict[str, object]:
    lang = language(request)
    return report_json(report, i18n.translator(lang), lang)


async def api_verify_batch(request: Request) -> Response:
    """Up to MAX_BATCH emails as `file` parts of one multipart/form-data body; one report
    each, in the order sent. Each counts against the quota, all of them or none."""
    try:
        org = _organisation(request)
        _room_for_one(request, org)
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise HttpError(415, "error_bad_request", detail="multipart/form-data expected")
        with reserve(request):
            emails = await _batch(request, content_type)
            _admit_batch(request, org, len(emails))
            reports = [await run_checks(request, Upload(email=e), org) for e in emails]
    except REFUSALS as exc:
        return _refusal(request, exc)
    body = {
        "api_version": API_VERSION,
        "count": len(reports),
        "reports": [_report(request, r) for r in reports],
    }
    return JSONResponse(body)


def _room_for_one(request: Request, org: str | None) -> None:
    """A caller with no quota left is refused before its body is read."""
    limiter, bucket = limiter_and_bucket(request, org)
    wait = limiter.wait(bucket)
    if wait:
        raise rate_limited(request, org, wait)


def _admit_batch(request: Request, org: str | None, count: int) -> None:
    limiter, _ = limiter_and_bucket(request, org)
    if 0 < limiter.per_minute < count:  # would never fit: no point retrying it
        raise HttpError(429, "error_batch_over_quota", count=count, limit=limiter.per_minute)
    admit(request, org, count)


async def _batch(request: Request, content_type: str) -> list[bytes]:
    """The emails of a batch, in order. The whole body is bounded like one upload, so a
    batch holds no more memory than a single email may."""
    limit = services(request).settings.limits.max_upload_bytes
    body = await read_body(request, limit + FORM_OVERHEAD)
    try:
        parts = parse_parts(body, content_type, max_parts=MAX_BATCH)
    except TooManyParts as exc:
        raise HttpError(413, "error_too_many_emails", limit=MAX_BATCH) from exc
    except FormError as exc:
        raise HttpError(400, "error_bad_request", detail=str(exc)) from exc
    del body
    emails = []
    for part in parts:
        if part.name not in BATCH_FIELDS:
            raise HttpError(400, "error_batch_field", name=part.name[:40])
        if len(part.data) > limit:
            raise TooLarge
        emails.append(bytes(part.data))
        part.data.clear()
    if not emails or not all(emails):
        raise HttpError(400, "error_no_file")
    return emails


async def api_openapi(request: Request) -> Response:
    return JSONResponse(openapi())
