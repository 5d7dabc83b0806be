"""Moving files in and out of any BlobStore safely: skip unchanged uploads, verify downloads.

Works on the BlobStore contract only, so the local folder store and Azure Blob Storage get
the same guarantees: a downloaded file counts only once its size and MD5 match the blob's,
a verified file is not fetched again (an interrupted download resumes), and the container
is never deleted while a result lacks a verified local copy.
"""
from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from common.backends.base import BlobStore
from common.model import BlobInfo
from common.signals import InterruptLatch, latched

CHUNK = 1 << 20
# Parallel downloads hide network latency; with none to hide (a local folder, an emulator on
# loopback) extra threads only fight over the interpreter. Measured on Azurite, 100 KB blobs:
# direct, 4 threads 0.96x and 32 threads 0.78x of a sequential loop; behind +20 ms per
# request, 4 threads 3.5x and 32 threads 6.8x.
FEW_THREADS, MANY_THREADS = 4, 32
LOW_LATENCY_SECONDS = 0.003

ProgressCallback = Callable[[int, int], None]  # (files done, bytes done)


def md5_of(path: Path) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.digest()


def _md5_and_size(handle: BinaryIO) -> tuple[bytes, int]:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    handle.seek(0)
    for block in iter(lambda: handle.read(CHUNK), b""):
        digest.update(block)
        size += len(block)
    return digest.digest(), size


def upload_if_changed(store: BlobStore, source: Path | BinaryIO, blob: str) -> bool:
    """Upload unless the blob already holds these exact bytes; True if bytes were sent.

    `source` is a file's path or a seekable binary file (e.g. an anonymous temporary file,
    which leaves nothing behind if the process is killed); it is read from its start.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            return upload_if_changed(store, handle, blob)
    md5, size = _md5_and_size(source)
    for existing in store.list_blobs(blob):
        if existing.name == blob and existing.size == size and existing.md5 == md5:
            return False
    source.seek(0)
    store.upload_file(source, blob, md5)
    return True


def local_path(dest_root: Path, blob: str, strip_prefix: str) -> Path:
    """Where a blob goes under dest_root; refuses names that would escape it."""
    relative = PurePosixPath(blob[len(strip_prefix):] if blob.startswith(strip_prefix) else blob)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"unsafe blob name {blob!r}")
    return dest_root.joinpath(*relative.parts)


def is_verified(blob: BlobInfo, path: Path, md5: bytes | None = None) -> bool:
    """The local file has the blob's size and (when the blob has one) its MD5.

    `md5` is the file's digest when already known (computed while writing it)."""
    try:
        if path.stat().st_size != blob.size:
            return False
    except OSError:
        return False
    return blob.md5 is None or (md5 or md5_of(path)) == blob.md5


@dataclass(frozen=True)
class DownloadReport:
    downloaded: tuple[str, ...]
    skipped: tuple[str, ...]  # already present and verified
    failed: tuple[tuple[str, str], ...]  # (blob name, why)
    bytes: int

    @property
    def ok(self) -> bool:
        return not self.failed


def threads_for(store: BlobStore) -> int:
    """Many threads when a request takes a while (a real account), few when it does not."""
    fastest = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        store.exists()
        fastest = min(fastest, time.perf_counter() - started)
    return MANY_THREADS if fastest > LOW_LATENCY_SECONDS else FEW_THREADS


def download_prefix(store: BlobStore, prefix: str, dest_root: Path, strip_prefix: str,
                    on_progress: ProgressCallback | None = None,
                    threads: int | None = None,
                    select: Callable[[BlobInfo], bool] | None = None) -> DownloadReport:
    """Fetch every blob under `prefix` (that `select` accepts, when given) into dest_root,
    in parallel, each one verified.

    A file is written to a temporary name and renamed only once verified, so a partial file
    never passes for a result.
    """
    with latched() as latch:  # from the start: listing thousands of blobs takes a while too
        blobs = [b for b in store.list_blobs(prefix) if select is None or select(b)]
        latch.check()
        pool = ThreadPoolExecutor(max_workers=max(1, threads or threads_for(store)))
        try:
            futures = {pool.submit(_fetch_one, store, b, dest_root, strip_prefix): b
                       for b in blobs}
            report = _collect(futures, latch, on_progress)
        except BaseException:
            # Ctrl-C (or a signal): drop what is queued at once; the few files in flight
            # finish or stay .partial (never taken for a result); what is verified stays.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    return report


def _collect(futures: dict[Future, BlobInfo], latch: InterruptLatch,
             on_progress: ProgressCallback | None) -> DownloadReport:
    downloaded: list[str] = []
    skipped: list[str] = []
    failed: list[tuple[str, str]] = []
    done_files = done_bytes = 0
    pending = set(futures)
    while pending:
        # A short wait, not as_completed: an interrupt that Python swallowed (in one of the
        # pool's weakref callbacks) is still acted on within a quarter second.
        finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
        latch.check()
        for future in finished:
            blob = futures[future]
            try:
                fetched = future.result()
            except Exception as exc:  # reported by name; none stops the rest
                failed.append((blob.name, _reason(exc)))
            else:
                (downloaded if fetched else skipped).append(blob.name)
                done_bytes += blob.size
            done_files += 1
            if on_progress:
                on_progress(done_files, done_bytes)
    return DownloadReport(tuple(sorted(downloaded)), tuple(sorted(skipped)),
                          tuple(sorted(failed)), done_bytes)


def _fetch_one(store: BlobStore, blob: BlobInfo, dest_root: Path, strip_prefix: str) -> bool:
    target = local_path(dest_root, blob.name, strip_prefix)
    if is_verified(blob, target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        written_md5 = store.download_blob(blob, partial)
        if not is_verified(blob, partial, written_md5):
            raise IOError("size or MD5 differs from the blob's (corrupted in storage or transit)")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return True


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text[:200]


def unverified_blobs(store: BlobStore, prefix: str, dest_root: Path,
                     strip_prefix: str) -> list[str]:
    """Blobs under `prefix` with no verified copy under dest_root (what a deletion would lose)."""
    missing = []
    for blob in store.list_blobs(prefix):
        try:
            target = local_path(dest_root, blob.name, strip_prefix)
        except ValueError:
            missing.append(blob.name)
            continue
        if not is_verified(blob, target):
            missing.append(blob.name)
    return missing
