"""The campaign manifest: what this tool created, uploaded, deleted and downloaded.

One small JSON file per SIM_ID beside the simconfig (`<SIM_ID>.campaign.json`), written
before the first effect and after every one, so a closed terminal, a crash or Ctrl-C never
loses track of a pool that bills or of results not yet saved: `--status`, `--attach` and
`--cleanup` start from it. It holds names, counts and paths, never a secret.

Two processes may work on one campaign (a runner and a later `--cleanup`, or two runners
started by mistake): every change is a read-modify-write of the file on disk under an
exclusive lock (fcntl, on a `.lock` file beside it), so no process ever loses another's
record (lock.py: waited for a bounded time, its holder named). A running
script also leaves a *claim* in it (pid, host), which is how a second
runner learns that the campaign is busy. The file is read, not obeyed: every field is
checked (ids by Batch's rules, the container by the storage service's, SIM_ID and backend
against the configuration) and anything else is refused with exit 2, naming the field.

Modules: model (what it holds), reading (checked on every read), file (locked changes),
lock (the lock, a bounded wait, who holds it).
"""
from common.manifest.file import ManifestFile
from common.manifest.model import MAX_TASK_INDEX, JobRecord, Manifest, RunClaim, manifest_path
from common.manifest.reading import check_belongs, load

__all__ = ["MAX_TASK_INDEX", "JobRecord", "Manifest", "ManifestFile", "RunClaim",
           "check_belongs", "load", "manifest_path"]
