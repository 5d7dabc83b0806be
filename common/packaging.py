"""What may leave the machine in a folder's zip, and the deterministic zip itself.

The same folder always gives the same bytes (sorted entries, fixed timestamps, only the
executable bit kept from the mode), so an unchanged folder is recognised by its MD5 and
not uploaded again. Results folders and what the tool itself writes are left out.

Nothing outside the folder goes in: a link that stays inside is stored as what it points to
(a folder link is walked, once), a link that leaves the folder, even through a chain of
links or a linked folder, is refused, as are FIFOs, sockets, devices and whatever cannot be
read. The appconfig in use is left out whatever its name, and a file holding the value of
a configured secret is refused (its bytes are scanned as they stream into the zip). Files
of 2 GiB and more are stored with zip64. The zip can be written into an open file, so
that an anonymous temporary file leaves nothing behind when the process is killed.
"""
from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

from common.errors import usage_error

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
# Written by this tool or by Python, never simulation input; appconfig.json holds keys.
ALWAYS_EXCLUDED = frozenset({"nodes_output", ".localbatch", "__pycache__", ".git", "appconfig.json"})
CHUNK = 1 << 20
# Shorter "secrets" would match ordinary bytes: such values are not scanned for.
MIN_SCANNED_SECRET = 6
# A file this large or larger gets zip64 headers even if it grows a little while being read.
ZIP64_FROM = zipfile.ZIP64_LIMIT // 2
LARGE_FILE = 64 << 20
STORE_ABOVE_RATIO = 0.9  # compressed/original of a large file's first MiB: above it, store
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


@dataclass(frozen=True)
class Archive:
    path: Path | None  # None when the zip was written into an open file
    files: int
    size: int


class NotAllowed(Exception):
    """A path that must not be read: `what` is wrong with it, `fix` says what to do."""

    def __init__(self, path: Path, what: str, fix: str) -> None:
        super().__init__(f"{path}: {what}: {fix}")
        self.path, self.what, self.fix = path, what, fix


# ---------------------------------------------------------------------------- safe reading


