"""appconfig.json + simconfig.json -> one frozen, validated Settings, before any effect.

Every problem found is collected, so a user fixes a config in one go: each becomes one line
`<file>: <KEY>: <what is wrong>: <how to fix it>` and the script exits 2. Secrets are held in
`Secret`, whose str() and repr() never show the value; environment variables of the same
name win over the file.
"""
from __future__ import annotations

import base64
import binascii
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common.config_files import Problems as _Problems
from common.config_goals import GOAL_KEYS, Goals, read_goals
from common.config_files import display as _display
from common.config_files import read_json_object as _read_json_object
from common.redaction import mask_url_credentials

BACKENDS = ("local", "azure")
BUILTIN_TOPAS = "builtin:topas"
SECRET_KEYS = ("STORAGE_ACCOUNT_KEY", "BATCH_ACCOUNT_KEY", "DOCKER_TOKEN", "REDUCER_DOCKER_TOKEN",
               "GIT_TOKEN")

APP_KEYS = (
    "BACKEND", "LOCAL_STORAGE_PATH",
    "STORAGE_ACCOUNT_NAME", "STORAGE_ACCOUNT_KEY", "STORAGE_ACCOUNT_DOMAIN", "STORAGE_ACCOUNT_URL",
    "BATCH_ACCOUNT_NAME", "BATCH_ACCOUNT_KEY", "BATCH_ACCOUNT_URL",
    "WORKER_DOCKER_IMAGE", "REDUCER_DOCKER_IMAGE", "DOCKER_USER", "DOCKER_TOKEN",
    "REDUCER_DOCKER_USER", "REDUCER_DOCKER_TOKEN", "RUN_AS_ROOT", "KEEP_IMAGE_ENTRYPOINT",
    "GIT_USER", "GIT_REPO", "GIT_TOKEN", "GIT_BASE_URL", "POOL_IMAGE", "NODE_AGENT_SKU_ID",
)
SIM_KEYS = (
    "SIM_ID", "POOL_NODE_COUNT", "TASK_COUNT", "STARTING_NODE", "POOL_VM_SIZE",
    "LOCAL_SIM_PATH", "RUN_SCRIPT", "REDUCER_SCRIPT", "REDUCER_PATH",
    "OUTPUT_FILE_PATTERNS", "TIMEOUT_MINUTES", "LOCAL_RESULTS_PATH",
    "TASK_SLOTS_PER_NODE", "MAX_TASK_RETRIES", "SEED_PARAMETER_FILES", "AUTO_DELETE_POOL",
) + GOAL_KEYS

# Longest suffix the tool adds to SIM_ID for a Batch id: "-workers-YYYYmmddHHMMSS".
ID_SUFFIX_LEN = len("-reducer-20260101120000")
MAX_BATCH_ID = 64
MAX_SIM_ID = MAX_BATCH_ID - ID_SUFFIX_LEN
MAX_NODES = 2000
MAX_TASKS = 100_000
MAX_TIMEOUT_MINUTES = 7 * 24 * 60
DEFAULT_TIMEOUT_MINUTES = 60.0

_SIM_ID_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?!-))*[A-Za-z0-9]$")
_STORAGE_NAME_RE = re.compile(r"^[a-z0-9]{3,24}$")
_BATCH_NAME_RE = re.compile(r"^[a-z0-9]{3,24}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*(?::\d{1,5})?$")
# registry/namespace/name[:tag][@digest], lowercase repository path as Docker requires.
_IMAGE_RE = re.compile(r"^(?:[A-Za-z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
                       r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?"
                       r"(?:@sha256:[a-f0-9]{64})?$")
# A template's placeholder: "<storage account name>", "https://<account>.<region>.batch.azure.com"
_PLACEHOLDER = re.compile(r"<[^<>]+>")
_GIT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class Secret:
    """A secret string that never shows itself in str(), repr() or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class PoolImage:
    """A Marketplace VM image for the pool's nodes."""

    publisher: str
    offer: str
    sku: str
    version: str = "latest"


# Container-capable and supported today (the original's ubuntu-server-container 20-04-lts
# was retired in April 2025; 22.04 ends June 2027).
DEFAULT_POOL_IMAGE = PoolImage("microsoft-dsvm", "ubuntu-hpc", "2404", "latest")
DEFAULT_NODE_AGENT_SKU_ID = "batch.node.ubuntu 24.04"


