"""Backend-neutral descriptions of pools, jobs and tasks, and of what the backends report.

Frozen dataclasses only: the workflow builds them (common/campaign.py), each backend
translates them (to azure.batch models, or to local processes). No behaviour lives here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

SUCCESS = "success"  # upload condition: only when the task succeeded
COMPLETION = "completion"  # upload condition: whatever the exit code


class JobKind(StrEnum):
    """What a job of the campaign does (the value is what the manifest stores)."""

    WORKERS = "workers"  # the simulation's tasks, one per run
    REDUCER = "reducer"  # the merge of the runs

    @property
    def script(self) -> "Script":
        """The script that makes and picks up jobs of this kind."""
        return Script.REDUCER if self is JobKind.REDUCER else Script.RUNNER


class Script(StrEnum):
    """Which of the two scripts runs (the value is what a manifest claim stores)."""

    RUNNER = "runner"
    REDUCER = "reducer"

    @property
    def job_kind(self) -> JobKind:
        """The kind of job this script makes."""
        return JobKind.REDUCER if self is Script.REDUCER else JobKind.WORKERS

    @property
    def file(self) -> str:
        """The script as it lies beside common/ in a clone."""
        return "batch_data_reducer.py" if self is Script.REDUCER else "batch_simulation_runner.py"

    @property
    def command(self) -> str:
        """The command `pip install .` makes for it."""
        return "batch-data-reducer" if self is Script.REDUCER else "batch-simulation-runner"


@dataclass(frozen=True)
class PoolSpec:
    pool_id: str
    node_count: int
    vm_size: str | None
    image: str | None  # the container image tasks run in (not run by the local backend)
    slots_per_node: int = 1
    spot_node_count: int = 0  # Spot (low-priority) nodes beside the node_count dedicated ones


@dataclass(frozen=True)
class InputFile:
    """A blob (or every blob under a prefix ending in '/') put into the task's working dir.

    A single blob lands at `path`; blobs under a prefix land at `path`/<full blob name>,
    as Azure Batch resource files with a blob prefix do.
    """

    blob: str
    path: str = "."
    prefix: bool = False  # every blob whose name starts with `blob` (a trailing '/' says so too)

    @property
    def is_prefix(self) -> bool:
        return self.prefix or self.blob.endswith("/")


@dataclass(frozen=True)
class OutputFile:
    """Files matching `pattern` (relative to the working dir) copied to the container.

    With a wildcard in the pattern, `destination` is a blob prefix and each file keeps its
    path below the pattern's fixed leading folders; without one it is the blob name.
    """

    pattern: str
    destination: str
    when: str = SUCCESS


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    index: int
    command: str  # a POSIX sh script run in the task's working directory
    inputs: tuple[InputFile, ...] = ()
    outputs: tuple[OutputFile, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    seed: int | None = None
    max_retries: int = 0  # reruns after a non-zero exit, as Batch's maxTaskRetryCount
    # Tasks of the same job that must have succeeded before this one may start (Batch's
    # dependsOn: by id, and by inclusive ranges of integer ids). A failed one blocks it:
    # it stays active, never runs. Needs JobSpec.task_dependencies.
    depends_on: tuple[str, ...] = ()
    depends_on_ranges: tuple[tuple[int, int], ...] = ()
    # Reads the job's SharedData (the Geant4 data): it sees it read-only, and little else
    # of the node (a container task's view is narrowed to its own folders).
    reads_shared_data: bool = False


@dataclass(frozen=True)
class SharedData:
    """Read-only data every task of a job reads (the Geant4 data sets), on each node before
    the job's first task there: how each backend gets it there is its own business
    (common/geant4/data.py has the whole story)."""

    key: str  # content key: an unchanged folder has the same key, and is not fetched again
    datasets: tuple[tuple[str, str], ...]  # (folder, environment variable), e.g. (G4EMLOW8.6.1, G4LEDATA)
    layout: str  # "archives" (uploaded by this tool), "folder" (GEANT4_DATA_URL), "in-place"
    container: str | None = None  # the blob container it is in (not for "in-place")
    prefix: str = ""  # "folder": the blob prefix of the data sets
    local_path: str | None = None  # "in-place": the folder on this machine
    bytes: int = 0
    # "in-place": (folder, files, bytes, digest of names and sizes) each data set must have
    checks: tuple[tuple[str, int, int, str], ...] = ()


@dataclass(frozen=True)
class RunSetup:
    """What each run of a job is told: TOPAS threads and histories, and where from."""

    threads: int | None  # None: each node counts its cores (nproc / task slots)
    threads_from: str
    histories: int | None  # histories per run; None when the files do not say plainly
    histories_from: str


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    pool_id: str
    container: str  # the blob container holding inputs and receiving outputs
    tasks: tuple[TaskSpec, ...]
    image: str | None = None
    # A pool made for this job alone and deleted by the service when the job ends (Azure auto
    # pool): a campaign whose client died stops billing by itself. pool_id is then a prefix.
    auto_pool: PoolSpec | None = None
    max_wall_clock_minutes: float | None = None  # the service ends the job after this
    # Runs once on each node, on the node's own OS, before the job's tasks (Batch's job
    # preparation task): it unpacks the inputs every task then copies.
    preparation: TaskSpec | None = None
    run_as_root: bool = True  # tasks run as root in their container (an admin auto-user)
    keep_entrypoint: bool = False  # the image's ENTRYPOINT gets the command as its arguments
    # Written into the job when it is created, so a resent creation recognises its own job.
    owner: str = ""
    # False: the job waits for more tasks (an adaptive campaign) until the backend's
    # seal_job; True: it ends by itself when its last task has completed.
    seal: bool = True
    shared_data: SharedData | None = None  # on every node before its first task (Geant4 data)
    setup: RunSetup | None = None  # what its runs are told (recorded in the manifest)
    # Its tasks may depend on each other (Batch's usesTaskDependencies, fixed at creation).
    task_dependencies: bool = False


@dataclass(frozen=True)
class TaskCounts:
    active: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def completed(self) -> int:
        return self.succeeded + self.failed

    @property
    def total(self) -> int:
        return self.active + self.running + self.completed


@dataclass(frozen=True)
class TaskFailure:
    """Why a task failed, in the service's own words where it has any."""

    task_id: str
    exit_code: int | None
    failure_code: str | None = None
    failure_message: str | None = None
    stderr_tail: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    md5: bytes | None  # None when the service holds no Content-MD5 for it


