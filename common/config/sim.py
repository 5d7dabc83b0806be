"""simconfig.json: the campaign — read and checked into a SimConfig."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from common.config.files import Problems, display
from common.config.goals import check_goals, read_goals
from common.config.model import (APP_KEYS, BUILTIN_TOPAS, DEFAULT_REDUCER_FAN_IN,
                                 DEFAULT_TIMEOUT_MINUTES, DOWNLOAD_CHOICES, MAX_NODES,
                                 MAX_REDUCER_FAN_IN,
                                 MAX_SIM_ID, MAX_TASKS, MAX_TIMEOUT_MINUTES, SIM_KEYS, SimConfig)
from common.config.reader import Reader, json_type
from common.config.topas import read_topas

_SIM_ID_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?!-))*[A-Za-z0-9]$")


def _check_sim_id(r: Reader, sim_id: str | None) -> None:
    if sim_id is None:
        return
    fix = ("use 3-%d letters, digits and single hyphens, starting and ending with a letter or "
           "digit (it names the Batch pool/job and the blob container)" % MAX_SIM_ID)
    if len(sim_id) < 3 or len(sim_id) > MAX_SIM_ID:
        r.bad("SIM_ID", f"{sim_id!r} has {len(sim_id)} characters", fix)
    elif not _SIM_ID_RE.match(sim_id):
        r.bad("SIM_ID", f"{sim_id!r} cannot name a blob container and Batch ids", fix)


def _relative_inside(r: Reader, key: str, value: str | None, root: Path | None,
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
        r.bad(key, f"{value!r} is not inside {display(root)}",
              "give a path relative to LOCAL_SIM_PATH that stays inside it")
        return None
    if must_be_file and not candidate.is_file():
        r.bad(key, f"{value!r} does not exist in {display(root)}",
              "check the name, or put the script into the simulation folder")
        return None
    return relative.as_posix()


def _patterns(r: Reader) -> tuple[str, ...]:
    value = r.data.get("OUTPUT_FILE_PATTERNS")
    fix = 'list the files each task writes, e.g. ["*.csv", "phsp_*"]'
    if value is None:
        r.bad("OUTPUT_FILE_PATTERNS", "is missing", fix)
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        r.bad("OUTPUT_FILE_PATTERNS", f"must be a list of strings, not {json_type(value)}", fix)
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


def read_sim(path: Path, data: Mapping[str, Any], problems: Problems,
              for_reducer: bool, backend: str | None) -> SimConfig | None:
    r = Reader(path, data, problems)
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
    topas = read_topas(r, sim_path, seed_files)
    auto_delete = r.boolean("AUTO_DELETE_POOL", True, "use true (Batch deletes the pool when the "
                            "job ends: nothing bills after a crash) or false (keep a named pool "
                            "for reuse)")
    slots = r.integer("TASK_SLOTS_PER_NODE", 1, 1, 256, "use the tasks one node runs at once, 1-256")
    retries = r.integer("MAX_TASK_RETRIES", 0, 0, 100, "use how often Batch retries a failed task, 0-100")
    results = _results_path(r, sim_path)
    fan_in = r.integer("REDUCER_FAN_IN", DEFAULT_REDUCER_FAN_IN, 2, MAX_REDUCER_FAN_IN,
                       f"use how many runs one reducer task merges, 2-{MAX_REDUCER_FAN_IN} "
                       f"(default {DEFAULT_REDUCER_FAN_IN})")
    reducer_nodes = r.integer("REDUCER_NODE_COUNT", 1, 1, MAX_NODES,
                              f"use a node count for the reducer's pool from 1 to {MAX_NODES}")
    goals = read_goals(r, tasks)
    check_goals(r, goals, patterns, nodes)
    download = _download_choice(r)
    if nodes == 0 and not goals.spot_nodes:
        r.bad("POOL_NODE_COUNT", "is 0 and there are no Spot nodes (SPOT_NODE_COUNT)",
              f"use a node count from 1 to {MAX_NODES}, or set SPOT_NODE_COUNT")
    if None in (sim_id, nodes, tasks, start, sim_path, run_script, timeout, results, slots,
                retries, fan_in, reducer_nodes) or not patterns:
        return None
    return SimConfig(path=path, sim_id=sim_id, pool_node_count=nodes, task_count=tasks,
                     starting_node=start, pool_vm_size=vm_size, local_sim_path=sim_path,
                     run_script=run_script, reducer_script=reducer_script,
                     reducer_path=reducer_path, output_file_patterns=patterns,
                     timeout_minutes=timeout, local_results_path=results,
                     task_slots_per_node=slots, max_task_retries=retries,
                     seed_parameter_files=seed_files, auto_delete_pool=auto_delete, goals=goals,
                     topas=topas, reducer_fan_in=fan_in, reducer_node_count=reducer_nodes,
                     download_task_outputs=download)


def _download_choice(r: Reader) -> str | None:
    fix = (f"use one of: {', '.join(map(repr, DOWNLOAD_CHOICES))}, or remove the key to be "
           "asked (the question says how much)")
    value = r.string("DOWNLOAD_TASK_OUTPUTS", False, fix)
    if value is not None and value not in DOWNLOAD_CHOICES:
        r.bad("DOWNLOAD_TASK_OUTPUTS", f"is {value!r}", fix)
        return None
    return value


def _results_path(r: Reader, sim_path: Path | None) -> Path | None:
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


def _seed_files(r: Reader, sim_path: Path | None) -> tuple[str, ...]:
    value = r.data.get("SEED_PARAMETER_FILES")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        r.bad("SEED_PARAMETER_FILES", f"must be a list of file names, not {json_type(value)}",
              'list the TOPAS parameter files that set i:Ts/Seed, e.g. ["main.txt"]')
        return ()
    found = [_relative_inside(r, "SEED_PARAMETER_FILES", v.strip(), sim_path, must_be_file=True)
             for v in value]
    return tuple(f for f in found if f is not None)


def _sim_path(r: Reader) -> Path | None:
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


def _reducer(r: Reader, for_reducer: bool) -> tuple[str | None, Path | None]:
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
