"""URLs as autoprune shows and writes them: a storage URL's password never reaches a screen, a log or a file."""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***`, for every place a storage URL is shown or written.

    The password is a `password=` query parameter, and everything between the first ':' after the user name and
    the last '@' before the host, as SQLAlchemy reads it (an '@' or '/' in a password that is not percent-encoded is
    masked too). A string that is not a URL with a password comes back unchanged; the unmasked URL is what connects.

    Example:
        >>> mask_url("postgresql://user:secret@db.example:5432/studies")
        'postgresql://user:***@db.example:5432/studies'
        >>> mask_url("sqlite:///runs/search/exp1/study.db")
        'sqlite:///runs/search/exp1/study.db'
    """
    m = _SCHEME.match(url)
    if not m:
        return url
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    rest = url[m.end():]
    at = rest.split("?", 1)[0].rfind("@")
    if at < 0:
        return url
    user, colon, _ = rest[:at].partition(":")
    if not colon or "/" in user:
        return url
    return f"{url[:m.end()]}{user}:***{rest[at:]}"


__all__ = ["mask_url"]
