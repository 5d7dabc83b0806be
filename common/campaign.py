"""Pure builders: settings -> the names, seeds, commands and specs of a campaign.

Everything here is a function of its arguments (no I/O, no clock), so the runner, the
reducer, `--dry-run` and the tests all see the same pools, jobs and tasks.
"""
from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, replace

from common.config import BUILTIN_TOPAS, Settings
from common.model import COMPLETION, SUCCESS, InputFile, JobSpec, OutputFile, PoolSpec, TaskSpec
from common.worker.setup import environment_lines, parameter_lines, run_setup, seed_lines

# Blob names inside the campaign's container (the same on every backend).
SIM_ARCHIVE_BLOB = "SIM_DIR.zip"
SIMCONFIG_BLOB = "simconfig.json"
REDUCER_ARCHIVE_BLOB = "REDUCER.zip"
OUTPUT_PREFIX = "nodes_output/"
RESULTS_PREFIX = "nodes_output/results/"
PREPARATION_TASK_ID = "jobpreparation"  # Batch's default id for a job preparation task

_MASK31 = (1 << 31) - 1


@dataclass(frozen=True)
class CampaignIds:
    """The ids the original scripts used: pools per SIM_ID, jobs stamped with the start time."""

    sim_id: str
    stamp: str  # YYYYmmddHHMMSS

    @property
    def container(self) -> str:
        return self.sim_id.lower()

    @property
    def worker_pool(self) -> str:
        return f"{self.sim_id}-workers"

    @property
    def worker_job(self) -> str:
        return f"{self.sim_id}-workers-{self.stamp}"

    @property
    def reducer_pool(self) -> str:
        return f"{self.sim_id}-reducer"

    @property
    def reducer_job(self) -> str:
        return f"{self.sim_id}-reducer-{self.stamp}"


def task_id(index: int) -> str:
    return f"task-{index}"


def run_prefix(index: int) -> str:
    return f"{OUTPUT_PREFIX}run{index}/"


def sim_seed(sim_id: str, index: int) -> int:
    """A seed in [0, 2**31) that differs for every task index of a campaign.

    A bijection of (index + a SIM_ID-derived offset) modulo 2**31: odd multipliers and
    xor-shifts are invertible there, so two indices never share a seed (bash $RANDOM, which
    the original used, has only 32768 values and collides), yet the value looks random and is
    reproducible from SIM_ID and the index.
    """
    offset = int.from_bytes(hashlib.sha256(sim_id.encode()).digest()[:4], "big")
    x = (offset + index) & _MASK31
    x = (x * 0x2545F491) & _MASK31
    x ^= x >> 15
    x = (x * 0x6F4F2A35) & _MASK31
    x ^= x >> 13
    return x


# -- commands ------------------------------------------------------------------------------
#
# Every command is a POSIX sh script, one complete statement per line (Azure joins the lines
# with "; " into one command line). Two kinds run in two places:
# - the job preparation task runs once per node, on the node's own OS (Ubuntu: unzip or
#   python3 are there), and unpacks the inputs into its working directory;
# - each task runs in the image's container, which need hold no more than /bin/sh and cp:
#   it copies the prepared folder into its own working directory, sets its seed with shell
#   built-ins only, and runs RUN_SCRIPT.
# Both backends run the same scripts (the local backend sets AZ_BATCH_JOB_PREP_WORKING_DIR
# as Batch does).

PREPARED = "$AZ_BATCH_JOB_PREP_WORKING_DIR"
SIM_FOLDER = "sim"  # the unpacked simulation, in the preparation task's working directory
REDUCER_FOLDER = "reducer"

# Unzip keeps the archive's mode bits; the python3 fallback restores them itself.
_UNPACK = ('unpack() { if command -v unzip >/dev/null 2>&1; then unzip -q -o "$1" -d "$2"; '
           'elif command -v python3 >/dev/null 2>&1; then python3 -c "import os, sys, zipfile; '
           'z = zipfile.ZipFile(sys.argv[1]); [os.chmod(z.extract(i, sys.argv[2]), '
           '(i.external_attr >> 16) & 0o777 or 0o644) for i in z.infolist()]" "$1" "$2"; '
           'else echo "batch-campaigns: this node has neither unzip nor python3 to unpack $1" >&2; '
           'return 127; fi; }')

