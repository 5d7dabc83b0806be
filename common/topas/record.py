"""The record a merge leaves beside each merged scorer: `<file>.merge.json`.

A merged Sum-only file looks like one run of its scorer, but stands for many runs and
their histories. Re-merging merged outputs (say, two halves of a campaign) must weight
each by the histories it stands for, not by one run's `--histories`. The TOPAS file
itself is left as TOPAS writes it (other readers would choke on an extra header line);
the record beside it holds the number of runs and histories, and a later merge reads it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import ToolError

RECORD_SUFFIX = ".merge.json"
_KIND = "common.topas merge record"
_VERSION = 1


@dataclass(frozen=True)
class MergeRecord:
    """What a merged file stands for."""

    runs: int
    histories: int | None  # None when the files did not say and --histories was not given
    inconsistent_runs: tuple[str, ...] = ()  # merged anyway (--allow-inconsistent)

    def histories_for(self, per_run: int | None) -> int | None:
        """The histories this merged file stands for; from `per_run` (--histories, the
        histories of each original run) when the record does not know them."""
        if self.histories is not None:
            return self.histories
        return None if per_run is None else per_run * self.runs


def record_path(merged: Path) -> Path:
    """Where the record of a merged file (CSV, .binheader) lies."""
    merged = Path(merged)
    return merged.with_name(merged.name + RECORD_SUFFIX)


def write_record(merged: Path, record: MergeRecord) -> Path:
    """Write the record beside `merged` (complete or not at all); its path."""
    path = record_path(merged)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"kind": _KIND, "version": _VERSION, "runs": record.runs,
                                   "histories": record.histories,
                                   "inconsistent_runs": list(record.inconsistent_runs)},
                                  indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def read_record(merged: Path) -> MergeRecord | None:
    """The record beside `merged`, None if there is none; ToolError if unreadable."""
    path = record_path(merged)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") != _KIND:
            raise ValueError("not a merge record")
        runs, histories = data["runs"], data["histories"]
        if not isinstance(runs, int) or runs < 1 or not (
                histories is None or (isinstance(histories, int) and histories >= 0)):
            raise ValueError("runs or histories out of range")
        return MergeRecord(runs=runs, histories=histories,
                           inconsistent_runs=tuple(data.get("inconsistent_runs", ())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ToolError(f"{path}: unreadable merge record ({error}); delete it if the file "
                        "beside it is not a merged output") from error
