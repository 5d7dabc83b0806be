"""Pure builders: settings -> the names, seeds, commands and specs of a campaign.

Everything here is a function of its arguments (no I/O, no clock), so the runner, the
reducer, `--dry-run` and the tests all see the same pools, jobs and tasks.
"""
from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from common.config import BUILTIN_TOPAS, Settings
from common.model import COMPLETION, SUCCESS, InputFile, JobSpec, OutputFile, PoolSpec, TaskSpec

# Blob names inside the campaign's container (the same on every backend).
SIM_ARCHIVE_BLOB = "SIM_DIR.zip"
SIMCONFIG_BLOB = "simconfig.json"
REDUCER_ARCHIVE_BLOB = "REDUCER.zip"
OUTPUT_PREFIX = "nodes_output/"
RESULTS_PREFIX = "nodes_output/results/"

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


_UNPACK = ('unpack() { if command -v unzip >/dev/null 2>&1; then unzip -q -o "$1" -d "$2"; '
           'else python3 -m zipfile -e "$1" "$2"; fi; }')


# Sets `i:Ts/Seed = $SIM_SEED` in a TOPAS parameter file, replacing the line (TOPAS names are
# case-insensitive) or adding it. awk and cat, not `sed -i`: the same on GNU, BSD and busybox.
_SET_SEED = ('set_seed() { awk -v seed="$SIM_SEED" \'tolower($0) ~ /^[ \\t]*i:ts\\/seed[ \\t]*=/ '
             '{ print "i:Ts/Seed = " seed; done = 1; next } { print } '
             'END { if (!done) print "i:Ts/Seed = " seed }\' "$1" > "$1.seeded" && '
             'cat "$1.seeded" > "$1" && rm "$1.seeded"; }')


def worker_command(run_script: str, index: int, seed_files: tuple[str, ...] = ()) -> str:
    """Unpack the simulation, set the seed in the TOPAS parameter files named, and run
    RUN_SCRIPT with the task index, as the original did."""
    script = shlex.quote(f"./{run_script}")
    seeding = [_SET_SEED] + [f"set_seed {shlex.quote(f)}" for f in seed_files] if seed_files else []
    return "\n".join(["set -e", _UNPACK, f"unpack {SIM_ARCHIVE_BLOB} .", *seeding,
                      f"chmod +x {script}", f"exec {script} {index}"])


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
        command=worker_command(sim.run_script, index, sim.seed_parameter_files),
        inputs=(InputFile(SIM_ARCHIVE_BLOB), InputFile(SIMCONFIG_BLOB)),
        outputs=outputs + (logs,),
        environment=(("SIM_ID", sim.sim_id), ("TASK_INDEX", str(index)), ("SIM_SEED", str(seed))),
        seed=seed,
        max_retries=sim.max_task_retries,
    )


def worker_pool(settings: Settings, ids: CampaignIds) -> PoolSpec:
    return PoolSpec(pool_id=ids.worker_pool, node_count=settings.sim.pool_node_count,
                    vm_size=settings.sim.pool_vm_size, image=settings.app.worker_docker_image,
                    slots_per_node=settings.sim.task_slots_per_node)


# Pool start-up and output upload on top of the tasks' own time, before Batch ends the job.
WALL_CLOCK_MARGIN_MINUTES = 30


def _job(settings: Settings, job_id: str, pool: PoolSpec, container: str,
         tasks: tuple[TaskSpec, ...], image: str | None) -> JobSpec:
    auto = settings.sim.auto_delete_pool
    return JobSpec(job_id=job_id, pool_id=pool.pool_id, container=container, tasks=tasks,
                   image=image, auto_pool=pool if auto else None,
                   max_wall_clock_minutes=(settings.sim.timeout_minutes + WALL_CLOCK_MARGIN_MINUTES
                                           if auto else None))


def worker_job(settings: Settings, ids: CampaignIds, indices: tuple[int, ...] | None = None,
               job_id: str | None = None, retry: int = 0) -> JobSpec:
    """The worker job; `indices` and `retry` rerun only some tasks, under new task ids."""
    chosen = settings.sim.task_indices if indices is None else indices
    tasks = tuple(worker_task(settings, i, retry) for i in chosen)
    return _job(settings, job_id or ids.worker_job, worker_pool(settings, ids), ids.container,
                tasks, settings.app.worker_docker_image)


def reducer_command(reducer_script: str) -> str:
    """Merge every run folder into nodes_output/results/.

    A user's script gets the original's arguments: the worker outputs folder and the simconfig.
    """
    lines = ["set -e", _UNPACK, f"unpack {REDUCER_ARCHIVE_BLOB} reducer",
             f"mkdir -p {RESULTS_PREFIX}"]
    if reducer_script == BUILTIN_TOPAS:
        # The merge needs numpy; a plain Python image (python:3.12-slim) gets it from PyPI.
        # matplotlib only draws the pictures: without it the merge still runs, and says so.
        lines.append('python3 -c "import numpy" 2>/dev/null || python3 -m pip install --quiet numpy')
        lines.append('python3 -c "import matplotlib" 2>/dev/null || '
                     'python3 -m pip install --quiet matplotlib || true')
        lines.append('PYTHONPATH="$PWD/reducer" exec python3 -m common.topas merge '
                     f'--out {RESULTS_PREFIX} {OUTPUT_PREFIX}run*/')
    else:
        script = shlex.quote(f"./{reducer_script}")
        lines += ['wd="$PWD"', "cd reducer", f"chmod +x {script}",
                  f'exec {script} "$wd/{OUTPUT_PREFIX.rstrip("/")}" "$wd/{SIMCONFIG_BLOB}"']
    return "\n".join(lines)


def reducer_pool(settings: Settings, ids: CampaignIds) -> PoolSpec:
    return PoolSpec(pool_id=ids.reducer_pool, node_count=1, vm_size=settings.sim.pool_vm_size,
                    image=settings.app.reducer_docker_image)


def reducer_job(settings: Settings, ids: CampaignIds) -> JobSpec:
    script = settings.sim.reducer_script or BUILTIN_TOPAS
    task = TaskSpec(
        task_id="reducer",
        index=0,
        command=reducer_command(script),
        inputs=(InputFile(REDUCER_ARCHIVE_BLOB), InputFile(SIMCONFIG_BLOB),
                InputFile(OUTPUT_PREFIX)),
        outputs=(OutputFile(f"{RESULTS_PREFIX}**/*", RESULTS_PREFIX, SUCCESS),
                 OutputFile("../stdout.txt", f"{RESULTS_PREFIX}reducer_stdout.txt", COMPLETION),
                 OutputFile("../stderr.txt", f"{RESULTS_PREFIX}reducer_stderr.txt", COMPLETION)),
        environment=(("SIM_ID", settings.sim.sim_id),),
    )
    return _job(settings, ids.reducer_job, reducer_pool(settings, ids), ids.container, (task,),
                settings.app.reducer_docker_image)
