"""TOPAS threads and histories (simconfig.json), and what the user's parameter files say.

`TOPAS_THREADS` and `HISTORIES_PER_TASK` are written into the parameter files named in
`SEED_PARAMETER_FILES` the way the seed is — unless the files (or the files they include)
already set `Ts/NumberOfThreads` or the source's `NumberOfHistoriesInRun`: the user's own
setting wins, and `--dry-run` says so. To know which, each of those files is read here,
with its includes, once, when the configuration is read (common/worker/parameters.py).

Which setting applies where is decided in common/worker/setup.py; here are only the keys,
their checks, and what the files hold.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.worker.parameters import Chain, Parameter, read_chain

TOPAS_KEYS = ("TOPAS_THREADS", "HISTORIES_PER_TASK")
MAX_THREADS = 1024
MAX_HISTORIES = 10 ** 12
THREADS = "Ts/NumberOfThreads"
DATA_DIRECTORY = "Ts/G4DataDirectory"
SEQUENTIAL_TIMES = "Tf/NumberOfSequentialTimes"


def histories_name(source: str) -> str:
    return f"So/{source}/NumberOfHistoriesInRun"


@dataclass(frozen=True)
class FileSettings:
    """What one of SEED_PARAMETER_FILES (with its includes) sets itself."""

    file: str  # relative to LOCAL_SIM_PATH, as in SEED_PARAMETER_FILES
    threads: Parameter | None = None  # Ts/NumberOfThreads, where the files set it
    histories: tuple[Parameter, ...] = ()  # each source's NumberOfHistoriesInRun that is set
    sources: tuple[str, ...] = ()  # So/<name>/Type defined
    sequential_times: Parameter | None = None  # Tf/NumberOfSequentialTimes
    data_directory: Parameter | None = None  # Ts/G4DataDirectory
    unread: tuple[str, ...] = ()  # included files not found on this machine

    @property
    def source(self) -> str | None:
        """The one source HISTORIES_PER_TASK goes to (None: none or several)."""
        return self.sources[0] if len(self.sources) == 1 else None


@dataclass(frozen=True)
class TopasSettings:
    threads: int | None = None  # TOPAS_THREADS; None: the node's cores / its task slots
    histories: int | None = None  # HISTORIES_PER_TASK; None: as the files say
    files: tuple[FileSettings, ...] = ()  # one per SEED_PARAMETER_FILES entry
    # Cores each task has to itself, as the backend knows them before anything runs (the VM
    # size's vCPUs / task slots); None: each task counts them on its node (nproc / slots).
    node_threads: int | None = None


def file_settings(file: str, chain: Chain) -> FileSettings:
    sources = chain.sources()
    histories = tuple(p for p in (chain.get(histories_name(s)) for s in sources) if p is not None)
    # NumberOfHistoriesInRun of a source whose Type the files here do not define (an unread
    # include) still counts as set.
    named = {p.name.lower() for p in histories}
    for parameter_file in chain.files:
        for key, parameter in parameter_file.parameters.items():
            if key.startswith("so/") and key.endswith("/numberofhistoriesinrun") and key not in named:
                named.add(key)
                histories += (chain.get(key),)  # type: ignore[operator]
    return FileSettings(file=file, threads=chain.get(THREADS), histories=histories,
                        sources=sources, sequential_times=chain.get(SEQUENTIAL_TIMES),
                        data_directory=chain.get(DATA_DIRECTORY), unread=chain.unread)


def read_topas(r: Any, sim_path: Path | None, seed_files: tuple[str, ...]) -> TopasSettings:
    """The TOPAS keys of one simconfig, and what SEED_PARAMETER_FILES set (problems on `r`)."""
    threads = _optional_int(r, "TOPAS_THREADS", 1, MAX_THREADS,
                            f"give the threads each TOPAS run uses, 1-{MAX_THREADS}, or remove the "
                            "key (default: the node's cores divided by TASK_SLOTS_PER_NODE)")
    histories = _optional_int(r, "HISTORIES_PER_TASK", 1, MAX_HISTORIES,
                              "give the histories each task simulates, or remove the key (the "
                              "parameter files' own NumberOfHistoriesInRun then stands)")
    for key, value in (("TOPAS_THREADS", threads), ("HISTORIES_PER_TASK", histories)):
        if value is not None and not seed_files and not r.has("SEED_PARAMETER_FILES"):
            r.bad(key, "is set, but SEED_PARAMETER_FILES names no parameter file to write it into",
                  'list your main TOPAS parameter file there, e.g. "SEED_PARAMETER_FILES": ["main.txt"]')
    files = []
    for name in seed_files if sim_path is not None else ():
        try:
            chain = read_chain(sim_path / name, sim_path)
        except (OSError, UnicodeError) as exc:
            r.bad("SEED_PARAMETER_FILES", f"{name!r} cannot be read ({exc.__class__.__name__})",
                  "make it a readable TOPAS parameter file")
            continue
        found = file_settings(name, chain)
        files.append(found)
        if histories is not None and not found.histories and found.source is None:
            what = (f"defines {len(found.sources)} sources ({', '.join(found.sources)})"
                    if found.sources else "defines no source (no So/<name>/Type)")
            r.bad("HISTORIES_PER_TASK", f"{name} {what}, so it is not clear whose "
                  "NumberOfHistoriesInRun to set",
                  "set i:So/<source>/NumberOfHistoriesInRun in your file instead, or remove "
                  "HISTORIES_PER_TASK")
    return TopasSettings(threads=threads, histories=histories, files=tuple(files))


def _optional_int(r: Any, key: str, low: int, high: int, fix: str) -> int | None:
    if r.data.get(key) is None:
        return None
    return r.integer(key, None, low, high, fix)
