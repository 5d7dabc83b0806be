"""TOPAS parameter files, read the way TOPAS reads them, for what a campaign sets in them.

A parameter line is `<type>:<Name> = <value>` (`i:Ts/Seed = 5`, `dc:Ge/Box/HLX = 1 cm`),
names are case-insensitive, `#` starts a comment, and `includeFile = a.txt b.txt` pulls in
other files. A file's own value wins over the files it includes; among its includes, the
one listed last wins (a later include is read after an earlier one). Include paths are
taken relative to the folder TOPAS runs in (the simulation folder), then relative to the
including file.

Only what the campaign tool needs is interpreted: which file sets a parameter and with what
text, the sources (`So/<name>/Type`), and plain integers. Standard library only (this
package ships to reducer nodes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_PARAMETER = re.compile(r"^\s*([A-Za-z]{1,3}):(\S+?)\s*=\s*(.*?)\s*$")
_INCLUDE = re.compile(r"^\s*includefile\s*=\s*(.*?)\s*$", re.IGNORECASE)
_SOURCE_TYPE = re.compile(r"^so/([^/]+)/type$")
MAX_DEPTH = 32  # deeper include chains than this are taken for a loop TOPAS would refuse


@dataclass(frozen=True)
class Parameter:
    kind: str  # "i", "d", "s", "dc", ...
    name: str  # as written, e.g. Ts/NumberOfThreads
    value: str  # the text after '=', comment removed
    file: str  # the file that sets it (relative to the simulation folder when inside it)
    line: int

    @property
    def integer(self) -> int | None:
        """The value as a whole number, when it is one (`5`, `"5"`); else None."""
        text = self.value.strip().strip('"')
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


@dataclass(frozen=True)
class ParameterFile:
    path: Path
    shown: str
    parameters: dict[str, Parameter]  # by lower-case name
    includes: tuple[str, ...]


@dataclass(frozen=True)
class Chain:
    """A parameter file and everything it includes, in TOPAS's order of precedence."""

    files: tuple[ParameterFile, ...]  # the main file first, then by falling precedence
    unread: tuple[str, ...] = field(default=())  # included files that are not here

    def get(self, name: str) -> Parameter | None:
        """The value TOPAS would use for `name` (case-insensitive), with its file."""
        key = name.lower()
        return next((f.parameters[key] for f in self.files if key in f.parameters), None)

    def sources(self) -> tuple[str, ...]:
        """Names of the particle sources defined (`So/<name>/Type`), as first written."""
        found: dict[str, str] = {}
        for parameter_file in self.files:
            for key, parameter in parameter_file.parameters.items():
                match = _SOURCE_TYPE.match(key)
                if match and match.group(1) not in found:
                    found[match.group(1)] = parameter.name.split("/")[1]
        return tuple(found.values())


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a '#' inside quotes stays)."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def parse(text: str, shown: str, path: Path) -> ParameterFile:
    parameters: dict[str, Parameter] = {}
    includes: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        include = _INCLUDE.match(line)
        if include:
            includes += include.group(1).replace('"', " ").split()
            continue
        match = _PARAMETER.match(line)
        if match:
            kind, name, value = match.groups()
            parameters[name.lower()] = Parameter(kind.lower(), name, value, shown, number)
    return ParameterFile(path, shown, parameters, tuple(includes))


def _find(name: str, root: Path, including: Path) -> Path | None:
    for base in (root, including.parent):
        candidate = base / name
        if candidate.is_file():
            return candidate
    return None


def _shown(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def read_chain(main: Path, root: Path) -> Chain:
    """`main` and its includes (found relative to `root`, the folder TOPAS runs in).

    Raises OSError when `main` cannot be read; includes that cannot be found are listed in
    Chain.unread (they may be made by the run script on the node)."""
    files: list[ParameterFile] = []
    unread: list[str] = []
    seen: set[Path] = set()

    def visit(path: Path, depth: int) -> None:
        real = path.resolve()
        if real in seen or depth > MAX_DEPTH:
            return
        seen.add(real)
        parsed = parse(path.read_text(encoding="utf-8", errors="replace"), _shown(path, root), path)
        files.append(parsed)
        for name in reversed(parsed.includes):  # the last include listed wins over earlier ones
            found = _find(name, root, path)
            if found is None:
                unread.append(name)
            else:
                try:
                    visit(found, depth + 1)
                except OSError:
                    unread.append(name)

    visit(main, 0)
    return Chain(tuple(files), tuple(unread))
