"""appconfig.json: accounts, images, credentials — read and checked into an AppConfig."""
from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any, Mapping

from common.config.files import Problems
from common.config.model import (APP_KEYS, BACKENDS, DEFAULT_NODE_AGENT_SKU_ID,
                                 DEFAULT_POOL_IMAGE, OS_DISK_GB_RANGE, SIM_KEYS, AppConfig,
                                 PoolImage, Secret)
from common.config.reader import PLACEHOLDER, Reader
from common.geant4.data import required_problem
from common.geant4.stage import dataset_of
from common.redaction import mask_url_credentials

_STORAGE_NAME_RE = re.compile(r"^[a-z0-9]{3,24}$")
_BATCH_NAME_RE = re.compile(r"^[a-z0-9]{3,24}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(?::\d{1,5})?$")
# registry/namespace/name[:tag][@digest], lowercase repository path as Docker requires.
_IMAGE_RE = re.compile(r"^(?:[A-Za-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
                       r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?"
                       r"(?:@sha256:[a-f0-9]{64})?$")
_GIT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_IDENTITY_RE = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
                          r"Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$", re.IGNORECASE)
_IDENTITY_FIX = ("copy the identity's Resource ID from the Azure portal (Managed Identities > "
                 "Properties): /subscriptions/<id>/resourceGroups/<group>/providers/"
                 "Microsoft.ManagedIdentity/userAssignedIdentities/<name>")