@dataclass(frozen=True)
class TaskStats:
    """What a job's tasks took: for cost estimates of later campaigns, and Spot requeues."""

    durations: tuple[float, ...] = ()  # seconds of each task that succeeded
    requeues: int = 0  # times Batch put a task back after its (Spot) node was preempted


USABLE_STATES = ("idle", "running")
COMING_STATES = ("creating", "starting", "waitingforstarttask", "rebooting", "reimaging",
                 "upgradingos")
BROKEN_STATES = ("starttaskfailed", "unusable", "offline", "unknown")


@dataclass(frozen=True)
class PoolHealth:
    """A pool's nodes by state, dedicated and Spot apart, as the service counts them."""

    dedicated: tuple[tuple[str, int], ...] = ()  # (state, nodes), states spelled as in node lists
    spot: tuple[tuple[str, int], ...] = ()
    steady: bool = True  # no resize under way
    resize_errors: tuple[str, ...] = ()  # "code: message"

    def count(self, *states: str, spot: bool | None = None) -> int:
        kinds = [self.dedicated, self.spot] if spot is None else [self.spot if spot else self.dedicated]
        return sum(n for kind in kinds for state, n in kind if state in states)

    @property
    def usable(self) -> int:
        return self.count(*USABLE_STATES)

    @property
    def coming(self) -> int:
        return self.count(*COMING_STATES)

    @property
    def broken(self) -> int:
        return self.count(*BROKEN_STATES)

    @property
    def preempted(self) -> int:
        """Spot nodes Azure took back. They still count in the pool (currentLowPriorityNodes)
        and Batch works back to the target by itself: they are being replaced, not lost."""
        return self.count("preempted", spot=True)

    @property
    def dead(self) -> bool:
        """No node can run tasks, and none is on its way (a preempted Spot node is: Batch
        re-creates it when capacity returns): waiting cannot help."""
        return self.steady and not self.usable and not self.coming and not self.preempted

    def preempted_text(self) -> str:
        """What the live line says of preempted Spot nodes ('' when there are none)."""
        if not self.preempted:
            return ""
        every = " (all of them)" if not self.usable and not self.coming else ""
        return f"{self.preempted} Spot node(s) preempted{every}, being replaced by Batch"

    @property
    def billed(self) -> tuple[int, int]:
        """Nodes that bill now, dedicated and Spot: all but preempted or deallocated ones."""
        free = ("preempted", "deallocated")
        return (sum(n for s, n in self.dedicated if s not in free),
                sum(n for s, n in self.spot if s not in free))

    def text(self) -> str:
        def part(kind: tuple[tuple[str, int], ...]) -> str:
            return ", ".join(f"{n} {s}" for s, n in kind) or "none"
        spot = f"; Spot: {part(self.spot)}" if self.spot else ""
        return f"nodes: {part(self.dedicated)}{spot}"