@dataclass(frozen=True)
class AppConfig:
    """Accounts, images and credentials (appconfig.json)."""

    path: Path
    backend: str
    local_storage_path: Path
    storage_account_name: str | None = None
    storage_account_key: Secret | None = None
    storage_account_domain: str = "core.windows.net"
    storage_account_url: str | None = None  # a full blob endpoint (e.g. Azurite); wins
    batch_account_name: str | None = None
    batch_account_key: Secret | None = None
    batch_account_url: str | None = None
    worker_docker_image: str | None = None
    reducer_docker_image: str | None = None
    docker_user: str | None = None
    docker_token: Secret | None = None
    reducer_docker_user: str | None = None  # for the reducer image's registry, when it differs
    reducer_docker_token: Secret | None = None
    run_as_root: bool = True  # tasks run as root in their container (Batch's admin auto-user)
    keep_image_entrypoint: bool = False  # the task command goes to the image's ENTRYPOINT
    git_user: str | None = None
    git_repo: str | None = None
    git_token: Secret | None = None
    git_base_url: str = "https://github.com"
    pool_image: PoolImage = DEFAULT_POOL_IMAGE
    node_agent_sku_id: str = DEFAULT_NODE_AGENT_SKU_ID

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for redaction of anything the tool prints or writes."""
        found = (self.storage_account_key, self.batch_account_key, self.docker_token,
                 self.reducer_docker_token, self.git_token)
        return tuple(s.reveal() for s in found if s is not None and s.reveal())


@dataclass(frozen=True)
class SimConfig:
    """The campaign (simconfig.json)."""

    path: Path
    sim_id: str
    pool_node_count: int
    task_count: int
    starting_node: int
    pool_vm_size: str | None
    local_sim_path: Path
    run_script: str
    reducer_script: str | None
    reducer_path: Path | None
    output_file_patterns: tuple[str, ...]
    timeout_minutes: float
    local_results_path: Path
    task_slots_per_node: int = 1
    max_task_retries: int = 0
    seed_parameter_files: tuple[str, ...] = ()  # TOPAS files whose i:Ts/Seed each task sets
    auto_delete_pool: bool = True  # Batch deletes the pool when the job ends
    goals: Goals = Goals()  # a statistical target, Spot nodes, prices, a budget (all optional)

    @property
    def task_indices(self) -> range:
        return range(self.starting_node, self.starting_node + self.task_count)


@dataclass(frozen=True)
class Settings:
    app: AppConfig
    sim: SimConfig

    @property
    def backend(self) -> str:
        return self.app.backend


# ---------------------------------------------------------------------------- reading


class _Reader:
    """Typed access to one config file's keys, recording every problem it meets."""

    def __init__(self, path: Path, data: Mapping[str, Any], problems: _Problems) -> None:
        self.path = path
        self.where = _display(path)
        self.data = data
        self.problems = problems
        self.from_env: set[str] = set()  # secrets taken from the environment, not the file

    def bad(self, key: str, what: str, fix: str) -> None:
        self.problems.add(self.where, key, what, fix)

    def has(self, key: str) -> bool:
        value = self.data.get(key)
        return value is not None and not (isinstance(value, str) and not value.strip())

    def string(self, key: str, required: bool, fix: str) -> str | None:
        value = self.data.get(key)
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            if required:
                self.bad(key, "is missing", fix)
            return None
        if not isinstance(value, str):
            self.bad(key, f"must be a string, not {_json_type(value)}", fix)
            return None
        if "\x00" in value:
            self.bad(key, "contains a NUL character (\\u0000)", "remove it from the value")
            return None
        if _PLACEHOLDER.search(value):
            self.bad(key, f"{value!r} is still the template's placeholder",
                     f"replace the <...> part with your value ({fix}), or remove the key if it "
                     "is optional")
            return None
        return value

    def integer(self, key: str, default: int | None, low: int, high: int, fix: str) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            self.bad(key, "is missing", fix)
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(key, f"must be a whole number, not {_json_type(value)} {value!r}", fix)
            return None
        if not low <= value <= high:
            self.bad(key, f"is {value}, outside {low}..{high}", fix)
            return None
        return value

    def boolean(self, key: str, default: bool, fix: str) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.bad(key, f"must be true or false, not {_json_type(value)} {value!r}", fix)
            return default
        return value

    def number(self, key: str, default: float, low: float, high: float, fix: str) -> float | None:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.bad(key, f"must be a number, not {_json_type(value)} {value!r}", fix)
            return None
        if not low < value <= high:
            self.bad(key, f"is {value}, outside the range ({low:g}, {high:g}]", fix)
            return None
        return float(value)

    def resolve_path(self, key: str, value: str) -> Path | None:
        """Relative paths resolve against the folder of the file that names them."""
        try:
            expanded = Path(value).expanduser()
        except RuntimeError:  # ~name of a user this machine does not have
            self.bad(key, f"{value!r} starts with the home folder of an unknown user",
                     "use the home folder of an existing user (~name), or write the path out")
            return None
        try:
            return (self.path.parent / expanded).resolve()
        except (RuntimeError, OSError):  # a loop of symbolic links
            self.bad(key, f"{value!r} goes through a link that loops back on itself",
                     "give the real folder's path")
            return None

    def secret(self, key: str, env: Mapping[str, str]) -> Secret | None:
        if env.get(key):
            self.from_env.add(key)
            return Secret(env[key])
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.bad(key, f"must be a string, not {_json_type(value)}",
                     f"write it in quotes, or set the {key} environment variable")
            return None
        if "\x00" in value:
            self.bad(key, "contains a NUL character (\\u0000)", "remove it from the value")
            return None
        if _PLACEHOLDER.search(value):
            self.bad(key, "is still the template's placeholder",
                     f"put the value there, or better remove the key and set the {key} "
                     "environment variable")
            return None
        return Secret(value.strip())

    def unknown_keys(self, known: tuple[str, ...], other: tuple[str, ...], other_file: str) -> None:
        for key in self.data:
            if key in known or key.startswith(("_", "//", "#")):
                continue
            if key in other:
                self.bad(key, f"belongs in {other_file}, not here", f"move it to {other_file}")
                continue
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"remove it (known keys: {', '.join(known)})"
            self.bad(key, "is not a known key", hint)


