"""``sealpost-gateway tls-policy DOMAIN``: the TLS delivery would ask of each MX host of a
domain now (DANE, MTA-STS, ``tls_required_domains``), the way ``posttls-finger`` and
``mta-sts-query`` help a Postfix admin. It resolves and fetches as the gateway does, but
connects to no MX. Exit status 0 when some host may be used, 1 when mail would be
deferred (or the domain has no usable MX).
"""

from __future__ import annotations

from typing import TextIO

from gateway.delivery import DnsFailure, MxResolver
from gateway.tls_policy import HostTls, TlsPolicy

EXIT_OK = 0
EXIT_NO_HOST = 1


async def show(
    domain: str,
    mx: MxResolver,
    policy: TlsPolicy | None,
    required: frozenset[str],
    out: TextIO,
) -> int:
    domain = domain.lower().rstrip(".")
    try:
        hosts = await mx.mx_hosts(domain)
    except DnsFailure as failure:
        out.write(f"{domain}: {failure}\n")
        return EXIT_NO_HOST
    out.write(f"{domain}: MX {', '.join(hosts)}\n")
    if policy is None:
        mode = "verified (tls_required_domains)" if domain in required else "opportunistic"
        out.write(f"  every host: {mode}; DANE and MTA-STS are off\n")
        return EXIT_OK
    plan = await policy.plan(domain, hosts, required=domain in required)
    for host, tls in plan.hosts:
        out.write(f"  {host}: {describe(tls)}\n")
    for reason in plan.skipped:
        out.write(f"  skipped: {reason}\n")
    if not plan.hosts:
        out.write("  no host may be used: mail to this domain is deferred (4.7.5)\n")
        return EXIT_NO_HOST
    return EXIT_OK


def describe(tls: HostTls) -> str:
    words = {
        "opportunistic": "opportunistic (STARTTLS if offered, certificate not checked)",
        "encrypted": "TLS required, certificate not checked",
        "verified": "TLS required, certificate valid for the host name",
        "dane": "TLS required, certificate matching TLSA",
    }
    text = words[tls.mode]
    if tls.testing:
        text = "verified TLS asked, but only reported (MTA-STS testing)"
    if tls.policy:
        text += f" [{tls.policy}]"
    if tls.tlsa:
        text += " " + "; ".join(str(r) for r in tls.tlsa)
    if tls.addresses:
        text += f" at {', '.join(tls.addresses)}"
    return text
