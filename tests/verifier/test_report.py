"""The verdict rules, one row per case the brief names."""

from __future__ import annotations

import pytest

from verifier.report import (
    DkimCheck,
    DkimStatus,
    DocStatus,
    DocumentCheck,
    MessageInfo,
    Verdict,
    decide,
    warnings_for,
)


def dkim(status: DkimStatus, reason: str | None = None) -> DkimCheck:
    return DkimCheck("caisses.example", "s1", "rsa-sha256", status, reason)


def doc(status: DocStatus) -> DocumentCheck:
    return DocumentCheck("d.pdf", status)


PASS, FAIL, REVOKED = DkimStatus.PASS, DkimStatus.FAIL, DkimStatus.REVOKED
VALID, INVALID, UNSIGNED = DocStatus.VALID, DocStatus.INVALID, DocStatus.UNSIGNED


@pytest.mark.parametrize(
    ("signatures", "documents", "verdict", "reason"),
    [
        ([dkim(PASS)], [doc(VALID)], Verdict.AUTHENTIC, "reason_authentic"),
        ([dkim(PASS)], [], Verdict.AUTHENTIC, "reason_authentic"),
        ([dkim(PASS)], [doc(UNSIGNED)], Verdict.AUTHENTIC, "reason_authentic"),
        ([dkim(FAIL, "body_changed")], [doc(VALID)], Verdict.ALTERED, "reason_altered_body"),
        ([dkim(FAIL, "header_changed")], [doc(VALID)], Verdict.ALTERED, "reason_altered_header"),
        ([], [doc(VALID)], Verdict.ALTERED, "reason_altered_no_dkim"),
        ([dkim(PASS)], [doc(INVALID)], Verdict.TAMPERED, "reason_document_invalid"),
        ([], [doc(VALID), doc(INVALID)], Verdict.TAMPERED, "reason_document_invalid"),
        ([], [doc(VALID), doc(UNSIGNED)], Verdict.TAMPERED, "reason_unsealed_attachment"),
        ([dkim(REVOKED)], [doc(VALID)], Verdict.TAMPERED, "reason_revoked"),
        ([dkim(PASS)], [doc(DocStatus.REVOKED)], Verdict.TAMPERED, "reason_revoked"),
        ([], [], Verdict.UNSIGNED, "reason_unsigned"),
        ([], [doc(UNSIGNED)], Verdict.UNSIGNED, "reason_unsigned"),
        ([dkim(FAIL, "body_changed")], [], Verdict.UNSIGNED, "reason_unsigned_broken"),
        ([dkim(DkimStatus.NOT_FUND)], [], Verdict.UNSIGNED, "reason_unsigned"),
    ],
)
def test_decide(
    signatures: list[DkimCheck],
    documents: list[DocumentCheck],
    verdict: Verdict,
    reason: str,
) -> None:
    assert decide(tuple(signatures), tuple(documents)) == (verdict, reason)


def test_the_verdict_codes_never_change() -> None:
    assert [v.value for v in Verdict] == [
        "authentic",
        "altered",
        "tampered",
        "unsigned",
        "not_email",
    ]


def test_warnings_name_what_a_person_should_know() -> None:
    found = warnings_for(
        (dkim(PASS), dkim(FAIL, "header_changed"), dkim(DkimStatus.UNKNOWN_KEY)),
        (doc(DocStatus.REVOKED), doc(UNSIGNED)),
        MessageInfo(line_ends="lf"),
    )
    assert found == (
        "warning_revoked_key",
        "warning_some_dkim_failed",
        "warning_unknown_selector",
        "warning_unsigned_document",
        "warning_lf_line_ends",
    )
