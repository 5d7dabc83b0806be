"""The little of the Blob REST API a Batch node uses, over plain HTTP with SAS URLs.

A node downloads resource files (GET a blob; List Blobs on a container, then GET each) and
uploads output files (Put Blob, BlockBlob). It holds no account key: the SAS in each URL is
all the authority it has, exactly as on a real node, so Azurite enforces the permissions the
client granted (a read-only SAS cannot upload; a write-only one cannot list).
"""
from __future__ import annotations

import http.client
import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

# Used when the SAS does not say (`sv`); Azurite runs with --skipApiVersionCheck anyway.
DEFAULT_STORAGE_VERSION = "2021-08-06"
TIMEOUT = 60.0


class BlobError(Exception):
    """A storage request failed: `status` is None when no HTTP answer came back."""

    def __init__(self, status: int | None, message: str, url: str) -> None:
        super().__init__(f"{status or 'no answer'} {message} ({url})")
        self.status = status
        self.message = message
        self.url = url


@dataclass(frozen=True)
class SasUrl:
    """A blob or container URL split into where it points and its SAS query."""

    scheme: str
    host: str
    port: int | None
    path: str  # as given (already percent-encoded)
    query: str

    @classmethod
    def parse(cls, url: str) -> "SasUrl":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BlobError(None, "not an http(s) URL", url)
        return cls(parts.scheme, parts.hostname, parts.port, parts.path or "/", parts.query)

    @property
    def public(self) -> str:
        """The URL without its SAS: safe to log and report."""
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{self.host}{port}{self.path}"

    @property
    def version(self) -> str:
        return parse_qs(self.query).get("sv", [DEFAULT_STORAGE_VERSION])[0]

    def child(self, blob_name: str) -> "SasUrl":
        """The URL of a blob inside this container (the SAS carries over)."""
        path = self.path.rstrip("/") + "/" + quote(blob_name, safe="/~")
        return SasUrl(self.scheme, self.host, self.port, path, self.query)

    def target(self, extra: dict[str, str] | None = None) -> str:
        query = "&".join(q for q in (urlencode(extra) if extra else "", self.query) if q)
        return self.path + (f"?{query}" if query else "")

    def connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=TIMEOUT)


def _request(url: SasUrl, method: str, target: str, headers: dict[str, str], body=None):
    connection = url.connect()
    try:
        connection.request(method, target, body=body,
                           headers={"x-ms-version": url.version, **headers})
        response = connection.getresponse()
        return connection, response
    except OSError as exc:
        connection.close()
        raise BlobError(None, f"{type(exc).__name__}: {exc}", url.public) from None


def _error_text(response: http.client.HTTPResponse) -> str:
    data = response.read(4096).decode("utf-8", "replace")
    try:
        code = ET.fromstring(data).findtext("Code") or ""
    except ET.ParseError:
        code = ""
    return f"{response.reason} {code}".strip()


TRANSIENT = {500, 503}
ATTEMPTS = 5


def _retrying(action):
    """Like the Batch node agent, retry storage's transient answers (500, 503, a dropped
    connection) a few times with a growing pause; anything else fails at once."""
    def wrapper(*args, **kwargs):
        for attempt in range(ATTEMPTS):
            try:
                return action(*args, **kwargs)
            except BlobError as error:
                if (error.status is not None and error.status not in TRANSIENT) or attempt == ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2 ** attempt)
    return wrapper


@_retrying
def download(url: str, destination: Path) -> int:
    """GET one blob into `destination` (parents created). Returns the byte count."""
    sas = SasUrl.parse(url)
    connection, response = _request(sas, "GET", sas.target(), {})
    try:
        if response.status != 200:
            raise BlobError(response.status, _error_text(response), sas.public)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with destination.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        return destination.stat().st_size
    finally:
        connection.close()


@_retrying
def list_blobs(container_url: str, prefix: str | None) -> list[str]:
    """Names of the blobs in a container (List Blobs, following NextMarker)."""
    sas = SasUrl.parse(container_url)
    names: list[str] = []
    marker = ""
    while True:
        extra = {"restype": "container", "comp": "list"}
        if prefix:
            extra["prefix"] = prefix
        if marker:
            extra["marker"] = marker
        connection, response = _request(sas, "GET", sas.target(extra), {})
        try:
            if response.status != 200:
                raise BlobError(response.status, _error_text(response), sas.public)
            root = ET.fromstring(response.read())
        finally:
            connection.close()
        names += [blob.findtext("Name") or "" for blob in root.iter("Blob")]
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return names


@_retrying
def upload(container_url: str, blob_name: str, source: Path,
           headers: dict[str, str] | None = None) -> str:
    """Put Blob (BlockBlob) of one file; returns the blob URL without the SAS."""
    sas = SasUrl.parse(container_url).child(blob_name)
    size = source.stat().st_size
    with source.open("rb") as data:
        connection, response = _request(sas, "PUT", sas.target(), {
            "x-ms-blob-type": "BlockBlob", "Content-Length": str(size),
            "Content-Type": "application/octet-stream", **(headers or {})}, body=data)
    try:
        if response.status != 201:
            raise BlobError(response.status, _error_text(response), sas.public)
        response.read()
        return sas.public
    finally:
        connection.close()