# Symbolic links a task leaves behind are removed before its outputs are uploaded: Batch's
# agent uploads on the host, as root, and would follow a link out of the working directory.
_DROP_LINKS = ('drop_links() { for _f in "$1"/* "$1"/.[!.]* "$1"/..?*; do '
               'if [ -L "$_f" ]; then rm -f "$_f"; elif [ -d "$_f" ]; then drop_links "$_f"; fi; '
               'done; }')


def preparation_command(archive: str, folder: str, extra: tuple[str, ...] = (),
                        executable: str | None = None) -> str:
    """Unpack `archive` into `folder` (again, if the node reruns it) and copy `extra` files in."""
    lines = ["set -e", _UNPACK, f"rm -rf {folder}", f"unpack {archive} {folder}"]
    lines += [f"cp {shlex.quote(name)} {folder}/" for name in extra]
    if executable:
        lines.append(f"chmod +x {shlex.quote(f'{folder}/{executable}')}")
    return "\n".join(lines)


def worker_command(run_script: str, index: int, seed_files: tuple[str, ...] = (),
                   environment: tuple[str, ...] = (), parameters: tuple[str, ...] = ()) -> str:
    """Copy the prepared simulation here, set the seed (and `parameters`: threads, histories,
    the Geant4 data's folder; common/worker/setup.py) in the TOPAS parameter files named, and
    run RUN_SCRIPT with the task index, as the original did."""
    script = shlex.quote(f"./{run_script}")
    return "\n".join(["set -e", f'cp -R "{PREPARED}/{SIM_FOLDER}/." .', *environment,
                      *seed_lines(seed_files), *parameters, "status=0",
                      f"{script} {index} || status=$?", _DROP_LINKS, "drop_links .",
                      "exit $status"])


def output_under(pattern: str, prefix: str, when: str) -> OutputFile:
    """Files matching `pattern` go under `prefix`, keeping their names.

    Batch takes the destination as a prefix only for a pattern with a wildcard; for a plain
    file name it is the blob's full name, so the file name is appended here.
    """
    if any(c in pattern for c in "*?["):
        return OutputFile(pattern, prefix, when)
    return OutputFile(pattern, prefix + pattern.lstrip("./"), when)


def worker_task(settings: Settings, index: int, retry: int = 0) -> TaskSpec:
    sim = settings.sim
    seed = sim_seed(sim.sim_id, index)
    outputs = tuple(output_under(p, run_prefix(index), SUCCESS) for p in sim.output_file_patterns)
    logs = output_under("../std*.txt", run_prefix(index), COMPLETION)
    return TaskSpec(
        task_id=task_id(index) + (f"-r{retry}" if retry else ""),
        index=index,
        command=worker_command(sim.run_script, index, sim.seed_parameter_files,
                               tuple(environment_lines(settings)), tuple(parameter_lines(settings))),
        outputs=outputs + (logs,),
        environment=(("SIM_ID", sim.sim_id), ("TASK_INDEX", str(index)), ("SIM_SEED", str(seed))),
        seed=seed,
        max_retries=sim.max_task_retries,
        reads_shared_data=bool(settings.app.geant4_data_dir or settings.app.geant4_data_url),
    )


def worker_preparation(settings: Settings) -> TaskSpec:
    """Once per node: the simulation folder and simconfig.json, unpacked for every task."""
    return TaskSpec(task_id=PREPARATION_TASK_ID, index=0,
                    command=preparation_command(SIM_ARCHIVE_BLOB, SIM_FOLDER, (SIMCONFIG_BLOB,),
                                                settings.sim.run_script),
                    inputs=(InputFile(SIM_ARCHIVE_BLOB), InputFile(SIMCONFIG_BLOB)), max_retries=2)


