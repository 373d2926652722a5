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
    retry_after = {
        "Retry-After": {
            "description": "Seconds until the request would be accepted",
            "schema": {"type": "integer"},
        }
    }
    refusals = {
        "400": error,
        "401": {
            **error,
            "description": (
                "A token was sent and is not accepted (malformed, unknown, revoked, or its "
                "organisation has ended): error `invalid_token`, with a "
                '`WWW-Authenticate: Bearer error="invalid_token"` challenge (RFC 6750). '
                "Never answered as an anonymous request instead."
            ),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        },
        "408": error,
        "413": error,
        "429": {
            **error,
            "description": (
                "Over the quota: per organisation with a token (default 600 a minute), per "
                "client address without (default 30 a minute)"
            ),
            "headers": retry_after,
        },
        "503": {**error, "headers": retry_after},
    }
    lang = {"name": "lang", "in": "query", "required": False, "schema": {"enum": ["fr", "en"]}}
    # Anonymous use is allowed; a token puts the request on its organisation's quota.
    security: list[dict[str, list[str]]] = [{}, {"bearer": []}]
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
                "Accept-Language or ?lang=fr|en. An insurer's intake system sends "
                "`Authorization: Bearer <token>` (from `sealpost-orgs token create`) and "
                "is counted against its organisation's quota; without a token, requests are "
                "counted per client address."
            ),
        },
        "paths": {
            "/api/v1/verify": {
                "post": {
                    "summary": "Verify a received statement email",
                    "security": security,
                    "parameters": [lang],
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
                        **refusals,
                    },
                }
            },
            "/api/v1/verify-batch": {
                "post": {
                    "summary": "Verify up to 50 statement emails in one request",
                    "description": (
                        "One `file` part per email (up to 50), the whole request no larger "
                        "than one upload may be. One report per email, in the order sent "
                        "(an unreadable one has verdict not_email). Each email counts "
                        "against the quota, all of them or none: a batch that does not fit "
                        "gets 429 with Retry-After, one larger than the whole quota gets "
                        "429 `batch_over_quota` (send smaller batches)."
                    ),
                    "security": security,
                    "parameters": [lang],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["file"],
                                    "properties": {
                                        "file": {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": 50,
                                            "items": {"type": "string", "format": "binary"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One report per email, in order",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["count", "reports"],
                                        "properties": {
                                            "api_version": {"type": "string"},
                                            "count": {"type": "integer"},
                                            "reports": {"type": "array", "items": report_ref},
                                        },
                                    }
                                }
                            },
                        },
                        **refusals,
                        "413": {
                            **error,
                            "description": (
                                "More than 50 emails (`too_many_emails`), or larger than "
                                "one upload may be (`too_large`)"
                            ),
                        },
                        "415": {**error, "description": "Not multipart/form-data"},
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {
                        "200": {"description": "Serving, with a readable public archive"},
                        "503": {"description": "No readable public archive"},
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "An organisation's API token (`sealpost-orgs token create CODE`); optional"
                    ),
                }
            },
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
            },
        },
    }
