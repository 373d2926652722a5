"""The checks behind every verdict: an uploaded email (or a document and its .p7s) against
the public archive. Pure and synchronous; the web layer runs it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

from tlog.entry import decode, p7s_seal_hash
from verifier import intake, log_check
from verifier.cms_check import check_document, signed_digest
from verifier.cms_check import read as read_signature
from verifier.dkim_check import check_dkim, covered_fields, signature_domain
from verifier.report import (
    HEADER_REASONS,
    OUT_OF_SERVICE,
    DkimCheck,
    DkimStatus,
    DocStatus,
    DocumentCheck,
    KeyInfo,
    LogCheck,
    MessageInfo,
    Report,
    Verdict,
    decide,
    log_warnings,
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
    documents: tuple[DocumentCheck, ...] = (
        dataclasses.replace(check, seal_sha256=p7s_seal_hash(signature)),
    )
    # The same log rules as for an email: a seal the log should hold but does not is no
    # more authentic for arriving without its message.
    log = _log(trust, (), documents, now)
    if log is not None and log.status == "logged":
        _, documents = _logged_before_compromise(log, (), documents)
    verdict, reason = decide((), documents, log)
    if verdict is Verdict.ALTERED:
        # Without an email there is no message to be altered: the document is what counts.
        verdict, reason = Verdict.AUTHENTIC, "reason_pair_authentic"
    return Report(
        verdict=verdict,
        reason=reason,
        documents=documents,
        warnings=(*warnings_for((), documents, MessageInfo()), *log_warnings(log)),
        log=log,
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
        and upload.forwarded
        and forward_depth < limits.max_forward_depth
        and not _fund_dkim(upload, trust)
    ):
        # The fund's message travels inside a forward: judge it, not the wrapper. The
        # wrapper's own DKIM is the forwarder's and says nothing about the statement.
        for index, inner in enumerate(upload.inner):
            report = _verify(inner, trust, limits, now, forward_depth + 1)
            if report.verdict is not Verdict.NOT_EMAIL:
                return _forwarded(report, _outside(upload, index))
    documents = _documents(upload, trust, limits, now)
    defects = tuple(dict.fromkeys((*upload.defects, *upload.header.defects)))
    dkim = (
        check_dkim(upload.raw, upload.dkim_signatures, trust, defects, upload.header)
        if upload.dkim_signatures
        else ()
    )
    log = _log(trust, dkim, documents, now)
    if log is not None and log.status == "logged":
        dkim, documents = _logged_before_compromise(log, dkim, documents)
    verdict, reason = decide(dkim, documents, log)
    message = intake.describe(upload, _vouched_fields(upload, dkim))
    return Report(
        verdict=verdict,
        reason=reason,
        message=message,
        dkim=dkim,
        documents=documents,
        warnings=(*warnings_for(dkim, documents, message), *log_warnings(log)),
        log=log,
    )


# The fund's seals that verified with its keys, whatever their keys' state: these must be
# in the statement log.
_SEALS_DKIM = frozenset({DkimStatus.PASS, DkimStatus.REVOKED})


def _fund_seals(
    dkim: tuple[DkimCheck, ...], documents: tuple[DocumentCheck, ...]
) -> list[tuple[str, dt.datetime | None]]:
    seals = [
        (c.seal_sha256, c.signed_at)
        for c in dkim
        if c.seal_sha256
        and (c.status in _SEALS_DKIM or c.reason in OUT_OF_SERVICE or c.reason in HEADER_REASONS)
    ]
    seals.extend(
        (d.seal_sha256, d.signing_time)
        for d in documents
        if d.seal_sha256 and (d.status is not DocStatus.INVALID or d.reason in OUT_OF_SERVICE)
    )
    return seals


def _log(
    trust: Trust,
    dkim: tuple[DkimCheck, ...],
    documents: tuple[DocumentCheck, ...],
    now: dt.datetime,
) -> LogCheck | None:
    """Where the statement log stands on these seals (None: no log, or nothing to look for).
    Raises log_check.LogUnavailable when a listed log cannot be read.

    Each seal answers for itself: one seal found in the log, or stated from before the
    log's start, says nothing of another beside it (a thief with a copy of the keys would
    carry a genuine, logged statement's seal along with a forged one)."""
    started = trust.archive.log_started_at
    seals = _fund_seals(dkim, documents)
    if started is None or trust.directory is None or not seals:
        return None
    proof = None
    proven: set[str] = set()  # the seals a found entry names: one entry per sealing
    fresh = False
    for digest, when in dict.fromkeys(seals):
        if digest in proven:
            continue
        found = log_check.find(
            (digest,),
            trust.archive.logs,
            trust.directory,
            trust.tsa_roots,
            trust.archive.witnesses,
        )
        if found is not None:
            proof = proof or found
            proven.update(decode(found.entry.encode("ascii")).seals)
        elif when is not None and when <= started:
            # Before the log (to the second both are written in). A stated time is the
            # signer's word, which a thief backdates at will: no margin here would keep
            # one out, and one would turn a genuine statement sealed in the minutes
            # before the log began into "tampered".
            continue
        elif when is not None and when > now - log_check.COPY_GRACE:
            fresh = True  # this host's copy of the log may not have it yet
        else:
            return LogCheck("not_logged")
    if fresh:
        raise log_check.LogUnavailable("a seal of the last minutes is not in the log yet")
    if proof is not None:
        return LogCheck("logged", proof)
    return LogCheck("before_log")


