"""URLs as they may be stored and logged: credentials in the user-info part removed.

``--editor-url http://user:SECRET@host/v1`` (HTTP basic auth in the URL, RFC 3986 §3.2.1) must reach the
server, but the password must never be written to a run's metadata, sidecars, summaries or log lines
(issue 23, item 9). :func:`redact_url` is the form every file and message uses; :func:`url_secrets` lists the
strings to scrub from a message that may quote the full URL (an exception from the HTTP stack).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["redact_url", "url_secrets"]

#: what replaces the user info (``user:password@``) of a URL
REDACTED = "***"


def _userinfo(url: str) -> str:
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return ""
    return netloc.rpartition("@")[0] if "@" in netloc else ""


def redact_url(url: str | None) -> str | None:
    """``url`` with any ``user[:password]@`` replaced by ``***@``; other URLs (and None) unchanged."""
    if not url:
        return url
    info = _userinfo(url)
    if not info:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{parts.netloc.rpartition('@')[2]}"))


def url_secrets(url: str | None) -> list[str]:
    """The credential strings of ``url`` to scrub from messages, longest first: the user info with its ``@``,
    and the password (or a user-info-only token) on its own when it is at least 4 characters long (shorter
    ones would mangle ordinary text); each also percent-decoded."""
    info = _userinfo(url or "")
    if not info:
        return []
    found = {f"{info}@", f"{unquote(info)}@"}
    user, _, password = info.partition(":")
    secret = password or user
    if len(secret) >= 4:
        found |= {secret, unquote(secret)}
    return sorted(found, key=len, reverse=True)
