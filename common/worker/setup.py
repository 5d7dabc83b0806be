"""What each TOPAS run is told, written into its parameter files the way the seed is.

Pure builders (no I/O): from the settings (TOPAS_THREADS, HISTORIES_PER_TASK, what the
files named in SEED_PARAMETER_FILES set themselves, whether Geant4 data is staged) to

- the lines of the task's shell script that set, in the task's own copy of each file,
  `i:Ts/Seed`, `i:Ts/NumberOfThreads`, `i:So/<source>/NumberOfHistoriesInRun` and
  `s:Ts/G4DataDirectory` — replacing the line or adding it, with shell built-ins only (an
  image without awk or sed runs them) — and that source the Geant4 data's locations;
- RunSetup, what the manifest records for every run of a job;
- the lines `--dry-run` prints about them.

The user's own setting wins: a file that (with its includes) sets Ts/NumberOfThreads or its
source's NumberOfHistoriesInRun keeps it, and the dry run says so. Ts/G4DataDirectory is
always the node's copy of the data: a path on the user's machine means nothing on a node.
"""
from __future__ import annotations

import shlex
from dataclasses import replace

from common.config import Settings
from common.config.topas import DATA_DIRECTORY, THREADS, FileSettings, histories_name
from common.geant4.stage import ENV_FILE
from common.model import RunSetup

PREPARED = "$AZ_BATCH_JOB_PREP_WORKING_DIR"

# Sets a parameter line in a file: `set_param FILE PATTERN1 PATTERN2 LINE` replaces every line
# matching either pattern (after leading blanks) by LINE, or adds LINE at the end.
# The patterns are case patterns (TOPAS names are case-insensitive); shell built-ins only.
SET_PARAM = ('set_param() { _nl=$(printf "\\n_"); _nl=${_nl%_}; _out=; _found=0; '
             'while IFS= read -r _line || [ -n "$_line" ]; do '
             '_t=${_line#"${_line%%[![:space:]]*}"}; '
             'case $_t in $2|$3) _line=$4; _found=1;; esac; '
             '_out="$_out$_line$_nl"; done < "$1"; '
             '[ "$_found" = 1 ] || _out="$_out$4$_nl"; '
             'printf "%s" "$_out" > "$1"; }')


def name_pattern(name: str) -> tuple[str, str]:
    """Case patterns for `<type>:<name> =` with a one- or two-letter type, any case."""
    body = ""
    for char in name:
        if char.isalpha():
            body += f"[{char.lower()}{char.upper()}]"
        elif char in "*?[]\\":
            body += f"[{char}]"
        else:
            body += char
    rest = body + "[=[:space:]]*"
    return f"[a-zA-Z]:{rest}", f"[a-zA-Z][a-zA-Z]:{rest}"


def _set(file: str, name: str, line: str) -> str:
    first, second = name_pattern(name)
    return f"set_param {shlex.quote(file)} {shlex.quote(first)} {shlex.quote(second)} {line}"


SEED = "Ts/Seed"
SET_SEED = ('set_seed() { set_param "$1" ' + " ".join(shlex.quote(p) for p in name_pattern(SEED))
            + ' "i:Ts/Seed = $SIM_SEED"; }')


def seed_lines(seed_files: tuple[str, ...]) -> list[str]:
    """The task's lines that write its seed into each file (none without files)."""
    if not seed_files:
        return []
    return [SET_PARAM, SET_SEED] + [f"set_seed {shlex.quote(f)}" for f in seed_files]


# ---------------------------------------------------------------------------- the plan


def with_node_threads(settings: Settings, threads: int | None) -> Settings:
    """The settings, knowing how many cores each task has on a node (None: not known)."""
    topas = replace(settings.sim.topas, node_threads=threads)
    return replace(settings, sim=replace(settings.sim, topas=topas))


def threads_for(settings: Settings) -> tuple[int | None, str]:
    """(threads per TOPAS run, where the number comes from); None: counted on the node."""
    topas, slots = settings.sim.topas, settings.sim.task_slots_per_node
    if topas.threads is not None:
        return topas.threads, "TOPAS_THREADS"
    per = f"{slots} task slots" if slots > 1 else "1 task slot"
    if topas.node_threads is not None:
        return topas.node_threads, f"the node's cores / {per}"
    return None, f"each node: its cores (nproc) / {per}"


def _sets_threads(found: FileSettings) -> bool:
    return found.threads is None


def _histories_source(settings: Settings, found: FileSettings) -> str | None:
    """The source HISTORIES_PER_TASK is written for in this file, or None."""
    if settings.sim.topas.histories is None or found.histories:
        return None
    return found.source


def _data(settings: Settings) -> bool:
    return bool(settings.app.geant4_data_dir or settings.app.geant4_data_url)


def _runs_per_history(found: FileSettings) -> int | None:
    times = found.sequential_times
    if times is None:
        return 1
    return times.integer if times.integer and times.integer > 0 else None


