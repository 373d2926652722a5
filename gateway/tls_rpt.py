"""SMTP TLS Reporting (RFC 8460): where a recipient domain wants to hear of TLS failures.

Only the DNS record is read (``_smtp._tls.<domain>``, ``v=TLSRPTv1; rua=...``), so that the
log line of a policy failure names the domain's reporting addresses for whoever contacts
its postmaster. The daily aggregate reports of RFC 8460 4 are not sent.
"""

from __future__ import annotations

_SCHEMES = ("mailto:", "https:")


def record_name(domain: str) -> str:
    return f"_smtp._tls.{domain.rstrip('.')}"


def parse_record(records: list[str]) -> tuple[str, ...]:
    """The ``rua`` URIs of the one TLSRPTv1 record among ``records``; () when there is not
    exactly one such record, or it is malformed (RFC 8460 3)."""
    candidates = [r for r in records if r.startswith("v=TLSRPTv1")]
    if len(candidates) != 1:
        return ()
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if not part.strip():
            continue
        if not sep:
            return ()
        fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "TLSRPTv1":
        return ()
    uris = tuple(u.strip() for u in fields.get("rua", "").split(",") if u.strip())
    if not uris or not all(u.lower().startswith(_SCHEMES) for u in uris):
        return ()
    return uris