def _json_type(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    return {bool: "true/false", float: "a number", str: "a string",
            list: "a list", type(None): "null"}.get(type(value), "a value")


# ---------------------------------------------------------------------------- appconfig


def _base64_key(r: _Reader, key: str, secret: Secret | None, required: bool, where_from: str) -> None:
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


def _check_url(r: _Reader, key: str, url: str | None,
               fix: str = "copy the account URL from the Azure portal, e.g. "
                          "https://myaccount.westeurope.batch.azure.com") -> None:
    if url is None:
        return
    match = re.match(r"^(https?)://([^/?#]+)(/[^?#]*)?$", url)
    if not match or not _HOST_RE.match(match.group(2)):
        shown = re.sub(r"//[^/@]*@", "//***@", url)  # never echo a user:password@ part
        r.bad(key, f"{shown!r} is not an http(s) URL with a valid host name", fix)


_IMAGE_FIX = "name the Docker image, e.g. myuser/topas:4.0"


def _check_image(r: _Reader, key: str, image: str | None, required: bool) -> None:
    if image is None:
        if required and not r.has(key):  # a value of the wrong type is reported already
            r.bad(key, "is missing", _IMAGE_FIX)
        return
    if not _IMAGE_RE.match(image):
        r.bad(key, f"{image!r} is not a valid Docker image name",
              "use [registry/]repository[:tag] in lowercase, e.g. myuser/topas:4.0")


def _read_app(path: Path, data: Mapping[str, Any], problems: _Problems,
              backend_override: str | None, env: Mapping[str, str]) -> AppConfig | None:
    r = _Reader(path, data, problems)
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
        storage_account_key=r.secret("STORAGE_ACCOUNT_KEY", env),
        batch_account_key=r.secret("BATCH_ACCOUNT_KEY", env),
        docker_token=r.secret("DOCKER_TOKEN", env),
        reducer_docker_token=r.secret("REDUCER_DOCKER_TOKEN", env),
        git_token=r.secret("GIT_TOKEN", env),
    )
    if azure:
        _check_azure(r, values)
    # Given = present in the file (even with a wrong type, reported already) or the environment.
    for user, token, key in (("DOCKER_USER", "DOCKER_TOKEN", "docker_token"),
                             ("REDUCER_DOCKER_USER", "REDUCER_DOCKER_TOKEN", "reducer_docker_token")):
        user_given = r.has(user) and not _PLACEHOLDER.search(str(r.data.get(user)))  # said already
        token_given = values[key] is not None or r.has(token)
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


def _pool_image(r: _Reader) -> PoolImage:
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


