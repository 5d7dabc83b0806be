"""What every node pulls, seen before a pool exists: how each image's registry is signed in
to, what that means at scale, and — when the registry tells — how big the image is.

Every node pulls the pool's images once. Docker Hub limits pulls: 10 an hour per IPv4
address (or IPv6 /64) without an account, 100 an hour for a Personal account; paid plans
are unlimited (Docker, "Docker Hub pull usage and limits", 2025). Nodes behind one address
(a NAT gateway, a virtual network) share the anonymous limit; the nodes past it fail their
pulls with "toomanyrequests". On microsoft-dsvm/ubuntu-hpc Docker keeps its images on the
OS disk, so the image's size is what the disk must hold (more, once unpacked).

`pull_notes` is pure. `image_size` asks the registry's HTTP API v2 for the image manifest
(a manifest GET counts as one pull on Docker Hub); offline, or when the registry will not
say, the size is unknown and the reason is given — never a guess.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import requests

from common.backends.azure.builders import DOCKER_HUB, Registry, full_image_name, registry_server

DOCKER_HUB_ANONYMOUS_PULLS_PER_HOUR = 10  # per IPv4 address or IPv6 /64 subnet
DOCKER_HUB_PERSONAL_PULLS_PER_HOUR = 100  # per authenticated Personal account
LOOKUP_SECONDS = 5.0
_MANIFESTS = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json"))
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def sign_in_text(registry: Registry | None) -> str:
    if registry is None:
        return "anonymous"
    if registry.identity:
        return f"managed identity {registry.identity.rsplit('/', 1)[-1]} (REGISTRY_IDENTITY)"
    return f"user {registry.username}"


def pull_notes(image: str, registry: Registry | None, nodes: int) -> list[str]:
    """Warnings for `nodes` nodes each pulling `image` once."""
    if registry_server(full_image_name(image)) != DOCKER_HUB:
        return []
    way = ("a registry in the pool's region (Azure Container Registry, named in full, e.g. "
           "myregistry.azurecr.io/topas:4.0, with DOCKER_USER/DOCKER_TOKEN or REGISTRY_IDENTITY)")
    if registry is None and nodes > DOCKER_HUB_ANONYMOUS_PULLS_PER_HOUR:
        return [f"warning: {nodes} nodes pull {full_image_name(image)} from Docker Hub anonymously; "
                f"Docker Hub allows {DOCKER_HUB_ANONYMOUS_PULLS_PER_HOUR} anonymous pulls an hour "
                "per IP address, and nodes that share an address (a NAT gateway, a virtual "
                "network) fail past it with 'toomanyrequests': use " + way +
                ", or Docker Hub credentials"]
    if registry is not None and nodes > DOCKER_HUB_PERSONAL_PULLS_PER_HOUR:
        return [f"warning: {nodes} nodes pull {full_image_name(image)} from Docker Hub as "
                f"{registry.username}; a Personal Docker account allows "
                f"{DOCKER_HUB_PERSONAL_PULLS_PER_HOUR} pulls an hour (paid plans: no limit): "
                "use " + way + ", or a paid Docker plan"]
    return []


@dataclass(frozen=True)
class ImageSize:
    compressed: int | None  # bytes of the layers and config as the registry stores them
    why_unknown: str = ""


def _split(image: str) -> tuple[str, str, str]:
    """(host to ask, repository, tag or digest) of an image name."""
    full = full_image_name(image)
    server, _, rest = full.partition("/")
    if "@" in rest:
        repository, _, reference = rest.partition("@")
    else:
        head, _, tail = rest.rpartition("/")
        name, _, tag = tail.partition(":")
        repository, reference = (f"{head}/{name}" if head else name), tag or "latest"
    host = "registry-1.docker.io" if server == DOCKER_HUB else server
    return host, repository, reference


def _scheme(host: str) -> str:
    # Docker talks plain HTTP only to registries on this machine; everything else is HTTPS.
    return "http" if host.split(":")[0] in ("localhost", "127.0.0.1", "::1") else "https"


class _Session:
    """Registry requests with the token dance of the distribution spec (Bearer challenges)."""

    def __init__(self, registry: Registry | None) -> None:
        self.http = requests.Session()
        self.basic = (registry.username, registry.password.reveal()) \
            if registry and registry.password is not None else None
        self.token: str | None = None

    def get(self, url: str) -> requests.Response:
        answer = self._send(url)
        if answer.status_code == 401 and self.token is None:
            self.token = self._token(answer.headers.get("WWW-Authenticate", ""))
            if self.token is not None:
                answer = self._send(url)
        return answer

    def _send(self, url: str) -> requests.Response:
        headers = {"Accept": _MANIFESTS}
        auth = None
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.basic:
            auth = self.basic
        return self.http.get(url, headers=headers, auth=auth, timeout=LOOKUP_SECONDS)

    def _token(self, challenge: str) -> str | None:
        if not challenge.lower().startswith("bearer "):
            return None
        fields = dict(_CHALLENGE.findall(challenge))
        realm = fields.pop("realm", None)
        if not realm:
            return None
        answer = self.http.get(realm, params=fields, auth=self.basic, timeout=LOOKUP_SECONDS)
        if answer.status_code != 200:
            return None
        body = answer.json()
        return body.get("token") or body.get("access_token")


def image_size(image: str, registry: Registry | None) -> ImageSize:
    """The image's compressed size for linux/amd64, from its manifest; unknown, with the
    reason, when the registry cannot be reached or will not say."""
    if registry is not None and registry.identity:
        return ImageSize(None, "only the pool's managed identity may read this registry")
    host, repository, reference = _split(image)
    base = f"{_scheme(host)}://{host}/v2/{repository}/manifests/"
    session = _Session(registry)
    try:
        answer = session.get(base + reference)
        manifest = answer.json() if answer.status_code == 200 else None
        if manifest is None:
            return ImageSize(None, f"the registry answered HTTP {answer.status_code}")
        if "manifests" in manifest:  # an index of platforms: the nodes are linux/amd64
            chosen = next((m for m in manifest["manifests"]
                           if (m.get("platform") or {}).get("os") == "linux"
                           and (m.get("platform") or {}).get("architecture") == "amd64"), None)
            if chosen is None:
                return ImageSize(None, "the image has no linux/amd64 variant")
            answer = session.get(base + chosen["digest"])
            if answer.status_code != 200:
                return ImageSize(None, f"the registry answered HTTP {answer.status_code}")
            manifest = answer.json()
        parts = [manifest.get("config") or {}] + list(manifest.get("layers") or [])
        return ImageSize(sum(int(p.get("size") or 0) for p in parts))
    except requests.RequestException as error:
        first = (str(error).splitlines() or [""])[0][:120]
        return ImageSize(None, f"the registry {host} cannot be reached ({type(error).__name__}: "
                               f"{first})")
    except (ValueError, TypeError, KeyError, AttributeError):
        return ImageSize(None, "the registry's answer is not an image manifest")
    finally:
        session.http.close()


def size_text(size: ImageSize) -> str:
    if size.compressed is None:
        return f"size unknown ({size.why_unknown})"
    return f"{size.compressed / 1e9:.2f} GB compressed (more once unpacked on the OS disk)"


def images_text(images: list[tuple[str, Registry | None]], nodes: int,
                os_disk_gb: int | None) -> str:
    """The --dry-run section: each image, how its registry is signed in to, its size, and
    the warnings for this many nodes."""
    lines = []
    for image, registry in images:
        lines.append(f"{full_image_name(image)}: {registry_server(full_image_name(image))}, "
                     f"{sign_in_text(registry)}; {size_text(image_size(image, registry))}")
        lines += pull_notes(image, registry, nodes)
    disk = f"{os_disk_gb} GB (POOL_OS_DISK_GB)" if os_disk_gb else \
        "the VM image's default size (POOL_OS_DISK_GB to change it)"
    lines.append(f"each of the {nodes} node(s) pulls these once; Docker keeps them on the OS disk: {disk}")
    return "\n".join(lines)
