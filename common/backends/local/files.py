"""Task files on a local node: inputs staged from the storage folder, outputs collected back.

Like Batch's resource files and output files, from the local agent's side: inputs are
copied into the task's working directory; output patterns are matched there and the files
copied to the container folder, never following a link out of the working directory and
never letting two patterns overwrite one blob.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path, PurePosixPath

from common.model import SUCCESS, OutputFile, TaskSpec
from common.packaging import NotAllowed, open_inside

_WILDCARD = re.compile(r"[*?\[]")


def stage_inputs(task: TaskSpec, container: Path, wd: Path) -> None:
    """Copy the task's input blobs from the storage folder, as Batch resource files do."""
    wd.mkdir(parents=True, exist_ok=True)
    for item in task.inputs:
        base = wd / item.path
        if item.is_prefix:  # every blob whose name starts with the prefix, as Batch lists them
            folder, _, start = item.blob.rpartition("/")
            for source in sorted((container / folder).rglob("*") if (container / folder).is_dir() else []):
                name = source.relative_to(container).as_posix()
                if source.is_file() and name.startswith(item.blob):
                    _copy(source, base / name)
        else:
            source = container / item.blob
            if not source.is_file():
                raise FileNotFoundError(f"blob {item.blob!r} is not in the container")
            _copy(source, base if item.path not in (".", "") else wd / PurePosixPath(item.blob).name)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def matching_files(wd: Path, pattern: str) -> list[tuple[Path, str]]:
    """What an output pattern matches (files, links, FIFOs: not folders), each with its path
    below the pattern's fixed part. Links are not followed here: see _upload."""
    parts = PurePosixPath(pattern).parts
    fixed = []
    for part in parts:
        if _WILDCARD.search(part):
            break
        fixed.append(part)
    base = Path(os.path.normpath(wd.joinpath(*fixed)))
    rest = "/".join(parts[len(fixed):])
    if not rest:
        return [(base, base.name)] if os.path.lexists(base) and not base.is_dir() else []
    return sorted((f, f.relative_to(base).as_posix()) for f in base.glob(rest) if not f.is_dir())


def _confinement(tdir: Path, pattern: str) -> str:
    """The folder no output may come from outside of: the working directory, or the task's
    folder for the tool's own `../stdout.txt` patterns (users' patterns cannot leave wd)."""
    root = tdir if pattern.startswith("../") else tdir / "wd"
    return os.path.realpath(root)


def collect_outputs(task: TaskSpec, tdir: Path, container: Path,
                    succeeded: bool) -> tuple[str | None, str | None]:
    """Copy output files to the container; (failure code, message) if any was not copied.

    A link is followed only while it stays inside the working directory, and two patterns
    bringing two files to one blob name copy neither (nothing is overwritten silently)."""
    chosen: dict[str, tuple[str, Path, str]] = {}  # blob -> (pattern, path, confinement)
    problems: list[str] = []
    for output in task.outputs:
        if output.when == SUCCESS and not succeeded:
            continue
        root = _confinement(tdir, output.pattern)
        for path, relative in matching_files(tdir / "wd", output.pattern):
            blob = _blob_name(output, relative)
            earlier = chosen.get(blob)
            if earlier is None:
                chosen[blob] = (output.pattern, path, root)
            elif os.path.realpath(earlier[1]) != os.path.realpath(path):
                problems.append(f"outputs {earlier[0]!r} and {output.pattern!r} both bring a file "
                                f"to {blob!r}: neither was kept; rename one, or make the patterns "
                                "match different files")
                chosen[blob] = (earlier[0], earlier[1], "")  # "" marks the name as taken twice
    for blob, (pattern, path, root) in chosen.items():
        if root:
            problems += _upload_one(pattern, path, root, container, blob)
    if problems:
        return "FileUploadError", "; ".join(problems)
    return None, None


def _upload_one(pattern: str, path: Path, root: str, container: Path, blob: str) -> list[str]:
    try:
        _upload(path, root, container, blob)
    except NotAllowed as refused:
        return [f"output {pattern!r}: {os.path.relpath(path, root)} {refused.what}: not kept"]
    except OSError as exc:
        return [f"output {pattern!r} not uploaded: {exc}"]
    return []


def _blob_name(output: OutputFile, relative: str) -> str:
    if _WILDCARD.search(output.pattern):
        return output.destination.rstrip("/") + "/" + relative
    return output.destination


def _upload(source: Path, root: str, container: Path, blob: str) -> None:
    with open_inside(source, root) as handle:  # never a link out of root, never a FIFO
        target = container / blob
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.uploading")
        with partial.open("wb") as out:
            shutil.copyfileobj(handle, out, 1 << 20)
    os.replace(partial, target)
