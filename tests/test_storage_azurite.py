"""The Azure Blob Storage layer over real HTTP, against Azurite (Microsoft's emulator)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, ContainerClient, ContentSettings

from common.backends.azure import storage as st
from common.errors import ToolError
from common.config import AppConfig, Secret
from common.transfer import download_prefix, unverified_blobs, upload_if_changed
from common.redaction import redact
from conftest import AZURITE_ACCOUNT, AZURITE_KEY


@pytest.fixture
def account(azurite) -> st.StorageAccount:
    app = AppConfig(path=Path("appconfig.json"), backend="azure", local_storage_path=Path("."),
                    storage_account_name=AZURITE_ACCOUNT, storage_account_key=Secret(AZURITE_KEY),
                    storage_account_url=azurite.url)
    return st.account_from(app)


@pytest.fixture
def store(account) -> st.AzureBlobStore:
    made = st.AzureBlobStore(st.service_client(account), account, f"c{uuid.uuid4().hex[:12]}")
    assert made.create() is True
    return made


def test_endpoint_from_name_and_domain_or_url():
    base = dict(path=Path("a"), backend="azure", local_storage_path=Path("."),
                storage_account_name="myacct", storage_account_key=Secret("a2V5"))
    assert st.account_from(AppConfig(**base)).url == "https://myacct.blob.core.windows.net"
    assert st.account_from(AppConfig(**base, storage_account_url="http://127.0.0.1:1/x/")).url == \
        "http://127.0.0.1:1/x"


def test_container_created_then_reused(store):
    assert store.exists()
    assert store.create() is False


def test_upload_skips_unchanged_and_stores_md5(store, tmp_path):
    source = tmp_path / "SIM_DIR.zip"
    source.write_bytes(b"z" * 300_000)
    assert upload_if_changed(store, source, "SIM_DIR.zip") is True
    assert upload_if_changed(store, source, "SIM_DIR.zip") is False
    [blob] = store.list_blobs("SIM_DIR.zip")
    assert blob.size == 300_000 and blob.md5 is not None


def test_large_upload_in_parallel_blocks_keeps_an_md5(store, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * (20 * 1024 * 1024 // 256))  # 20 MB: 3 blocks
    upload_if_changed(store, source, "big.bin")
    report = download_prefix(store, "big", tmp_path / "down", "")
    assert report.ok and (tmp_path / "down" / "big.bin").read_bytes() == source.read_bytes()


def put(store: st.AzureBlobStore, name: str, data: bytes, tmp_path: Path) -> None:
    source = tmp_path / "put.tmp"
    source.write_bytes(data)
    upload_if_changed(store, source, name)


def test_parallel_download_verifies_and_resumes(store, tmp_path):
    for i in range(40):
        put(store, f"nodes_output/run{i}/out.csv", f"{i},".encode() * 1000, tmp_path)
    dest = tmp_path / "results"
    report = download_prefix(store, "nodes_output/", dest, "nodes_output/")
    assert report.ok and len(report.downloaded) == 40
    (dest / "run7" / "out.csv").write_bytes(b"half")  # as if interrupted
    (dest / "run8" / "out.csv").unlink()
    again = download_prefix(store, "nodes_output/", dest, "nodes_output/")
    assert again.downloaded == ("nodes_output/run7/out.csv", "nodes_output/run8/out.csv")
    assert len(again.skipped) == 38
    assert unverified_blobs(store, "nodes_output/", dest, "nodes_output/") == []


def test_corrupted_blob_is_detected_and_reported(store, tmp_path):
    put(store, "nodes_output/run1/a.csv", b"original bytes", tmp_path)
    # Replace the bytes behind the tool's back, keeping the stored MD5 of the original.
    [blob] = store.list_blobs("nodes_output/run1/a.csv")
    store.client.upload_blob("nodes_output/run1/a.csv", b"tampered bytes", overwrite=True)
    store.client.get_blob_client("nodes_output/run1/a.csv").set_http_headers(
        ContentSettings(content_md5=bytearray(blob.md5)))
    report = download_prefix(store, "nodes_output/", tmp_path / "d", "nodes_output/")
    assert [name for name, _ in report.failed] == ["nodes_output/run1/a.csv"]
    assert "MD5" in report.failed[0][1]
    assert not (tmp_path / "d" / "run1" / "a.csv").exists()


def test_read_sas_can_read_but_not_write(store, account, tmp_path):
    put(store, "SIM_DIR.zip", b"inputs", tmp_path)
    url = st.blob_read_url(account, store.container, "SIM_DIR.zip", st.sas_expiry(10))
    assert BlobClient.from_blob_url(url).download_blob().readall() == b"inputs"
    with pytest.raises(HttpResponseError) as refused:
        BlobClient.from_blob_url(url).upload_blob(b"evil", overwrite=True)
    assert refused.value.status_code == 403
    other = url.replace("SIM_DIR.zip", "simconfig.json")
    with pytest.raises(HttpResponseError):
        BlobClient.from_blob_url(other).download_blob().readall()


def test_read_list_sas_reads_a_prefix_and_cannot_write(store, account, tmp_path):
    put(store, "nodes_output/run1/a.csv", b"a", tmp_path)
    url = st.container_read_list_url(account, store.container, st.sas_expiry(10))
    container = ContainerClient.from_container_url(url)
    assert [b.name for b in container.list_blobs(name_starts_with="nodes_output/")] == [
        "nodes_output/run1/a.csv"]
    with pytest.raises(HttpResponseError) as refused:
        container.upload_blob("nodes_output/run1/a.csv", b"x", overwrite=True)
    assert refused.value.status_code == 403


def test_output_sas_can_write_but_not_read_or_list(store, account, tmp_path):
    put(store, "SIM_DIR.zip", b"inputs", tmp_path)
    url = st.container_write_url(account, store.container, st.sas_expiry(10))
    container = ContainerClient.from_container_url(url)
    container.upload_blob("nodes_output/run1/out.csv", b"result")
    for attempt in (lambda: container.download_blob("SIM_DIR.zip").readall(),
                    lambda: list(container.list_blobs()),
                    lambda: container.delete_blob("SIM_DIR.zip")):
        with pytest.raises(HttpResponseError) as refused:
            attempt()
        assert refused.value.status_code == 403


def test_expired_sas_is_refused(store, account, tmp_path):
    put(store, "SIM_DIR.zip", b"inputs", tmp_path)
    past = datetime.now(timezone.utc) - timedelta(hours=3)
    url = st.blob_read_url(account, store.container, "SIM_DIR.zip", past + timedelta(minutes=30), now=past)
    with pytest.raises(HttpResponseError) as refused:
        BlobClient.from_blob_url(url).download_blob().readall()
    assert refused.value.status_code == 403


def test_sas_expiry_is_the_timeout_plus_a_margin():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert st.sas_expiry(90, now) == now + timedelta(minutes=90) + st.SAS_MARGIN
    assert st.SAS_MARGIN < timedelta(hours=24)


def test_signatures_are_redacted_in_messages(account):
    url = st.container_write_url(account, "box", st.sas_expiry(10))
    signature = url.split("sig=")[1].split("&")[0]
    shown = redact(f"uploading to {url} failed", (AZURITE_KEY,))
    assert signature not in shown and "sig=***" in shown


def test_delete_removes_only_named_blobs_and_then_the_container(store, tmp_path):
    for name in ("REDUCER.zip", "simconfig.json", "nodes_output/run1/a.csv"):
        put(store, name, b"x", tmp_path)
    store.delete_blobs(["REDUCER.zip", "not-there"])
    assert sorted(b.name for b in store.list_blobs()) == ["nodes_output/run1/a.csv", "simconfig.json"]
    store.delete_container()
    assert not store.exists()


def test_wrong_key_is_refused_as_one_line_naming_the_keys(azurite):
    """The BlobStore contract: a refusal leaves as a ToolError, never the SDK's exception."""
    bad = st.StorageAccount(AZURITE_ACCOUNT, azurite.url, Secret("d3Jvbmcga2V5"))
    with pytest.raises(ToolError) as refused:
        st.AzureBlobStore(st.service_client(bad), bad, "anything").create()
    (line,) = refused.value.lines
    assert "AuthorizationFailure" in line and "STORAGE_ACCOUNT_KEY" in line
    assert "d3Jvbmcga2V5" not in line


