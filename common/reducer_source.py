"""Where the reducer's code comes from, packed into one archive for the reducer task.

Three sources: `builtin:topas` (this project's merge module, which needs only numpy), a
local folder (REDUCER_PATH), or the git repository GIT_USER/GIT_REPO cloned here on the
user's machine. A git token reaches git through GIT_ASKPASS and the environment, never a
command line, and never travels to the node: only the checked-out files do.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from common.config import BUILTIN_TOPAS, Settings
from common.errors import ToolError
from common.packaging import Archive, build_archive
from common.redaction import redact

_PACKAGE = Path(__file__).resolve().parent  # common/
# What `python -m common.topas` needs on a node: nothing else of the tool.
_BUILTIN_FILES = ("__init__.py", "errors.py")
_ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$BATCH_TOOL_GIT_USER" ;;
  *) printf '%s\\n' "$BATCH_TOOL_GIT_TOKEN" ;;
esac
"""


def describe(settings: Settings) -> str:
    sim = settings.sim
    if sim.reducer_script in (None, BUILTIN_TOPAS):
        return "the built-in TOPAS merge (builtin:topas)"
    if sim.reducer_path is not None:
        return f"{sim.reducer_script} from {sim.reducer_path}"
    return f"{sim.reducer_script} from git repository {redact(git_url(settings))}"


def build_reducer_archive(settings: Settings, workdir: Path) -> Archive:
    """Pack the reducer code into workdir/REDUCER.zip (the task unpacks it into reducer/)."""
    sim, app = settings.sim, settings.app
    staging = workdir / "reducer"
    if sim.reducer_script in (None, BUILTIN_TOPAS):
        _stage_builtin(staging)
    elif sim.reducer_path is not None:
        staging = sim.reducer_path
    else:
        _clone(settings, staging)
        if not (staging / sim.reducer_script).is_file():
            raise ToolError(f"{sim.path.name}: REDUCER_SCRIPT: {sim.reducer_script!r} is not in "
                            f"the repository {app.git_user}/{app.git_repo}: "
                            "check the name, or set REDUCER_PATH", exit_code=2)
    label = "REDUCER_PATH" if staging == sim.reducer_path else "the reducer code"
    return build_archive(staging, workdir / "REDUCER.zip", exclude_files=(app.path,),
                         secrets=app.secrets(), label=label)


def _stage_builtin(staging: Path) -> None:
    target = staging / "common"
    target.mkdir(parents=True)
    for name in _BUILTIN_FILES:
        shutil.copyfile(_PACKAGE / name, target / name)
    shutil.copytree(_PACKAGE / "topas", target / "topas",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def git_url(settings: Settings) -> str:
    app = settings.app
    return f"{app.git_base_url.rstrip('/')}/{app.git_user}/{app.git_repo}.git"


def _clone(settings: Settings, staging: Path) -> None:
    app = settings.app
    askpass = staging.parent / "askpass.sh"
    askpass.write_text(_ASKPASS)
    askpass.chmod(stat.S_IRWXU)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": str(askpass),
           "BATCH_TOOL_GIT_USER": app.git_user or "",
           "BATCH_TOOL_GIT_TOKEN": app.git_token.reveal() if app.git_token else ""}
    # An empty credential.helper empties the list of helpers from every config file, so a
    # `store` helper in the user's ~/.gitconfig never writes the token to ~/.git-credentials.
    command = ["git", "-c", "credential.helper=", "clone", "--quiet", "--depth", "1",
               git_url(settings), str(staging)]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(_safe(settings, f"git clone of {app.git_user}/{app.git_repo} failed: "
                                        f"{exc}")) from None
    finally:
        askpass.unlink(missing_ok=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ToolError(_safe(settings, f"git clone of {git_url(settings)} failed: {last}: check "
                                        "GIT_USER, GIT_REPO and GIT_TOKEN in appconfig.json"))
    shutil.rmtree(staging / ".git", ignore_errors=True)


def _safe(settings: Settings, message: str) -> str:
    """No URL credentials and no secret in a message (git echoes the URL it was given)."""
    return redact(message, settings.app.secrets())
