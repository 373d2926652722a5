"""A key signs for the fund only while it is in service: from its activation to its
retirement. The gateway signs with the active generation alone, and a generation's
private keys are destroyed when it retires, so a signature whose own time falls outside
that window was made by someone else (a stolen pending key, a copy of a retired one).
"""

from __future__ import annotations

import datetime as dt

from keys.archive import PublicCertificate, PublicDkimKey

# The gateway's clock, its sealing workers' view of the key store (re-read within a second
# of a rotation) and ours may disagree a little around an activation or a retirement.
CLOCK_SKEW = dt.timedelta(minutes=5)


def retired_at(key: PublicDkimKey | PublicCertificate) -> dt.datetime | None:
    """When the key left service: it first became retired, withdrawn or revoked."""
    times = [t for t in (key.entered(s) for s in ("retired", "withdrawn", "revoked")) if t]
    return min(times) if times else None


def outside_service(key: PublicDkimKey | PublicCertificate, signed_at: dt.datetime) -> str | None:
    """The reason code when `signed_at` lies outside the key's time of service."""
    activated = key.entered("active")
    if activated is None or signed_at < activated - CLOCK_SKEW:
        return "signed_before_activation"
    retired = retired_at(key)
    if retired is not None and signed_at > retired + CLOCK_SKEW:
        return "signed_after_retirement"
    return None