def worker_pool(settings: Settings, ids: CampaignIds) -> PoolSpec:
    return PoolSpec(pool_id=ids.worker_pool, node_count=settings.sim.pool_node_count,
                    vm_size=settings.sim.pool_vm_size, image=settings.app.worker_docker_image,
                    slots_per_node=settings.sim.task_slots_per_node,
                    spot_node_count=settings.sim.goals.spot_nodes)


# Pool start-up and output upload on top of the tasks' own time, before Batch ends the job.
WALL_CLOCK_MARGIN_MINUTES = 30


def _job(settings: Settings, job_id: str, pool: PoolSpec, container: str,
         tasks: tuple[TaskSpec, ...], image: str | None, preparation: TaskSpec) -> JobSpec:
    auto = settings.sim.auto_delete_pool
    return JobSpec(job_id=job_id, pool_id=pool.pool_id, container=container, tasks=tasks,
                   image=image, auto_pool=pool if auto else None,
                   max_wall_clock_minutes=(settings.sim.timeout_minutes + WALL_CLOCK_MARGIN_MINUTES
                                           if auto else None),
                   preparation=preparation, run_as_root=settings.app.run_as_root,
                   keep_entrypoint=settings.app.keep_image_entrypoint)


def worker_job(settings: Settings, ids: CampaignIds, indices: tuple[int, ...] | None = None,
               job_id: str | None = None, retry: int = 0) -> JobSpec:
    """The worker job; `indices` and `retry` rerun only some tasks, under new task ids."""
    chosen = settings.sim.task_indices if indices is None else indices
    tasks = tuple(worker_task(settings, i, retry) for i in chosen)
    job = _job(settings, job_id or ids.worker_job, worker_pool(settings, ids), ids.container,
               tasks, settings.app.worker_docker_image, worker_preparation(settings))
    return replace(job, setup=run_setup(settings))


def merge_options(settings: Settings, allow_inconsistent: bool) -> tuple[str, ...]:
    """The options of the built-in merge that writes results/ (the last level of a reducer
    tree, or its only task): --allow-inconsistent, and an adaptive campaign's target so
    the summary states the runner's measure of it."""
    options = ["--allow-inconsistent"] if allow_inconsistent else []
    goals = settings.sim.goals
    if goals.target_percent is not None:
        if goals.target_scorer:
            options += ["--target-scorer", goals.target_scorer]
        options += ["--target-percent", repr(goals.target_percent),
                    "--target-region-percent", repr(goals.region_percent)]
    return tuple(options)


def reducer_command(reducer_script: str, leave_out: tuple[int, ...] = (),
                    merge_options: tuple[str, ...] = ()) -> str:
    """Merge every run folder (but those left out: failed, or not wanted) into
    nodes_output/results/.

    A user's script gets the original's arguments: the worker outputs folder and the simconfig.
    """
    lines = ["set -e", f'cp -R "{PREPARED}/{REDUCER_FOLDER}" {REDUCER_FOLDER}',
             f'cp "{PREPARED}/{SIMCONFIG_BLOB}" {SIMCONFIG_BLOB}', f"mkdir -p {RESULTS_PREFIX}"]
    if leave_out:
        lines.append("rm -rf " + " ".join(run_prefix(i).rstrip("/") for i in leave_out))
    if reducer_script == BUILTIN_TOPAS:
        lines += _merge_packages()
        lines.append(builtin_merge(merge_options, RESULTS_PREFIX, f"{OUTPUT_PREFIX}run*/"))
    else:
        script = shlex.quote(f"./{reducer_script}")
        lines += ['wd="$PWD"', f"cd {REDUCER_FOLDER}", f"chmod +x {script}",
                  f'exec {script} "$wd/{OUTPUT_PREFIX.rstrip("/")}" "$wd/{SIMCONFIG_BLOB}"']
    return "\n".join(lines)


def builtin_merge(merge_options: tuple[str, ...], out: str, sources: str) -> str:
    """The built-in merge's command line, for the one reducer task and each task of a tree:
    `sources` is a shell glob of the folders to merge (a task's inputs are exactly those)."""
    options = "".join(f"{shlex.quote(o)} " for o in merge_options)
    return (f'PYTHONPATH="$PWD/{REDUCER_FOLDER}" exec python3 -m common.topas merge '
            f'{options}--out {out} {sources}')


