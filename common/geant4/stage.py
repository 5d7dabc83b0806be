"""The Geant4 data sets on a node: fetched once, verified, read-only, found by every task.

Runs on an Azure node as `python3 geant4_stage.py`, in the job preparation task (on the
node's own OS, before the job's first task on that node, again on a node Batch re-creates).
Standard library only: it is shipped to the node as one file. The client imports the same
module for what both sides must agree on: which folders are data sets (and the environment
variable Geant4 reads for each), the digest of a data set's files, the key of a listing.

On the node, from the environment the preparation task is given:

- G4STAGE_SOURCE: the blob container URL with a read-only SAS (never printed);
- G4STAGE_KEY: the content key of the data (the folder it lands in);
- G4STAGE_LAYOUT: `archives` (this tool's upload: `sets/<key>.json` lists one .tar.gz per
  data set, or .tar where gzip does not pay) or `folder` (data sets stored file by file under G4STAGE_PREFIX, as a folder
  copied into storage is).

The data goes to `$AZ_BATCH_NODE_SHARED_DIR/geant4-data/<key>/` (kept across jobs on a
node: a later job finds it and only verifies it), under a lock, through a `.partial`
folder renamed when every file is verified: each archive's size and MD5, each data set's
files and sizes after unpacking (a blob stored file by file: its size, and its MD5 when the
storage has one). Files and folders are then made read-only. Last, `geant4-data.env` in the
working directory says where each data set is (`export G4LEDATA=...`): every task sources it.
A missing or damaged data set ends the preparation with one line naming it, so no task of
the job starts on that node.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Data set folder prefix -> the environment variable Geant4 reads (Geant4's
# cmake/Modules/G4DatasetDefinitions.cmake: NAME and ENVVAR; a folder is NAME + VERSION).
DATASETS = (
    ("G4NDL", "G4NEUTRONHPDATA"), ("G4EMLOW", "G4LEDATA"),
    ("PhotonEvaporation", "G4LEVELGAMMADATA"), ("RadioactiveDecay", "G4RADIOACTIVEDATA"),
    ("G4PARTICLEXS", "G4PARTICLEXSDATA"), ("G4PII", "G4PIIDATA"),
    ("RealSurface", "G4REALSURFACEDATA"), ("G4SAIDDATA", "G4SAIDXSDATA"),
    ("G4ABLA", "G4ABLADATA"), ("G4INCL", "G4INCLDATA"), ("G4ENSDFSTATE", "G4ENSDFSTATEDATA"),
    ("G4CHANNELING", "G4CHANNELINGDATA"), ("G4TENDL", "G4PARTICLEHPDATA"),
    ("G4NUDEXLIB", "G4NUDEXLIBDATA"), ("G4URRPT", "G4URRPTDATA"),
)
# Read by every Geant4 run at initialisation, whatever the physics: a campaign without them
# would fail in every task.
REQUIRED = ("G4ENSDFSTATE", "G4EMLOW")
# TOPAS's default physics (g4em-standard_opt4, g4h-phy_QGSP_BIC_HP, ...) also reads these.
TOPAS_DEFAULT_PHYSICS = ("PhotonEvaporation", "G4PARTICLEXS", "G4NDL")
_FOLDER = re.compile(r"^([A-Za-z][A-Za-z0-9_]*?)(\d+(?:\.\d+)*)$")
ENV_FILE = "geant4-data.env"  # in the preparation task's working directory
MARKER = ".staged.json"  # in a staged data folder: what was verified
PARTIAL = ".partial"
CHUNK = 1 << 20
TRIES = 4
PARALLEL_ARCHIVES = 4
PARALLEL_FILES = 16


def dataset_of(folder_name: str) -> tuple[str, str] | None:
    """(data set name, environment variable) for a folder like `G4EMLOW8.6.1`, else None."""
    match = _FOLDER.match(folder_name)
    if not match:
        return None
    known = dict(DATASETS)
    return (match.group(1), known[match.group(1)]) if match.group(1) in known else None


def tree(folder: Path) -> list[tuple[str, int]]:
    """(POSIX path relative to `folder`, size) of every regular file below it, sorted."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            path = Path(top) / name
            found.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    return sorted(found)


def tree_digest(entries: list[tuple[str, int]]) -> str:
    """What a data set's files must be after unpacking: their names and sizes."""
    digest = hashlib.sha256()
    for name, size in entries:
        digest.update(f"{name}\0{size}\n".encode())
    return digest.hexdigest()


def listing_key(entries: list[tuple[str, int, str]]) -> str:
    """The key of data stored file by file: (name below the prefix, size, MD5 or '')."""
    digest = hashlib.sha256()
    for name, size, md5 in sorted(entries):
        digest.update(f"{name}\0{size}\0{md5}\n".encode())
    return digest.hexdigest()[:16]


