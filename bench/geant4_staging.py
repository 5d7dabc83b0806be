"""Benchmark: what staging the Geant4 data costs a node, against what it cannot avoid.

A synthetic data folder shaped like Geant4's (many small text tables and a few larger
binary-ish files; `--mb` in all) is packed as the client packs it (common.geant4.upload:
deterministic .tar.gz, level 1), served over HTTP on loopback, and staged as a node stages
it (common.geant4.stage: download, MD5, unpack, check every data set's files, read-only).
Baselines, run beside it in this process:

1. the same bytes merely downloaded (urllib to files, no verification, no unpacking) —
   what any way of fetching must pay;
2. `tar xf` of the same archives (GNU tar and gzip, C) — unpacking without Python.

    python -m bench.geant4_staging [--mb 300]

Loopback has no network limit, so the ratios say what staging adds on the node's CPU;
on Azure the download itself is bounded by the node's network and the storage account.
"""
from __future__ import annotations

import argparse
import base64
import http.server
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path

from common.geant4 import data as gd
from common.geant4 import stage
from common.geant4.upload import archive_blob, compresses, write_archive


def make_data(root: Path, megabytes: int) -> None:
    """Text tables (compress ~4x, like G4EMLOW) and denser files (like G4NDL's .z files)."""
    rng = random.Random(1)
    budget = megabytes << 20
    sets = ("G4EMLOW8.6.1", "G4ENSDFSTATE3.0", "PhotonEvaporation6.1", "G4NDL4.7.1", "G4PARTICLEXS4.1")
    written, number = 0, 0
    while written < budget:
        name = sets[number % len(sets)]
        path = root / name / f"d{number % 40}" / f"f{number}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "G4NDL4.7.1":
            body = os.urandom(400_000)
        else:
            body = "".join(f"{rng.uniform(0, 1e3):.6e} {rng.uniform(0, 1):.6e}\n"
                           for _ in range(3000)).encode()
        path.write_bytes(body)
        written += len(body)
        number += 1


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-g4-"))
    try:
        data = work / "G4Data"
        make_data(data, args.mb)
        found = gd.scan(data)
        served = work / "served" / "box"
        (served / "datasets").mkdir(parents=True)
        (served / "sets").mkdir()
        keys = gd.content_keys(found, environ={"XDG_CACHE_HOME": str(work / "cache")})
        entries = []

        def pack() -> None:
            for dataset in found.datasets:
                compressed = compresses(dataset)
                blob = archive_blob(dataset.folder, keys[dataset.folder], compressed)
                with (served / blob).open("wb") as out:
                    size, md5 = write_archive(dataset, out, compressed=compressed)
                entries.append({"name": dataset.folder, "blob": blob, "size": size,
                                "md5": base64.b64encode(md5).decode(), "files": len(dataset.files),
                                "bytes": dataset.bytes, "digest": dataset.digest})
        packing = timed(pack)
        key = gd.set_key(keys)
        (served / "sets" / f"{key}.json").write_text(json.dumps({"datasets": entries}))
        packed = sum(e["size"] for e in entries)
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(_Quiet, directory=str(work / "served")))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        source = f"http://127.0.0.1:{server.server_address[1]}/box?sig=x"

        def plain_download() -> None:
            target = work / "plain"
            target.mkdir()
            for entry in entries:
                with urllib.request.urlopen(stage._blob_url(source, entry["blob"])) as response, \
                        (target / Path(entry["blob"]).name).open("wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
        download = timed(plain_download)

        def tar_unpack() -> None:
            target = work / "tar"
            target.mkdir()
            for archive in sorted((work / "plain").iterdir()):
                subprocess.run(["tar", "xf", str(archive), "-C", str(target)], check=True)
        untar = timed(tar_unpack)
        staging = timed(lambda: stage.stage(source, key, "archives", "", work / "node" / "geant4-data"))
        again = timed(lambda: stage.stage(source, key, "archives", "", work / "node" / "geant4-data"))
        server.shutdown()
        mb = found.bytes / 1e6
        print(f"data: {mb:,.0f} MB in {sum(len(d.files) for d in found.datasets):,} files, "
              f"{len(found.datasets)} data sets; packed {packed / 1e6:,.0f} MB "
              f"({packed / found.bytes:.2f} of the bytes)")
        print(f"client, pack (tar.gz level 1 / tar, secrets scanned): {packing:.2f} s ({mb / packing:,.0f} MB/s), once")
        print(f"node, plain download of the archives (baseline 1): {download:.2f} s")
        print(f"node, plain download + tar xf (baseline 2): {download + untar:.2f} s")
        print(f"node, staging (download, MD5, unpack, check, read-only): {staging:.2f} s "
              f"({mb / staging:,.0f} MB/s) = {staging / download:.1f}x baseline 1, "
              f"{staging / (download + untar):.2f}x baseline 2")
        print(f"node, a later job finding it staged (verify only): {again:.2f} s")
    finally:
        for top, dirs, _ in os.walk(work):
            os.chmod(top, 0o755)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
