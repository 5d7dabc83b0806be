"""Deterministic zip archives of the simulation (and reducer) folders.

The same folder always gives the same bytes (sorted entries, fixed timestamps, only the
executable bit kept from the mode), so an unchanged folder is recognised by its MD5 and
not uploaded again. Results folders and what the tool itself writes are left out.
"""
from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
# Written by this tool or by Python, never simulation input; appconfig.json holds keys.
ALWAYS_EXCLUDED = frozenset({"nodes_output", ".localbatch", "__pycache__", ".git", "appconfig.json"})


@dataclass(frozen=True)
class Archive:
    path: Path
    files: int
    size: int


def _excluded(path: Path, root: Path, excluded_dirs: tuple[Path, ...]) -> bool:
    if path.name in ALWAYS_EXCLUDED or path.name.endswith(".campaign.json"):
        return True
    resolved = path.resolve()
    return any(resolved == d or d in resolved.parents for d in excluded_dirs)


def _walk(root: Path, excluded_dirs: tuple[Path, ...]) -> list[Path]:
    files = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(folder)
        dirnames[:] = sorted(d for d in dirnames if not _excluded(here / d, root, excluded_dirs))
        files += [here / f for f in filenames if not _excluded(here / f, root, excluded_dirs)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def build_archive(root: Path, dest: Path, exclude: tuple[Path, ...] = ()) -> Archive:
    """Zip every file under root (paths relative to it) into dest, deterministically."""
    excluded_dirs = tuple(p.resolve() for p in exclude)
    files = _walk(root, excluded_dirs)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=FIXED_TIME)
            mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so unzip restores the mode bits
            with path.open("rb") as source, zf.open(info, "w") as target:
                for block in iter(lambda: source.read(1 << 20), b""):
                    target.write(block)
    return Archive(dest, len(files), dest.stat().st_size)
