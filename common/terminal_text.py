"""Text from files and services, made safe to show on a terminal.

A manifest, a price cache or a service's answer may hold control characters: an escape
sequence (ESC [ ...) that moves the cursor, rewrites earlier lines or sets the window
title, a carriage return that hides what came before, bidirectional overrides that make
text read other than it is. Everything the tool prints goes through `printable`, which
shows each such character as its escape (\\x1b, \\u202e) instead of sending it raw.
"""
from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional embeddings,
# overrides and isolates (U+202A-U+202E, U+2066-U+2069).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every character that would act on the terminal shown as its escape."""
    return _UNSAFE.sub(_escaped, text)
