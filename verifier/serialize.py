"""The JSON form of a report: stable codes for programs, plus the same words a person reads
on the page, in the requested language."""

from __future__ import annotations

import datetime as dt
from typing import Any

from keys.archive import format_time
from verifier.i18n import Translate
from verifier.report import DkimCheck, DocumentCheck, KeyInfo, LogCheck, Report, SignerInfo

API_VERSION = "1"


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else format_time(value)


def _key(key: KeyInfo | None) -> dict[str, Any] | None:
    if key is None:
        return None
    return {
        "generation": key.generation,
        "state": key.state,
        "compromised_at": _time(key.compromised_at),
        "revoked_at": _time(key.revoked_at),
        "revocation_reason": key.revocation_reason,
    }


def _signer(signer: SignerInfo | None) -> dict[str, Any] | None:
    if signer is None:
        return None
    return {
        "subject": signer.subject,
        "issuer": signer.issuer,
        "serial": signer.serial,
        "sha256": signer.sha256,
        "not_before": _time(signer.not_before),
        "not_after": _time(signer.not_after),
    }


def _dkim(check: DkimCheck, t: Translate) -> dict[str, Any]:
    return {
        "domain": check.domain,
        "selector": check.selector,
        "algorithm": check.algorithm,
        "status": check.status.value,
        "status_text": t(f"dkim_{check.status.value}"),
        "reason": check.reason,
        "reason_text": t(f"dkim_reason_{check.reason}") if check.reason else None,
        "detail": check.detail,
        "key": _key(check.key),
    }


def _document(check: DocumentCheck, t: Translate) -> dict[str, Any]:
    return {
        "filename": check.filename,
        "size": check.size,
        "sha256": check.sha256,
        "content_type": check.content_type,
        "kind": check.kind,
        "outside": check.outside,
        "status": check.status.value,
        "status_text": t(f"doc_{check.status.value}"),
        "reason": check.reason,
        "reason_text": t(f"doc_reason_{check.reason}") if check.reason else None,
        "detail": check.detail,
        "signer": _signer(check.signer),
        "signing_time": _time(check.signing_time),
        "key": _key(check.key),
    }


def _log(log: LogCheck | None) -> dict[str, Any] | None:
    if log is None:
        return None
    proof = log.proof
    return {
        "status": log.status,
        "origin": proof.origin if proof else None,
        "index": proof.index if proof else None,
        "entry": proof.entry if proof else None,
        "leaf_hash": proof.leaf_hash if proof else None,
        "tree_size": proof.tree_size if proof else None,
        "checkpoint": proof.checkpoint if proof else None,
        "inclusion_proof": list(proof.proof) if proof else None,
        "logged_at": _time(proof.logged_at) if proof else None,
        "tsa": proof.tsa if proof else None,
        "cosigners": list(proof.cosigners) if proof else [],
        "other_signatures": list(proof.other_signatures) if proof else [],
    }


def report_json(report: Report, t: Translate, lang: str) -> dict[str, Any]:
    info = report.message
    return {
        "api_version": API_VERSION,
        "verdict": report.verdict.value,
        "verdict_text": t(f"verdict_{report.verdict.value}"),
        "reason": report.reason,
        "reason_text": t(report.reason),
        "forwarded": report.forwarded,
        "lang": lang,
        "message": {
            "subject": info.subject,
            "from": info.sender,
            "sender_domain": info.sender_domain,
            "date": info.date,
            "message_id": info.message_id,
            "to": info.to,
            "cc": info.cc,
            "reply_to": info.reply_to,
            "line_ends": info.line_ends,
            "vouched": info.vouched,
            "defects": [{"code": d, "message": t(f"defect_{d}")} for d in info.defects],
        },
        "dkim": [_dkim(c, t) for c in report.dkim],
        "documents": [_document(c, t) for c in report.documents],
        "warnings": [{"code": w, "message": t(w)} for w in report.warnings],
        "log": _log(report.log),
    }


