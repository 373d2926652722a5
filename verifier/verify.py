"""The checks behind every verdict: an uploaded email (or a document and its .p7s) against
the public archive. Pure and synchronous; the web layer runs it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

from verifier import intake
from verifier.cms_check import check_document
from verifier.dkim_check import check_dkim, signature_domain
from verifier.report import (
    DocStatus,
    DocumentCheck,
    MessageInfo,
    Report,
    Verdict,
    decide,
    warnings_for,
)
from verifier.settings import Limits
from verifier.trust import Trust


def verify_email(
    raw: bytes, trust: Trust, limits: Limits, now: dt.datetime | None = None
) -> Report:
    now = now or dt.datetime.now(dt.UTC)
    return _verify(raw, trust, limits, now, forward_depth=0)


def verify_pair(
    filename: str,
    document: bytes,
    signature: bytes,
    trust: Trust,
    now: dt.datetime | None = None,
) -> Report:
    """A document and its .p7s uploaded without the email that carried them."""
    now = now or dt.datetime.now(dt.UTC)
    check = check_document(filename, document, signature, trust, now)
    documents = (check,)
    verdict, reason = decide((), documents)
    if verdict is Verdict.ALTERED:
        # Without an email there is no message to be altered: the document is what counts.
        verdict, reason = Verdict.AUTHENTIC, "reason_pair_authentic"
    return Report(
        verdict=verdict,
        reason=reason,
        documents=documents,
        warnings=warnings_for((), documents, MessageInfo()),
    )


def not_email(reason: str) -> Report:
    return Report(verdict=Verdict.NOT_EMAIL, reason=f"reason_not_email_{reason}")


def _verify(
    raw: bytes, trust: Trust, limits: Limits, now: dt.datetime, forward_depth: int
) -> Report:
    try:
        upload = intake.parse(raw, limits)
    except intake.NotEmail as exc:
        return not_email(exc.reason)
    signatures = [a for a in upload.attachments if a.is_signature]
    if (
        not signatures
        and upload.inner
        and forward_depth < limits.max_forward_depth
        and not _fund_dkim(upload, trust)
    ):
        # The fund's message travels inside a forward: judge it, not the wrapper. The
        # wrapper's own DKIM is the forwarder's and says nothing about the statement.
        for inner in upload.inner:
            report = _verify(inner, trust, limits, now, forward_depth + 1)
            if report.verdict is not Verdict.NOT_EMAIL:
                extra = any(a.is_pdf for a in upload.attachments)
                return _forwarded(report, wrapper_has_documents=extra)
    documents = _documents(upload, trust, limits, now)
    dkim = check_dkim(raw, upload.dkim_signatures, trust) if upload.dkim_signatures else ()
    verdict, reason = decide(dkim, documents)
    return Report(
        verdict=verdict,
        reason=reason,
        message=upload.message,
        dkim=dkim,
        documents=documents,
        warnings=warnings_for(dkim, documents, upload.message),
    )


def _forwarded(report: Report, wrapper_has_documents: bool) -> Report:
    # Documents attached to the forward itself are not the fund's and are not listed.
    notes = ("warning_forward_documents",) if wrapper_has_documents else ()
    return dataclasses.replace(
        report, forwarded=True, warnings=("warning_forwarded", *notes, *report.warnings)
    )


def _fund_dkim(upload: intake.Upload, trust: Trust) -> bool:
    return any(signature_domain(v) in trust.domains for v in upload.dkim_signatures)


def _documents(
    upload: intake.Upload, trust: Trust, limits: Limits, now: dt.datetime
) -> tuple[DocumentCheck, ...]:
    by_name: dict[str, list[intake.Attachment]] = {}
    for attachment in upload.attachments:
        if not attachment.is_signature:
            by_name.setdefault(attachment.filename, []).append(attachment)
    checks: list[DocumentCheck] = []
    paired: set[int] = set()
    for attachment in upload.attachments:
        if not attachment.is_signature:
            continue
        if len(checks) >= limits.max_documents:
            break
        name = attachment.filename
        target = name[: -len(".p7s")] if name.lower().endswith(".p7s") else name
        candidates = [a for a in by_name.get(target, []) if id(a) not in paired]
        document = candidates[0] if candidates else None
        if document is not None:
            paired.add(id(document))
        checks.append(
            check_document(
                target,
                None if document is None else document.decoded(),
                attachment.decoded(),
                trust,
                now,
            )
        )
    for attachment in upload.attachments:
        if attachment.is_pdf and id(attachment) not in paired:
            data = attachment.decoded()
            checks.append(
                DocumentCheck(
                    filename=attachment.filename,
                    status=DocStatus.UNSIGNED,
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    reason="no_signature",
                )
            )
    return tuple(checks)
