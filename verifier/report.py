"""The verdict model: what the checks found, and the one verdict an insurer reads first.

Verdict codes are a public contract (insurers' programs branch on them) and never change
meaning:

- ``authentic``: a DKIM signature of the fund, by a key that is not revoked, passes, and
  every signed statement document is valid.
- ``altered``: every statement document carries a valid signature of the fund, but no DKIM
  signature of the fund passes (the message was forwarded, re-encoded or edited).
- ``tampered``: a document's signature does not match its document, or was made by a
  certificate that is not the fund's, or a document sits unsigned next to signed ones in a
  message whose DKIM no longer covers it, or a signature verifies only with a revoked key.
- ``unsigned``: nothing verifiable from the fund's keys.
- ``not_email``: the upload is not a readable email.

Revoked keys: a signature that verifies only with a revoked key is never authentic. We
answer ``tampered`` (with the ``revoked_key`` warning), whatever the signing time it
states: the signing time is written by the signer, so whoever holds a stolen key can
backdate it, and a "document authentic" answer would let it through. The insurer asks the
fund for a fresh copy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    AUTHENTIC = "authentic"
    ALTERED = "altered"
    TAMPERED = "tampered"
    UNSIGNED = "unsigned"
    NOT_EMAIL = "not_email"


class DkimStatus(StrEnum):
    PASS = "pass"  # noqa: S105 - a status, not a password; verifies with a fund key that is not revoked
    FAIL = "fail"  # the fund's key, but the message no longer matches (see reason)
    REVOKED = "revoked"  # verifies, but only with a revoked key
    UNKNOWN_KEY = "unknown_key"  # a fund domain, but a selector the archive never held
    NOT_FUND = "not_fund"  # another domain's signature: not checked (no live DNS)
    INVALID = "invalid"  # malformed signature or message


class DocStatus(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    REVOKED = "revoked"
    UNSIGNED = "unsigned"  # a PDF without a .p7s


@dataclass(frozen=True)
class KeyInfo:
    """Which of the fund's keys or certificates was used, and its state in the archive."""

    generation: str
    state: str
    compromised_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None


@dataclass(frozen=True)
class DkimCheck:
    domain: str
    selector: str
    algorithm: str
    status: DkimStatus
    # body_changed, header_changed, malformed, expired, algorithm_mismatch, ... (i18n keys)
    reason: str | None = None
    detail: str | None = None  # technical detail, shown below the plain words
    key: KeyInfo | None = None


@dataclass(frozen=True)
class SignerInfo:
    subject: str
    issuer: str
    serial: str
    sha256: str
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True)
class DocumentCheck:
    filename: str
    status: DocStatus
    size: int | None = None
    sha256: str | None = None
    # digest_mismatch, bad_signature, not_fund_root, ... (i18n keys)
    reason: str | None = None
    detail: str | None = None
    signer: SignerInfo | None = None
    signing_time: dt.datetime | None = None
    key: KeyInfo | None = None


@dataclass(frozen=True)
class MessageInfo:
    """What the user sees of the message itself (decoded, never trusted, always escaped)."""

    subject: str = ""
    sender: str = ""
    sender_domain: str = ""
    date: str = ""
    message_id: str = ""
    line_ends: str = "crlf"  # crlf, lf or mixed


@dataclass(frozen=True)
class Report:
    verdict: Verdict
    reason: str  # an i18n key explaining the verdict in one sentence
    message: MessageInfo = field(default_factory=MessageInfo)
    dkim: tuple[DkimCheck, ...] = ()
    documents: tuple[DocumentCheck, ...] = ()
    warnings: tuple[str, ...] = ()  # i18n keys
    forwarded: bool = False  # the verdict is about a message found inside a forward


def decide(
    dkim: tuple[DkimCheck, ...], documents: tuple[DocumentCheck, ...]
) -> tuple[Verdict, str]:
    """The verdict and its reason key, from the individual checks (rules in the module doc)."""
    signed = [d for d in documents if d.status is not DocStatus.UNSIGNED]
    if any(d.status is DocStatus.REVOKED for d in documents) or any(
        s.status is DkimStatus.REVOKED for s in dkim
    ):
        return Verdict.TAMPERED, "reason_revoked"
    if any(d.status is DocStatus.INVALID for d in documents):
        return Verdict.TAMPERED, "reason_document_invalid"
    dkim_pass = any(s.status is DkimStatus.PASS for s in dkim)
    if dkim_pass:
        return Verdict.AUTHENTIC, "reason_authentic"
    if signed:
        if len(signed) != len(documents):
            return Verdict.TAMPERED, "reason_unsigned_document"
        fund = [s for s in dkim if s.status is DkimStatus.FAIL]
        if any(s.reason == "body_changed" for s in fund):
            return Verdict.ALTERED, "reason_altered_body"
        if fund:
            return Verdict.ALTERED, "reason_altered_header"
        return Verdict.ALTERED, "reason_altered_no_dkim"
    if any(s.status in (DkimStatus.FAIL, DkimStatus.UNKNOWN_KEY) for s in dkim):
        return Verdict.UNSIGNED, "reason_unsigned_broken"
    return Verdict.UNSIGNED, "reason_unsigned"


def warnings_for(
    dkim: tuple[DkimCheck, ...], documents: tuple[DocumentCheck, ...], message: MessageInfo
) -> tuple[str, ...]:
    found: list[str] = []
    if any(d.status is DocStatus.REVOKED for d in documents) or any(
        s.status is DkimStatus.REVOKED for s in dkim
    ):
        found.append("warning_revoked_key")
    statuses = {s.status for s in dkim}
    if DkimStatus.PASS in statuses and statuses & {DkimStatus.FAIL, DkimStatus.INVALID}:
        found.append("warning_some_dkim_failed")
    if any(s.status is DkimStatus.UNKNOWN_KEY for s in dkim):
        found.append("warning_unknown_selector")
    if any(d.status is DocStatus.UNSIGNED for d in documents):
        found.append("warning_unsigned_document")
    if message.line_ends != "crlf":
        found.append("warning_lf_line_ends")
    return tuple(found)