def _git_base(r: _Reader) -> str:
    base = r.string("GIT_BASE_URL", False, "use e.g. https://github.com") or "https://github.com"
    if not re.match(r"^(https?|file|ssh)://", base):
        shown = mask_url_credentials(base)  # never echo a user:password@ part
        r.bad("GIT_BASE_URL", f"{shown!r} is not a URL", "use e.g. https://github.com or "
              "https://gitlab.example.org (the repository URL is <base>/<GIT_USER>/<GIT_REPO>.git)")
    return base


def _domain(r: _Reader) -> str:
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


def _check_azure(r: _Reader, values: dict[str, Any]) -> None:
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
    _check_image(r, "WORKER_DOCKER_IMAGE", values["worker_docker_image"], True)
    _check_image(r, "REDUCER_DOCKER_IMAGE", values["reducer_docker_image"], True)


# ---------------------------------------------------------------------------- simconfig


def _check_sim_id(r: _Reader, sim_id: str | None) -> None:
    if sim_id is None:
        return
    fix = ("use 3-%d letters, digits and single hyphens, starting and ending with a letter or "
           "digit (it names the Batch pool/job and the blob container)" % MAX_SIM_ID)
    if len(sim_id) < 3 or len(sim_id) > MAX_SIM_ID:
        r.bad("SIM_ID", f"{sim_id!r} has {len(sim_id)} characters", fix)
    elif not _SIM_ID_RE.match(sim_id):
        r.bad("SIM_ID", f"{sim_id!r} cannot name a blob container and Batch ids", fix)


def _relative_inside(r: _Reader, key: str, value: str | None, root: Path | None,
                     must_be_file: bool) -> str | None:
    """A path given relative to `root` that stays inside it; returned in POSIX form."""
    if value is None or root is None:
        return None
    if "\x00" in value:
        r.bad(key, "contains a NUL character (\\u0000)", "remove it from the value")
        return None
    candidate = (root / value).resolve()
    try:
        relative = candidate.relative_to(root)
    except ValueError:
        r.bad(key, f"{value!r} is not inside {_display(root)}",
              "give a path relative to LOCAL_SIM_PATH that stays inside it")
        return None
    if must_be_file and not candidate.is_file():
        r.bad(key, f"{value!r} does not exist in {_display(root)}",
              "check the name, or put the script into the simulation folder")
        return None
    return relative.as_posix()


def _patterns(r: _Reader) -> tuple[str, ...]:
    value = r.data.get("OUTPUT_FILE_PATTERNS")
    fix = 'list the files each task writes, e.g. ["*.csv", "phsp_*"]'
    if value is None:
        r.bad("OUTPUT_FILE_PATTERNS", "is missing", fix)
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        r.bad("OUTPUT_FILE_PATTERNS", f"must be a list of strings, not {_json_type(value)}", fix)
        return ()
    patterns = tuple(v.strip() for v in value if v.strip())
    if not patterns:
        r.bad("OUTPUT_FILE_PATTERNS", "is empty, so no result would be kept", fix)
    for pattern in patterns:
        if "\x00" in pattern:
            r.bad("OUTPUT_FILE_PATTERNS", f"{pattern!r} contains a NUL character (\\u0000)",
                  "remove it from the pattern")
        elif pattern.startswith("/") or ".." in Path(pattern).parts:
            r.bad("OUTPUT_FILE_PATTERNS", f"{pattern!r} leaves the task's working directory",
                  "give patterns relative to the simulation folder")
    return patterns


