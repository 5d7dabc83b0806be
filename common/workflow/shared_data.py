"""The campaign's Geant4 data, as a workflow step: checked before anything is created,
put where the backend's nodes fetch it once the campaign's container exists, described by
--dry-run.

GEANT4_DATA_DIR on a backend with a shared data container (Azure): uploaded there once,
keyed by content (common/geant4/upload.py); on one without (local): used in place. GEANT4_DATA_URL:
already in the storage account, listed and keyed. Either way the worker job carries the
SharedData, and the backend gets it onto each node before the job's first task there.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import usage_error
from common.geant4.data import DataFolder, content_keys, scan
from common.geant4.stage import ENV_FILE
from common.geant4.upload import STAGE_BLOB, STAGE_SCRIPT, from_listing, in_place, publish
from common.model import SharedData
from common.transfer import upload_if_changed
from common.workflow.context import Context, Run


@dataclass(frozen=True)
class DataPlan:
    folder: DataFolder | None = None  # GEANT4_DATA_DIR, scanned
    listed: SharedData | None = None  # GEANT4_DATA_URL, listed


def check_data(ctx: Context) -> DataPlan | None:
    """The configured data, checked (exit 2 before anything is created); None without."""
    app = ctx.settings.app
    if app.geant4_data_dir is not None:
        return DataPlan(folder=scan(app.geant4_data_dir))
    if app.geant4_data_url is None:
        return None
    found = ctx.backend.store_at(app.geant4_data_url)
    if found is None:
        raise usage_error(f"{app.path.name}: GEANT4_DATA_URL: {app.geant4_data_url} is not in the "
                          "storage account the tool uses (STORAGE_ACCOUNT_NAME / "
                          "STORAGE_ACCOUNT_URL): copy the data sets there, or use GEANT4_DATA_DIR")
    store, prefix = found
    return DataPlan(listed=from_listing(store, prefix, app.geant4_data_url))


def stage_data(run: Run, plan: DataPlan | None) -> SharedData | None:
    """Put the data where the nodes fetch it (once for all campaigns); the job's SharedData."""
    if plan is None:
        return None
    ctx = run.ctx
    if plan.listed is not None:
        shared = plan.listed
        ctx.ui.info(f"Geant4 data: {len(shared.datasets)} data set(s), {shared.bytes:,} bytes at "
                    f"GEANT4_DATA_URL (key {shared.key}): nothing to upload")
    else:
        assert plan.folder is not None
        store = ctx.backend.shared_data_store()
        if store is None:
            shared = in_place(plan.folder)
            ctx.ui.info(f"Geant4 data: {len(shared.datasets)} data set(s) used in place in "
                        f"{plan.folder.path}")
            return shared
        ctx.step("data", f"Geant4 data: {len(plan.folder.datasets)} data set(s), "
                 f"{plan.folder.bytes:,} bytes, to container {store.container} (shared by every "
                 "campaign; no cleanup deletes it)")
        keys = content_keys(plan.folder, ctx.settings.app.secrets(), say=ctx.ui.info)
        published = publish(store, plan.folder, keys, ctx.settings.app.secrets(), say=ctx.ui.info)
        shared = published.shared
        ctx.ui.info(f"Geant4 data {shared.key}: uploaded {published.sent_bytes:,} bytes"
                    if published.sent_bytes else
                    f"Geant4 data {shared.key}: already in {store.container}: 0 bytes uploaded")
        run.record.note(f"Geant4 data {shared.key} in container {store.container} (shared, kept): "
                        f"{published.sent_bytes} bytes uploaded")
    run.record.uploaded(STAGE_BLOB)  # the node's side, into this campaign's container
    upload_if_changed(run.store, STAGE_SCRIPT, STAGE_BLOB)
    return shared


def describe_data(ctx: Context) -> list[str]:
    """For --dry-run: how the Geant4 data reaches each task (nothing is read remotely)."""
    app = ctx.settings.app
    if app.geant4_data_dir is None and app.geant4_data_url is None:
        return []
    store = ctx.backend.shared_data_store()
    if app.geant4_data_dir is not None:
        folder = scan(app.geant4_data_dir)
        names = ", ".join(d.folder for d in folder.datasets)
        lines = [f"Geant4 data: {len(folder.datasets)} data set(s), {folder.bytes:,} bytes in "
                 f"{folder.path}: {names}"]
        if folder.ignored:
            lines.append(f"  not data sets, left alone: {', '.join(folder.ignored)}")
        if folder.missing_for_topas():
            lines.append(f"  note: TOPAS's default physics also reads {', '.join(folder.missing_for_topas())}, "
                         "which the folder lacks")
        if store is None:
            return lines + [f"  used in place: each job's preparation checks every data set's files "
                            f"and sizes, then tasks read {folder.path} itself (the local backend "
                            "cannot make it read-only: tasks run as you, and nothing is changed in it)"]
        lines.append(f"  uploaded when the campaign starts, once: each data set a .tar.gz named by "
                     f"its content into container {store.container} (shared by every campaign, "
                     "never deleted by a cleanup); a data set already there is not sent again")
    else:
        lines = [f"Geant4 data: at GEANT4_DATA_URL {app.geant4_data_url} (listed and checked "
                 "when the campaign starts; nothing is uploaded)"]
    return lines + [
        "  each node: the job preparation task (on the node's OS, before the job's first task "
        "there, again on a re-created Spot node) fetches it into "
        "$AZ_BATCH_NODE_SHARED_DIR/geant4-data/<key>/ once, verifies sizes and MD5, makes it "
        "read-only; a missing or damaged data set fails the preparation naming it",
        f"  each task: sees that folder read-only (container bind mount of the node's shared "
        f"folder) and sources {ENV_FILE}: TOPAS_G4_DATA_DIR, one G4...DATA variable per data set "
        "(G4LEDATA, G4ENSDFSTATEDATA, ...), and s:Ts/G4DataDirectory in SEED_PARAMETER_FILES"]


def preview(ctx: Context) -> SharedData | None:
    """A stand-in SharedData for --dry-run's request bodies (its key is made at the start)."""
    app = ctx.settings.app
    if app.geant4_data_dir is None and app.geant4_data_url is None:
        return None
    store = ctx.backend.shared_data_store()
    if app.geant4_data_dir is not None:
        folder = scan(app.geant4_data_dir)
        if store is None:
            return in_place(folder)
        return SharedData(key="<content-key>", datasets=tuple((d.folder, d.env) for d in folder.datasets),
                          layout="archives", container=store.container, bytes=folder.bytes)
    found = ctx.backend.store_at(app.geant4_data_url or "")
    container, prefix = (found[0].container, found[1]) if found else (None, "")
    return SharedData(key="<listing-key>", datasets=(), layout="folder", container=container,
                      prefix=prefix)
