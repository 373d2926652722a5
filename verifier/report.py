"""The verdict model: what the checks found, and the one verdict an insurer reads first.

Verdict codes are a public contract (insurers' programs branch on them) and never change
meaning:

- ``authentic``: a DKIM signature of the fund, by a key that is not revoked and was in
  service when it signed, passes over a header block every reader reads the same way, and
  every sealed document is valid. Only then are the message's headers shown as the fund's,
  and only the instances that signature covers.
- ``altered``: every attachment is a document the fund sealed, each valid, but no DKIM
  signature of the fund vouches for the message (forwarded, re-encoded, edited, or a
  header block readers would read differently).
- ``tampered``: a document's signature does not match its document, or was made by a
  certificate that is not the fund's, or by a key outside its time of service, or an
  attachment the fund did not seal sits next to sealed documents in a message whose DKIM
  no longer covers it, or a signature verifies only with a revoked key.
- ``unsigned``: nothing verifiable from the fund's keys.
- ``not_email``: the upload is not a readable email.

Revoked keys: a signature that verifies only with a revoked key is never authentic. We
answer ``tampered`` (with the ``revoked_key`` warning), whatever the signing time it
states: the signing time is written by the signer, so whoever holds a stolen key can
backdate it, and a "document authentic" answer would let it through. The insurer asks the
fund for a fresh copy.

Statement log: once a log exists (its start in the archive), a seal made after that start
and found in no log is ``tampered`` (``not_logged``), whatever its key. A seal whose entry
is in a checkpoint that a Time-Stamp Authority dated before its key's compromise keeps
its value after revocation (``logged_before_compromise``). Seals made before the log
existed keep the rules above, with a note.

Keys out of service: a generation's private keys are destroyed when it retires, so a
signature whose own time (DKIM ``t=``, CMS signingTime) falls after its key's retirement,
or before its activation, was not made by the fund's gateway: ``tampered``
(``signed_after_retirement``, ``signed_before_activation``).
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
    UNSIGNED = "unsigned"  # an attachment without a .p7s of the fund


@dataclass(frozen=True)
class KeyInfo:
    """Which of the fund's keys or certificates was used, and its state in the archive."""

    generation: str
    state: str
    # When it left service (its private key destroyed): signatures dated before stay valid.
    retired_at: dt.datetime | None = None
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
    # For the fund's signatures: the digest that names it in the statement log, and the
    # time it states (t=).
    seal_sha256: str | None = None
    signed_at: dt.datetime | None = None


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
    content_type: str = ""
    # document (a PDF, by type, name or content), file (any other attachment) or message
    # (an email attached to this one).
    kind: str = "document"
    # Attached to a forward, outside the fund's message that was judged.
    outside: bool = False
    sha256: str | None = None
    # digest_mismatch, bad_signature, not_fund_root, ... (i18n keys)
    reason: str | None = None
    detail: str | None = None
    signer: SignerInfo | None = None
    signing_time: dt.datetime | None = None
    key: KeyInfo | None = None
    seal_sha256: str | None = None  # SHA-256 of the .p7s: names it in the statement log


@dataclass(frozen=True)
class MessageInfo:
    """What the user sees of the message itself (decoded, never trusted, always escaped)."""

    subject: str = ""
    sender: str = ""
    sender_domain: str = ""
    date: str = ""
    message_id: str = ""
    to: str = ""
    cc: str = ""
    reply_to: str = ""
    line_ends: str = "crlf"  # crlf, lf or mixed
    # True when the values above are the instances a passing fund signature covers.
    vouched: bool = False
    # What in the message readers could read differently (bare_cr, nul, long_line, ...).
    defects: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogProof:
    """Where the statement log holds the seals, with what an insurer needs to check it
    offline with any RFC 9162 verifier: the entry, its inclusion proof, the checkpoint."""

    origin: str
    index: int
    entry: str
    leaf_hash: str  # hex
    tree_size: int
    checkpoint: str  # the signed note, as published
    proof: tuple[str, ...]  # base64 hashes, RFC 9162 inclusion proof for tree_size
    logged_at: dt.datetime | None = None  # certified by the TSA's token on that checkpoint
    tsa: str | None = None
    cosigners: tuple[str, ...] = ()  # witnesses the archive lists, cosignatures verified
    other_signatures: tuple[str, ...] = ()  # signatures of keys the archive does not list