def reducer_start_lines() -> list[str]:
    """What every built-in merge task does first: the prepared code, the packages it needs."""
    return ["set -e", f'cp -R "{PREPARED}/{REDUCER_FOLDER}" {REDUCER_FOLDER}', *_merge_packages()]


# What the built-in merge uses on the reducer node, at the versions requirements.txt pins
# (tested together). numpy is needed; the others are optional: polars reads the numbers
# ~4x faster than numpy alone, matplotlib draws the pictures, pydicom writes the RT Dose
# files. A plain Python image (python:3.12-slim) gets what it lacks from PyPI.
MERGE_NEEDS = ("numpy==2.4.6",)
MERGE_OPTIONAL = (("polars", ("polars==2.1.0", "polars-runtime-32==2.1.0")),
                  ("matplotlib", ("matplotlib==3.11.2",)), ("pydicom", ("pydicom==2.4.5",)))


def _merge_packages() -> list[str]:
    """Install only what the image lacks; an optional package that fails is said by the merge."""
    pip = "python3 -m pip install --quiet --disable-pip-version-check"
    lines = [f'python3 -c "import numpy" 2>/dev/null || {pip} {MERGE_NEEDS[0]}']
    for module, pins in MERGE_OPTIONAL:
        lines.append(f'python3 -c "import {module}" 2>/dev/null || {pip} {" ".join(pins)} || true')
    return lines


def reducer_pool(settings: Settings, ids: CampaignIds, node_count: int = 1) -> PoolSpec:
    """One node for one reducer task; a tree's tasks share up to REDUCER_NODE_COUNT."""
    return PoolSpec(pool_id=ids.reducer_pool, node_count=node_count,
                    vm_size=settings.sim.pool_vm_size, image=settings.app.reducer_docker_image)


def reducer_job(settings: Settings, ids: CampaignIds, leave_out: tuple[int, ...] = (),
                merge_options: tuple[str, ...] = ()) -> JobSpec:
    script = settings.sim.reducer_script or BUILTIN_TOPAS
    task = TaskSpec(
        task_id="reducer",
        index=0,
        command=reducer_command(script, leave_out, merge_options),
        # the run folders only: an earlier merged result (results/) is not an input
        inputs=(InputFile(OUTPUT_PREFIX + "run", prefix=True),),
        outputs=(OutputFile(f"{RESULTS_PREFIX}**/*", RESULTS_PREFIX, SUCCESS),
                 *reducer_logs(f"{RESULTS_PREFIX}reducer_")),
        environment=(("SIM_ID", settings.sim.sim_id),),
    )
    return reducer_job_spec(settings, ids, (task,))


def reducer_logs(prefix: str) -> tuple[OutputFile, OutputFile]:
    """A reducer task's stdout and stderr, kept whatever its exit code."""
    return (OutputFile("../stdout.txt", f"{prefix}stdout.txt", COMPLETION),
            OutputFile("../stderr.txt", f"{prefix}stderr.txt", COMPLETION))


def reducer_job_spec(settings: Settings, ids: CampaignIds, tasks: tuple[TaskSpec, ...],
                     node_count: int = 1, task_dependencies: bool = False) -> JobSpec:
    """The reducer's job: its pool, the preparation that unpacks the reducer code, `tasks`."""
    preparation = TaskSpec(task_id=PREPARATION_TASK_ID, index=0,
                           command=preparation_command(REDUCER_ARCHIVE_BLOB, REDUCER_FOLDER,
                                                       (SIMCONFIG_BLOB,)),
                           inputs=(InputFile(REDUCER_ARCHIVE_BLOB), InputFile(SIMCONFIG_BLOB)),
                           max_retries=2)
    job = _job(settings, ids.reducer_job, reducer_pool(settings, ids, node_count), ids.container,
               tasks, settings.app.reducer_docker_image, preparation)
    return replace(job, task_dependencies=task_dependencies)
