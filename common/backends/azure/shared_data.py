"""Pure builders: how a job's SharedData (the Geant4 data sets) reaches its Azure nodes.

Not a pool mount (mountConfiguration, blobfuse): a failed mount leaves the node
"unusable" with no word of which data set is wrong, blobfuse is not offered on every node
image and only admin tasks reach its files by default, a mount's credential (a SAS in the
pool, or a managed identity to set up) has to outlive every node a named pool will ever
start, nothing is verified before the tasks start, and each file Geant4 opens is fetched
on first use. A pool start task is not used either: its SAS would be fixed with the pool,
so a Spot node re-created after it expires could never start.

Instead the job preparation task — which Batch runs on each node before the job's first
task there, and again on a node that was re-created (Spot) or reimaged — runs
common/geant4/stage.py on the node's own OS: it fetches the data once into the node's shared
folder (a later job on the same node finds it and only verifies it), verifies it, makes it
read-only, and fails with one line naming the data set when one is missing or damaged,
so no task of the job starts on that node. Tasks then see only their own folder, the
preparation's (read-only) and the node's shared folder (read-only) in their container
(containerHostBatchBindMounts; Linux nodes mount each at the same path).
"""
from __future__ import annotations

import azure.batch.models as bm

from common.geant4.upload import STAGE_BLOB
from common.model import SharedData

STAGE_LINES = (
    'command -v python3 >/dev/null 2>&1 || { echo "batch-campaigns: this node has no python3 '
    'to fetch the Geant4 data (POOL_IMAGE: use an Ubuntu node image)" >&2; exit 127; }',
    f"python3 {STAGE_BLOB} || exit $?",
)


def staging_command(command: str) -> str:
    """The preparation command with the data staged first (a failure ends it)."""
    return "\n".join(STAGE_LINES) + "\n" + command


def staging_environment(shared: SharedData, source_url: str) -> list[bm.EnvironmentSetting]:
    """What common/geant4/stage.py reads: the data's container (read-only SAS), key and layout."""
    values = [("G4STAGE_SOURCE", source_url), ("G4STAGE_KEY", shared.key),
              ("G4STAGE_LAYOUT", shared.layout)]
    if shared.prefix:
        values.append(("G4STAGE_PREFIX", shared.prefix))
    return [bm.EnvironmentSetting(name=k, value=v) for k, v in values]


def stage_script_file(read_url: str) -> bm.ResourceFile:
    return bm.ResourceFile(http_url=read_url, file_path=STAGE_BLOB)


def isolated_mounts() -> list[bm.ContainerHostBatchBindMountEntry]:
    """The task's own folder (read-write), the job preparation's (the simulation, read-only)
    and the node's shared folder (the Geant4 data, read-only): nothing else of the node."""
    return [bm.ContainerHostBatchBindMountEntry(source="Task", is_read_only=False),
            bm.ContainerHostBatchBindMountEntry(source="JobPrep", is_read_only=True),
            bm.ContainerHostBatchBindMountEntry(source="Shared", is_read_only=True)]