def env_lines(root: str, datasets: list[tuple[str, str]]) -> str:
    """The env file tasks source: TOPAS_G4_DATA_DIR and each data set's variable."""
    def quoted(text: str) -> str:
        return "'" + text.replace("'", "'\\''") + "'"
    lines = [f"export TOPAS_G4_DATA_DIR={quoted(root)}"]
    lines += [f"export {env}={quoted(root + '/' + folder)}" for folder, env in sorted(datasets)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the node side


class StageError(Exception):
    """One line for the user: what is wrong with which data set."""


_KEY = re.compile(r"^[0-9a-f]{16}$")


def _inside(name: str) -> bool:
    """A relative path that stays where it is put (no '..', not absolute)."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and ".." not in parts and "" not in parts[:-1]


def _checked_entries(entries: object) -> list[dict]:
    """The archive list read from storage, refused unless it is what this tool writes."""
    if not isinstance(entries, list):
        raise StageError("the list of Geant4 data sets in storage is not one this tool wrote")
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        blob = entry.get("blob") if isinstance(entry, dict) else None
        if not isinstance(name, str) or dataset_of(name) is None or not isinstance(blob, str) \
                or not blob.startswith("datasets/") or not _inside(blob):
            raise StageError(f"the list of Geant4 data sets names {str(name)[:60]!r} "
                             f"({str(blob)[:80]!r}): not a data set this tool uploaded")
    return entries  # type: ignore[return-value]


def _blob_url(source: str, name: str) -> str:
    base, _, query = source.partition("?")
    url = base.rstrip("/") + "/" + urllib.parse.quote(name)
    return f"{url}?{query}" if query else url


def _public(url: str) -> str:
    return url.split("?", 1)[0]  # never a SAS signature in a message


def _open(url: str, what: str):
    for attempt in range(TRIES):
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers={
                "x-ms-version": "2021-08-06"}), timeout=120)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise StageError(f"{what}: not found in storage ({_public(url)})") from None
            if error.code == 403:
                raise StageError(f"{what}: storage refused access ({_public(url)}: HTTP 403; "
                                 "the SAS may have expired)") from None
            problem = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            problem = str(getattr(error, "reason", error))
        if attempt + 1 == TRIES:
            raise StageError(f"{what}: cannot be downloaded from {_public(url)} ({problem})")
        time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def _download(url: str, target: Path, what: str) -> tuple[int, str]:
    """Stream a blob to `target`; (bytes, base64 MD5) of what arrived."""
    md5, size = hashlib.md5(), 0
    with _open(url, what) as response, target.open("wb") as out:
        for block in iter(lambda: response.read(CHUNK), b""):
            md5.update(block)
            size += len(block)
            out.write(block)
    return size, base64.b64encode(md5.digest()).decode()


def _safe_members(archive: tarfile.TarFile, name: str) -> list[tarfile.TarInfo]:
    members = archive.getmembers()
    for member in members:
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise StageError(f"Geant4 data set {name}: the archive holds {member.name!r}, which "
                             "is not a plain file inside the data set: it was not made by this tool")
    return members


def _unpack(archive_path: Path, into: Path, name: str) -> None:
    with tarfile.open(archive_path, "r:*") as archive:
        for member in _safe_members(archive, name):
            target = into / member.name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            target.chmod(0o755 if member.mode & 0o111 else 0o644)


def _stage_archive(source: str, entry: dict, partial: Path) -> None:
    name = entry["name"]
    archive = partial / f".{name}.archive"  # .tar.gz, or .tar for data that compresses poorly
    size, md5 = _download(_blob_url(source, entry["blob"]), archive, f"Geant4 data set {name}")
    if size != entry["size"] or md5 != entry["md5"]:
        raise StageError(f"Geant4 data set {name}: the download has {size:,} bytes (MD5 {md5}), "
                         f"storage promised {entry['size']:,} (MD5 {entry['md5']}): it is damaged "
                         "in storage; run the campaign again to upload it anew")
    _unpack(archive, partial, name)
    archive.unlink()
    _check_tree(partial / name, entry)


def _check_tree(folder: Path, entry: dict) -> None:
    found = tree(folder) if folder.is_dir() else []
    if tree_digest(found) != entry["digest"]:
        have = sum(size for _, size in found)
        raise StageError(f"Geant4 data set {entry['name']} is partial: {len(found):,} of "
                         f"{entry['files']:,} files, {have:,} of {entry['bytes']:,} bytes")


def _list_blobs(source: str, prefix: str) -> list[tuple[str, int, str]]:
    base, _, query = source.partition("?")
    found, marker = [], ""
    while True:
        params = {"restype": "container", "comp": "list", "prefix": prefix}
        if marker:
            params["marker"] = marker
        url = f"{base}?{urllib.parse.urlencode(params)}" + (f"&{query}" if query else "")
        with _open(url, "the Geant4 data at GEANT4_DATA_URL") as response:
            root = ElementTree.fromstring(response.read())
        for blob in root.iter("Blob"):
            props = blob.find("Properties")
            size = int(props.findtext("Content-Length") or 0) if props is not None else 0
            md5 = (props.findtext("Content-MD5") or "") if props is not None else ""
            found.append((blob.findtext("Name") or "", size, md5))
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return found


def _stage_folder(source: str, prefix: str, key: str, partial: Path) -> list[dict]:
    listed = [(n[len(prefix):], s, m) for n, s, m in _list_blobs(source, prefix)]
    wanted = [(n, s, m) for n, s, m in listed if dataset_of(n.split("/", 1)[0]) and "/" in n]
    for name, _, _ in wanted:
        if not _inside(name):
            raise StageError(f"Geant4 data set {name.split('/', 1)[0]}: the blob {name[:80]!r} "
                             "leaves its folder: rename it")
    if listing_key(wanted) != key:
        raise StageError("the Geant4 data at GEANT4_DATA_URL changed since the campaign was "
                         "started (its blobs differ): start the campaign again")

    def fetch(item: tuple[str, int, str]) -> None:
        name, size, md5 = item
        target = partial / name
        target.parent.mkdir(parents=True, exist_ok=True)
        what = f"Geant4 data set {name.split('/', 1)[0]}"
        got, got_md5 = _download(_blob_url(source, prefix + name), target, what)
        if got != size or (md5 and got_md5 != md5):
            raise StageError(f"{what}: {name} arrived with {got:,} bytes (MD5 {got_md5}), "
                             f"storage lists {size:,} (MD5 {md5 or 'none'})")
        target.chmod(0o644)

    with ThreadPoolExecutor(PARALLEL_FILES) as pool:
        list(pool.map(fetch, wanted))
    entries = []
    for folder in sorted({n.split("/", 1)[0] for n, _, _ in wanted}):
        files = [(n.split("/", 1)[1], s) for n, s, _ in wanted if n.split("/", 1)[0] == folder]
        entries.append({"name": folder, "files": len(files), "bytes": sum(s for _, s in files),
                        "digest": tree_digest(sorted(files))})
    return entries


def _read_only(folder: Path) -> None:
    for top, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(top) / name
            path.chmod(path.stat().st_mode & ~0o222 | 0o444)
        Path(top).chmod(0o555)


def _verified(folder: Path) -> list[dict] | None:
    """The data sets of an earlier staging, if every one of them is still intact."""
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    for entry in record.get("datasets", []):
        try:
            _check_tree(folder / entry["name"], entry)
        except StageError:
            return None
    return record.get("datasets")


def stage(source: str, key: str, layout: str, prefix: str, root: Path) -> tuple[list[dict], bool]:
    """The data in root/<key>, verified; (its data sets, True when fetched now)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with (root / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two jobs on one node never stage at once
        found = _verified(final) if final.is_dir() else None
        if found is not None:
            return found, False
        partial = root / f"{key}{PARTIAL}"
        for old in (partial, final):
            if old.exists():
                for top, dirs, _ in os.walk(old):
                    Path(top).chmod(0o755)
                shutil.rmtree(old)
        partial.mkdir()
        if layout == "archives":
            manifest_path = partial / ".set.json"
            _download(_blob_url(source, f"sets/{key}.json"), manifest_path,
                      f"the list of Geant4 data sets {key}")
            try:
                entries = _checked_entries(json.loads(manifest_path.read_text()).get("datasets"))
            except (ValueError, AttributeError):
                raise StageError(f"the list of Geant4 data sets {key} in storage is not JSON") from None
            manifest_path.unlink()
            with ThreadPoolExecutor(PARALLEL_ARCHIVES) as pool:
                list(pool.map(lambda e: _stage_archive(source, e, partial), entries))
        else:
            entries = _stage_folder(source, prefix, key, partial)
        (partial / MARKER).write_text(json.dumps({"key": key, "datasets": entries}))
        _read_only(partial)
        partial.chmod(0o755)  # renaming needs write access to it: made read-only after
        partial.rename(final)
        final.chmod(0o555)
        return entries, True


def main() -> int:
    try:
        source = os.environ["G4STAGE_SOURCE"]
        key = os.environ["G4STAGE_KEY"]
        layout = os.environ.get("G4STAGE_LAYOUT", "archives")
        prefix = os.environ.get("G4STAGE_PREFIX", "")
        root = Path(os.environ["AZ_BATCH_NODE_SHARED_DIR"]) / "geant4-data"
    except KeyError as missing:
        print(f"batch-campaigns: Geant4 data: {missing} is not set", file=sys.stderr)
        return 2
    if not _KEY.match(key) or layout not in ("archives", "folder"):
        print(f"batch-campaigns: Geant4 data: G4STAGE_KEY {key[:40]!r} or G4STAGE_LAYOUT "
              f"{layout[:20]!r} is not one this tool sets", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        entries, fetched = stage(source, key, layout, prefix, root)
    except StageError as problem:
        print(f"batch-campaigns: {problem}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"batch-campaigns: Geant4 data {key}: {error.strerror or error} "
              f"({error.filename or root})", file=sys.stderr)
        return 1
    folder = str(root / key)
    Path(ENV_FILE).write_text(env_lines(folder, [(e["name"], dataset_of(e["name"])[1])
                                                 for e in entries if dataset_of(e["name"])]))
    size = sum(e["bytes"] for e in entries)
    how = f"fetched in {time.monotonic() - started:.1f} s" if fetched else "already on this node"
    print(f"Geant4 data {key}: {len(entries)} data set(s), {size:,} bytes, {how}, verified, "
          f"read-only in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
