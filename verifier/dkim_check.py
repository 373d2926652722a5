"""Checks every DKIM-Signature of a message with dkimpy, keys served from the public archive.

Never live DNS: the archive is authoritative for the fund's domains and keeps keys that
have left DNS, so an old statement still verifies. Other domains' signatures (a relay's,
a forwarder's) are listed but not checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
from typing import Any

import dkim
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.util import InvalidTagValueList, parse_tag_value

from keys.archive import PublicDkimKey, format_time
from tlog.entry import dkim_seal_hash
from verifier import dkim_canon, headers
from verifier.report import DkimCheck, DkimStatus, KeyInfo
from verifier.service import outside_service, retired_at
from verifier.trust import Trust

# dkimpy logs through the logger it is given; ours goes nowhere, so nothing derived from an
# upload (health data) reaches a log.
_SILENT = logging.getLogger("verifier.dkimpy")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False
_SILENT.setLevel(logging.CRITICAL + 1)

# dkimpy joins folded header lines by repeated concatenation, quadratic in their number;
# no real message has this much header, and past it a hostile one could stall a worker.
MAX_HEADER_BYTES = 128 * 1024
# Each check hashes the whole body again. The fund signs twice and relays add a few; more
# than this is an attempt to multiply the work.
MAX_SIGNATURES = 8

# dkimpy checks an RSA signature with pure-Python big numbers (about 3 ms a signature, the
# largest single cost of a verification). Everything else stays dkimpy's: what is hashed,
# how, and every tag check; only the modular arithmetic goes to OpenSSL, as the gateway's
# signer does. dkimpy looks this name up in its module at each call.
_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}  # noqa: S303


@functools.lru_cache(maxsize=256)
def _rsa_key(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _openssl_rsa_verify(digest: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    algorithm = _HASHES.get(str(digest.name).lower())
    if algorithm is None:
        return False
    try:
        key = _rsa_key(public_key["modulus"], public_key["publicExponent"])
        key.verify(signature, digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


dkim.RSASSA_PKCS1_v1_5_verify = _openssl_rsa_verify

# dkimpy parses the key record (base64, ASN.1, the modulus as a Python integer) for every
# signature. The result depends on the record's text alone, so it is kept per record: a
# revocation changes the key's state in the archive, never its record, and is checked
# apart. A record dkimpy refuses is not kept; it is refused again, by name.
_evaluate_pk = dkim.evaluate_pk


@functools.lru_cache(maxsize=256)
def _parsed_record(record: bytes) -> Any:
    return _evaluate_pk(b"", record)


def _evaluate_pk_once(name: bytes, record: bytes | str) -> Any:
    if isinstance(record, bytes) and record:
        with contextlib.suppress(Exception):
            return _parsed_record(record)
    return _evaluate_pk(name, record)


dkim.evaluate_pk = _evaluate_pk_once
dkim_canon.install()

# RFC 8301: rsa-sha1 signatures are not to be trusted; the fund never makes them.
_ALGORITHMS = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}


def signature_domain(value: bytes) -> str:
    """The d= of one DKIM-Signature value, lower-cased ("" when unreadable)."""
    return _text(_tags(value).get(b"d")).lower().rstrip(".")


def check_dkim(
    raw: bytes,
    signatures: list[bytes],
    trust: Trust,
    defects: tuple[str, ...] | None = None,
    block: headers.HeaderBlock | None = None,
) -> tuple[DkimCheck, ...]:
    """`signatures`: the DKIM-Signature values as the header reader saw them, used to
    describe them when dkimpy cannot read the message at all. `defects`: what in the
    message readers would read differently (computed from `raw` when not given); a
    signature that passes over such a message does not vouch for what a reader shows.
    `block`: `raw`'s header block as headers.read reads it, when the caller has it."""
    if _header_block_size(raw) > MAX_HEADER_BYTES:
        return _unchecked(signatures, "headers_too_large", None)
    if block is None:
        block = headers.read(headers.split(raw)[0])
    if defects is None:
        defects = block.defects
    try:
        verifier = dkim.DKIM(raw, logger=_SILENT, minkey=1024)
    except Exception as exc:  # dkimpy raises many types on hostile input
        return _unchecked(signatures, "unparseable_message", type(exc).__name__)
    found = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    try:
        tagged = [_tags(value) for value in found[:MAX_SIGNATURES]]
        checked = tuple(
            _vouches(_check_one(verifier, idx, tags, trust), tags, block, defects)
            for idx, tags in enumerate(tagged)
        )
    finally:
        dkim_canon.forget()
    return checked + _unchecked(found[MAX_SIGNATURES:], "too_many_signatures", None)


def covered_fields(signature: bytes, block: headers.HeaderBlock) -> set[int]:
    """The header fields this signature's h= list covers."""
    names = _tags(signature).get(b"h", b"").split(b":")
    return headers.signed_instances(block.fields, names)


def _vouches(
    check: DkimCheck, tags: dict[bytes, bytes], block: headers.HeaderBlock, defects: tuple[str, ...]
) -> DkimCheck:
    """A passing signature vouches for the message only if every reader reads the same
    headers, and every From, Subject, Reply-To... present is one it covers."""
    # A revoked key's signature too: the statement log may yet vouch for it.
    if check.status not in (DkimStatus.PASS, DkimStatus.REVOKED):
        return check
    if defects:
        return _with(
            check, status=DkimStatus.FAIL, reason="headers_malformed", detail=", ".join(defects)
        )
    names = tags.get(b"h", b"").split(b":")
    unsigned = headers.unsigned_shown(block.fields, names)
    if unsigned:
        return _with(
            check, status=DkimStatus.FAIL, reason="header_not_signed", detail=", ".join(unsigned)
        )
    return check


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("ascii", "replace").strip()


