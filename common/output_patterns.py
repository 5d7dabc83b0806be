"""OUTPUT_FILE_PATTERNS as blob names: which names below a run's folder the files a pattern
matches get (pure). Used to find a task that wrote nothing for a pattern, and to check at
configuration time that TARGET_SCORER is a file the patterns keep.
"""
from __future__ import annotations

import re


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The blob names (below the run's prefix) that files matching an output pattern get:
    the pattern's fixed leading folders are dropped when it has a wildcard, as Batch does."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    wild = [i for i, p in enumerate(parts) if re.search(r"[*?\[]", p)]
    if not wild:
        return re.compile(re.escape("/".join(parts)) + r"\Z")
    rest, text = parts[wild[0]:], ""
    for number, part in enumerate(rest):
        last = number == len(rest) - 1
        if part == "**":
            text += "(?:[^/]+/)*" if not last else ".*"
            continue
        piece = re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        piece = re.sub(r"\\\[(!?)(.*?)\\\]", lambda m: "[" + ("^" if m.group(1) else "") + m.group(2).replace("\\", "") + "]", piece)
        text += piece + ("" if last else "/")
    return re.compile(text + r"\Z")


def kept_by(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether a blob `name` below a run's folder (as TARGET_SCORER names a file) can come
    from one of the patterns."""
    return any(pattern_regex(p).match(name) for p in patterns)
