"""What the access log may say of a request: its path, and of its query only `lang`.

Everything else a client puts in a URL stays out of the log: an API token sent as
`?access_token=` (refused with 401, but written by uvicorn's access log before that),
or anything else a client mistakes for a place to put data.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode

ACCESS_LOGGER = "uvicorn.access"
_KEPT = ("lang",)


def redact_path(path: str) -> str:
    """`path` with every query parameter but `lang` replaced by a marker."""
    base, mark, query = path.partition("?")
    if not mark:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(name, value) for name, value in pairs if name in _KEPT and value.isalpha()]
    dropped = len(pairs) - len(kept)
    if not pairs and query:
        dropped = 1
    shown = urlencode(kept)
    if dropped:
        shown = f"{shown}&" if shown else shown
        shown += f"[{dropped} redacted]"
    return f"{base}?{shown}" if shown else base


class RedactQuery(logging.Filter):
    """uvicorn's access records carry (client, method, path, version, status) as args."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact_path(args[2]), args[3], args[4])
        return True


def install() -> None:
    """Once per process: the filter on uvicorn's access logger."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactQuery) for f in logger.filters):
        logger.addFilter(RedactQuery())
