"""What every step of a workflow gets (Context; Run once a campaign's container and manifest
are open), what it ends with (Outcome), and the few facts several steps word alike: billing,
the commands to run next."""
from __future__ import annotations

import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from common import campaign as cp
from common.backends.base import Backend, BlobStore
from common.config import Settings
from common.manifest import JobRecord, ManifestFile, manifest_path
from common.model import JobKind, JobSpec, Script
from common.prompts import Prompter
from common.ui import Ui

_SCRIPTS = Path(__file__).resolve().parents[2]  # where the two scripts live


@dataclass(frozen=True)
class Options:
    """What the command line asked for beyond the configuration."""

    overwrite: bool = False  # runner: replace runs that exist (old merged result set aside)
    allow_partial: bool = False  # reducer: merge the runs that are there, name the others
    allow_inconsistent: bool = False  # reducer: merge runs that disagree, and record it
    script: Script = Script.RUNNER  # which script runs
    # Options given that every command printed for the campaign must carry to run as
    # printed (--appconfig PATH, --backend NAME), and how questions were answered (--yes,
    # --no-input), carried unless the command is for a person to answer.
    carried: tuple[str, ...] = ()
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Context:
    settings: Settings
    backend: Backend
    prompter: Prompter
    ui: Ui
    started: datetime = field(default_factory=datetime.now)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll_seconds: float = 1.0
    # Test hook: called with each step's name before it runs (fault injection).
    before_step: Callable[[str], None] = lambda step: None
    # Marks the jobs this run creates (so a resent creation knows its own job) and its claim
    # on the manifest (so a second runner knows the campaign is busy).
    run_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    options: Options = field(default_factory=Options)

    @property
    def ids(self) -> cp.CampaignIds:
        return cp.CampaignIds(self.settings.sim.sim_id, self.started.strftime("%Y%m%d%H%M%S"))

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.settings.sim.path, self.settings.sim.sim_id)

    def step(self, name: str, text: str) -> None:
        self.before_step(name)
        self.ui.step(text)


@dataclass(frozen=True)
class Run:
    """One script's work on one campaign, once its container and manifest are open: what
    every step with effects needs together, and the kind of job it makes."""

    ctx: Context
    store: BlobStore
    record: ManifestFile
    kind: JobKind

    @property
    def script(self) -> Script:
        return self.kind.script


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    summary: tuple[str, ...]


def billing_mode(ctx: Context, job: JobSpec | JobRecord) -> str:
    if not ctx.backend.capabilities.bills:
        return f"billing: none ({ctx.backend.name} backend)"
    if job.auto_pool:
        return "billing safety: on — Batch deletes the pool when the job ends, even if this script dies"
    return "billing safety: off (AUTO_DELETE_POOL false) — the pool bills until it is deleted"


def _shortest(path: Path) -> str:
    """A path as typed from here: relative when that is shorter."""
    absolute = str(path)
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return absolute
    return relative if len(relative) < len(absolute) else absolute


def command(ctx: Context, script: Script, *arguments: str, answers: bool = True) -> str:
    """A command line that runs here: this interpreter (the venv's) and the script of a clone,
    or the installed command (`pip install .`), then the simconfig and the options that chose
    the configuration (--appconfig, --backend) — so "Next:" lines work when pasted, outside
    an activated venv too. `answers`: carry --yes/--no-input (not for a person's question)."""
    clone = _SCRIPTS / script.file
    program = ([_shortest(Path(sys.executable)), _shortest(clone)] if clone.is_file()
               else [script.command])
    options = ctx.options
    parts = [*program, _shortest(ctx.settings.sim.path), *arguments, *options.carried,
             *(options.answers if answers else ())]
    return " ".join(shlex.quote(p) for p in parts)


def carried_options(appconfig: Path | None, backend: str | None) -> tuple[str, ...]:
    """The command-line options that chose the configuration, as a later command needs them
    (a path made absolute where relative would be longer)."""
    carried: list[str] = []
    if appconfig is not None:
        carried += ["--appconfig", _shortest(appconfig.absolute())]
    if backend is not None:
        carried += ["--backend", backend]
    return tuple(carried)