def _read_sim(path: Path, data: Mapping[str, Any], problems: _Problems,
              for_reducer: bool, backend: str | None) -> SimConfig | None:
    r = _Reader(path, data, problems)
    r.unknown_keys(SIM_KEYS, APP_KEYS, "appconfig.json")
    sim_id = r.string("SIM_ID", True, "name the campaign, e.g. \"water-phantom-01\"")
    _check_sim_id(r, sim_id)
    nodes = r.integer("POOL_NODE_COUNT", None, 0, MAX_NODES, f"use a node count from 1 to {MAX_NODES}")
    tasks = r.integer("TASK_COUNT", nodes or 1, 1, MAX_TASKS,
                      f"use a task count from 1 to {MAX_TASKS} (default: POOL_NODE_COUNT)")
    start = r.integer("STARTING_NODE", 1, 0, 10_000_000, "use the first task index, e.g. 1")
    vm_size = r.string("POOL_VM_SIZE", backend == "azure", "name a VM size, e.g. STANDARD_D2S_V3")
    sim_path = _sim_path(r)
    run_script = _relative_inside(r, "RUN_SCRIPT",
                                  r.string("RUN_SCRIPT", True, "name the script each task runs"),
                                  sim_path, must_be_file=True)
    reducer_script, reducer_path = _reducer(r, for_reducer)
    patterns = _patterns(r)
    timeout = r.number("TIMEOUT_MINUTES", DEFAULT_TIMEOUT_MINUTES, 0, MAX_TIMEOUT_MINUTES,
                       f"give minutes to wait for the tasks, up to {MAX_TIMEOUT_MINUTES}")
    seed_files = _seed_files(r, sim_path)
    auto_delete = r.boolean("AUTO_DELETE_POOL", True, "use true (Batch deletes the pool when the "
                            "job ends: nothing bills after a crash) or false (keep a named pool "
                            "for reuse)")
    slots = r.integer("TASK_SLOTS_PER_NODE", 1, 1, 256, "use the tasks one node runs at once, 1-256")
    retries = r.integer("MAX_TASK_RETRIES", 0, 0, 100, "use how often Batch retries a failed task, 0-100")
    results = _results_path(r, sim_path)
    goals = read_goals(r, tasks)
    if nodes == 0 and not goals.spot_nodes:
        r.bad("POOL_NODE_COUNT", "is 0 and there are no Spot nodes (SPOT_NODE_COUNT)",
              f"use a node count from 1 to {MAX_NODES}, or set SPOT_NODE_COUNT")
    if None in (sim_id, nodes, tasks, start, sim_path, run_script, timeout, results, slots,
                retries) or not patterns:
        return None
    return SimConfig(path=path, sim_id=sim_id, pool_node_count=nodes, task_count=tasks,
                     starting_node=start, pool_vm_size=vm_size, local_sim_path=sim_path,
                     run_script=run_script, reducer_script=reducer_script,
                     reducer_path=reducer_path, output_file_patterns=patterns,
                     timeout_minutes=timeout, local_results_path=results,
                     task_slots_per_node=slots, max_task_retries=retries,
                     seed_parameter_files=seed_files, auto_delete_pool=auto_delete, goals=goals)


def _results_path(r: _Reader, sim_path: Path | None) -> Path | None:
    value = r.string("LOCAL_RESULTS_PATH", False, "give a folder path")
    if value is None:
        return sim_path / "nodes_output" if sim_path else None
    path = r.resolve_path("LOCAL_RESULTS_PATH", value)
    fix = 'give the downloads a folder of their own, e.g. "results" (created if missing)'
    if path is None:
        return None
    if path.exists() and not path.is_dir():
        r.bad("LOCAL_RESULTS_PATH", f"{value!r} is a file, not a folder", fix)
    elif path == r.path.parent.resolve():
        r.bad("LOCAL_RESULTS_PATH", f"{value!r} is the folder of {r.where} itself, where the "
              "configs and the campaign manifest live", fix)
    elif sim_path is not None and (path == sim_path or path in sim_path.parents):
        r.bad("LOCAL_RESULTS_PATH", f"{value!r} holds the simulation folder (LOCAL_SIM_PATH), "
              "which results are kept out of", fix)
    else:
        return path
    return None


def _seed_files(r: _Reader, sim_path: Path | None) -> tuple[str, ...]:
    value = r.data.get("SEED_PARAMETER_FILES")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        r.bad("SEED_PARAMETER_FILES", f"must be a list of file names, not {_json_type(value)}",
              'list the TOPAS parameter files that set i:Ts/Seed, e.g. ["main.txt"]')
        return ()
    found = [_relative_inside(r, "SEED_PARAMETER_FILES", v.strip(), sim_path, must_be_file=True)
             for v in value]
    return tuple(f for f in found if f is not None)


def _sim_path(r: _Reader) -> Path | None:
    value = r.string("LOCAL_SIM_PATH", True, "give the folder holding the simulation")
    if value is None:
        return None
    path = r.resolve_path("LOCAL_SIM_PATH", value)
    if path is None:
        return None
    if not path.is_dir():
        r.bad("LOCAL_SIM_PATH", f"{value!r} is not a folder",
              "give the path of the simulation folder (relative to this file, or absolute)")
        return None
    return path


