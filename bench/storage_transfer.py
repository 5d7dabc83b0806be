"""Benchmark: this tool's blob transfers against the naive way, on Azurite.

Azurite on loopback has no latency, so the many-small-files case also runs through a proxy
that adds 20 ms to every request, as a storage account 20 ms away would. Every comparison
runs in this process against a baseline measured right beside it; read the ratios.

    python -m bench.storage_transfer [--files 1000] [--file-kb 100] [--big-mb 200] [--delay-ms 20]

1. 1,000 result blobs of 100 KB: common.transfer.download_prefix (16 threads, verified) vs a
   sequential one-blob-at-a-time loop (the original scripts' way), through the proxy and direct.
2. One big blob up and down: the SDK's defaults vs this layer's settings (8 MB blocks,
   8 in flight), with `cp` of the same file as the physical reference.
3. Second upload of an unchanged simulation folder: bytes sent (counted by the proxy).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from azure.storage.blob import BlobServiceClient

from common.config import Secret
from common.packaging import build_archive
from common.backends.azure.storage import AzureBlobStore, StorageAccount, service_client
from common.transfer import download_prefix, upload_if_changed
from tests.support.azurite import ACCOUNT, KEY, start_azurite
from tests.support.proxy import DelayProxy, start_in_subprocess


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def store_at(url: str, container: str) -> AzureBlobStore:
    account = StorageAccount(ACCOUNT, url, Secret(KEY))
    return AzureBlobStore(service_client(account), account, container)


def sequential_download(url: str, container: str, dest: Path) -> None:
    """The original scripts' loop: list, then one blob after another with default settings."""
    client = BlobServiceClient(url, credential={"account_name": ACCOUNT, "account_key": KEY})
    box = client.get_container_client(container)
    for blob in box.list_blobs(name_starts_with="nodes_output/"):
        target = dest / blob.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as handle:
            box.get_blob_client(blob.name).download_blob().readinto(handle)


def many_files(url: str, proxy_url: str, delay_ms: float, files: int, size_kb: int,
               tmp: Path) -> list[str]:
    store = store_at(url, "many")
    store.create()
    payload = tmp / "payload"
    payload.write_bytes(os.urandom(size_kb * 1024))
    names = [f"nodes_output/run{i}/dose.csv" for i in range(files)]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: upload_if_changed(store, payload, n), names))
    lines = []
    for label, base in ((f"via a +{delay_ms:g} ms proxy", proxy_url), ("direct", url)):
        seq = timed(lambda: sequential_download(base, "many", tmp / f"seq-{label}"))
        par = timed(lambda: download_prefix(store_at(base, "many"), "nodes_output/",
                                            tmp / f"par-{label}", "nodes_output/"))
        lines.append(f"| {files} x {size_kb} KB download, {label} | sequential loop "
                     f"{files / seq:.0f} files/s | this layer {files / par:.0f} files/s | "
                     f"**{seq / par:.1f}x** |")
    return lines


def big_blob(url: str, size_mb: int, tmp: Path) -> list[str]:
    source = tmp / "big.bin"
    with source.open("wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1024 * 1024))
    mb = size_mb
    cp_time = timed(lambda: shutil.copyfile(source, tmp / "big.copy"))
    (tmp / "big.copy").unlink()
    defaults = BlobServiceClient(url, credential={"account_name": ACCOUNT, "account_key": KEY})
    box = defaults.get_container_client("big")
    box.create_container()
    up_default = timed(lambda: box.upload_blob("default.bin", source.open("rb"), overwrite=True))
    store = store_at(url, "big")
    from common.transfer import md5_of
    md5 = md5_of(source)
    def upload_ours() -> None:
        with source.open("rb") as data:
            store.upload_file(data, "ours.bin", md5)
    up_ours = timed(upload_ours)

    def download_default() -> None:
        with (tmp / "d1.bin").open("wb") as handle:
            box.get_blob_client("default.bin").download_blob().readinto(handle)
    down_default = timed(download_default)
    [blob] = [b for b in store.list_blobs("ours.bin")]
    down_ours = timed(lambda: store.download_blob(blob, tmp / "d2.bin"))
    return [
        f"| {mb} MB upload, direct | SDK defaults {mb / up_default:.0f} MB/s | this layer "
        f"{mb / up_ours:.0f} MB/s | **{up_default / up_ours:.1f}x** (cp: {mb / cp_time:.0f} MB/s) |",
        f"| {mb} MB download, direct | SDK defaults {mb / down_default:.0f} MB/s | this layer "
        f"{mb / down_ours:.0f} MB/s | **{down_default / down_ours:.1f}x** |",
    ]


def unchanged_upload(proxy: DelayProxy, tmp: Path) -> str:
    store = store_at(proxy.url, "folder")
    store.create()
    archive = build_archive(REPO / "examples" / "water_phantom", tmp / "SIM_DIR.zip")
    upload_if_changed(store, archive.path, "SIM_DIR.zip")
    again = build_archive(REPO / "examples" / "water_phantom", tmp / "SIM_DIR2.zip")
    proxy.reset_counts()
    sent = upload_if_changed(store, again.path, "SIM_DIR.zip")
    return (f"| second upload of an unchanged simulation folder | {archive.size:,} bytes | "
            f"{proxy.bytes_in} bytes sent, {proxy.requests} request(s), uploaded={sent} | |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--file-kb", type=int, default=100)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=20)
    args = parser.parse_args()
    azurite = start_azurite(memory_mb=4096)
    slow, slow_url = start_in_subprocess(azurite.url, delay=args.delay_ms / 1000)
    counter = DelayProxy(azurite.url).start()  # in-process: its byte counts are readable here
    try:
        with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
            rows = many_files(azurite.url, slow_url, args.delay_ms, args.files, args.file_kb, Path(tmp))
            rows.append(unchanged_upload(counter, Path(tmp)))
            rows += big_blob(azurite.url, args.big_mb, Path(tmp))
    finally:
        slow.terminate()
        counter.stop()
        azurite.stop()
    print("| case | baseline | this tool | ratio |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
