"""appconfig.json + simconfig.json -> one frozen, validated Settings, before any effect.

Every problem found is collected, so a user fixes a config in one go: each becomes one line
`<file>: <KEY>: <what is wrong>: <how to fix it>` and the script exits 2. Secrets are held in
`Secret`, whose str() and repr() never show the value; environment variables of the same
name win over the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from common.config.app import read_app
from common.config.files import Problems, display, read_json_object
from common.config.model import (APP_KEYS, BACKENDS, BUILTIN_TOPAS, MAX_ENTRA_TIMEOUT_MINUTES,
                                 MAX_SIM_ID, SAS_MARGIN_MINUTES, SECRET_KEYS, SIM_KEYS, AppConfig, PoolImage, Secret, SimConfig,
                                 Settings)
from common.config.reader import Reader
from common.config.sim import read_sim

# The names the rest of the tool takes from here.
__all__ = ["APP_KEYS", "BACKENDS", "BUILTIN_TOPAS", "MAX_SIM_ID", "SECRET_KEYS", "SIM_KEYS",
           "AppConfig", "PoolImage", "Secret", "SimConfig", "Settings", "find_appconfig",
           "load_settings"]


def find_appconfig(simconfig: Path, explicit: Path | None) -> Path:
    """--appconfig, else appconfig.json beside the simconfig, else ./appconfig.json."""
    if explicit is not None:
        return explicit
    beside = simconfig.parent / "appconfig.json"
    if os.path.lexists(beside):  # a FIFO, a folder or a broken link there is named, not skipped
        return beside
    return Path("appconfig.json")


def _not_found(simconfig: Path, explicit: Path | None, chosen: Path) -> tuple[str, str]:
    """What to say when the appconfig is not there: where it was looked for, and --appconfig."""
    if explicit is not None:
        return "file not found (given with --appconfig)", "check the path given to --appconfig"
    beside = simconfig.parent / "appconfig.json"
    return (f"file not found: looked beside the simconfig ({beside.absolute()}) and in the "
            f"current folder ({chosen.absolute()})",
            "pass --appconfig PATH, or put appconfig.json beside the simconfig")


def load_settings(simconfig: Path, appconfig: Path | None = None, *,
                  backend: str | None = None, for_reducer: bool = False,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Read and check both files; raise ToolError(exit 2) listing every problem found."""
    env = os.environ if env is None else env
    problems = Problems()
    if backend is not None and backend not in BACKENDS:
        problems.add("--backend", None, f"{backend!r} is not a backend",
                     f"use one of: {', '.join(BACKENDS)}")
        problems.raise_if_any()
    app_path = find_appconfig(simconfig, appconfig)
    app_data = read_json_object(app_path, problems, _not_found(simconfig, appconfig, app_path))
    sim_data = read_json_object(simconfig, problems)
    app = read_app(app_path, app_data, problems, backend, env) if app_data is not None else None
    chosen = app.backend if app else backend
    sim = (read_sim(simconfig, sim_data, problems, for_reducer, chosen)
           if sim_data is not None else None)
    if for_reducer and app_data is not None and sim_data is not None:
        _check_reducer_source(Reader(simconfig, sim_data, problems),
                              Reader(app_path, app_data, problems))
    if app is not None and sim is not None and app_data.get("LOCAL_STORAGE_PATH"):
        _check_storage_apart(Reader(app_path, app_data, problems), app, sim)
    if app is not None and sim is not None and sim_data is not None:
        _check_delegation_timeout(Reader(simconfig, sim_data, problems), app, sim)
        if app.backend == "azure" and app.registry_identity and sim.auto_delete_pool:
            Reader(simconfig, sim_data, problems).bad(
                "AUTO_DELETE_POOL", "is true (or missing), but an auto pool cannot carry "
                f"REGISTRY_IDENTITY (from {display(app_path)}): Batch gives pools managed "
                "identities only when they are made through Azure Resource Manager",
                f"set it to false and create the pool {sim.sim_id}-workers with the identity "
                "(README: 'Images at scale'), or pull with DOCKER_USER/DOCKER_TOKEN")
    problems.raise_if_any()
    assert app is not None and sim is not None
    return Settings(app=app, sim=sim)


def _check_storage_apart(r: Reader, app: AppConfig, sim: SimConfig) -> None:
    """The local backend's storage and the simulation folder must not hold each other: the
    zip would pack the storage, or leave the whole simulation out."""
    storage, folder = app.local_storage_path, sim.local_sim_path
    value = r.data.get("LOCAL_STORAGE_PATH")
    fix = "put it outside the simulation folder (or remove the key: .localbatch beside " \
          f"{r.where})"
    if storage == folder or folder in storage.parents:
        r.bad("LOCAL_STORAGE_PATH", f"{value!r} is inside the simulation folder "
              f"{display(folder)} (LOCAL_SIM_PATH)", fix)
    elif storage in folder.parents:
        r.bad("LOCAL_STORAGE_PATH", f"{value!r} holds the simulation folder {display(folder)} "
              "(LOCAL_SIM_PATH)", fix)


def _check_delegation_timeout(r: Reader, app: AppConfig, sim: SimConfig) -> None:
    """Without a storage key the nodes' SAS URLs are signed with a user delegation key (7 days
    at most), and must outlive the timeout by the margin: a longer timeout would leave the
    campaign's last hours with URLs that no longer work. Refused, not silently shortened."""
    if app.backend != "azure" or app.storage_account_key is not None:
        return
    if sim.timeout_minutes > MAX_ENTRA_TIMEOUT_MINUTES:
        r.bad("TIMEOUT_MINUTES",
              f"{sim.timeout_minutes:g} minutes is longer than storage can sign for without "
              f"STORAGE_ACCOUNT_KEY (the nodes' SAS URLs live {SAS_MARGIN_MINUTES // 60} hours "
              "past the timeout and a user delegation key at most 7 days)",
              f"use at most {MAX_ENTRA_TIMEOUT_MINUTES} minutes, or set STORAGE_ACCOUNT_KEY")


def _check_reducer_source(sim: Reader, app: Reader) -> None:
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