def openapi() -> dict[str, Any]:
    """The API description served at /api/v1/openapi.json."""
    error = {
        "description": "An error, with a readable message",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                }
            }
        },
    }
    report_ref = {"$ref": "#/components/schemas/Report"}
    key = {
        "type": ["object", "null"],
        "properties": {
            "generation": {"type": "string"},
            "state": {"enum": ["pending", "active", "retired", "withdrawn", "revoked"]},
            "compromised_at": {"type": ["string", "null"], "format": "date-time"},
            "revoked_at": {"type": ["string", "null"], "format": "date-time"},
            "revocation_reason": {"type": ["string", "null"]},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sealpost statement verifier",
            "version": API_VERSION,
            "description": (
                "Checks that a statement email (or a document and its .p7s) really comes "
                "from the fund and was not changed. `verdict` is a stable code: authentic, "
                "altered (documents authentic, message altered), tampered, unsigned, "
                "not_email. Uploads are processed in memory and never stored. Texts follow "
                "Accept-Language or ?lang=fr|en."
            ),
        },
        "paths": {
            "/api/v1/verify": {
                "post": {
                    "summary": "Verify a received statement email",
                    "parameters": [
                        {
                            "name": "lang",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": ["fr", "en"]},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "message/rfc822": {"schema": {"type": "string", "format": "binary"}},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "description": (
                                        "Either `file` (the .eml), or `document` with "
                                        "`signature` (its .p7s)."
                                    ),
                                    "properties": {
                                        "file": {"type": "string", "format": "binary"},
                                        "document": {"type": "string", "format": "binary"},
                                        "signature": {"type": "string", "format": "binary"},
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The report",
                            "content": {"application/json": {"schema": report_ref}},
                        },
                        "422": {
                            "description": "Not an email: the report with verdict not_email",
                            "content": {"application/json": {"schema": report_ref}},
                        },
                        "400": error,
                        "413": error,
                        "429": error,
                        "503": error,
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {}, "503": {}}}},
        },
        "components": {
            "schemas": {
                "Report": {
                    "type": "object",
                    "required": ["verdict", "dkim", "documents", "warnings"],
                    "properties": {
                        "verdict": {
                            "enum": ["authentic", "altered", "tampered", "unsigned", "not_email"]
                        },
                        "verdict_text": {"type": "string"},
                        "reason": {"type": "string"},
                        "reason_text": {"type": "string"},
                        "forwarded": {"type": "boolean"},
                        "message": {
                            "type": "object",
                            "description": (
                                "The message's headers. When `vouched` is true they are "
                                "exactly the instances the fund's DKIM signature covers; "
                                "otherwise nothing vouches for them. `defects` lists what "
                                "in the message different programs would read differently."
                            ),
                            "properties": {
                                "subject": {"type": "string"},
                                "from": {"type": "string"},
                                "sender_domain": {"type": "string"},
                                "date": {"type": "string"},
                                "message_id": {"type": "string"},
                                "to": {"type": "string"},
                                "cc": {"type": "string"},
                                "reply_to": {"type": "string"},
                                "line_ends": {"enum": ["crlf", "lf", "mixed"]},
                                "vouched": {"type": "boolean"},
                                "defects": {"type": "array"},
                            },
                        },
                        "dkim": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "domain": {"type": "string"},
                                    "selector": {"type": "string"},
                                    "algorithm": {"type": "string"},
                                    "status": {
                                        "enum": [
                                            "pass",
                                            "fail",
                                            "revoked",
                                            "unknown_key",
                                            "not_fund",
                                            "invalid",
                                        ]
                                    },
                                    "reason": {"type": ["string", "null"]},
                                    "key": key,
                                },
                            },
                        },
                        "documents": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "filename": {"type": "string"},
                                    "size": {"type": ["integer", "null"]},
                                    "sha256": {"type": ["string", "null"]},
                                    "status": {"enum": ["valid", "invalid", "revoked", "unsigned"]},
                                    "content_type": {"type": "string"},
                                    "kind": {"enum": ["document", "file", "message"]},
                                    "outside": {
                                        "type": "boolean",
                                        "description": (
                                            "attached to a forward, outside the fund's "
                                            "message that was judged"
                                        ),
                                    },
                                    "reason": {"type": ["string", "null"]},
                                    "signing_time": {"type": ["string", "null"]},
                                    "signer": {"type": ["object", "null"]},
                                    "key": key,
                                },
                            },
                        },
                        "log": {
                            "type": ["object", "null"],
                            "description": (
                                "The statement log: status logged, not_logged or before_log; "
                                "when logged, the entry, its RFC 9162 inclusion proof "
                                "(base64 hashes) for tree_size, and the signed checkpoint "
                                "(C2SP), with the time an RFC 3161 token certifies. null "
                                "when the fund has no statement log."
                            ),
                        },
                        "warnings": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                }
            }
        },
    }