def is_inside(path: str, root: str) -> bool:
    """`path` is `root` or below it; both already resolved (os.path.realpath)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str | None:
    return next((name for test, name in _KINDS if test(mode)), None)


def _special(path: Path, mode: int) -> NotAllowed | None:
    kind = _kind(mode) if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) else None
    if kind is None:
        return None
    return NotAllowed(path, f"is a {kind}, not a file",
                      "move it out of the folder (only files and folders can be sent)")


def resolve_inside(path: Path, root: str) -> tuple[str, os.stat_result]:
    """The real path (every link followed) of `path` and its status, if it stays in `root`."""
    real = os.path.realpath(path)
    if not is_inside(real, root):
        raise NotAllowed(path, f"is a link to {real}, outside {root}",
                         "copy what it points to into the folder, or remove the link")
    try:
        status = os.stat(real)
    except FileNotFoundError:
        raise NotAllowed(path, "is a link to nothing", "remove the link, or restore its target") from None
    except PermissionError:
        raise _unreadable(path) from None
    except OSError as exc:  # a loop of links, a name too long
        raise NotAllowed(path, f"cannot be followed ({exc.strerror})", "remove the link") from None
    problem = _special(path, status.st_mode)
    if problem:
        raise problem
    return real, status


def _unreadable(path: Path) -> NotAllowed:
    return NotAllowed(path, "cannot be read (permission denied)",
                      "make it readable (chmod u+r), or move it out of the folder")


def open_inside(path: Path, root: str) -> BinaryIO:
    """Open the regular file `path` for reading, only if what it really is lies inside `root`.

    Never blocks (a FIFO is refused, not waited on) and checks the opened descriptor itself,
    so a link swapped in after the check is not followed out of `root`.
    """
    real, _ = resolve_inside(path, root)
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except PermissionError:
        raise _unreadable(path) from None
    except OSError as exc:
        raise NotAllowed(path, f"cannot be opened ({exc.strerror})", "check the file") from None
    try:
        problem = _special(path, os.fstat(fd).st_mode)
        opened = _fd_path(fd)
        if problem is None and opened is not None and not is_inside(opened, root):
            problem = NotAllowed(path, f"changed into a link to {opened} while being read",
                                 "do not change the folder while it is packed")
        if problem:
            raise problem
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS): the realpath check before opening stands
        return None


# ---------------------------------------------------------------------------- the walk


@dataclass(frozen=True)
class _Entry:
    name: str  # POSIX path inside the archive
    shown: Path  # the path as the user knows it (through links), for messages
    executable: bool


@dataclass(frozen=True)
class _Rules:
    root: str  # realpath of the folder
    excluded_dirs: tuple[str, ...]  # realpaths strictly inside root
    excluded_files: frozenset[tuple[int, int]]  # (st_dev, st_ino)


class _Walk:
    """Every file to pack, or every problem found (all reported at once)."""

    def __init__(self, rules: _Rules) -> None:
        self.rules = rules
        self.entries: list[_Entry] = []
        self.problems: list[NotAllowed] = []

    def folder(self, real: str, shown: Path, prefix: str, chain: tuple[str, ...]) -> None:
        try:
            with os.scandir(real) as found:
                items = sorted(found, key=lambda e: e.name)
        except PermissionError:
            self.problems.append(_unreadable(shown))
            return
        for item in items:
            if item.name in ALWAYS_EXCLUDED or item.name.endswith(".campaign.json"):
                continue
            self.item(Path(item.path), shown / item.name, prefix + item.name, chain)

    def item(self, path: Path, shown: Path, name: str, chain: tuple[str, ...]) -> None:
        try:
            real, status = resolve_inside(path, self.rules.root)
        except NotAllowed as problem:
            self.problems.append(NotAllowed(shown, problem.what, problem.fix))
            return
        if stat.S_ISDIR(status.st_mode):
            if real in self.rules.excluded_dirs:
                return
            if real in chain:
                self.problems.append(NotAllowed(shown, "is a link to a folder that holds it (a loop)",
                                                "remove the link"))
                return
            self.folder(real, shown, name + "/", chain + (real,))
        elif (status.st_dev, status.st_ino) not in self.rules.excluded_files:
            self.readable(real, shown)
            self.entries.append(_Entry(name, shown, bool(status.st_mode & stat.S_IXUSR)))

    def readable(self, real: str, shown: Path) -> None:
        """Found now, so that every unreadable file is named in one go (root reads anything
        with access(); only an open() tells)."""
        try:
            os.close(os.open(real, _OPEN_FLAGS))
        except PermissionError:
            self.problems.append(_unreadable(shown))
        except OSError:
            pass  # gone or changed: reported when it is packed


def _rules(root: Path, exclude: Iterable[Path], exclude_files: Iterable[Path]) -> _Rules:
    real_root = os.path.realpath(root)
    dirs = tuple(r for r in (os.path.realpath(p) for p in exclude)
                 if r != real_root and is_inside(r, real_root))  # never the whole folder
    files = set()
    for path in exclude_files:
        try:
            status = os.stat(path)
        except OSError:
            continue
        files.add((status.st_dev, status.st_ino))
    return _Rules(real_root, dirs, frozenset(files))


def _display(path: Path) -> str:
    """As the user would type it: relative to the working directory when inside it."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _refusal(problems: list[NotAllowed], label: str) -> Exception:
    return usage_error(*(f"{_display(p.path)}: {p.what} (in {label}): {p.fix}" for p in problems))


# ---------------------------------------------------------------------------- secrets


