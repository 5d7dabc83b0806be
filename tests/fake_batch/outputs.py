"""Output file patterns and blob names, as the OutputFile documentation describes them.

`filePattern` is relative to the task working directory (or absolute): `*` and `?` within a
name, `**` for any number of directories, `[abc]` / `[a-c]` / `[!abc]` for one character
(brackets also escape: `abc[*]`). Names starting with "." are only matched by a pattern part
that starts with "." too. Only "/" separates directories (Linux nodes). `../std*.txt` reaches
the task directory, where stdout.txt and stderr.txt live.

Blob names: with a wildcard, `path` is a virtual directory prepended to each file's path
relative to the pattern's fixed leading part; without one, `path` is the blob name itself;
with no `path`, the relative path (wildcard) or the file name (no wildcard) is used.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Match:
    path: Path  # the file on the node
    relative: str  # its path below the pattern's fixed part ("/" separated)


def has_wildcard(pattern: str) -> bool:
    return bool(_WILDCARD.search(pattern))


def _split(pattern: str, working_dir: Path) -> tuple[Path, list[str]]:
    """The directory the fixed leading part names, and the remaining (wildcard) parts."""
    parts = [part for part in pattern.split("/") if part not in ("", ".")]
    base = Path("/") if pattern.startswith("/") else working_dir
    index = 0
    while index < len(parts) and not has_wildcard(parts[index]):
        index += 1
    fixed, rest = parts[:index], parts[index:]
    # normpath folds "..", which a pattern may use to leave the working directory
    return Path(os.path.normpath(base.joinpath(*fixed))), rest


def _name_matches(name: str, part: str) -> bool:
    if name.startswith(".") and not part.startswith("."):
        return False
    return fnmatchcase(name, part)


def _parts_match(parts: list[str], names: list[str]) -> bool:
    if not parts:
        return not names
    head, tail = parts[0], parts[1:]
    if head == "**":
        # zero directories, or one more (not a hidden one) and "**" still to match
        if _parts_match(tail, names):
            return True
        return len(names) > 1 and not names[0].startswith(".") and _parts_match(parts, names[1:])
    return bool(names) and _name_matches(names[0], head) and _parts_match(tail, names[1:])


def match(pattern: str, working_dir: Path) -> list[Match]:
    """The files a pattern selects, sorted by relative path."""
    base, rest = _split(pattern, working_dir)
    if not rest:
        return [Match(base, base.name)] if base.is_file() else []
    if not base.is_dir():
        return []
    found = []
    for directory, subdirs, files in os.walk(base):
        subdirs.sort()
        for name in files:
            path = Path(directory, name)
            names = list(path.relative_to(base).parts)
            if _parts_match(rest, names):
                found.append(Match(path, "/".join(names)))
    return sorted(found, key=lambda m: m.relative)


def blob_name(pattern: str, destination_path: str | None, found: Match) -> str:
    """The blob a matched file goes to."""
    if has_wildcard(pattern):
        prefix = (destination_path or "").strip("/")
        return f"{prefix}/{found.relative}" if prefix else found.relative
    return destination_path or found.path.name