def run_setup(settings: Settings) -> RunSetup | None:
    """What the runs are told, from the first of SEED_PARAMETER_FILES (the run's main
    file); None without parameter files."""
    files = settings.sim.topas.files
    if not files:
        return None
    found = files[0]
    if found.threads is not None:
        threads, threads_from = found.threads.integer, f"{found.threads.file} (your setting)"
    else:
        threads, threads_from = threads_for(settings)
    times = _runs_per_history(found)
    source = _histories_source(settings, found)
    if source is not None:
        per_run = settings.sim.topas.histories
        histories_from = "HISTORIES_PER_TASK"
    else:
        counts = [p.integer for p in found.histories]
        per_run = sum(counts) if counts and None not in counts else None  # type: ignore[arg-type]
        histories_from = ", ".join(sorted({p.file for p in found.histories})) or "not set"
    histories = per_run * times if per_run is not None and times is not None else None
    if histories is not None and times and times > 1:
        histories_from += f" (x {times} sequential times)"
    return RunSetup(threads, threads_from, histories, histories_from)


def environment_lines(settings: Settings) -> list[str]:
    """The task's lines before its parameter files are written: where the Geant4 data is
    (from the job preparation's env file), and TOPAS_THREADS."""
    sim = settings.sim
    lines: list[str] = []
    if _data(settings):
        env = f'"{PREPARED}/{ENV_FILE}"'
        lines += [f'[ -f {env} ] || {{ echo "batch-campaigns: this node has no Geant4 data '
                  f'for the task ({ENV_FILE} is missing from the job preparation)" >&2; exit 1; }}',
                  f". {env}"]
    if any(_sets_threads(f) for f in sim.topas.files):
        number, _ = threads_for(settings)
        if number is not None:
            lines.append(f"TOPAS_THREADS={number}")
        else:
            lines += [f"TOPAS_THREADS=$(( $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN "
                      f"2>/dev/null || echo 1) / {sim.task_slots_per_node} ))",
                      '[ "$TOPAS_THREADS" -ge 1 ] || TOPAS_THREADS=1']
        lines.append("export TOPAS_THREADS")
    return lines


def parameter_lines(settings: Settings) -> list[str]:
    """The task's lines that write threads, histories and the data directory into each of
    SEED_PARAMETER_FILES (after seed_lines, which defines set_param)."""
    lines: list[str] = []
    for found in settings.sim.topas.files:
        if _sets_threads(found):
            lines.append(_set(found.file, THREADS, '"i:Ts/NumberOfThreads = $TOPAS_THREADS"'))
        source = _histories_source(settings, found)
        if source is not None:
            line = f"i:{histories_name(source)} = {settings.sim.topas.histories}"
            lines.append(_set(found.file, histories_name(source), shlex.quote(line)))
        if _data(settings):
            lines.append(_set(found.file, DATA_DIRECTORY,
                              '"s:Ts/G4DataDirectory = \\"$TOPAS_G4_DATA_DIR\\""'))
    return lines


def describe(settings: Settings) -> list[str]:
    """For --dry-run: what each parameter file gets, and what it keeps of its own."""
    files = settings.sim.topas.files
    if not files:
        return []
    number, origin = threads_for(settings)
    lines = []
    for found in files:
        told, kept = ["i:Ts/Seed (SIM_SEED)"], []
        if found.threads is None:
            told.append(f"i:Ts/NumberOfThreads = {number if number is not None else '$TOPAS_THREADS'}"
                        f" ({origin})")
        else:
            kept.append(f"Ts/NumberOfThreads = {found.threads.value} ({found.threads.file})"
                        + (" — TOPAS_THREADS is not applied" if settings.sim.topas.threads else ""))
        source = _histories_source(settings, found)
        if source is not None:
            told.append(f"i:{histories_name(source)} = {settings.sim.topas.histories:,} "
                        "(HISTORIES_PER_TASK)")
        for parameter in found.histories:
            kept.append(f"{parameter.name} = {parameter.value} ({parameter.file})"
                        + (" — HISTORIES_PER_TASK is not applied"
                           if settings.sim.topas.histories else ""))
        if _data(settings):
            told.append("s:Ts/G4DataDirectory = the node's copy of the Geant4 data"
                        + (f" (replacing {found.data_directory.value} from "
                           f"{found.data_directory.file})" if found.data_directory else ""))
        lines.append(f"  {found.file}: each task sets {'; '.join(told)}")
        if kept:
            lines.append(f"  {found.file}: your own setting wins: {'; '.join(kept)}")
        if found.unread:
            lines.append(f"  {found.file}: includes not found here (not read): {', '.join(found.unread)}")
    setup = run_setup(settings)
    if setup is not None:
        histories = f"{setup.histories:,}" if setup.histories is not None else "not known"
        lines.append(f"  each run: {setup.threads if setup.threads is not None else 'nproc/slots'}"
                     f" thread(s) ({setup.threads_from}), {histories} histories "
                     f"({setup.histories_from}) — recorded in the manifest")
    return ["TOPAS parameters:"] + lines


def notes(settings: Settings) -> list[str]:
    """For the run itself: what each run is told, and where the files' own setting wins."""
    lines = describe(settings)[1:]
    return [line.strip() for line in lines if "your own setting wins" in line or "each run:" in line]
