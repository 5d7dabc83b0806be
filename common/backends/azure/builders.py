"""Pure builders: neutral specs -> azure.batch request models. No client, no I/O.

What the Azure backend sends is built here and only here, so unit tests compare it with
golden JSON and `--dry-run` prints exactly what the service would receive. SAS URLs come
in ready-made (TaskUrls): generating them needs the account key, which stays out of here.
"""
from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

import azure.batch.models as bm

from common.backends.azure import shared_data as shared
from common.config import AppConfig, PoolImage, Secret
from common.model import SUCCESS, JobSpec, OutputFile, PoolSpec, TaskSpec
from common.redaction import redact

TASKS_PER_REQUEST = 100  # the service's limit for addtaskcollection
# A task's folder on the node is kept this long after it ends (Batch's default: 7 days). Its
# outputs and logs are in storage by then, and each task holds a copy of the simulation
# folder: kept for days, a node running many tasks with large inputs fills its disk.
TASK_RETENTION = timedelta(hours=1)
DOCKER_HUB = "docker.io"
_WILDCARD = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Registry:
    """A registry's credentials: a user and password, or a managed identity (an Azure
    Container Registry granting AcrPull to a user-assigned identity the pool carries)."""

    server: str
    username: str | None = None
    password: Secret | None = None
    identity: str | None = None  # the identity's ARM resource ID

    def reference(self) -> bm.ContainerRegistryReference:
        if self.identity is not None:
            return bm.ContainerRegistryReference(
                registry_server=self.server,
                identity_reference=bm.BatchNodeIdentityReference(resource_id=self.identity))
        assert self.password is not None
        return bm.ContainerRegistryReference(registry_server=self.server, username=self.username,
                                             password=self.password.reveal())


@dataclass(frozen=True)
class TaskUrls:
    """The SAS URLs a job's tasks use: a read URL per input blob, read+list for blob
    prefixes, and write-only for output files."""

    read: Mapping[str, str]
    read_list: str
    write: str
    data_source: str | None = None  # read+list SAS of the container holding the job's SharedData