def _base64_key(r: Reader, key: str, secret: Secret | None, required: bool, where_from: str) -> None:
    if secret is None:
        if required and not r.has(key):  # a value of the wrong type is reported already
            r.bad(key, "is missing", f"copy the key from {where_from}, or set the {key} "
                  "environment variable")
        return
    try:
        decoded = base64.b64decode(secret.reveal(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded and key in r.from_env:
        r.problems.add(f"environment variable {key}", None,
                       "is not a valid base64 account key (it wins over appconfig.json)",
                       f"set it to the key from {where_from}, or unset it")
    elif not decoded:
        r.bad(key, "is not a valid base64 account key (a placeholder?)",
              f"copy the key from {where_from}, or set the {key} environment variable")


def _check_url(r: Reader, key: str, url: str | None,
               fix: str = "copy the account URL from the Azure portal, e.g. "
                          "https://myaccount.westeurope.batch.azure.com") -> None:
    if url is None:
        return
    match = re.match(r"^(https?)://([^/?#]+)(/[^?#]*)?$", url)
    if not match or not _HOST_RE.match(match.group(2)):
        shown = re.sub(r"//[^/@]*@", "//***@", url)  # never echo a user:password@ part
        r.bad(key, f"{shown!r} is not an http(s) URL with a valid host name", fix)


_IMAGE_FIX = "name the Docker image, e.g. myuser/topas:4.0"


def _check_image(r: Reader, key: str, image: str | None, required: bool) -> None:
    if image is None:
        if required and not r.has(key):  # a value of the wrong type is reported already
            r.bad(key, "is missing", _IMAGE_FIX)
        return
    if not _IMAGE_RE.match(image):
        r.bad(key, f"{image!r} is not a valid Docker image name",
              "use [registry/]repository[:tag] in lowercase, e.g. myuser/topas:4.0")


def read_app(path: Path, data: Mapping[str, Any], problems: Problems,
              backend_override: str | None, env: Mapping[str, str]) -> AppConfig | None:
    r = Reader(path, data, problems)
    r.unknown_keys(APP_KEYS, SIM_KEYS, "simconfig.json")
    backend_fix = f"use one of: {', '.join(BACKENDS)} (no BACKEND means azure)"
    backend = backend_override or r.string("BACKEND", False, backend_fix)
    if backend is None and not r.has("BACKEND"):
        backend = "azure"
    elif backend is not None and backend not in BACKENDS:
        r.bad("BACKEND", f"is {backend!r}", backend_fix)
    storage_value = r.string("LOCAL_STORAGE_PATH", False, "give a folder path")
    local_storage = r.resolve_path("LOCAL_STORAGE_PATH", storage_value or ".localbatch")
    if local_storage is not None and local_storage.exists() and not local_storage.is_dir():
        r.bad("LOCAL_STORAGE_PATH", f"{storage_value!r} is a file, not a folder",
              "give a folder (it is created if missing)")
    azure = backend == "azure"
    portal = "the Azure portal"
    values = dict(
        storage_account_name=r.string("STORAGE_ACCOUNT_NAME", azure, f"copy it from {portal}"),
        storage_account_domain=_domain(r),
        storage_account_url=r.string("STORAGE_ACCOUNT_URL", False, ""),
        batch_account_name=r.string("BATCH_ACCOUNT_NAME", azure, f"copy it from {portal}"),
        batch_account_url=r.string("BATCH_ACCOUNT_URL", azure, f"copy it from {portal}"),
        worker_docker_image=r.string("WORKER_DOCKER_IMAGE", False, _IMAGE_FIX),
        reducer_docker_image=r.string("REDUCER_DOCKER_IMAGE", False, _IMAGE_FIX),
        docker_user=r.string("DOCKER_USER", False, "give the registry user name"),
        reducer_docker_user=r.string("REDUCER_DOCKER_USER", False, "give the registry user name"),
        run_as_root=r.boolean("RUN_AS_ROOT", True, "use true (tasks run as root in their "
                              "container, so images built under /root work) or false"),
        keep_image_entrypoint=r.boolean("KEEP_IMAGE_ENTRYPOINT", False, "use false (the task "
                                        "runs /bin/sh itself) or true (the image's ENTRYPOINT "
                                        "gets `/bin/sh -c ...` as its arguments)"),
        git_user=r.string("GIT_USER", False, "give the GitHub user or organisation"),
        git_repo=r.string("GIT_REPO", False, "give the repository name"),
        git_base_url=_git_base(r),
        pool_image=_pool_image(r),
        node_agent_sku_id=(r.string("NODE_AGENT_SKU_ID", False, "name the node agent, e.g. "
                                    f"{DEFAULT_NODE_AGENT_SKU_ID!r}") or DEFAULT_NODE_AGENT_SKU_ID),
        registry_identity=_registry_identity(r),
        pool_os_disk_gb=(r.integer("POOL_OS_DISK_GB", None, *OS_DISK_GB_RANGE,
                                   f"give the nodes' OS disk size in GB, {OS_DISK_GB_RANGE[0]}-"
                                   f"{OS_DISK_GB_RANGE[1]} (Docker keeps the images there)")
                         if r.has("POOL_OS_DISK_GB") else None),
        storage_account_key=r.secret("STORAGE_ACCOUNT_KEY", env),
        batch_account_key=r.secret("BATCH_ACCOUNT_KEY", env),
        docker_token=r.secret("DOCKER_TOKEN", env),
        reducer_docker_token=r.secret("REDUCER_DOCKER_TOKEN", env),
        git_token=r.secret("GIT_TOKEN", env),
    )
    values.update(_geant4(r, values, backend))
    if values["keep_image_entrypoint"] and _is_opentopas(values["worker_docker_image"]):
        r.bad("KEEP_IMAGE_ENTRYPOINT", "is true, but the official OpenTOPAS image's entrypoint "
              "runs `topas` on its arguments: it would take the task's shell command for a "
              "parameter file", "set it to false (the default): the task runs /bin/sh itself")
    if azure:
        _check_azure(r, values)
    # Given = present in the file (even with a wrong type, reported already) or — where a
    # registry is used at all (Azure) — the environment: a DOCKER_TOKEN exported for other
    # work says nothing about a local campaign.
    for user, token, key in (("DOCKER_USER", "DOCKER_TOKEN", "docker_token"),
                             ("REDUCER_DOCKER_USER", "REDUCER_DOCKER_TOKEN", "reducer_docker_token")):
        user_given = r.has(user) and not PLACEHOLDER.search(str(r.data.get(user)))  # said already
        token_given = values[key] is not None or r.has(token)
        if not azure and not user_given and token in r.from_env and not r.has(token):
            continue
        if user_given != token_given:
            r.bad(token if user_given else user, "is missing while its pair is given",
                  f"give both {user} and {token} for a private registry (the token may come "
                  f"from the {token} environment variable), or neither")
    for key in ("git_user", "git_repo"):
        name = values[key]
        if name is not None and (not _GIT_NAME_RE.match(name) or name in (".", "..")):
            r.bad(key.upper(), f"{name!r} is not a GitHub name",
                  "use letters, digits, '.', '-' or '_' (not '.' or '..' alone)")
    if backend not in BACKENDS or local_storage is None:
        return None
    return AppConfig(path=path, backend=backend, local_storage_path=local_storage, **values)


def _registry_identity(r: Reader) -> str | None:
    value = r.string("REGISTRY_IDENTITY", False, _IDENTITY_FIX)
    if value is not None and not _IDENTITY_RE.match(value):
        r.bad("REGISTRY_IDENTITY", f"{value!r} is not a user-assigned managed identity's "
              "resource ID", _IDENTITY_FIX)
        return None
    return value


def _is_opentopas(image: str | None) -> bool:
    """The official image (docker.io/)opentopas/opentopas:<tag>, whose ENTRYPOINT is topas."""
    return bool(image) and re.sub(r"^(docker\.io/)?", "", image or "").startswith("opentopas/opentopas")


def _geant4(r: Reader, values: dict[str, Any], backend: str | None) -> dict[str, Any]:
    """GEANT4_DATA_DIR (a local folder of data sets) or GEANT4_DATA_URL (in the storage
    account); the data sets themselves are checked when a campaign starts (common/geant4/data.py)."""
    folder_value = r.string("GEANT4_DATA_DIR", False, "give the folder holding the Geant4 "
                            "data sets (G4EMLOW..., G4ENSDFSTATE..., ...)")
    url = r.string("GEANT4_DATA_URL", False, "give the blob URL of the folder holding the data "
                   "sets, e.g. https://myaccount.blob.core.windows.net/geant4/11.3")
    folder = r.resolve_path("GEANT4_DATA_DIR", folder_value) if folder_value else None
    if folder is not None and not folder.is_dir():
        r.bad("GEANT4_DATA_DIR", f"{folder_value!r} is not a folder",
              "give the folder holding the Geant4 data sets (relative to this file, or absolute)")
        folder = None
    if folder is not None:
        names = tuple(k[0] for k in (dataset_of(p.name) for p in folder.iterdir() if p.is_dir()) if k)
        problem = required_problem(names, repr(folder_value))
        if problem:
            r.bad("GEANT4_DATA_DIR", problem, "download the data sets of your Geant4 version "
                  "(geant4-config --install-datasets, or Geant4's download page) into it")
    if folder_value and url:
        r.bad("GEANT4_DATA_URL", "is given together with GEANT4_DATA_DIR",
              "keep one: GEANT4_DATA_DIR uploads a folder once, GEANT4_DATA_URL uses data "
              "already in the storage account")
    if url and backend == "local":
        r.bad("GEANT4_DATA_URL", "needs the azure backend (the local backend has no storage "
              "account)", "use GEANT4_DATA_DIR with the folder on this machine")
    if url and ("?" in url or "#" in url):
        r.bad("GEANT4_DATA_URL", "holds a query string (a SAS?)",
              "give the URL without '?...': the tool signs its own read-only SAS for the nodes")
    elif url and not re.match(r"^https?://[^/?#]+/[^?#]+$", url):
        r.bad("GEANT4_DATA_URL", f"{url!r} is not a blob URL of a container (and folder)",
              "give e.g. https://myaccount.blob.core.windows.net/geant4/11.3")
    return {"geant4_data_dir": folder, "geant4_data_url": url.rstrip("/") if url else None}


def _pool_image(r: Reader) -> PoolImage:
    value = r.data.get("POOL_IMAGE")
    if value is None:
        return DEFAULT_POOL_IMAGE
    fix = ('give {"publisher": ..., "offer": ..., "sku": ..., "version": "latest"}, e.g. '
           '{"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404"}')
    parts = ("publisher", "offer", "sku", "version")
    if not isinstance(value, dict) or set(value) - set(parts):
        r.bad("POOL_IMAGE", f"must be an object with keys {', '.join(parts)}", fix)
        return DEFAULT_POOL_IMAGE
    fields = {k: value.get(k, "latest" if k == "version" else None) for k in parts}
    bad = [k for k, v in fields.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        r.bad("POOL_IMAGE", f"{', '.join(bad)} missing or not a string", fix)
        return DEFAULT_POOL_IMAGE
    return PoolImage(**{k: v.strip() for k, v in fields.items()})


def _git_base(r: Reader) -> str:
    base = r.string("GIT_BASE_URL", False, "use e.g. https://github.com") or "https://github.com"
    if not re.match(r"^(https?|file|ssh)://", base):
        shown = mask_url_credentials(base)  # never echo a user:password@ part
        r.bad("GIT_BASE_URL", f"{shown!r} is not a URL", "use e.g. https://github.com or "
              "https://gitlab.example.org (the repository URL is <base>/<GIT_USER>/<GIT_REPO>.git)")
    return base


def _domain(r: Reader) -> str:
    domain = (r.string("STORAGE_ACCOUNT_DOMAIN", False, "use core.windows.net")
              or "core.windows.net")
    # The original scripts' examples wrote both forms; the blob endpoint is built from the base.
    domain = domain.lower().strip(".")
    if domain.startswith("blob."):
        domain = domain[len("blob."):]
    if not _HOST_RE.match(domain):
        r.bad("STORAGE_ACCOUNT_DOMAIN", f"{domain!r} is not a domain name",
              "use core.windows.net (or blob.core.windows.net)")
    return domain


def _check_azure(r: Reader, values: dict[str, Any]) -> None:
    name = values["storage_account_name"]
    if name is not None and not _STORAGE_NAME_RE.match(name):
        r.bad("STORAGE_ACCOUNT_NAME", f"{name!r} is not a storage account name",
              "use the account's name: 3-24 lowercase letters and digits")
    batch_name = values["batch_account_name"]
    if batch_name is not None and not _BATCH_NAME_RE.match(batch_name):
        r.bad("BATCH_ACCOUNT_NAME", f"{batch_name!r} is not a Batch account name",
              "use the account's name: 3-24 lowercase letters and digits")
    _base64_key(r, "STORAGE_ACCOUNT_KEY", values["storage_account_key"], False,
                "the Azure portal (Storage account > Access keys)")
    _base64_key(r, "BATCH_ACCOUNT_KEY", values["batch_account_key"], False,
                "the Azure portal (Batch account > Keys)")
    _check_url(r, "BATCH_ACCOUNT_URL", values["batch_account_url"])
    _check_url(r, "STORAGE_ACCOUNT_URL", values["storage_account_url"],
               "give the blob endpoint, e.g. https://myaccount.blob.core.windows.net, or remove "
               "the key to build it from STORAGE_ACCOUNT_NAME and STORAGE_ACCOUNT_DOMAIN")
    for url_key, key in (("STORAGE_ACCOUNT_URL", "storage_account_key"),
                         ("BATCH_ACCOUNT_URL", "batch_account_key")):
        url = values[url_key.lower()]
        if values[key] is None and isinstance(url, str) and url.lower().startswith("http://"):
            r.bad(url_key, f"is http://, but without {key.upper()} the tool signs in with "
                  "Entra ID, whose tokens are sent over https only",
                  f"use the https:// endpoint, or set {key.upper()}")
    _check_image(r, "WORKER_DOCKER_IMAGE", values["worker_docker_image"], True)
    _check_image(r, "REDUCER_DOCKER_IMAGE", values["reducer_docker_image"], True)
