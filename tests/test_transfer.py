"""Uploads skip unchanged bytes; downloads verify, resume, and guard the container."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.backends.local.backend import LocalBlobStore
from common.transfer import (download_prefix, local_path, md5_of, unverified_blobs,
                             upload_if_changed)


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    made = LocalBlobStore(tmp_path / "container", "box")
    made.create()
    return made


def put(store: LocalBlobStore, name: str, data: bytes) -> None:
    target = store.folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def test_upload_skips_identical_content(store, tmp_path):
    source = tmp_path / "SIM_DIR.zip"
    source.write_bytes(b"x" * 1000)
    assert upload_if_changed(store, source, "SIM_DIR.zip") is True
    assert upload_if_changed(store, source, "SIM_DIR.zip") is False
    source.write_bytes(b"y" * 1000)
    assert upload_if_changed(store, source, "SIM_DIR.zip") is True
    assert md5_of(store.folder / "SIM_DIR.zip") == md5_of(source)


def test_download_verifies_and_resumes(store, tmp_path):
    for i in range(20):
        put(store, f"nodes_output/run{i}/out.csv", f"data {i}".encode() * 100)
    dest = tmp_path / "results"
    seen = []
    report = download_prefix(store, "nodes_output/", dest, "nodes_output/",
                             on_progress=lambda f, b: seen.append(f))
    assert report.ok and len(report.downloaded) == 20 and seen[-1] == 20
    (dest / "run3" / "out.csv").write_bytes(b"truncated")  # an interrupted earlier download
    again = download_prefix(store, "nodes_output/", dest, "nodes_output/")
    assert again.downloaded == ("nodes_output/run3/out.csv",) and len(again.skipped) == 19
    assert unverified_blobs(store, "nodes_output/", dest, "nodes_output/") == []


def test_corrupted_transfer_is_reported_by_name(store, tmp_path, monkeypatch):
    put(store, "nodes_output/run1/a.csv", b"good")
    put(store, "nodes_output/run2/b.csv", b"good too")
    real = LocalBlobStore.download_blob

    def corrupt(self, blob, dest):
        real(self, blob, dest)
        if blob.name.endswith("b.csv"):
            dest.write_bytes(b"bad bytes")
    monkeypatch.setattr(LocalBlobStore, "download_blob", corrupt)
    report = download_prefix(store, "nodes_output/", tmp_path / "d", "nodes_output/")
    assert [name for name, _ in report.failed] == ["nodes_output/run2/b.csv"]
    assert not (tmp_path / "d" / "run2" / "b.csv").exists()  # no unverified file left behind
    assert unverified_blobs(store, "nodes_output/", tmp_path / "d", "nodes_output/") == [
        "nodes_output/run2/b.csv"]


def test_blob_names_cannot_escape_the_destination(tmp_path):
    with pytest.raises(ValueError):
        local_path(tmp_path, "nodes_output/../../evil.txt", "nodes_output/")
    assert local_path(tmp_path, "nodes_output/run1/a.csv", "nodes_output/") == tmp_path / "run1" / "a.csv"