def _tags(value: bytes) -> dict[bytes, bytes]:
    try:
        tags: dict[bytes, bytes] = parse_tag_value(value)
    except (InvalidTagValueList, ValueError):
        return {}
    return tags


def _key_info(key: PublicDkimKey) -> KeyInfo:
    revocation = key.revocation
    return KeyInfo(
        generation=key.generation,
        state=key.state,
        retired_at=key.entered("retired"),
        compromised_at=revocation.compromised_at if revocation else None,
        revoked_at=revocation.revoked_at if revocation else None,
        revocation_reason=revocation.reason if revocation else None,
    )


def _check_one(verifier: Any, idx: int, tags: dict[bytes, bytes], trust: Trust) -> DkimCheck:
    domain = _text(tags.get(b"d")).lower().rstrip(".")
    selector = _text(tags.get(b"s"))
    algorithm = _text(tags.get(b"a")).lower()
    check = DkimCheck(
        domain=domain, selector=selector, algorithm=algorithm, status=DkimStatus.INVALID
    )
    if not tags or not domain or not selector:
        return _with(check, reason="malformed")
    if domain not in trust.domains:
        return _with(check, status=DkimStatus.NOT_FUND)
    key = trust.dkim_key(domain, selector)
    if key is None:
        return _with(check, status=DkimStatus.UNKNOWN_KEY, reason="unknown_selector")
    info = _key_info(key)
    check = _with(
        check,
        key=info,
        seal_sha256=dkim_seal_hash(tags.get(b"b", b"")),
        signed_at=_stated_time(tags.get(b"t")),
    )
    if algorithm == "rsa-sha1":
        return _with(check, reason="weak_algorithm", detail="a=rsa-sha1 (RFC 8301)")
    if b"l" in tags:
        # RFC 6376 8.2: l= leaves whatever follows the first l octets of the body to
        # nobody. The gateway signs the whole body, always; such a signature vouches for
        # no message.
        detail = f"l={_text(tags.get(b'l'))[:20]}"
        return _with(check, status=DkimStatus.FAIL, reason="body_length_limit", detail=detail)
    if _ALGORITHMS.get(algorithm) != key.algorithm:
        return _with(check, reason="algorithm_mismatch", detail=f"a={algorithm}, k={key.algorithm}")
    record = key.dns_txt().encode("ascii")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record

    try:
        ok = verifier.verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.ValidationError as exc:
        text = str(exc)
        if text.startswith("body hash mismatch"):
            return _with(check, status=DkimStatus.FAIL, reason="body_changed")
        if "expired" in text:
            return _with(check, reason="expired", detail=text[:200])
        return _with(check, reason="malformed", detail=text[:200])
    except Exception as exc:  # dkimpy raises many types on hostile input
        return _with(check, reason="malformed", detail=type(exc).__name__)
    if not ok:
        return _with(check, status=DkimStatus.FAIL, reason="header_changed")
    if key.revocation is not None:
        return _with(check, status=DkimStatus.REVOKED, reason="revoked_key")
    outside = _outside_service(key, tags.get(b"t"))
    if outside is not None:
        return _with(check, reason=outside[0], detail=outside[1])
    return _with(check, status=DkimStatus.PASS)


def _stated_time(stamp: bytes | None) -> dt.datetime | None:
    if stamp is None or not stamp.strip().isdigit():
        return None
    try:
        return dt.datetime.fromtimestamp(int(stamp.strip()), dt.UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _outside_service(key: PublicDkimKey, stamp: bytes | None) -> tuple[str, str] | None:
    """Why the signature's own time (t=) falls outside its key's time of service, if it
    does. The gateway always writes t=; a signature without it is not the gateway's."""
    if stamp is None or not stamp.strip().isdigit():
        return "no_timestamp", "no t= tag"
    try:
        signed = dt.datetime.fromtimestamp(int(stamp.strip()), dt.UTC)
    except (OverflowError, ValueError, OSError):
        return "no_timestamp", "t= out of range"
    reason = outside_service(key, signed)
    if reason is None:
        return None
    retired = retired_at(key)
    until = f", in service until {format_time(retired)}" if retired else ""
    return reason, f"t={format_time(signed)}{until}"


def _with(check: DkimCheck, **changes: Any) -> DkimCheck:
    return dataclasses.replace(check, **changes)


def _header_block_size(raw: bytes) -> int:
    crlf = raw.find(b"\r\n\r\n")
    # Only an LF pair before the CRLF pair counts: no need to scan the body for one.
    lf = raw.find(b"\n\n", 0, len(raw) if crlf < 0 else crlf + 2)
    ends = [i for i in (crlf, lf) if i >= 0]
    return min(ends) if ends else len(raw)


def _unchecked(signatures: list[bytes], reason: str, detail: str | None) -> tuple[DkimCheck, ...]:
    """The message cannot be handed to dkimpy: report each signature the email parser saw."""
    found = []
    for value in signatures:
        tags = _tags(value)
        found.append(
            DkimCheck(
                domain=_text(tags.get(b"d")).lower(),
                selector=_text(tags.get(b"s")),
                algorithm=_text(tags.get(b"a")).lower(),
                status=DkimStatus.INVALID,
                reason=reason,
                detail=detail,
            )
        )
    return tuple(found)
