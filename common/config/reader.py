"""Typed access to one config file's keys, recording every problem instead of stopping.

A Reader gives strings, numbers, paths and secrets with their checks done, and turns each
problem into one line `<file>: <KEY>: <what is wrong>: <how to fix it>` (files.py
collects them), so a user fixes a config in one go.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Mapping

from common.config.files import Problems
from common.config.files import display
from common.config.model import Secret

# A template's placeholder: "<storage account name>", "https://<account>.<region>.batch.azure.com"
PLACEHOLDER = re.compile(r"<[^<>]+>")


class Reader:
    """Typed access to one config file's keys, recording every problem it meets."""

    def __init__(self, path: Path, data: Mapping[str, Any], problems: Problems) -> None:
        self.path = path
        self.where = display(path)
        self.data = data
        self.problems = problems
        self.from_env: set[str] = set()  # secrets taken from the environment, not the file

    def bad(self, key: str, what: str, fix: str) -> None:
        self.problems.add(self.where, key, what, fix)

    def has(self, key: str) -> bool:
        value = self.data.get(key)
        return value is not None and not (isinstance(value, str) and not value.strip())

    def string(self, key: str, required: bool, fix: str) -> str | None:
        value = self.data.get(key)
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            if required:
                self.bad(key, "is missing", fix)
            return None
        if not isinstance(value, str):
            self.bad(key, f"must be a string, not {json_type(value)}", fix)
            return None
        if "\x00" in value:
            self.bad(key, "contains a NUL character (\\u0000)", "remove it from the value")
            return None
        if PLACEHOLDER.search(value):
            self.bad(key, f"{value!r} is still the template's placeholder",
                     f"replace the <...> part with your value ({fix}), or remove the key if it "
                     "is optional")
            return None
        return value

    def integer(self, key: str, default: int | None, low: int, high: int, fix: str) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            self.bad(key, "is missing", fix)
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(key, f"must be a whole number, not {json_type(value)} {value!r}", fix)
            return None
        if not low <= value <= high:
            self.bad(key, f"is {value}, outside {low}..{high}", fix)
            return None
        return value

    def boolean(self, key: str, default: bool, fix: str) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.bad(key, f"must be true or false, not {json_type(value)} {value!r}", fix)
            return default
        return value

    def number(self, key: str, default: float, low: float, high: float, fix: str) -> float | None:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.bad(key, f"must be a number, not {json_type(value)} {value!r}", fix)
            return None
        if not low < value <= high:
            self.bad(key, f"is {value}, outside the range ({low:g}, {high:g}]", fix)
            return None
        return float(value)

    def resolve_path(self, key: str, value: str) -> Path | None:
        """Relative paths resolve against the folder of the file that names them."""
        try:
            expanded = Path(value).expanduser()
        except RuntimeError:  # ~name of a user this machine does not have
            self.bad(key, f"{value!r} starts with the home folder of an unknown user",
                     "use the home folder of an existing user (~name), or write the path out")
            return None
        try:
            return (self.path.parent / expanded).resolve()
        except (RuntimeError, OSError):  # a loop of symbolic links
            self.bad(key, f"{value!r} goes through a link that loops back on itself",
                     "give the real folder's path")
            return None

    def secret(self, key: str, env: Mapping[str, str]) -> Secret | None:
        if env.get(key):
            self.from_env.add(key)
            return Secret(env[key])
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.bad(key, f"must be a string, not {json_type(value)}",
                     f"write it in quotes, or set the {key} environment variable")
            return None
        if "\x00" in value:
            self.bad(key, "contains a NUL character (\\u0000)", "remove it from the value")
            return None
        if PLACEHOLDER.search(value):
            self.bad(key, "is still the template's placeholder",
                     f"put the value there, or better remove the key and set the {key} "
                     "environment variable")
            return None
        return Secret(value.strip())

    def unknown_keys(self, known: tuple[str, ...], other: tuple[str, ...], other_file: str) -> None:
        for key in self.data:
            if key in known or key.startswith(("_", "//", "#")):
                continue
            if key in other:
                self.bad(key, f"belongs in {other_file}, not here", f"move it to {other_file}")
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"remove it (known keys: {', '.join(known)})"
            self.bad(key, "is not a known key", hint)


def json_type(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    return {bool: "true/false", float: "a number", str: "a string",
            list: "a list", type(None): "null"}.get(type(value), "a value")
