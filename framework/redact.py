"""Secrets out of URLs: what cuecard shows or stores of a storage URL or a model endpoint.

Every URL cuecard prints, writes into a saved program, a report, a run's study or an error goes
through :func:`redact_url`: a password in the user-info (``postgresql://user:PASSWORD@host/db``), a
user-info that stands alone on a web endpoint (``https://TOKEN@host``) and the values of query
parameters whose names look like credentials (``key``, ``api_key``, ``token``, ``sig``,
``password``...) become ``***``. What identifies the endpoint (scheme, user name, host, port, path,
other parameters) is kept, so a run identity holding a redacted endpoint does not change when only
the password does. :func:`redact_text` does the same to every URL inside a message.

Example:
    >>> redact_url("postgresql://cuecard:hunter2@db.example.org:5432/runs")
    'postgresql://cuecard:***@db.example.org:5432/runs'
    >>> redact_url("https://proxy.example.org/v1?api_key=sk-123&region=eu")
    'https://proxy.example.org/v1?api_key=***&region=eu'
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit

HIDDEN = "***"
_SECRET_PARAMETER = re.compile(r"key|token|sig|secret|pass|pwd|auth|credential|session|cookie|jwt|bearer", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_WEB = ("http", "https", "ws", "wss")


def redact_url(url: str) -> str:
    """``url`` with its password, a lone web user-info and secret-looking query values replaced by ``***``."""
    if not isinstance(url, str) or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_roughly(url)
    redacted = url
    if "@" in parts.netloc:
        userinfo, _, host = parts.netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        if has_password:
            userinfo = f"{user}:{HIDDEN}"
        elif parts.scheme.lower() in _WEB:
            userinfo = HIDDEN
        redacted = redacted.replace(parts.netloc, f"{userinfo}@{host}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(_SECRET_PARAMETER.search(name) for name, _ in pairs):
            query = urlencode(
                [(name, HIDDEN if _SECRET_PARAMETER.search(name) else value) for name, value in pairs], safe="*"
            )
            redacted = redacted.replace("?" + parts.query, "?" + query, 1)
    return redacted


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (:func:`redact_url`)."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


def _redact_roughly(url: str) -> str:
    """For a URL too malformed to parse: hide everything between ``://`` and the last ``@``, and query values."""
    scheme, _, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = HIDDEN + "@" + rest.split("@")[-1]
    return f"{scheme}://" + re.sub(r"=([^&#]*)", "=" + HIDDEN, rest) if "?" in rest else f"{scheme}://{rest}"


__all__ = ["HIDDEN", "redact_text", "redact_url"]