def _reducer(r: _Reader, for_reducer: bool) -> tuple[str | None, Path | None]:
    script = r.string("REDUCER_SCRIPT", for_reducer,
                      f'name the reducer script, or use "{BUILTIN_TOPAS}" for the built-in merge')
    folder_value = r.string("REDUCER_PATH", False, "give the folder holding the reducer script")
    folder = None
    if folder_value is not None:
        folder = r.resolve_path("REDUCER_PATH", folder_value)
        if folder is not None and not folder.is_dir():
            r.bad("REDUCER_PATH", f"{folder_value!r} is not a folder",
                  "give the folder holding REDUCER_SCRIPT, or remove the key to use GIT_REPO")
            folder = None
    if script is not None and script.startswith("builtin:") and script != BUILTIN_TOPAS:
        r.bad("REDUCER_SCRIPT", f"{script!r} is not a built-in reducer", f"use {BUILTIN_TOPAS!r}")
    elif for_reducer and script is not None and folder is not None and script != BUILTIN_TOPAS:
        _relative_inside(r, "REDUCER_SCRIPT", script, folder, must_be_file=True)
    return script, folder


# ---------------------------------------------------------------------------- entry point


def find_appconfig(simconfig: Path, explicit: Path | None) -> Path:
    """--appconfig, else appconfig.json beside the simconfig, else ./appconfig.json."""
    if explicit is not None:
        return explicit
    beside = simconfig.parent / "appconfig.json"
    if os.path.lexists(beside):  # a FIFO, a folder or a broken link there is named, not skipped
        return beside
    return Path("appconfig.json")


def load_settings(simconfig: Path, appconfig: Path | None = None, *,
                  backend: str | None = None, for_reducer: bool = False,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Read and check both files; raise ToolError(exit 2) listing every problem found."""
    env = os.environ if env is None else env
    problems = _Problems()
    if backend is not None and backend not in BACKENDS:
        problems.add("--backend", None, f"{backend!r} is not a backend",
                     f"use one of: {', '.join(BACKENDS)}")
        problems.raise_if_any()
    app_path = find_appconfig(simconfig, appconfig)
    app_data = _read_json_object(app_path, problems)
    sim_data = _read_json_object(simconfig, problems)
    app = _read_app(app_path, app_data, problems, backend, env) if app_data is not None else None
    chosen = app.backend if app else backend
    sim = (_read_sim(simconfig, sim_data, problems, for_reducer, chosen)
           if sim_data is not None else None)
    if for_reducer and app_data is not None and sim_data is not None:
        _check_reducer_source(_Reader(simconfig, sim_data, problems),
                              _Reader(app_path, app_data, problems))
    if app is not None and sim is not None and app_data.get("LOCAL_STORAGE_PATH"):
        _check_storage_apart(_Reader(app_path, app_data, problems), app, sim)
    problems.raise_if_any()
    assert app is not None and sim is not None
    return Settings(app=app, sim=sim)


def _check_storage_apart(r: _Reader, app: AppConfig, sim: SimConfig) -> None:
    """The local backend's storage and the simulation folder must not hold each other: the
    zip would pack the storage, or leave the whole simulation out."""
    storage, folder = app.local_storage_path, sim.local_sim_path
    value = r.data.get("LOCAL_STORAGE_PATH")
    fix = "put it outside the simulation folder (or remove the key: .localbatch beside " \
          f"{r.where})"
    if storage == folder or folder in storage.parents:
        r.bad("LOCAL_STORAGE_PATH", f"{value!r} is inside the simulation folder "
              f"{_display(folder)} (LOCAL_SIM_PATH)", fix)
    elif storage in folder.parents:
        r.bad("LOCAL_STORAGE_PATH", f"{value!r} holds the simulation folder {_display(folder)} "
              "(LOCAL_SIM_PATH)", fix)


def _check_reducer_source(sim: _Reader, app: _Reader) -> None:
    """A named reducer script needs a source. Checked on the raw values, so that it is reported
    together with every other problem (SimConfig/AppConfig exist only when all else is valid)."""
    script = sim.data.get("REDUCER_SCRIPT")
    if not isinstance(script, str) or not script.strip() or script.strip().startswith("builtin:"):
        return  # missing, not a string, or built-in: reported (or fine) elsewhere
    if sim.has("REDUCER_PATH") or (app.has("GIT_USER") and app.has("GIT_REPO")):
        return
    sim.bad("REDUCER_SCRIPT",
            f"{script.strip()!r} has no source (no REDUCER_PATH, and no GIT_USER/GIT_REPO in "
            f"{app.where})",
            f'set REDUCER_PATH to its folder, set GIT_USER and GIT_REPO, or use "{BUILTIN_TOPAS}"')
