"""Hiding secrets in anything the tool shows or writes: known secret values, SAS signatures and
the user:password part of URLs."""
from __future__ import annotations

import re

_SAS_SIG = re.compile(r"(sig=)[^&\s\"'<>]+", re.IGNORECASE)
# scheme://user:password@host -> scheme://***@host (git echoes the URL it was given)
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"'<>]*@")


def mask_url_credentials(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://***@host`, wherever it appears in `text`."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Replace every known secret, URL credentials and every SAS signature (`sig=...`) with ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SAS_SIG.sub(r"\1***", mask_url_credentials(text))
