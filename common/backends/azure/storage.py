"""Azure Blob Storage for a campaign: one client per run, the container, least-privilege SAS.

`AzureBlobStore` honours the same BlobStore contract as the local folder store, so the
workflow's uploads, verified downloads and deletion guard (common/transfer.py) work the
same on both. Retries are azure-storage-blob's own ExponentialRetry policy; large blobs
move in parallel 8 MB blocks. SAS tokens are built with the SDK, each granting only what
its user needs, and expire with the campaign (its timeout plus a margin). Without an account
key (many institutions disable shared keys) the client signs in with Entra ID and the SAS
tokens are user-delegation SAS, signed with a key the service lends to that identity.
"""
from __future__ import annotations

import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import quote

import requests
from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ResourceExistsError,
                                   ResourceNotFoundError, ServiceRequestError, ServiceResponseError)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import (BlobSasPermissions, BlobServiceClient, ContainerSasPermissions,
                                ContentSettings, UserDelegationKey,
                                generate_blob_sas, generate_container_sas)

from common.backends.base import BlobStore
from common.config import AppConfig, Secret
from common.config.model import CLOCK_SKEW_MINUTES, DELEGATION_KEY_MAX_MINUTES, SAS_MARGIN_MINUTES
from common.errors import ToolError
from common.model import BlobInfo
from common.redaction import redact
from common.backends.azure.network import (ReportingStorageRetry, RequestLog, network_failure,
                                          retry_scale)

STORAGE_RETRIES = 6  # per request, for a 503 or a cut read (a connection not made: 3)
BLOCK_SIZE = 8 * 1024 * 1024
TRANSFER_CONCURRENCY = 8
CONNECTIONS = 48  # room for 32 parallel blob downloads (common/transfer.py) and then some
SAS_MARGIN = timedelta(minutes=SAS_MARGIN_MINUTES)  # start-up, uploads, the reducer after the tasks
CLOCK_SKEW = timedelta(minutes=CLOCK_SKEW_MINUTES)


@dataclass(frozen=True)
class StorageAccount:
    name: str
    url: str  # the blob endpoint, without a trailing slash
    key: Secret | None  # None: Entra ID sign-in and user-delegation SAS
    authority: str | None = None  # where an Entra ID sign-in goes (the Batch account's cloud)
    url_given: bool = False  # from STORAGE_ACCOUNT_URL (else made from the name), for messages

    def container_url(self, container: str) -> str:
        return f"{self.url}/{container}"

    def blob_url(self, container: str, blob: str) -> str:
        return f"{self.url}/{container}/{quote(blob)}"


def account_from(app: AppConfig) -> StorageAccount:
    """STORAGE_ACCOUNT_URL wins (Azurite, sovereign clouds); otherwise name + domain."""
    if app.storage_account_name is None:
        raise ValueError("the storage account name is required")
    url = app.storage_account_url or f"https://{app.storage_account_name}.blob.{app.storage_account_domain}"
    from common.backends.azure.entra import cloud_of
    return StorageAccount(app.storage_account_name, url.rstrip("/"), app.storage_account_key,
                          cloud_of(app.batch_account_url).authority, bool(app.storage_account_url))