def _logged_before_compromise(
    log: LogCheck, dkim: tuple[DkimCheck, ...], documents: tuple[DocumentCheck, ...]
) -> tuple[tuple[DkimCheck, ...], tuple[DocumentCheck, ...]]:
    """A seal whose entry a TSA dated before its key's compromise was made by the fund:
    the revocation does not undo it."""
    proof = log.proof
    if proof is None or proof.logged_at is None:
        return dkim, documents
    logged_at = proof.logged_at
    named = set(decode(proof.entry.encode("ascii")).seals)

    def before(key: KeyInfo | None, digest: str | None) -> bool:
        return (
            key is not None
            and key.compromised_at is not None
            and digest in named
            and logged_at < key.compromised_at
        )

    dkim = tuple(
        dataclasses.replace(c, status=DkimStatus.PASS, reason="logged_before_compromise")
        if c.status is DkimStatus.REVOKED and before(c.key, c.seal_sha256)
        else c
        for c in dkim
    )
    documents = tuple(
        dataclasses.replace(d, status=DocStatus.VALID, reason="logged_before_compromise")
        if d.status is DocStatus.REVOKED and before(d.key, d.seal_sha256)
        else d
        for d in documents
    )
    return dkim, documents


def _vouched_fields(upload: intake.Upload, dkim: tuple[DkimCheck, ...]) -> set[int] | None:
    """The header fields a passing fund signature covers; None when none passes."""
    values = upload.dkim_signatures
    for index, check in enumerate(dkim):
        if check.status is DkimStatus.PASS and index < len(values):
            return covered_fields(values[index], upload.header)
    return None


def _outside(upload: intake.Upload, judged: int) -> tuple[DocumentCheck, ...]:
    """What the forward carries besides the message that was judged: the forwarder's
    files, or other messages. None of it is the fund's; it is listed, never hidden."""
    found = [
        _unsealed(a, kind="message", outside=True)
        for i, (a, _) in enumerate(upload.forwarded)
        if i != judged
    ]
    found.extend(_unsealed(a, outside=True) for a in upload.attachments)
    return tuple(found)


def _forwarded(report: Report, outside: tuple[DocumentCheck, ...]) -> Report:
    notes = ("warning_forward_attachments",) if outside else ()
    return dataclasses.replace(
        report,
        forwarded=True,
        documents=(*report.documents, *outside),
        warnings=("warning_forwarded", *notes, *report.warnings),
    )


def _fund_dkim(upload: intake.Upload, trust: Trust) -> bool:
    return any(signature_domain(v) in trust.domains for v in upload.dkim_signatures)


def _kind(attachment: intake.Attachment) -> str:
    return "document" if attachment.is_document else "file"


def _unsealed(
    attachment: intake.Attachment, kind: str | None = None, outside: bool = False
) -> DocumentCheck:
    data = attachment.decoded()
    return DocumentCheck(
        filename=attachment.filename,
        status=DocStatus.UNSIGNED,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=attachment.content_type,
        kind=kind or _kind(attachment),
        outside=outside,
        reason="no_signature",
    )


def _documents(
    upload: intake.Upload, trust: Trust, limits: Limits, now: dt.datetime
) -> tuple[DocumentCheck, ...]:
    """Every attachment, each once: a document with the .p7s that seals it, a .p7s whose
    document is missing, or an attachment nothing seals."""
    files = [a for a in upload.attachments if not a.is_signature]
    digests: dict[tuple[int, str], bytes] = {}

    def digest(attachment: intake.Attachment, name: str) -> bytes:
        key = (id(attachment), name)
        if key not in digests:
            digests[key] = hashlib.new(name, attachment.decoded()).digest()
        return digests[key]

    checks: list[DocumentCheck] = []
    paired: set[int] = set()
    for signature in (a for a in upload.attachments if a.is_signature):
        if len(checks) >= limits.max_documents:
            break
        target = signature.key.removesuffix(".p7s")
        candidates = [a for a in files if id(a) not in paired]
        p7s = read_signature(signature.decoded())
        claimed = signed_digest(p7s)
        # The document the signature names, else the one whose content it signed (a
        # mail program may rename a file, never change what it signed).
        matching = [a for a in candidates if claimed and digest(a, claimed[0]) == claimed[1]]
        named = [a for a in candidates if a.key == target]
        named_ids = {id(a) for a in named}
        chosen = next(iter([a for a in matching if id(a) in named_ids] + matching + named), None)
        if chosen is not None:
            paired.add(id(chosen))
        name = chosen.filename if chosen is not None else _strip_p7s(signature.filename)
        check = check_document(name, None if chosen is None else chosen.decoded(), p7s, trust, now)
        checks.append(
            dataclasses.replace(
                check,
                content_type="" if chosen is None else chosen.content_type,
                kind="document" if chosen is None else _kind(chosen),
                seal_sha256=p7s_seal_hash(signature.decoded()),
            )
        )
    checks.extend(_unsealed(a) for a in files if id(a) not in paired)
    checks.extend(_unsealed(a, kind="message") for a, _ in upload.forwarded)
    return tuple(checks)


def _strip_p7s(name: str) -> str:
    return name[: -len(".p7s")] if name.lower().endswith(".p7s") else name
