"""The TLS-RPT record (RFC 8460 3): where a domain wants TLS failures reported."""

from __future__ import annotations

import pytest

from gateway.tls_rpt import parse_record, record_name


def test_record_name() -> None:
    assert record_name("insurer.test.") == "_smtp._tls.insurer.test"


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=TLSRPTv1; rua=mailto:tls@insurer.test"], ("mailto:tls@insurer.test",)),
        (
            ["v=TLSRPTv1;rua=mailto:a@x.test,https://reports.x.test/v1"],
            ("mailto:a@x.test", "https://reports.x.test/v1"),
        ),
        (["unrelated", "v=TLSRPTv1; rua=mailto:a@x.test"], ("mailto:a@x.test",)),
        (["v=TLSRPTv1; rua=mailto:a@x.test", "v=TLSRPTv1; rua=mailto:b@x.test"], ()),
        (["v=TLSRPTv1; rua=ftp://x.test/"], ()),  # mailto: or https: only
        (["v=TLSRPTv1;"], ()),  # no rua
        (["v=TLSRPTv2; rua=mailto:a@x.test"], ()),
        (["v=TLSRPTv1; garbage; rua=mailto:a@x.test"], ()),
        ([], ()),
    ],
)
def test_only_one_well_formed_record_gives_its_addresses(
    records: list[str], expected: tuple[str, ...]
) -> None:
    assert parse_record(records) == expected