@dataclass(frozen=True)
class LogCheck:
    # logged: in a checkpoint of a log the archive lists; not_logged: sealed after the log
    # started, and in none; before_log: sealed before the log existed (today's rules).
    status: str
    proof: LogProof | None = None


@dataclass(frozen=True)
class Report:
    verdict: Verdict
    reason: str  # an i18n key explaining the verdict in one sentence
    message: MessageInfo = field(default_factory=MessageInfo)
    dkim: tuple[DkimCheck, ...] = ()
    documents: tuple[DocumentCheck, ...] = ()
    warnings: tuple[str, ...] = ()  # i18n keys
    forwarded: bool = False  # the verdict is about a message found inside a forward
    log: LogCheck | None = None  # None: the archive lists no statement log


# A signature made by a key outside its time of service: the fund did not make it.
# The gateway always writes DKIM t=; a signature of a fund key without it is not its own.
OUT_OF_SERVICE = frozenset({"signed_after_retirement", "signed_before_activation", "no_timestamp"})
# The fund's DKIM signature passes, but over headers that are not all it vouches for.
HEADER_REASONS = frozenset({"headers_malformed", "header_not_signed"})


def decide(
    dkim: tuple[DkimCheck, ...],
    documents: tuple[DocumentCheck, ...],
    log: LogCheck | None = None,
) -> tuple[Verdict, str]:
    """The verdict and its reason key, from the individual checks (rules in the module doc)."""
    signed = [d for d in documents if d.status is not DocStatus.UNSIGNED]
    if any(d.status is DocStatus.REVOKED for d in documents) or any(
        s.status is DkimStatus.REVOKED for s in dkim
    ):
        return Verdict.TAMPERED, "reason_revoked"
    if any(s.reason in OUT_OF_SERVICE for s in dkim) or any(
        d.reason in OUT_OF_SERVICE for d in documents
    ):
        return Verdict.TAMPERED, "reason_out_of_service"
    if any(d.status is DocStatus.INVALID for d in documents):
        return Verdict.TAMPERED, "reason_document_invalid"
    if log is not None and log.status == "not_logged":
        return Verdict.TAMPERED, "reason_not_logged"
    dkim_pass = any(s.status is DkimStatus.PASS for s in dkim)
    if dkim_pass:
        return Verdict.AUTHENTIC, "reason_authentic"
    if signed:
        if len(signed) != len(documents):
            return Verdict.TAMPERED, "reason_unsealed_attachment"
        fund = [s for s in dkim if s.status is DkimStatus.FAIL]
        if any(s.reason in HEADER_REASONS for s in fund):
            return Verdict.ALTERED, "reason_altered_headers"
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
    if message.defects:
        found.append("warning_header_defects")
    if any(c.reason == "logged_before_compromise" for c in dkim) or any(
        d.reason == "logged_before_compromise" for d in documents
    ):
        found.append("warning_logged_before_compromise")
    statuses = {s.status for s in dkim}
    if DkimStatus.PASS in statuses and statuses & {DkimStatus.FAIL, DkimStatus.INVALID}:
        found.append("warning_some_dkim_failed")
    if any(s.status is DkimStatus.UNKNOWN_KEY for s in dkim):
        found.append("warning_unknown_selector")
    unsealed = [d for d in documents if d.status is DocStatus.UNSIGNED and not d.outside]
    if any(d.kind == "document" for d in unsealed):
        found.append("warning_unsigned_document")
    if any(d.kind != "document" for d in unsealed):
        found.append("warning_unsealed_attachment")
    if message.line_ends != "crlf":
        found.append("warning_lf_line_ends")
    return tuple(found)


def log_warnings(log: LogCheck | None) -> tuple[str, ...]:
    if log is None:
        return ()
    if log.status == "before_log":
        return ("warning_sealed_before_log",)
    if log.status == "logged" and log.proof is not None and log.proof.logged_at is None:
        return ("warning_log_time_not_certified",)
    return ()
