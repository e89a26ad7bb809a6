"""Telling a PostgreSQL URL from a SQLite path, and keeping passwords out of logs.

Apart from ``postgres.py`` so that choosing a backend never imports asyncpg,
which is an optional dependency (the ``postgres`` extra).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path


def postgres_url(database: Path | str) -> str | None:
    """The PostgreSQL URL a ``database`` setting names, or None (a SQLite path).

    ``postgresql://`` and ``postgres://`` both select PostgreSQL. A ``Path``
    built from a URL has lost one slash of ``//``; it is put back, so
    ``--database postgresql://host/db`` works even where a flag is typed as a
    path (the socket form ``postgresql:///db`` needs the setting as a string).
    """
    text = str(database)
    for scheme in ("postgresql:", "postgres:"):
        if text.startswith(scheme):
            rest = text[len(scheme):]
            if isinstance(database, Path) and not rest.startswith("//"):
                rest = "/" + rest
            return "postgresql:" + rest
    return None


def sqlite_path(database: Path | str) -> Path:
    """The SQLite file a ``database`` setting names: a path, or ``sqlite:///path``."""
    text = str(database)
    if text.startswith("sqlite:"):
        rest = text[len("sqlite:"):]
        return Path(rest[2:] if rest.startswith("//") else rest)
    return Path(database)


def redacted(database: Path | str) -> str:
    """The setting as it may be logged: a URL's password replaced by ``***``."""
    text = str(database)
    if postgres_url(database) is None:
        return text
    parts = urllib.parse.urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