def service_client(account: StorageAccount, say: Callable[[str], None] | None = None,
                   log: RequestLog | None = None) -> BlobServiceClient:
    """The one client of a script run: key or Entra ID auth, SDK retries (each said through
    `say`), requests logged with -v (`log`), parallel-ready transport."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=CONNECTIONS, pool_maxsize=CONNECTIONS)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return BlobServiceClient(
        account.url,
        credential=_credential(account),
        retry_policy=ReportingStorageRetry(say, scale=retry_scale(), initial_backoff=1,
                                           increment_base=2, retry_total=STORAGE_RETRIES),
        **(log.hooks() if log else {}),
        transport=RequestsTransport(session=session, session_owner=True),
        max_single_put_size=BLOCK_SIZE, max_block_size=BLOCK_SIZE,
        max_single_get_size=BLOCK_SIZE, max_chunk_get_size=BLOCK_SIZE)


def _credential(account: StorageAccount) -> Any:
    if account.key is not None:
        return {"account_name": account.name, "account_key": account.key.reveal()}
    from common.backends.azure.entra import entra_credential
    return entra_credential(account.authority or "")


F = TypeVar("F", bound=Callable[..., Any])


def storage_error(account: StorageAccount, what: str, error: Exception) -> ToolError:
    """An SDK error as the one line a user can act on (as the Batch calls do): where, what
    was being done, the service's own words and the key to check."""
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        key = "STORAGE_ACCOUNT_URL" if account.url_given else "STORAGE_ACCOUNT_NAME"
        return network_failure(error, {key: account.url}, tried=what)
    status = getattr(error, "status_code", None)
    code = getattr(error, "error_code", None)
    code = getattr(code, "value", code) or (f"HTTP {status}" if status else type(error).__name__)
    words = _first_line(getattr(error, "message", None) or str(error))
    if isinstance(error, ClientAuthenticationError) and status is None:
        return ToolError(f"storage account {account.name}: {what}: could not sign in with Entra "
                         f"ID ({words}): sign in with `az login`, use a managed identity, or set "
                         "STORAGE_ACCOUNT_KEY")
    if status in (401, 403):
        fix = ("check STORAGE_ACCOUNT_NAME and STORAGE_ACCOUNT_KEY" if account.key is not None else
               "the signed-in identity needs the 'Storage Blob Data Contributor' role on the "
               "account, or set STORAGE_ACCOUNT_KEY")
        return ToolError(f"storage account {account.name}: {what}: refused ({code}: {words}): {fix}")
    return ToolError(f"storage account {account.name}: {what}: {code}: {words}")


def _first_line(text: str) -> str:
    return redact((text.strip().splitlines() or [""])[0])[:200]


def _translated(what: str) -> Callable[[F], F]:
    """Every failure of a blob store method leaves it as a ToolError (the BlobStore contract)."""
    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: "AzureBlobStore", *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except (HttpResponseError, ServiceRequestError, ServiceResponseError) as error:
                raise storage_error(self.account, f"{what} ({self.container})", error) from None
        return wrapper  # type: ignore[return-value]
    return decorate


class AzureBlobStore(BlobStore):
    def __init__(self, service: BlobServiceClient, account: StorageAccount, container: str) -> None:
        self.account = account
        self.container = container
        self.client = service.get_container_client(container)

    @property
    def location(self) -> str:
        return self.account.container_url(self.container)

    @_translated("looking for the container")
    def exists(self) -> bool:
        return self.client.exists()

    @_translated("creating the container")
    def create(self) -> bool:
        try:
            self.client.create_container()
        except ResourceExistsError:
            return False
        return True

    @_translated("listing blobs")
    def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        try:
            return [BlobInfo(b.name, b.size, _md5(b.content_settings.content_md5))
                    for b in self.client.list_blobs(name_starts_with=prefix or None)]
        except ResourceNotFoundError:  # no container: nothing in it (the contract)
            return []

    @_translated("uploading")
    def upload_file(self, source, blob: str, md5: bytes) -> None:  # source: BinaryIO, as in base.py
        # Block-list uploads get no service-side MD5: set it, so downloads can be verified.
        start = source.tell()
        length = source.seek(0, 2) - start  # 2: from the end
        source.seek(start)
        self.client.upload_blob(blob, source, length=length, overwrite=True,
                                max_concurrency=TRANSFER_CONCURRENCY,
                                content_settings=ContentSettings(content_md5=bytearray(md5)))

    @_translated("downloading")
    def download_blob(self, blob: BlobInfo, dest: Path) -> bytes | None:
        if blob.size <= BLOCK_SIZE:  # one request: hash in memory, no second read of the file
            data = self.client.download_blob(blob.name).readall()
            dest.write_bytes(data)
            return hashlib.md5(data, usedforsecurity=False).digest()
        with dest.open("wb") as handle:
            self.client.download_blob(blob.name, max_concurrency=TRANSFER_CONCURRENCY).readinto(handle)
        return None

    @_translated("reading a log")
    def read_tail(self, blob: str, max_bytes: int = 4096) -> str:
        client = self.client.get_blob_client(blob)
        try:
            size = client.get_blob_properties().size
            start = max(0, size - max_bytes)
            data = client.download_blob(offset=start, length=size - start).readall() if size else b""
        except ResourceNotFoundError:
            return ""
        return data.decode("utf-8", errors="replace")

    @_translated("deleting blobs")
    def delete_blobs(self, names: Iterable[str]) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self._delete_one, names))

    def _delete_one(self, name: str) -> None:
        try:
            self.client.delete_blob(name)
        except ResourceNotFoundError:
            pass

    @_translated("deleting the container")
    def delete_container(self) -> None:
        try:
            self.client.delete_container()
        except ResourceNotFoundError:
            pass