class _SecretScan:
    """Finds any of the secrets in a stream of blocks, also across block boundaries."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.needles = tuple({s.encode() for s in secrets if len(s) >= MIN_SCANNED_SECRET})
        self.keep = max((len(n) for n in self.needles), default=1) - 1
        self.tail = b""

    def found(self, block: bytes) -> bool:
        if not self.needles:
            return False
        seam = self.tail + block[:self.keep]
        hit = any(n in block or n in seam for n in self.needles)
        if self.keep:  # only the last keep bytes matter for the next seam: no big copies
            self.tail = block[-self.keep:] if len(block) >= self.keep else (self.tail + block)[-self.keep:]
        return hit


def safe_files(root: Path, label: str) -> list[tuple[str, Path, bool]]:
    """(POSIX name inside `root`, path to open, executable) of every file that may leave the
    machine from `root`, sorted — the same rules as the zip (links stay inside, no FIFOs,
    everything readable); ToolError (exit 2) naming every problem, `label` the setting."""
    rules = _rules(root, (), ())
    walk = _Walk(rules)
    walk.folder(rules.root, root, "", (rules.root,))
    if walk.problems:
        raise _refusal(walk.problems, label)
    return sorted((e.name, e.shown, e.executable) for e in walk.entries)


SecretScan = _SecretScan  # for other uploads that must not carry a secret (the Geant4 data)


# ---------------------------------------------------------------------------- the zip


def build_archive(root: Path, dest: Path | BinaryIO, exclude: tuple[Path, ...] = (), *,
                  exclude_files: tuple[Path, ...] = (), secrets: tuple[str, ...] = (),
                  label: str = "LOCAL_SIM_PATH") -> Archive:
    """Zip every file under root (paths relative to it) into dest, deterministically.

    `dest` is a path, or a seekable binary file (left open, positioned at its end).
    Raises ToolError (exit 2) naming every path that may not go, `label` naming the setting.
    """
    rules = _rules(root, exclude, exclude_files)
    walk = _Walk(rules)
    walk.folder(rules.root, root, "", (rules.root,))
    if walk.problems:
        raise _refusal(walk.problems, label)
    walk.entries.sort(key=lambda e: e.name)  # the order of earlier versions: same bytes
    if isinstance(dest, (str, os.PathLike)):
        with open(dest, "wb") as handle:
            _write_zip(walk.entries, handle, rules.root, secrets, label)
        return Archive(Path(dest), len(walk.entries), Path(dest).stat().st_size)
    _write_zip(walk.entries, dest, rules.root, secrets, label)
    return Archive(None, len(walk.entries), dest.tell())


def _write_zip(entries: list[_Entry], handle: BinaryIO, root: str, secrets: tuple[str, ...],
               label: str) -> None:
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for entry in entries:
            try:
                _add(zf, entry, root, secrets)
            except NotAllowed as problem:
                raise _refusal([problem], label) from None


def _choose_compression(info: zipfile.ZipInfo, source: BinaryIO) -> None:
    """Deflate level 6, but a large file gets level 1 (3-4x faster) or, when its first MiB
    hardly compresses (binary phase spaces: ~7 % at any level, at ~15 MB/s), is stored.
    Decided from the bytes alone, so the zip stays deterministic."""
    info.compress_type = zipfile.ZIP_DEFLATED
    info._compresslevel = 6  # type: ignore[attr-defined]  # what ZipFile.open(info) obeys
    if info.file_size < LARGE_FILE:
        return
    head = source.read(CHUNK)
    source.seek(0)
    if len(zlib.compress(head, 1)) > STORE_ABOVE_RATIO * len(head):
        info.compress_type = zipfile.ZIP_STORED
    info._compresslevel = 1  # type: ignore[attr-defined]


def _add(zf: zipfile.ZipFile, entry: _Entry, root: str, secrets: tuple[str, ...]) -> None:
    info = zipfile.ZipInfo(entry.name, date_time=FIXED_TIME)
    info.external_attr = (stat.S_IFREG | (0o755 if entry.executable else 0o644)) << 16
    info.create_system = 3  # unix, so unzip restores the mode bits
    scan = _SecretScan(secrets)
    with open_inside(entry.shown, root) as source:
        info.file_size = os.fstat(source.fileno()).st_size  # zipfile picks zip64 from it
        _choose_compression(info, source)
        with zf.open(info, "w", force_zip64=info.file_size >= ZIP64_FROM) as target:
            for block in iter(lambda: source.read(CHUNK), b""):
                if scan.found(block):
                    raise NotAllowed(entry.shown, "holds the value of a secret from the appconfig",
                                     "remove the secret from the file, or move the file out "
                                     "of the folder")
                target.write(block)
