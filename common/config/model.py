"""What the two config files hold once read and checked: frozen dataclasses and limits.

The keys each file may hold, the ranges checked, `Secret` (a value that never shows itself)
and the Settings the scripts run on. Reading and checking live in reader.py (typed
access to one file), app.py (appconfig.json), sim.py (simconfig.json) and
__init__.py (both files together).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.config.goals import GOAL_KEYS, Goals
from common.config.topas import TOPAS_KEYS, TopasSettings

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
    "REGISTRY_IDENTITY", "POOL_OS_DISK_GB",
    "GEANT4_DATA_DIR", "GEANT4_DATA_URL",
)
SIM_KEYS = (
    "SIM_ID", "POOL_NODE_COUNT", "TASK_COUNT", "STARTING_NODE", "POOL_VM_SIZE",
    "LOCAL_SIM_PATH", "RUN_SCRIPT", "REDUCER_SCRIPT", "REDUCER_PATH",
    "OUTPUT_FILE_PATTERNS", "TIMEOUT_MINUTES", "LOCAL_RESULTS_PATH",
    "TASK_SLOTS_PER_NODE", "MAX_TASK_RETRIES", "SEED_PARAMETER_FILES", "AUTO_DELETE_POOL",
    "REDUCER_FAN_IN", "REDUCER_NODE_COUNT", "DOWNLOAD_TASK_OUTPUTS",
) + GOAL_KEYS + TOPAS_KEYS

# Longest suffix the tool adds to SIM_ID for a Batch id: "-workers-YYYYmmddHHMMSS".
ID_SUFFIX_LEN = len("-reducer-20260101120000")
MAX_BATCH_ID = 64
MAX_SIM_ID = MAX_BATCH_ID - ID_SUFFIX_LEN
MAX_NODES = 2000
MAX_TASKS = 100_000
MAX_TIMEOUT_MINUTES = 7 * 24 * 60
DEFAULT_TIMEOUT_MINUTES = 60.0
OS_DISK_GB_RANGE = (30, 4095)  # a managed OS disk: the VM images' smallest to Azure's largest
# SAS URLs for the nodes expire SAS_MARGIN_MINUTES after the timeout (pool start-up, output
# uploads and the reducer come after the tasks), valid from CLOCK_SKEW_MINUTES before now.
SAS_MARGIN_MINUTES = 120
CLOCK_SKEW_MINUTES = 5
# Without a storage account key they are signed with a user delegation key, which the service
# lends for at most 7 days — and a SAS signed with an expired key is invalid. So on that path
# the timeout leaves room for the margin inside the key's life (9,955 minutes).
DELEGATION_KEY_MAX_MINUTES = 7 * 24 * 60
MAX_ENTRA_TIMEOUT_MINUTES = DELEGATION_KEY_MAX_MINUTES - SAS_MARGIN_MINUTES - CLOCK_SKEW_MINUTES
# The built-in merge of more runs than this is a tree of reducer tasks (bench/reducer_tree.py
# and the README say why 16).
DEFAULT_REDUCER_FAN_IN = 16
MAX_REDUCER_FAN_IN = 1000
DOWNLOAD_CHOICES = ("all", "logs", "none")  # DOWNLOAD_TASK_OUTPUTS; unset: asked

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
    # A user-assigned managed identity (its ARM resource ID) that pulls images from Azure
    # Container Registries without a password; the pool must carry it (see the README).
    registry_identity: str | None = None
    pool_os_disk_gb: int | None = None  # the nodes' OS disk, where Docker keeps its images
    geant4_data_dir: Path | None = None  # a local folder of Geant4 data sets, staged on nodes
    geant4_data_url: str | None = None  # or the data sets already in the storage account

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
    topas: TopasSettings = TopasSettings()  # threads, histories, what the parameter files set
    reducer_fan_in: int = DEFAULT_REDUCER_FAN_IN  # runs (or partial merges) one reducer task merges
    reducer_node_count: int = 1  # nodes of the reducer's pool, which runs a tree's tasks in parallel
    download_task_outputs: str | None = None  # "all", "logs", "none"; None: asked, size said

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
