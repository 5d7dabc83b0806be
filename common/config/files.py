"""Reading one config file: bytes to a JSON object, refusing what json.loads lets through.

A FIFO is not waited on, a link that loops or a byte-order mark is named, a key given twice
is refused (json keeps the last silently), an integer with thousands of digits becomes a
value outside every range (Python will not convert it), nesting thousands deep is named by
its key instead of ending in RecursionError. Problems are collected, one line each.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import usage_error

MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; anything this big is a mistake
MAX_NUMBER_DIGITS = 20  # longer integers are kept as _HugeInt: out of every range
_BOM = b"\xef\xbb\xbf"
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


@dataclass
class Problems:
    """Collects one line per bad value; raised together at the end."""

    lines: list[str] = field(default_factory=list)

    def add(self, where: str, key: str | None, what: str, fix: str) -> None:
        prefix = f"{where}: {key}" if key else where
        self.lines.append(f"{prefix}: {what}: {fix}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise usage_error(*self.lines)


def display(path: Path) -> str:
    """The path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, RuntimeError, OSError):  # outside, or a link that loops
        return str(path)


class _HugeInt(int):
    """A JSON integer with more digits than any setting has: out of every range, and shown
    by its length (Python refuses to turn more than 4,300 digits into an int at all)."""

    def __new__(cls, digits: str) -> "_HugeInt":
        made = super().__new__(cls, -(10 ** 30) if digits.startswith("-") else 10 ** 30)
        made.digits = len(digits.lstrip("-"))
        return made

    def __repr__(self) -> str:
        return f"a {self.digits:,}-digit number"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)


class _Object(dict):
    """A JSON object that remembers the keys it was given more than once."""

    twice: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    made = _Object(pairs)
    seen: set[str] = set()
    made.twice = tuple(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))
    return made


def _parse_int(digits: str) -> int:
    return int(digits) if len(digits.lstrip("-")) <= MAX_NUMBER_DIGITS else _HugeInt(digits)


class _Unreadable(Exception):
    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what)
        self.what, self.fix = what, fix


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; never waits on a FIFO, never reads a huge file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable("is a link that loops back on itself",
                              "point it at the real file, or pass that file's path") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(path)
        kind = next((name for test, name in _SPECIAL_KINDS if test(status.st_mode)), None)
        if kind:
            raise _Unreadable(f"is {kind}, not a file", "give the path of the JSON file")
        if status.st_size > MAX_CONFIG_BYTES:
            raise _Unreadable(f"is {status.st_size:,} bytes, not a config file",
                              "give the path of the JSON file (a few hundred bytes)")
        return handle.read(MAX_CONFIG_BYTES + 1)


def read_json_object(path: Path, problems: Problems,
                     not_found: tuple[str, str] | None = None) -> dict[str, Any] | None:
    """The file's JSON object, or None with the problem recorded; `not_found`: what to say
    (and the fix) when there is no such file."""
    where = display(path)
    try:
        raw = _read_bytes(path)
        if raw.startswith(_BOM):
            raise _Unreadable("starts with a byte-order mark (BOM)",
                              "remove the byte-order mark (save the file as UTF-8 without BOM)")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        what, fix = not_found or ("file not found", "check the path, or pass the right one")
        problems.add(where, None, what, fix)
        return None
    except _Unreadable as exc:
        problems.add(where, None, exc.what, exc.fix)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(where, None, f"cannot be read ({exc.__class__.__name__})",
                     "check that it is a readable UTF-8 text file")
        return None
    return _parse_object(where, text, problems)


def _parse_object(where: str, text: str, problems: Problems) -> dict[str, Any] | None:
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        problems.add(f"{where}:{exc.lineno}", None,
                     f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})",
                     "fix the syntax (keys and strings in double quotes, no trailing commas)")
        return None
    except RecursionError:
        key = _deep_key(text)
        problems.add(where, key, "is nested too deeply (lists or objects inside each other "
                     "thousands of times)", "write the value as the README's table shows it")
        return None
    if not isinstance(data, dict):
        problems.add(where, None, f"holds a JSON {type(data).__name__}, not an object",
                     'write the settings as one object: {"KEY": value, ...}')
        return None
    _report_twice(where, data, problems)
    return dict(data)


def _report_twice(where: str, data: _Object, problems: Problems) -> None:
    """Keys given twice: json keeps the last silently; refuse instead (which one was meant?)."""
    for key in data.twice:
        problems.add(where, key, "is given twice", "keep one of them")
    for key, value in data.items():
        inner = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, _Object)]
        for twice in {k for obj in inner for k in obj.twice} - set(data.twice):
            problems.add(where, key, f"has {twice!r} twice", f"keep one {twice!r}")


def _deep_key(text: str) -> str | None:
    """The top-level key whose value nests deepest: found by a scan that needs no recursion."""
    depth, deepest, key, found, start, in_string, escaped = 0, 0, None, None, 0, False, False
    last = None
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                last = text[start:i]
        elif char == '"':
            in_string, start = True, i + 1
        elif char == ":" and depth == 1:
            key = last
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, found = depth, key if depth > 1 else None
        elif char in "]}":
            depth -= 1
    return found
