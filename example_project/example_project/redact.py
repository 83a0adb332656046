"""``python example_project/example_project/redact.py URL``: the URL without its password.

``scripts/example`` prints which database it migrates; a ``DATABASE_URL`` carries the
password, which must not end up in a terminal's scrollback or a CI log.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit, urlunsplit


def redacted(url: str) -> str:
    """``url`` with the password replaced by ``***`` (unchanged when it has none)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


if __name__ == "__main__":
    print(redacted(sys.argv[1]))
