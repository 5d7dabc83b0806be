"""Task dependencies and exit conditions, as the spec (2025-06-01) and Microsoft's "Create
task dependencies" page describe them.

- A task with `dependsOn` is scheduled only once every task it depends on has completed and
  satisfied it; until then it stays active. A task named in `taskIds` that the job does not
  have (yet) is waited for.
- `taskIdRanges` select the job's tasks whose ids are integers within the (inclusive)
  range: "1..10" selects "3" and "7", not "5flamingoes"; leading zeros do not count, so
  "4", "04" and "004" are all task 4 and the first of them to complete decides.
- A completed task satisfies its dependants, or blocks them for ever (Batch "does not yet
  support cancellation of dependent tasks"): its `exitConditions` say which through
  `dependencyAction`; the default is satisfy for exit code 0 and block for every other exit
  condition. Which exit options apply: an exit code listed in `exitCodes` or in
  `exitCodeRanges` (it takes precedence over a file upload error), else `fileUploadError`
  for a failed upload, `preProcessingError` for a task that failed to start, and `default`
  for any other failure.
- With the job's `onTaskFailure` `performexitoptionsjobaction`, a failed task's `jobAction`
  (default: terminate for a failure, none for exit code 0) is carried out: terminate ends
  the job with terminateReason "TaskFailed"; disable is not emulated (refused with 501).

Checks made when a task is added (all 400, as the "Batch status and error codes" page and the
spec say): `dependsOn` in a job without `usesTaskDependencies` (TaskDependenciesNotSpecifiedOnJob);
`taskIds` longer than 64,000 characters together (TaskDependencyListTooLong); more
`taskIdRanges` than the knob `max_dependency_ranges` (TaskDependencyRangesTooLong — the page
names the error but not the number, so by default there is no limit); a `dependencyAction`
in a job without task dependencies, or a `jobAction` in a job whose onTaskFailure is
noaction (InvalidPropertyValue).
"""
from __future__ import annotations

from typing import Any

from . import errors
from .knobs import Knobs
from .state import Job, Task

MAX_DEPENDENCY_ID_CHARS = 64000
SATISFY, BLOCK = "satisfy", "block"
PERFORM_EXIT_OPTIONS = "performexitoptionsjobaction"


def _all_exit_options(conditions: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"exitCodes[{i}].exitOptions", m.get("exitOptions") or {})
             for i, m in enumerate(conditions.get("exitCodes") or [])]
    found += [(f"exitCodeRanges[{i}].exitOptions", m.get("exitOptions") or {})
              for i, m in enumerate(conditions.get("exitCodeRanges") or [])]
    found += [(name, conditions[name]) for name in ("preProcessingError", "fileUploadError", "default")
              if conditions.get(name) is not None]
    return found


def check_task(body: dict[str, Any], job: Job, knobs: Knobs, path: str = "") -> None:
    """What a task may ask of its job's dependency and failure settings."""
    uses = bool(job.body.get("usesTaskDependencies"))
    depends = body.get("dependsOn")
    if depends is not None:
        if not uses:
            raise errors.BatchServiceError(
                400, "TaskDependenciesNotSpecifiedOnJob", "A task was specified as depending on "
                "other tasks, but the job did not specify that it would use task dependencies.",
                [("PropertyName", f"{path}dependsOn")])
        ids = depends.get("taskIds") or []
        if sum(len(str(i)) for i in ids) > MAX_DEPENDENCY_ID_CHARS:
            raise errors.BatchServiceError(
                400, "TaskDependencyListTooLong", "A task was specified as depending on other "
                "tasks, but the list of dependencies was too long to be stored.",
                [("PropertyName", f"{path}dependsOn.taskIds")])
        ranges = depends.get("taskIdRanges") or []
        if knobs.max_dependency_ranges is not None and len(ranges) > knobs.max_dependency_ranges:
            raise errors.BatchServiceError(
                400, "TaskDependencyRangesTooLong", "A task was specified as depending on "
                "multiple ranges of task ids, and the list of ranges was too long to be stored.",
                [("PropertyName", f"{path}dependsOn.taskIdRanges")])
        for index, bounds in enumerate(ranges):
            if bounds["start"] > bounds["end"]:  # the docs say nothing: taken as a client bug
                raise errors.invalid_value(f"{path}dependsOn.taskIdRanges[{index}]",
                                           f"{bounds['start']}..{bounds['end']}",
                                           "The start of the range is after its end.")
    failure_mode = job.body.get("onTaskFailure", "noaction")
    for where, options in _all_exit_options(body.get("exitConditions") or {}):
        here = f"{path}exitConditions.{where}"
        if options.get("dependencyAction") is not None and not uses:
            raise errors.invalid_value(f"{here}.dependencyAction", options["dependencyAction"],
                                       "The job does not use task dependencies.")
        action = options.get("jobAction")
        if action is not None and failure_mode != PERFORM_EXIT_OPTIONS:
            raise errors.invalid_value(f"{here}.jobAction", action,
                                       "The job's onTaskFailure is noaction.")
        if action == "disable":
            raise errors.operation_not_supported(f"{here}.jobAction disable (disabling jobs)")


# ---------------------------------------------------------------------------- when tasks end


def exit_options(task: Task) -> tuple[dict[str, Any] | None, bool]:
    """The exit options that apply to a completed task (None: nothing listed applies), and
    whether its exit condition is exit code 0 (the defaults differ)."""
    conditions = task.body.get("exitConditions") or {}
    code, info = task.exit_code, task.failure_info or {}
    if code is not None:
        for mapping in conditions.get("exitCodes") or []:
            if mapping["code"] == code:
                return mapping["exitOptions"], code == 0
        for mapping in conditions.get("exitCodeRanges") or []:
            if mapping["start"] <= code <= mapping["end"]:
                return mapping["exitOptions"], code == 0
    if task.result == "success":
        return None, True
    if str(info.get("code", "")).startswith("FileUpload"):
        return conditions.get("fileUploadError") or conditions.get("default"), False
    if code is None:  # it failed before its command could run
        return conditions.get("preProcessingError") or conditions.get("default"), False
    return conditions.get("default"), False


def dependency_action(task: Task) -> str:
    options, zero = exit_options(task)
    return (options or {}).get("dependencyAction") or (SATISFY if zero else BLOCK)


def job_action(task: Task) -> str:
    options, zero = exit_options(task)
    return (options or {}).get("jobAction") or ("none" if zero else "terminate")


def _integer(task_id: str) -> int | None:
    digits = task_id[1:] if task_id.startswith("-") else task_id
    return int(task_id) if digits.isascii() and digits.isdigit() else None


def _satisfied_by(task: Task | None) -> bool:
    return task is not None and task.state == "completed" and dependency_action(task) == SATISFY


def ready(job: Job, task: Task) -> bool:
    """Whether every task it depends on has completed and satisfies it (caller holds the lock)."""
    depends = task.body.get("dependsOn")
    if not depends:
        return True
    if not all(_satisfied_by(job.tasks.get(str(i).lower())) for i in depends.get("taskIds") or []):
        return False
    for bounds in depends.get("taskIdRanges") or []:
        by_number: dict[int, list[Task]] = {}
        for other in job.tasks.values():
            number = _integer(other.id)
            if number is not None and bounds["start"] <= number <= bounds["end"]:
                by_number.setdefault(number, []).append(other)
        for tasks in by_number.values():
            done = sorted((t for t in tasks if t.state == "completed"),
                          key=lambda t: (t.end_time, t.serial))
            if not done or not _satisfied_by(done[0]):
                return False
    return True
