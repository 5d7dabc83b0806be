"""The manifest on disk, changed only by locked read-modify-write: every change re-reads the
file under an exclusive lock (lock.py), applies itself, and replaces the file atomically,
so two processes working on one campaign never lose each other's record."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from common.manifest.lock import held
from common.manifest.model import JobRecord, Manifest, RunClaim, now_text
from common.manifest.reading import load

class ManifestFile:
    """The manifest on disk. Every change is applied to what is on disk *now*, under an
    exclusive lock, and written whole (temp file + rename); `manifest` is the latest state."""

    def __init__(self, path: Path, manifest: Manifest,
                 say: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.say = say  # told when the lock must be waited for

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with held(self.lock_path, self.path, self.say):
            yield

    @classmethod
    def open(cls, path: Path, fresh: Manifest,
             say: Callable[[str], None] | None = None) -> "ManifestFile":
        """The existing manifest of this SIM_ID (a campaign can be extended), or a new one."""
        made = cls(path, fresh, say)
        made._change(lambda current: _continued(current, fresh))
        return made

    def _change(self, change: Callable[[Manifest | None], Manifest]) -> None:
        with self._locked():
            current = load(self.path)
            self.manifest = change(current)
            self._write()

    def _write(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(self.manifest), handle, indent=2)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def refresh(self) -> Manifest:
        with self._locked():
            self.manifest = load(self.path) or self.manifest
        return self.manifest

    def update(self, **changes: Any) -> None:
        self._change(lambda m: replace(m or self.manifest, **changes))

    def note(self, event: str) -> None:
        self._change(lambda m: replace(m or self.manifest,
                                       events=(m or self.manifest).events + (f"{now_text()} {event}",)))

    def uploaded(self, blob: str) -> None:
        def add(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            return m if blob in m.uploaded else replace(m, uploaded=m.uploaded + (blob,))
        self._change(add)

    def add_job(self, record: JobRecord) -> None:
        def add(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            return replace(m, jobs=tuple(j for j in m.jobs if j.job_id != record.job_id) + (record,))
        self._change(add)

    def change_job(self, job_id: str, **changes: Any) -> None:
        def change(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            return replace(m, jobs=tuple(replace(j, **changes) if j.job_id == job_id else j
                                         for j in m.jobs))
        self._change(change)

    def downloaded(self, folder: Path) -> None:
        def add(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            return m if str(folder) in m.downloads else replace(m, downloads=m.downloads + (str(folder),))
        self._change(add)

    def claim(self, claim: RunClaim) -> list[RunClaim]:
        """Add this run's claim; returns the other live claims (dead ones are dropped)."""
        others: list[RunClaim] = []

        def add(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            others[:] = [c for c in m.claims if c.token != claim.token and c.alive()]
            return replace(m, claims=tuple(others) + (claim,))
        self._change(add)
        return others

    def release(self, token: str) -> None:
        self._change(lambda m: replace(m or self.manifest, claims=tuple(
            c for c in (m or self.manifest).claims if c.token != token)))


def _continued(current: Manifest | None, fresh: Manifest) -> Manifest:
    if current is None:
        return fresh
    if current.container_deleted:  # a new campaign in a container made anew
        return replace(current, container_deleted=False, uploaded=())
    return current