def _names_registry(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost"


def registry_server(image: str) -> str:
    """Docker's rule: a first path part with a '.' or ':' (or 'localhost') names a registry."""
    first = image.split("/", 1)[0]
    return first if "/" in image and _names_registry(first) else DOCKER_HUB


def full_image_name(image: str) -> str:
    """The image with its registry spelled out: `docker.io/myuser/topas:4.0`,
    `docker.io/library/python:3.12-slim`. Batch gives a registry's credentials only to image
    names that start with that registry (Azure/Batch#107), so a private Docker Hub image named
    `myuser/topas:4.0` would fail to pull."""
    first = image.split("/", 1)[0]
    if "/" in image and _names_registry(first):
        return image
    return f"{DOCKER_HUB}/{image}" if "/" in image else f"{DOCKER_HUB}/library/{image}"


def registry_for(image: str | None, username: str | None, token: Secret | None) -> Registry | None:
    if image is None or username is None or token is None:
        return None
    return Registry(registry_server(full_image_name(image)), username, token)


# Azure Container Registry hosts, per cloud: the registries a managed identity can pull from.
ACR_SUFFIXES = (".azurecr.io", ".azurecr.cn", ".azurecr.us")


def is_acr(server: str) -> bool:
    return server.lower().endswith(ACR_SUFFIXES)


def image_credentials(app: AppConfig, image: str | None) -> Registry | None:
    """The credentials for `image`'s registry: the worker image's registry gets DOCKER_USER /
    DOCKER_TOKEN; the reducer image REDUCER_DOCKER_USER / REDUCER_DOCKER_TOKEN, or the worker's
    when both images live in the same registry; an Azure Container Registry without a
    password of its own gets REGISTRY_IDENTITY; any other registry none (anonymous)."""
    if image is None:
        return None
    found = None
    if image == app.reducer_docker_image and app.reducer_docker_user:
        found = registry_for(image, app.reducer_docker_user, app.reducer_docker_token)
    else:
        worker = app.worker_docker_image
        if worker is not None and registry_server(full_image_name(worker)) == \
                registry_server(full_image_name(image)):
            found = registry_for(image, app.docker_user, app.docker_token)
    server = registry_server(full_image_name(image))
    if found is None and app.registry_identity and is_acr(server):
        return Registry(server, identity=app.registry_identity)
    return found


@dataclass(frozen=True)
class NodeSetup:
    """How every node of a pool is made: VM image, node agent, registry for the image, and
    the OS disk (Docker's data root on microsoft-dsvm/ubuntu-hpc: images unpack there)."""

    image: PoolImage
    node_agent_sku_id: str
    registry: Registry | None
    os_disk_gb: int | None = None


def _vm_configuration(spec: PoolSpec, setup: NodeSetup) -> bm.VirtualMachineConfiguration:
    registry = setup.registry
    containers = bm.BatchContainerConfiguration(
        type="dockerCompatible",
        container_image_names=[full_image_name(spec.image)] if spec.image else None,
        container_registries=[registry.reference()] if registry else None)
    image = setup.image
    return bm.VirtualMachineConfiguration(
        image_reference=bm.BatchVmImageReference(publisher=image.publisher, offer=image.offer,
                                                 sku=image.sku, version=image.version),
        node_agent_sku_id=setup.node_agent_sku_id,
        container_configuration=containers,
        os_disk=bm.BatchOsDisk(disk_size_gb=setup.os_disk_gb) if setup.os_disk_gb else None)


def pool_options(spec: PoolSpec, setup: NodeSetup) -> bm.BatchPoolCreateOptions:
    return bm.BatchPoolCreateOptions(
        id=spec.pool_id, vm_size=spec.vm_size,
        virtual_machine_configuration=_vm_configuration(spec, setup),
        target_dedicated_nodes=spec.node_count, task_slots_per_node=spec.slots_per_node,
        target_low_priority_nodes=spec.spot_node_count or None,
        resize_timeout=timedelta(minutes=15))


AUTO_POOL_PREFIX_MAX = 20


def _pool_info(job: JobSpec, setup: NodeSetup) -> bm.BatchPoolInfo:
    spec = job.auto_pool
    if spec is None:
        return bm.BatchPoolInfo(pool_id=job.pool_id)
    # Lifetime "job", no keep-alive: the service deletes the pool when the job ends.
    return bm.BatchPoolInfo(auto_pool_specification=bm.BatchAutoPoolSpecification(
        auto_pool_id_prefix=spec.pool_id[:AUTO_POOL_PREFIX_MAX], pool_lifetime_option="job",
        keep_alive=False,
        pool=bm.BatchPoolSpecification(
            vm_size=spec.vm_size, virtual_machine_configuration=_vm_configuration(spec, setup),
            target_dedicated_nodes=spec.node_count, task_slots_per_node=spec.slots_per_node,
            target_low_priority_nodes=spec.spot_node_count or None,
            resize_timeout=timedelta(minutes=15))))


OWNER_METADATA = "created-by"  # job metadata naming the run that created the job


def job_options(job: JobSpec, setup: NodeSetup, urls: TaskUrls | None = None) -> bm.BatchJobCreateOptions:
    # "noaction" first: a job created with "terminatejob" and no tasks yet could end at once.
    limit = job.max_wall_clock_minutes
    return bm.BatchJobCreateOptions(
        id=job.job_id, pool_info=_pool_info(job, setup), all_tasks_complete_mode="noaction",
        constraints=bm.BatchJobConstraints(max_wall_clock_time=timedelta(minutes=limit))
        if limit else None,
        job_preparation_task=preparation_options(job, urls) if job.preparation else None,
        uses_task_dependencies=True if job.task_dependencies else None,
        metadata=[bm.BatchMetadataItem(name=OWNER_METADATA, value=job.owner)] if job.owner else None)


def user_identity(as_root: bool) -> bm.UserIdentity:
    """Batch maps the task's user into its container: root only for an admin auto-user."""
    return bm.UserIdentity(auto_user=bm.AutoUserSpecification(
        scope="pool", elevation_level="admin" if as_root else "nonadmin"))


def preparation_options(job: JobSpec, urls: TaskUrls | None) -> bm.BatchJobPreparationTask:
    """Runs on the node's own OS (no containerSettings), once per node, before any task."""
    prep = job.preparation
    assert prep is not None
    command, files = prep.command, _resource_files(prep, urls) if urls else None
    environment = [bm.EnvironmentSetting(name=k, value=v) for k, v in prep.environment]
    if job.shared_data is not None and urls is not None and urls.data_source:
        command = shared.staging_command(command)  # the Geant4 data, once per node
        files = (files or []) + [shared.stage_script_file(urls.read[shared.STAGE_BLOB])]
        environment += shared.staging_environment(job.shared_data, urls.data_source)
    return bm.BatchJobPreparationTask(
        id=prep.task_id, command_line=host_command_line(command),
        resource_files=files,
        environment_settings=environment or None,
        constraints=bm.BatchTaskConstraints(max_task_retry_count=prep.max_retries),
        wait_for_success=True, user_identity=user_identity(job.run_as_root),
        rerun_on_node_reboot_after_success=True)


def job_completion_update() -> bm.BatchJobUpdateOptions:
    """Sent once every task is in: the job ends by itself when its tasks have completed."""
    return bm.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob")


ENTRYPOINT_OVERRIDE = "--entrypoint /bin/sh"


def _script(command: str) -> str:
    """One shell argument; each line of the neutral command is a whole statement."""
    return shlex.quote("; ".join(line for line in command.splitlines() if line))


def host_command_line(command: str) -> str:
    return "/bin/sh -c " + _script(command)


def container_command_line(command: str, keep_entrypoint: bool) -> str:
    """With the image's ENTRYPOINT overridden by /bin/sh, the command line is sh's arguments;
    kept, the entrypoint gets `/bin/sh -c ...` (an entrypoint that ends in `exec "$@"` runs it)."""
    return host_command_line(command) if keep_entrypoint else "-c " + _script(command)


def _resource_files(task: TaskSpec, urls: TaskUrls) -> list[bm.ResourceFile]:
    files = []
    for item in task.inputs:
        path = None if item.path in ("", ".") else item.path
        if item.is_prefix:
            files.append(bm.ResourceFile(storage_container_url=urls.read_list,
                                         blob_prefix=item.blob, file_path=path))
        else:
            files.append(bm.ResourceFile(http_url=urls.read[item.blob],
                                         file_path=path or item.blob.rsplit("/", 1)[-1]))
    return files


def _output_file(output: OutputFile, write_url: str) -> bm.OutputFile:
    # With a wildcard Batch takes `path` as a virtual folder; without one, as the blob name.
    path = output.destination.rstrip("/") if _WILDCARD.search(output.pattern) else output.destination
    return bm.OutputFile(
        file_pattern=output.pattern,
        destination=bm.OutputFileDestination(
            container=bm.OutputFileBlobContainerDestination(path=path, container_url=write_url)),
        upload_options=bm.OutputFileUploadConfiguration(
            upload_condition="tasksuccess" if output.when == SUCCESS else "taskcompletion"))


def container_settings(image: str, keep_entrypoint: bool,
                       registry: Registry | None = None,
                       isolated: bool = False) -> bm.BatchTaskContainerSettings:
    """A managed identity also goes on the task: a pool made outside the tool (the only kind
    that can carry an identity) may not list the registry itself. `isolated`: the task sees
    only its folders and, read-only, the node's shared data."""
    return bm.BatchTaskContainerSettings(
        image_name=full_image_name(image),
        container_run_options=None if keep_entrypoint else ENTRYPOINT_OVERRIDE,
        registry=registry.reference() if registry and registry.identity else None,
        container_host_batch_bind_mounts=shared.isolated_mounts() if isolated else None)


def task_options(task: TaskSpec, job: JobSpec, urls: TaskUrls,
                 registry: Registry | None = None) -> bm.BatchTaskCreateOptions:
    image = job.image
    return bm.BatchTaskCreateOptions(
        id=task.task_id,
        command_line=container_command_line(task.command, job.keep_entrypoint) if image
        else host_command_line(task.command),
        container_settings=container_settings(image, job.keep_entrypoint, registry,
                                              task.reads_shared_data)
        if image else None,
        resource_files=_resource_files(task, urls) or None,
        output_files=[_output_file(o, urls.write) for o in task.outputs],
        environment_settings=[bm.EnvironmentSetting(name=k, value=v) for k, v in task.environment],
        constraints=bm.BatchTaskConstraints(max_task_retry_count=task.max_retries,
                                            retention_time=TASK_RETENTION),
        user_identity=user_identity(job.run_as_root),
        depends_on=dependencies(task))


def in_dependency_order(tasks: list[TaskSpec]) -> list[list[TaskSpec]]:
    """The tasks in groups, each group's dependencies all in earlier groups: sent one group
    after another, no task names a task the job does not have yet (the docs do not say that
    Batch accepts one; parallel chunks of one collection would otherwise race)."""
    placed: set[str] = set()
    waiting, groups = list(tasks), []
    ids = {t.task_id for t in tasks}
    while waiting:
        ready = [t for t in waiting if all(d in placed or d not in ids for d in t.depends_on)
                 and all(not _in_ranges(other, t.depends_on_ranges) or other.task_id in placed
                         for other in waiting if other is not t)]
        if not ready:  # a cycle: let the service refuse it in its own words
            ready = waiting
        groups.append(ready)
        placed |= {t.task_id for t in ready}
        waiting = [t for t in waiting if t.task_id not in placed]
    return groups


def _in_ranges(task: TaskSpec, ranges: tuple[tuple[int, int], ...]) -> bool:
    return task.task_id.isdigit() and any(a <= int(task.task_id) <= b for a, b in ranges)


def dependencies(task: TaskSpec) -> bm.BatchTaskDependencies | None:
    """Batch's dependsOn: by id, and by inclusive ranges of integer ids."""
    if not task.depends_on and not task.depends_on_ranges:
        return None
    return bm.BatchTaskDependencies(
        task_ids=list(task.depends_on) or None,
        task_id_ranges=[bm.BatchTaskIdRange(start=a, end=b) for a, b in task.depends_on_ranges]
        or None)


def chunks(items: list[Any], size: int = TASKS_PER_REQUEST) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def request_count(task_count: int) -> int:
    """Requests to start a campaign: images, pool, job, task collections, job update."""
    return 3 + math.ceil(task_count / TASKS_PER_REQUEST) + 1


def redacted_json(model: Any, secrets: tuple[str, ...] = ()) -> str:
    """The JSON body the service would receive, with SAS signatures and secrets hidden."""
    return redact(json.dumps(model.as_dict(), indent=2, sort_keys=True, default=str), secrets)
