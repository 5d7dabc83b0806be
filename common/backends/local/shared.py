"""The local backend's side of SharedData (the Geant4 data sets): used where they lie.

Tasks here are processes of this machine, so the data folder is not copied: before a job's
first task its preparation checks that every data set is still what the client listed when
the campaign started (each one's files and sizes) — a data set being unpacked, or one that
lost files, fails the preparation with one line naming it — and writes the env file every
task sources (common.geant4.stage.ENV_FILE) with the folder's own paths.

Read-only, as far as this backend goes: nothing is changed in the folder (no mode bits,
no copy), and tasks run as you, so a task could write there; the node's read-only mount
is the Azure backend's. Standard library and common.geant4.stage only: the agent runs it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.geant4.stage import ENV_FILE, env_lines, tree, tree_digest


def place(spec: dict[str, Any] | None, prep_wd: Path) -> str | None:
    """Check the data in place and write the env file into `prep_wd`; why not, or None."""
    if not spec:
        return None
    root = Path(spec["local_path"])
    for folder, files, size, digest in spec.get("checks", []):
        found = tree(root / folder) if (root / folder).is_dir() else []
        if tree_digest(found) != digest:
            have = sum(s for _, s in found)
            return (f"Geant4 data set {folder} in {root} is partial or changed since the campaign "
                    f"started: {len(found):,} of {files:,} files, {have:,} of {size:,} bytes")
    prep_wd.mkdir(parents=True, exist_ok=True)
    (prep_wd / ENV_FILE).write_text(env_lines(str(root), [tuple(d) for d in spec["datasets"]]))
    return None
