"""Hiding secrets in anything the tool shows or writes: known secret values and SAS signatures."""
from __future__ import annotations

import re

_SAS_SIG = re.compile(r"(sig=)[^&\s\"'<>]+", re.IGNORECASE)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Replace every known secret and every SAS signature (`sig=...`) with ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SAS_SIG.sub(r"\1***", text)
