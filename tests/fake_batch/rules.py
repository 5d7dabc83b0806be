"""Checks beyond the schema: what the spec's descriptions say the service rejects.

The schema says a pool id is a string; the description says it is at most 64 letters,
digits, hyphens and underscores. These functions check such rules on bodies that already
passed the schema and raise the first problem as a BatchServiceError (the service reports
one problem at a time). Features this fake does not emulate (autoscale, multi-instance
tasks, auto-storage resource files) are refused with a 501 that says so, rather than
silently misbehaving. Task dependencies and exit conditions are checked against their job
in dependencies.py.
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from . import errors
from .knobs import Knobs

ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_id(value: Any, path: str = "id") -> None:
    if not isinstance(value, str) or not ID.match(value):
        raise errors.invalid_value(
            path, value, "The id can contain any combination of alphanumeric characters "
            "including hyphens and underscores, and cannot contain more than 64 characters.")


def _image_key(image: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(image.get(k, "")).lower() for k in ("publisher", "offer", "sku"))


def check_pool(body: dict[str, Any], knobs: Knobs, identities: list[str] | None = None) -> None:
    check_id(body.get("id"))
    vm = body.get("virtualMachineConfiguration")
    if vm is None:
        # The only pool kind the API still has (cloudServiceConfiguration is gone).
        raise errors.missing_property("virtualMachineConfiguration")
    if body.get("enableAutoScale"):
        raise errors.operation_not_supported("autoscale pools (enableAutoScale)")
    for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        if int(body.get(name) or 0) < 0:
            raise errors.invalid_value(name, body[name], "must not be negative")
    slots = body.get("taskSlotsPerNode")
    if slots is not None and not 1 <= slots <= 256:
        raise errors.invalid_value("taskSlotsPerNode", slots, "must be between 1 and 256")
    image = vm.get("imageReference") or {}
    if knobs.strict_images and not image.get("virtualMachineImageId"):
        offered = {(_image_key(i["imageReference"]), i["nodeAgentSKUId"].lower())
                   for i in knobs.supported_images}
        if (_image_key(image), str(vm.get("nodeAgentSKUId", "")).lower()) not in offered:
            raise errors.invalid_value(
                "virtualMachineConfiguration.imageReference",
                "/".join(_image_key(image)) + f" ({vm.get('nodeAgentSKUId')})",
                "The image and node agent SKU are not among the account's supported images "
                "(GET /supportedimages).")
    container = vm.get("containerConfiguration")
    if container is not None:
        for index, registry in enumerate(container.get("containerRegistries") or []):
            if not registry.get("identityReference") and not (
                    registry.get("username") and registry.get("password")):
                raise errors.invalid_value(
                    f"virtualMachineConfiguration.containerConfiguration.containerRegistries[{index}]",
                    registry.get("registryServer"),
                    "A registry needs a username and password, or an identityReference.")
            check_identity_reference(registry.get("identityReference"), identities or [],
                                     "virtualMachineConfiguration.containerConfiguration."
                                     f"containerRegistries[{index}].identityReference")
    if body.get("startTask") is not None:
        check_resource_files(body["startTask"].get("resourceFiles"), "startTask.resourceFiles")


def check_identity_reference(reference: dict[str, Any] | None, identities: list[str],
                             path: str) -> None:
    """An identityReference names one of the pool's user-assigned identities. A pool made with
    the Batch API has none: Batch assigns them only to pools made through Azure Resource
    Manager ("Configure managed identities in Batch pools")."""
    if reference is None:
        return
    wanted = str(reference.get("resourceId") or "")
    if wanted.lower() not in (i.lower() for i in identities):
        raise errors.invalid_value(path, wanted, "The identity is not one of the pool's "
                                   "user-assigned identities (a pool gets identities only "
                                   "through Azure Resource Manager).")


def check_job(body: dict[str, Any]) -> None:
    check_id(body.get("id"))
    pool_info = body.get("poolInfo") or {}
    auto = pool_info.get("autoPoolSpecification")
    if auto is not None and pool_info.get("poolId"):
        raise errors.invalid_value("poolInfo", pool_info.get("poolId"),
                                   "poolId and autoPoolSpecification are mutually exclusive.")
    if auto is None:
        if not pool_info.get("poolId"):
            raise errors.missing_property("poolInfo.poolId")
        check_id(pool_info["poolId"], "poolInfo.poolId")
    check_job_settings(body)
    for name in ("jobManagerTask", "jobReleaseTask"):
        if body.get(name) is not None:
            raise errors.operation_not_supported(f"jobs with a {name}")
    prep = body.get("jobPreparationTask")
    if prep is not None:
        check_preparation(prep)


def check_preparation(prep: dict[str, Any]) -> None:
    """A job preparation task (runs on each node before the job's tasks)."""
    if prep.get("id") is not None:
        check_id(prep["id"], "jobPreparationTask.id")
    if not str(prep.get("commandLine") or "").strip():
        raise errors.invalid_value("jobPreparationTask.commandLine", prep.get("commandLine"),
                                   "The command line must not be empty.")
    check_resource_files(prep.get("resourceFiles"), "jobPreparationTask.resourceFiles")
    check_identity(prep.get("userIdentity"), "jobPreparationTask.userIdentity")


def check_identity(identity: dict[str, Any] | None, path: str) -> None:
    """Named users need the pool's userAccounts, which this fake does not emulate."""
    if identity is None:
        return
    if identity.get("username") and identity.get("autoUser"):
        raise errors.invalid_value(path, identity.get("username"),
                                   "The userName and autoUser properties are mutually exclusive.")
    if identity.get("username"):
        raise errors.operation_not_supported(f"{path}.username (pool user accounts)")


def check_job_settings(body: dict[str, Any]) -> None:
    """Rules shared by create, patch and replace."""
    priority = body.get("priority")
    if priority is not None and not -1000 <= priority <= 1000:
        raise errors.BatchServiceError(400, "OutOfRangePriority",
                                       "The job priority must be between -1000 and 1000.",
                                       [("PropertyName", "priority"), ("PropertyValue", str(priority))])
    parallel = body.get("maxParallelTasks")
    if parallel is not None and parallel != -1 and parallel < 1:
        raise errors.invalid_value("maxParallelTasks", parallel, "must be -1 or greater than 0")


def check_http_url(value: Any, path: str) -> None:
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise errors.invalid_value(path, value, "must be an absolute http(s) URL")


def check_resource_files(files: list[dict[str, Any]] | None, path: str) -> None:
    for index, resource in enumerate(files or []):
        here = f"{path}[{index}]"
        if resource.get("autoStorageContainerName"):
            raise errors.operation_not_supported(
                f"{here}.autoStorageContainerName (the fake account has no auto-storage)")
        sources = [k for k in ("storageContainerUrl", "httpUrl") if resource.get(k)]
        if len(sources) != 1:
            raise errors.invalid_value(
                here, ",".join(sources) or "(none)",
                "The autoStorageContainerName, storageContainerUrl and httpUrl properties are "
                "mutually exclusive and one of them must be specified.")
        check_http_url(resource[sources[0]], f"{here}.{sources[0]}")
        file_path = resource.get("filePath")
        if resource.get("httpUrl") and not file_path:
            raise errors.missing_property(f"{here}.filePath")
        if resource.get("blobPrefix") and not resource.get("storageContainerUrl"):
            raise errors.invalid_value(f"{here}.blobPrefix", resource["blobPrefix"],
                                       "blobPrefix is valid only with storageContainerUrl.")
        if file_path:
            parts = PurePosixPath(file_path).parts
            if file_path.startswith("/") or ".." in parts:
                raise errors.invalid_value(f"{here}.filePath", file_path,
                                           "The path cannot break out of the task's working "
                                           "directory.")
        mode = resource.get("fileMode")
        if mode is not None and not re.fullmatch(r"[0-7]{3,4}", mode):
            raise errors.invalid_value(f"{here}.fileMode", mode, "an octal mode such as 0755")


def check_task(body: dict[str, Any], path: str = "") -> None:
    """A task to add; `path` prefixes field names (e.g. "value[3]." in a collection)."""
    check_id(body.get("id"), f"{path}id")
    if not str(body.get("commandLine") or "").strip():
        raise errors.invalid_value(f"{path}commandLine", body.get("commandLine"),
                                   "The command line must not be empty.")
    for name in ("multiInstanceSettings", "applicationPackageReferences"):
        if body.get(name) is not None:
            raise errors.operation_not_supported(f"tasks with {name}")
    check_resource_files(body.get("resourceFiles"), f"{path}resourceFiles")
    check_identity(body.get("userIdentity"), f"{path}userIdentity")
    for index, task_id in enumerate((body.get("dependsOn") or {}).get("taskIds") or []):
        check_id(task_id, f"{path}dependsOn.taskIds[{index}]")
    for index, output in enumerate(body.get("outputFiles") or []):
        here = f"{path}outputFiles[{index}]"
        container = (output.get("destination") or {}).get("container")
        if container is None:
            raise errors.missing_property(f"{here}.destination.container")
        check_http_url(container.get("containerUrl"), f"{here}.destination.container.containerUrl")
        if container.get("identityReference") is not None:
            raise errors.operation_not_supported(f"{here}: managed identities")
        if not output.get("filePattern", "").strip():
            raise errors.invalid_value(f"{here}.filePattern", output.get("filePattern"),
                                       "The file pattern must not be empty.")
    for index, setting in enumerate(body.get("environmentSettings") or []):
        if not setting.get("name"):
            raise errors.invalid_value(f"{path}environmentSettings[{index}].name",
                                       setting.get("name"), "The name must not be empty.")
    retries = (body.get("constraints") or {}).get("maxTaskRetryCount")
    if retries is not None and retries < -1:
        raise errors.invalid_value(f"{path}constraints.maxTaskRetryCount", retries,
                                   "must be -1 (unlimited) or more")
    slots = body.get("requiredSlots")
    if slots is not None and slots < 1:
        raise errors.invalid_value(f"{path}requiredSlots", slots, "must be at least 1")
