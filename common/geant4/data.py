"""The Geant4 data sets of a campaign, on this machine: found, checked, keyed by content.

OpenTOPAS's official image holds no Geant4 data (2-3 GB, read-only, at /Applications/G4Data
when run by hand). `GEANT4_DATA_DIR` names a folder of data sets (`G4EMLOW8.6.1`,
`G4ENSDFSTATE3.0`, ...): each top-level folder whose name is a data set's is used; anything
else there (notes, an appconfig) is left alone and named. Inside a data set the rules of the
simulation zip apply (links stay inside, no FIFOs, everything readable, no file holding a
secret).

Each data set gets a content key (SHA-256 of its files' names, sizes and bytes), remembered
in `~/.cache/batch-campaigns/geant4-data-keys.json` against the files' sizes and times, so
an unchanged folder is not read again. Uploading, on a backend whose nodes fetch it, is
upload.py's; what a task is told, common/worker/setup.py's; the node's side, stage.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from common.errors import ToolError, usage_error
from common.geant4.stage import REQUIRED, TOPAS_DEFAULT_PHYSICS, dataset_of, tree_digest
from common.packaging import NotAllowed, SecretScan, open_inside, safe_files
from common.cache import default_cache_dir

KEYS_CACHE = "geant4-data-keys.json"
CHUNK = 1 << 20
LABEL = "GEANT4_DATA_DIR"


@dataclass(frozen=True)
class DataSet:
    """One data set folder on this machine."""

    folder: str  # G4EMLOW8.6.1
    name: str  # G4EMLOW
    env: str  # G4LEDATA
    path: Path
    files: tuple[tuple[str, Path, bool], ...]  # (name inside the folder, path, executable)
    sizes: tuple[int, ...]
    times: tuple[int, ...]  # st_mtime_ns, for the key cache

    @property
    def bytes(self) -> int:
        return sum(self.sizes)

    @property
    def digest(self) -> str:
        """Its files' names and sizes (what a node checks after unpacking)."""
        return tree_digest(sorted(zip((n for n, _, _ in self.files), self.sizes)))

    @property
    def signature(self) -> str:
        """Names, sizes and modification times: unchanged, the content key is not recomputed."""
        text = "".join(f"{n}\0{s}\0{t}\n" for (n, _, _), s, t in zip(self.files, self.sizes, self.times))
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class DataFolder:
    path: Path
    datasets: tuple[DataSet, ...]
    ignored: tuple[str, ...]  # top-level entries that are no data set

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.datasets)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.datasets)

    def missing_for_topas(self) -> tuple[str, ...]:
        """Data sets TOPAS's default physics reads that this folder lacks."""
        return tuple(n for n in TOPAS_DEFAULT_PHYSICS if n not in self.names)


def required_problem(names: tuple[str, ...], where: str) -> str | None:
    """Why these data sets cannot run any Geant4 simulation, or None."""
    missing = [n for n in REQUIRED if n not in names]
    if not names:
        return (f"{where} holds no Geant4 data set (folders named like G4EMLOW8.6.1, "
                "G4ENSDFSTATE3.0, PhotonEvaporation6.1)")
    if missing:
        return (f"{where} has no {' and no '.join(missing)} data set, which every Geant4 run "
                "reads when it starts")
    return None


def _dataset(entry: Path) -> DataSet | None:
    known = dataset_of(entry.name)
    if known is None or not entry.is_dir():
        return None
    files = tuple(safe_files(entry, LABEL))
    stats = [os.stat(path) for _, path, _ in files]
    return DataSet(entry.name, known[0], known[1], entry, files,
                   tuple(s.st_size for s in stats), tuple(s.st_mtime_ns for s in stats))


def scan(path: Path) -> DataFolder:
    """Every data set in `path`, checked; ToolError (exit 2) with one line per problem."""
    if not path.is_dir():
        raise usage_error(f"{LABEL}: {path} is not a folder: give the folder holding the "
                          "Geant4 data sets (G4EMLOW..., G4ENSDFSTATE..., ...)")
    datasets, ignored, problems = [], [], []
    for entry in sorted(path.iterdir()):
        try:
            found = _dataset(entry)
        except ToolError as refused:  # every problem of every data set, in one go
            problems += refused.lines
            continue
        if found is None:
            ignored.append(entry.name)
        elif not found.files:
            problems.append(f"{LABEL}: data set {entry.name} in {path} is empty: unpack it "
                            "again from the Geant4 data download")
        else:
            datasets.append(found)
    if problems:
        raise usage_error(*problems)
    problem = required_problem(tuple(d.name for d in datasets), f"{path}")
    if problem:
        raise usage_error(f"{LABEL}: {problem}: download the data sets of your Geant4 version "
                          "(geant4-config --install-datasets, or Geant4's download page) into it")
    return DataFolder(path, tuple(datasets), tuple(ignored))


# ---------------------------------------------------------------------------- content keys


def _content_key(dataset: DataSet, secrets: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    root = os.path.realpath(dataset.path)
    for (name, path, executable), size in zip(dataset.files, dataset.sizes):
        file_hash, scan = hashlib.sha256(), SecretScan(secrets)
        try:
            with open_inside(path, root) as source:
                for block in iter(lambda: source.read(CHUNK), b""):
                    if scan.found(block):
                        raise usage_error(f"{path}: holds the value of a secret from the "
                                          f"appconfig (in {LABEL}): remove it from the data folder")
                    file_hash.update(block)
        except NotAllowed as problem:
            raise usage_error(f"{problem.path}: {problem.what} (in {LABEL}): {problem.fix}") from None
        digest.update(f"{name}\0{size}\0{int(executable)}\0{file_hash.hexdigest()}\n".encode())
    return digest.hexdigest()


def _cache_file(environ: Mapping[str, str]) -> Path | None:
    folder = default_cache_dir(environ)
    return folder / KEYS_CACHE if folder else None


def _load_cache(path: Path | None) -> dict:
    try:
        data = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(path: Path | None, data: dict) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
            json.dump(data, out)
        os.replace(out.name, path)
    except OSError:
        pass  # a cache that cannot be written only costs time next run


def content_keys(folder: DataFolder, secrets: tuple[str, ...] = (),
                 environ: Mapping[str, str] | None = None,
                 say: Callable[[str], None] = lambda text: None) -> dict[str, str]:
    """The content key of every data set (folder -> key), read only when its files changed.

    A data set's files are read (and scanned for secrets) when it is new or changed; an
    unchanged one costs a look at its files' sizes and times."""
    cache_path = _cache_file(os.environ if environ is None else environ)
    cache = _load_cache(cache_path)
    keys = {}
    for dataset in folder.datasets:
        where = str(dataset.path.resolve())
        known = cache.get(where)
        if isinstance(known, dict) and known.get("signature") == dataset.signature \
                and isinstance(known.get("key"), str):
            keys[dataset.folder] = known["key"]
            continue
        say(f"reading Geant4 data set {dataset.folder} ({dataset.bytes:,} bytes) for its "
            "content key (once: remembered until its files change)")
        keys[dataset.folder] = _content_key(dataset, secrets)
        cache[where] = {"signature": dataset.signature, "key": keys[dataset.folder]}
    _save_cache(cache_path, cache)
    return keys


def set_key(keys: dict[str, str]) -> str:
    """The key of a whole set of data sets: the folder a node stages them in."""
    text = "".join(f"{folder}\0{key}\n" for folder, key in sorted(keys.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
