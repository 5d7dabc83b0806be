"""The campaign manifest: what this tool created, uploaded, deleted and downloaded.

One small JSON file per SIM_ID beside the simconfig (`<SIM_ID>.campaign.json`), written
before the first effect and after every one, so a closed terminal, a crash or Ctrl-C never
loses track of a pool that bills or of results not yet saved: `--status`, `--attach` and
`--cleanup` start from it. It holds names, counts and paths, never a secret.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

WORKERS, REDUCER = "workers", "reducer"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    kind: str  # WORKERS or REDUCER
    pool_id: str | None  # None until an auto pool has been given its id by the service
    task_ids: tuple[str, ...]
    task_indices: tuple[int, ...]
    auto_pool: bool = False  # the pool is deleted by the service when the job ends
    created: str = field(default_factory=_now)
    job_deleted: bool = False
    pool_deleted: bool = False
    failed_indices: tuple[int, ...] = ()  # task indices that failed, kept after the job is gone


@dataclass(frozen=True)
class Manifest:
    sim_id: str
    backend: str
    container: str
    simconfig: str
    created: str = field(default_factory=_now)
    uploaded: tuple[str, ...] = ()
    jobs: tuple[JobRecord, ...] = ()
    downloads: tuple[str, ...] = ()
    container_deleted: bool = False
    events: tuple[str, ...] = ()

    def latest(self, kind: str) -> JobRecord | None:
        found = [j for j in self.jobs if j.kind == kind]
        return found[-1] if found else None

    def open_jobs(self) -> list[JobRecord]:
        """Jobs whose job or pool was not deleted by this tool (they may still cost money)."""
        return [j for j in self.jobs if not j.job_deleted or not (j.pool_deleted or j.auto_pool)]


def manifest_path(simconfig: Path, sim_id: str) -> Path:
    return simconfig.resolve().parent / f"{sim_id}.campaign.json"


def _to_json(manifest: Manifest) -> dict[str, Any]:
    return asdict(manifest)


def _from_json(data: dict[str, Any]) -> Manifest:
    jobs = tuple(JobRecord(**{**j, "task_ids": tuple(j["task_ids"]),
                              "task_indices": tuple(j["task_indices"]),
                              "failed_indices": tuple(j.get("failed_indices", ()))})
                 for j in data["jobs"])
    return Manifest(**{**data, "jobs": jobs, "uploaded": tuple(data["uploaded"]),
                       "downloads": tuple(data["downloads"]), "events": tuple(data["events"])})


class ManifestFile:
    """The manifest on disk; every change is written at once, whole (temp file + rename)."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: Path, fresh: Manifest) -> "ManifestFile":
        """The existing manifest of this SIM_ID (a campaign can be extended), or a new one."""
        existing = load(path)
        made = cls(path, existing if existing and existing.sim_id == fresh.sim_id else fresh)
        if made.manifest.container_deleted:  # a new campaign in a container made anew
            made.manifest = replace(made.manifest, container_deleted=False, uploaded=())
        return made

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(_to_json(self.manifest), handle, indent=2)
        os.replace(tmp, self.path)

    def update(self, **changes: Any) -> None:
        self.manifest = replace(self.manifest, **changes)
        self.save()

    def note(self, event: str) -> None:
        self.update(events=self.manifest.events + (f"{_now()} {event}",))

    def uploaded(self, blob: str) -> None:
        if blob not in self.manifest.uploaded:
            self.update(uploaded=self.manifest.uploaded + (blob,))

    def add_job(self, record: JobRecord) -> None:
        others = tuple(j for j in self.manifest.jobs if j.job_id != record.job_id)
        self.update(jobs=others + (record,))

    def change_job(self, job_id: str, **changes: Any) -> None:
        self.update(jobs=tuple(replace(j, **changes) if j.job_id == job_id else j
                               for j in self.manifest.jobs))

    def downloaded(self, folder: Path) -> None:
        if str(folder) not in self.manifest.downloads:
            self.update(downloads=self.manifest.downloads + (str(folder),))


def load(path: Path) -> Manifest | None:
    try:
        return _from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        from common.errors import ToolError
        raise ToolError(f"{path}: not a campaign manifest this tool can read ({exc}): move it "
                        "aside; the pools and jobs it named must then be checked by hand",
                        exit_code=2) from None