def _md5(value: bytes | bytearray | None) -> bytes | None:
    return bytes(value) if value else None


# ---------------------------------------------------------------------------- SAS


def sas_expiry(timeout_minutes: float, now: datetime | None = None) -> datetime:
    """The campaign's timeout plus a margin: long enough for the campaign, no longer."""
    now = now or datetime.now(timezone.utc)
    return now + timedelta(minutes=timeout_minutes) + SAS_MARGIN


def _start(now: datetime | None) -> datetime:
    return (now or datetime.now(timezone.utc)) - CLOCK_SKEW


# Signs what --dry-run shows (never sent, signatures hidden) when there is no account key.
PLACEHOLDER_KEY = Secret("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
# A user delegation key lives at most 7 days (the service's limit).
MAX_DELEGATION = timedelta(minutes=DELEGATION_KEY_MAX_MINUTES)


@dataclass(frozen=True)
class SigningKey:
    """What signs SAS tokens: the account key, or a user delegation key lent to an identity."""

    account_key: Secret | None = None
    delegation: UserDelegationKey | None = None
    expires: datetime | None = None  # the delegation key's end: no SAS it signs may outlive it

    def arguments(self) -> dict[str, Any]:
        if self.account_key is not None:
            return {"account_key": self.account_key.reveal()}
        return {"user_delegation_key": self.delegation}

    def check(self, expiry: datetime) -> None:
        """A SAS signed with an expired delegation key is invalid, so none may outlive it
        (the configuration refuses such timeouts: reaching this is a bug, said plainly)."""
        if self.expires is not None and expiry > self.expires:
            raise ToolError(f"SAS URLs would expire at {expiry:%Y-%m-%d %H:%M} UTC, after the user "
                            f"delegation key that signs them ({self.expires:%Y-%m-%d %H:%M} UTC): "
                            "lower TIMEOUT_MINUTES or set STORAGE_ACCOUNT_KEY")


def signing_key(service: BlobServiceClient, account: StorageAccount, expiry: datetime,
                now: datetime | None = None) -> SigningKey:
    """The account key when there is one; else a user delegation key valid until `expiry`
    (one request, made with the Entra ID identity the client signed in with)."""
    if account.key is not None:
        return SigningKey(account_key=account.key)
    start = _start(now)
    ends = min(expiry, start + MAX_DELEGATION)
    try:
        key = service.get_user_delegation_key(start, ends)
    except (HttpResponseError, ServiceRequestError, ServiceResponseError) as error:
        raise storage_error(account, "asking for a user delegation key (to sign SAS URLs)",
                            error) from None
    return SigningKey(delegation=key, expires=ends)


def _signed(account: StorageAccount, signing: SigningKey | None, expiry: datetime) -> dict[str, Any]:
    if signing is None:
        if account.key is None:
            raise ValueError("no account key: pass the SigningKey from signing_key()")
        signing = SigningKey(account_key=account.key)
    signing.check(expiry)
    return signing.arguments()


def blob_read_url(account: StorageAccount, container: str, blob: str, expiry: datetime,
                  now: datetime | None = None, signing: SigningKey | None = None) -> str:
    """A URL that can read this one blob and nothing else (resource files)."""
    token = generate_blob_sas(account.name, container, blob, **_signed(account, signing, expiry),
                              permission=BlobSasPermissions(read=True), expiry=expiry,
                              start=_start(now))
    return f"{account.blob_url(container, blob)}?{token}"


def container_read_list_url(account: StorageAccount, container: str, expiry: datetime,
                            now: datetime | None = None, signing: SigningKey | None = None) -> str:
    """Read + list over the container: for a resource file with a blob prefix (the reducer)."""
    token = generate_container_sas(account.name, container, **_signed(account, signing, expiry),
                                   permission=ContainerSasPermissions(read=True, list=True),
                                   expiry=expiry, start=_start(now))
    return f"{account.container_url(container)}?{token}"


def container_write_url(account: StorageAccount, container: str, expiry: datetime,
                        now: datetime | None = None, signing: SigningKey | None = None) -> str:
    """Write only: what Batch output files need to create blobs; cannot read, list or delete."""
    token = generate_container_sas(account.name, container, **_signed(account, signing, expiry),
                                   permission=ContainerSasPermissions(write=True), expiry=expiry,
                                   start=_start(now))
    return f"{account.container_url(container)}?{token}"