def test_a_burst_of_busy_answers_is_retried_as_often_as_said(azurite, tmp_path, monkeypatch):
    """Storage throttles with 503 ServerBusy. The policy's own cap of 3 retries per kind
    used to end a download at the fourth 503 in a row while the log said "retry 3 of 6"."""
    from common.backends.azure.network import ReportingStorageRetry
    from tests.support.proxy import DelayProxy
    monkeypatch.setattr(ReportingStorageRetry, "get_backoff_time", lambda self, settings: 0)
    proxy = DelayProxy(azurite.url).start()
    try:
        app = AppConfig(path=Path("appconfig.json"), backend="azure", local_storage_path=Path("."),
                        storage_account_name=AZURITE_ACCOUNT, storage_account_key=Secret(AZURITE_KEY),
                        storage_account_url=proxy.url)
        account = st.account_from(app)
        said: list[str] = []
        store = st.AzureBlobStore(st.service_client(account, said.append), account,
                                  f"c{uuid.uuid4().hex[:12]}")
        store.create()
        (tmp_path / "a.txt").write_bytes(b"dose")
        upload_if_changed(store, tmp_path / "a.txt", "a.txt")
        blob = next(b for b in store.list_blobs() if b.name == "a.txt")
        proxy.fail_next = st.STORAGE_RETRIES - 1
        store.download_blob(blob, tmp_path / "back.txt")
        assert (tmp_path / "back.txt").read_bytes() == b"dose"
        assert [line.split("; ")[1] for line in said] == [
            f"retry {n} of {st.STORAGE_RETRIES}, in 0 s" for n in range(1, st.STORAGE_RETRIES)]
    finally:
        proxy.stop()
