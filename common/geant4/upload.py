"""The Geant4 data sets where nodes fetch them: uploaded once, for every campaign.

With `GEANT4_DATA_DIR` each data set goes up as one deterministic .tar.gz, named by its
content key (`datasets/G4EMLOW8.6.1-<key>.tar.gz`), into a container shared by all
campaigns of the storage account, then `sets/<key>.json` lists them (written last: an
interrupted upload leaves no list, and the next campaign finishes it). A data set already
there is not uploaded again: a second campaign, or one with another SIM_ID, costs two list
requests and no bytes. The container's name is longer than any SIM_ID can make a campaign's
container, so no campaign's cleanup can ever delete it.

With `GEANT4_DATA_URL` (data sets already in the account, stored file by file under a
prefix) nothing is uploaded: the listing is checked and keyed, and nodes fetch the blobs.
On a backend whose tasks read this machine's folders (local), the folder is used in place.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import unquote, urlsplit

from common.backends.base import BlobStore
from common.errors import usage_error
from common.geant4.data import LABEL, DataFolder, required_problem, set_key
from common.geant4.stage import dataset_of, listing_key
from common.model import SharedData
from common.packaging import NotAllowed, SecretScan, open_inside
from common.transfer import upload_if_changed

# More than MAX_SIM_ID (41) characters: no SIM_ID names a campaign container like it.
SHARED_CONTAINER = "geant4-data-shared-by-batch-campaigns-keep"
DATASETS_PREFIX = "datasets/"
SETS_PREFIX = "sets/"
STAGE_BLOB = "geant4_stage.py"  # the node's side, in the campaign's container
STAGE_SCRIPT = Path(__file__).with_name("stage.py")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Published:
    shared: SharedData
    sent_bytes: int  # 0 when every data set was there already
    sent: tuple[str, ...]  # blobs uploaded


SAMPLE = 1 << 20  # bytes of a data set read to decide whether compressing it pays
STORE_ABOVE_RATIO = 0.9  # compressed/original of the sample: above it, a plain .tar


def compresses(dataset) -> bool:
    """Whether gzip pays for this data set, from its first MiB (G4NDL's files are zlib
    streams already: compressing them again costs the client's CPU for ~nothing). Decided
    from the bytes alone, so an unchanged data set always gets the same archive name."""
    sample = bytearray()
    for _, path, _ in dataset.files:
        with open(path, "rb") as source:
            sample += source.read(SAMPLE - len(sample))
        if len(sample) >= SAMPLE:
            break
    return bool(sample) and len(zlib.compress(bytes(sample), 1)) <= STORE_ABOVE_RATIO * len(sample)


def archive_blob(folder: str, key: str, compressed: bool = True) -> str:
    return f"{DATASETS_PREFIX}{folder}-{key[:16]}.tar" + (".gz" if compressed else "")


class _Counting:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.md5, self.size = raw, hashlib.md5(), 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class _Scanned:
    """Reads a file for the archive, refusing one that holds a secret."""

    def __init__(self, source: BinaryIO, path: Path, secrets: tuple[str, ...]) -> None:
        self.source, self.path, self.scan = source, path, SecretScan(secrets)

    def read(self, size: int = -1) -> bytes:
        block = self.source.read(size)
        if self.scan.found(block):
            raise usage_error(f"{self.path}: holds the value of a secret from the appconfig "
                              f"(in {LABEL}): remove it from the data folder")
        return block


def write_archive(dataset, handle: BinaryIO, secrets: tuple[str, ...] = (),
                  compressed: bool = True) -> tuple[int, bytes]:
    """The data set as a deterministic .tar.gz (or .tar) into `handle`: (bytes, MD5)."""
    counting = _Counting(handle)
    root = os.path.realpath(dataset.path)
    packed = gzip.GzipFile(fileobj=counting, mode="wb", compresslevel=1, mtime=0) if compressed \
        else counting
    with tarfile.open(fileobj=packed, mode="w|", format=tarfile.GNU_FORMAT, bufsize=CHUNK) as archive:
        for (name, path, executable), size in zip(dataset.files, dataset.sizes):
            info = tarfile.TarInfo(f"{dataset.folder}/{name}")
            info.size, info.mode, info.mtime = size, 0o755 if executable else 0o644, 0
            try:
                with open_inside(path, root) as source:
                    archive.addfile(info, _Scanned(source, path, secrets))  # type: ignore[arg-type]
            except NotAllowed as problem:
                raise usage_error(f"{problem.path}: {problem.what} (in {LABEL}): {problem.fix}") from None
    if compressed:
        packed.close()  # type: ignore[union-attr]  # writes the gzip trailer
    return counting.size, counting.md5.digest()


def _b64(md5: bytes) -> str:
    return base64.b64encode(md5).decode()


def publish(store: BlobStore, folder: DataFolder, keys: dict[str, str],
            secrets: tuple[str, ...] = (), say: Callable[[str], None] = lambda t: None) -> Published:
    """Every data set of `folder` in the shared container (only those not there yet)."""
    key = set_key(keys)
    store.create()
    there = {b.name: b for b in store.list_blobs(DATASETS_PREFIX)}
    entries, sent, sent_bytes = [], [], 0
    for dataset in folder.datasets:
        compressed = compresses(dataset)
        blob = archive_blob(dataset.folder, keys[dataset.folder], compressed)
        found = there.get(blob)
        if found is not None and found.md5 is not None:
            size, md5 = found.size, found.md5
        else:
            say(f"uploading Geant4 data set {dataset.folder} ({dataset.bytes:,} bytes"
                + (" before compression" if compressed else "") + ") to the shared container, once")
            with tempfile.TemporaryFile(prefix="geant4-data-") as handle:
                size, md5 = write_archive(dataset, handle, secrets, compressed)
                handle.seek(0)
                store.upload_file(handle, blob, md5)
            sent.append(blob)
            sent_bytes += size
        entries.append({"name": dataset.folder, "blob": blob, "size": size, "md5": _b64(md5),
                        "files": len(dataset.files), "bytes": dataset.bytes,
                        "digest": dataset.digest})
    listing = json.dumps({"format": 1, "key": key, "datasets": entries}, indent=1,
                         sort_keys=True).encode()
    if upload_if_changed(store, io.BytesIO(listing), f"{SETS_PREFIX}{key}.json"):
        sent.append(f"{SETS_PREFIX}{key}.json")
        sent_bytes += len(listing)
    shared = SharedData(key=key, datasets=tuple((d.folder, d.env) for d in folder.datasets),
                        layout="archives", container=store.container, bytes=folder.bytes)
    return Published(shared, sent_bytes, tuple(sent))


def in_place(folder: DataFolder) -> SharedData:
    """The folder as it is, for tasks that read this machine's files (local backend)."""
    key = set_key({d.folder: d.digest for d in folder.datasets})
    return SharedData(key=key, datasets=tuple((d.folder, d.env) for d in folder.datasets),
                      layout="in-place", local_path=str(folder.path.resolve()),
                      checks=tuple((d.folder, len(d.files), d.bytes, d.digest)
                                   for d in folder.datasets), bytes=folder.bytes)


# ---------------------------------------------------------------------------- GEANT4_DATA_URL


def split_data_url(url: str, account_base: str) -> tuple[str, str] | None:
    """(container, prefix ending in '/' or '') of a URL inside the storage account at
    `account_base`; None when it is somewhere else."""
    base = account_base.rstrip("/") + "/"
    if not url.startswith(base):
        return None
    path = unquote(urlsplit(url).path)[len(unquote(urlsplit(base).path)):]
    container, _, prefix = path.strip("/").partition("/")
    return container, (prefix.strip("/") + "/") if prefix.strip("/") else ""


def from_listing(store: BlobStore, prefix: str, url: str) -> SharedData:
    """The data sets stored file by file under `prefix`: checked, keyed by their listing."""
    listed = [b for b in store.list_blobs(prefix)] if store.exists() else []
    entries = []
    for blob in listed:
        name = blob.name[len(prefix):]
        if "/" in name and dataset_of(name.split("/", 1)[0]):
            entries.append((name, blob.size, _b64(blob.md5) if blob.md5 else ""))
    folders = sorted({n.split("/", 1)[0] for n, _, _ in entries})
    known = [dataset_of(f) for f in folders]
    problem = required_problem(tuple(k[0] for k in known if k), url)
    if problem:
        raise usage_error(f"GEANT4_DATA_URL: {problem}: copy the data set folders there "
                          "(e.g. azcopy copy ~/G4Data/* '<url>' --recursive), or use GEANT4_DATA_DIR")
    return SharedData(key=listing_key(entries), datasets=tuple((f, k[1]) for f, k in zip(folders, known) if k),
                      layout="folder", container=store.container, prefix=prefix,
                      bytes=sum(s for _, s, _ in entries))
