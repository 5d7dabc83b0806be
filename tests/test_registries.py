"""Images at scale: Azure Container Registry with a managed identity, Docker Hub's pull limits
in the dry run, the OS disk Docker keeps images on, and the image size the registry tells.

The managed-identity path follows Microsoft's spec and docs: ContainerRegistryReference takes
an identityReference (a user-assigned identity's resource ID) instead of a user and password;
the identity must be one the pool carries, and "creating pools with managed identities can
only be performed with the Batch Management Plane APIs" ("Configure managed identities in
Batch pools") — so the tool reuses a pool made that way and says how to make it. The fake
Batch service refuses an identityReference on a pool made through the Batch API and a pull
from a private registry without the identity; a local HTTP server stands in for a registry's
HTTP API v2.
"""
from __future__ import annotations

import json
from dataclasses import replace

import azure.batch.models as bm
import pytest

from common import campaign as cp
from common.backends.azure import builders as bb
from common.backends.azure import registry as rg
from common.config import Secret, load_settings
from common.errors import EXIT_USAGE, ToolError
from test_azure_e2e import RUNNER, azure_env  # noqa: F401
from test_azure_reality import TopasCampaign
from test_fake_batch import client, finish_job, make_job, outcome, raw  # noqa: F401
from tests.azure_settings import azure_settings
from tests.fake_batch.containers import normalize
from tests.fake_batch.spec import load_spec
from tests.support.images import TOPAS_IMAGE
from tests.support.registry import Repository, RegistryServer

IDENTITY = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/physics/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/acr-pull")
OTHER = IDENTITY.replace("acr-pull", "someone-else")
ACR_IMAGE = "physicsacr.azurecr.io/topas:4.0"


def spec_problems(body: dict, definition: str) -> list:
    return load_spec().validate_request(body, {"$ref": f"#/definitions/{definition}"})


# -- what is sent ---------------------------------------------------------------------------

def identity_settings(tmp_path, **app):
    settings = azure_settings(tmp_path, AUTO_DELETE_POOL=False)
    path = tmp_path / "appconfig.json"
    data = json.loads(path.read_text())
    for key in ("DOCKER_USER", "DOCKER_TOKEN"):
        data.pop(key)
    data.update(WORKER_DOCKER_IMAGE=ACR_IMAGE, REGISTRY_IDENTITY=IDENTITY, POOL_OS_DISK_GB=256, **app)
    path.write_text(json.dumps(data))
    return load_settings(settings.sim.path, env={})


def test_an_acr_image_pulls_with_the_identity_and_the_bodies_fit_the_spec(tmp_path):
    settings = identity_settings(tmp_path)
    app = settings.app
    registry = bb.image_credentials(app, app.worker_docker_image)
    assert registry == bb.Registry("physicsacr.azurecr.io", identity=IDENTITY)
    assert bb.image_credentials(app, app.reducer_docker_image) is None  # Docker Hub: anonymous
    ids = cp.CampaignIds("golden-sim", "20260101120000")
    setup = bb.NodeSetup(app.pool_image, app.node_agent_sku_id, registry, app.pool_os_disk_gb)
    pool = bb.pool_options(cp.worker_pool(settings, ids), setup).as_dict()
    vm = pool["virtualMachineConfiguration"]
    assert vm["containerConfiguration"]["containerRegistries"] == [
        {"registryServer": "physicsacr.azurecr.io", "identityReference": {"resourceId": IDENTITY}}]
    assert vm["osDisk"] == {"diskSizeGB": 256}
    assert spec_problems(pool, "BatchPoolCreateOptions") == []
    job = cp.worker_job(settings, ids)
    urls = bb.TaskUrls(read={b: "https://x/c/b?sig=s" for b in ("SIM_DIR.zip", "simconfig.json")},
                       read_list="https://x/c?sig=s", write="https://x/c?sig=s")
    task = bb.task_options(job.tasks[0], job, urls, registry).as_dict()
    assert task["containerSettings"]["registry"] == {
        "registryServer": "physicsacr.azurecr.io", "identityReference": {"resourceId": IDENTITY}}
    assert spec_problems(task, "BatchTaskCreateOptions") == []
    # with a user and password the task names no registry: the pool's entry carries them
    plain = bb.Registry("physicsacr.azurecr.io", "u", Secret("p"))
    assert "registry" not in bb.task_options(job.tasks[0], job, urls, plain).as_dict()["containerSettings"]


def test_the_identity_needs_a_named_pool_and_a_resource_id(tmp_path):
    settings = azure_settings(tmp_path / "a")  # AUTO_DELETE_POOL true by default
    app_path = tmp_path / "a" / "appconfig.json"
    data = json.loads(app_path.read_text())
    data.update(REGISTRY_IDENTITY=IDENTITY, POOL_OS_DISK_GB=10)
    app_path.write_text(json.dumps(data))
    with pytest.raises(ToolError) as caught:
        load_settings(settings.sim.path, env={})
    assert caught.value.exit_code == EXIT_USAGE
    text = "\n".join(caught.value.lines)
    assert "POOL_OS_DISK_GB: is 10, outside 30..4095" in text
    assert "AUTO_DELETE_POOL: is true (or missing), but an auto pool cannot carry REGISTRY_IDENTITY" in text
    data["REGISTRY_IDENTITY"] = "acr-pull"
    data.pop("POOL_OS_DISK_GB")
    app_path.write_text(json.dumps(data))
    with pytest.raises(ToolError) as caught:
        load_settings(settings.sim.path, env={})
    assert "REGISTRY_IDENTITY: 'acr-pull' is not a user-assigned managed identity's resource ID" in \
        "\n".join(caught.value.lines)


def test_a_pool_without_the_identity_is_refused_saying_how_to_make_one():
    from common.backends.azure.checks import identity_problem
    registry = bb.Registry("physicsacr.azurecr.io", identity=IDENTITY)
    assert "cannot make a pool that carries REGISTRY_IDENTITY" in identity_problem("p", None, registry)
    bare = bm.BatchPool(id="p")
    assert "does not carry REGISTRY_IDENTITY" in identity_problem("p", bare, registry)
    carrying = bm.BatchPool(id="p", identity=bm.BatchPoolIdentity(
        type="UserAssigned", user_assigned_identities=[bm.BatchUserAssignedIdentity(
            resource_id=IDENTITY.upper())]))
    assert identity_problem("p", carrying, registry) is None
    assert identity_problem("p", None, bb.Registry("docker.io", "u", Secret("p"))) is None


# -- Docker Hub's limits and the image size ---------------------------------------------------

def test_docker_hub_pull_limits_are_named_for_large_pools():
    assert rg.pull_notes("python:3.12-slim", None, 10) == []
    [warning] = rg.pull_notes("python:3.12-slim", None, 11)
    assert "11 nodes pull docker.io/library/python:3.12-slim from Docker Hub anonymously" in warning
    assert "10 anonymous pulls an hour per IP address" in warning and "toomanyrequests" in warning
    user = bb.Registry("docker.io", "myuser", Secret("t"))
    assert rg.pull_notes("myuser/topas:4.0", user, 100) == []
    assert "a Personal Docker account allows 100 pulls an hour" in rg.pull_notes(
        "myuser/topas:4.0", user, 101)[0]
    assert rg.pull_notes(ACR_IMAGE, None, 1000) == []  # not Docker Hub's limits


@pytest.fixture
def registry_server():
    server = RegistryServer({"sim/topas:4.0": Repository(layers=(30_000_000, 1_500_000_000)),
                             "team/private:1": Repository(layers=(5_000,), credentials=("u", "p"))})
    yield server.start()
    server.stop()


def test_the_image_size_comes_from_the_registry_manifest(registry_server):
    host = registry_server.host
    size = rg.image_size(f"{host}/sim/topas:4.0", None)
    assert size.compressed == 1_234 + 30_000_000 + 1_500_000_000  # amd64, not the arm64 one
    assert rg.size_text(size).startswith("1.53 GB compressed")
    private = rg.image_size(f"{host}/team/private:1", bb.Registry(host, "u", Secret("p")))
    assert private.compressed == 1_234 + 5_000
    refused = rg.image_size(f"{host}/team/private:1", None)
    assert refused.compressed is None and "HTTP 401" in refused.why_unknown
    missing = rg.image_size(f"{host}/sim/nothing:1", None)
    assert missing.compressed is None and "HTTP 404" in missing.why_unknown
    registry_server.stop()
    offline = rg.image_size(f"{host}/sim/topas:4.0", None)
    assert offline.compressed is None and "cannot be reached" in offline.why_unknown
    identity = rg.image_size(ACR_IMAGE, bb.Registry("physicsacr.azurecr.io", identity=IDENTITY))
    assert identity.compressed is None and "managed identity" in identity.why_unknown


def test_dry_run_shows_size_disk_and_warns_of_anonymous_docker_hub_pulls(
        tmp_path, azurite, fake_batch, azure_env, registry_server):
    big = TopasCampaign(tmp_path / "big", azurite, fake_batch, POOL_NODE_COUNT=50, TASK_COUNT=50)
    big.write_app(WORKER_DOCKER_IMAGE="docker.io/library/busybox:1.36", DOCKER_USER=None,
                  DOCKER_TOKEN=None, POOL_OS_DISK_GB=128)
    result = big.run(RUNNER, "--dry-run", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert "warning: 50 nodes pull docker.io/library/busybox:1.36 from Docker Hub anonymously" \
        in result.stdout
    assert '"diskSizeGB": 128' in result.stdout and "OS disk: 128 GB (POOL_OS_DISK_GB)" in result.stdout
    assert "size unknown (the registry registry-1.docker.io cannot be reached" in result.stdout
    assert fake_batch.request_count == 0
    local = TopasCampaign(tmp_path / "local", azurite, fake_batch)
    local.write_app(WORKER_DOCKER_IMAGE=f"{registry_server.host}/sim/topas:4.0", DOCKER_USER=None,
                    DOCKER_TOKEN=None)
    result = local.run(RUNNER, "--dry-run", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert f"{registry_server.host}/sim/topas:4.0: {registry_server.host}, anonymous; 1.53 GB " \
           "compressed" in result.stdout
    assert "warning:" not in result.stdout  # 2 nodes, and not Docker Hub


# -- the fake refuses what Batch would ---------------------------------------------------------

def arm_pool_body(pool_id: str, registries: list[dict] | None = None, spot: int = 0) -> dict:
    body = {"id": pool_id, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 1,
            "taskSlotsPerNode": 4,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc",
                                   "sku": "2404", "version": "latest"},
                "nodeAgentSKUId": "batch.node.ubuntu 24.04",
                "containerConfiguration": {"type": "dockerCompatible",
                                           "containerRegistries": registries or []}}}
    if spot:
        body["targetLowPriorityNodes"] = spot
    return body


@pytest.fixture
def acr_image(fake_batch, test_images):
    """The TOPAS test image, also in a private ACR that grants pulls to IDENTITY alone."""
    image = replace(test_images[normalize(TOPAS_IMAGE)], reference=normalize(ACR_IMAGE),
                    credentials=None, identity=IDENTITY)
    fake_batch.knobs.images[image.reference] = image
    return image


def identity_task(task_id: str, identity: str | None) -> bm.BatchTaskCreateOptions:
    registry = bm.ContainerRegistryReference(
        registry_server="physicsacr.azurecr.io",
        identity_reference=bm.BatchNodeIdentityReference(resource_id=identity)) if identity else None
    return bm.BatchTaskCreateOptions(
        id=task_id, command_line="-c 'echo pulled'",
        container_settings=bm.BatchTaskContainerSettings(
            image_name=ACR_IMAGE, container_run_options="--entrypoint /bin/sh", registry=registry),
        user_identity=bm.UserIdentity(auto_user=bm.AutoUserSpecification(elevation_level="admin")))


def test_the_fake_pulls_from_a_private_acr_only_with_the_pools_identity(fake_batch, client, acr_image):
    entry = {"registryServer": "physicsacr.azurecr.io", "identityReference": {"resourceId": IDENTITY}}
    # the Batch API cannot give a pool an identity, so it cannot name one either
    refused = raw(client, "POST", "/pools", arm_pool_body("api", [entry]))
    assert refused.status_code == 400
    assert "not one of the pool's user-assigned identities" in refused.text()
    fake_batch.create_pool_through_arm(arm_pool_body("arm"), [IDENTITY])
    assert client.get_pool("arm").identity.user_assigned_identities[0].resource_id == IDENTITY
    make_job(client, "j", "arm")
    client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        identity_task("with", IDENTITY), identity_task("without", None),
        identity_task("foreign", OTHER)]))
    finish_job(client, "j", expected=3)
    assert outcome(client, "j", "with") == (0, None, "")
    assert "pull access denied" in outcome(client, "j", "without")[2]
    assert "identity is not assigned to the pool" in outcome(client, "j", "foreign")[2]


def test_a_campaign_pulls_from_acr_with_a_managed_identity_end_to_end(
        tmp_path, azurite, fake_batch, azure_env, acr_image):
    topas = TopasCampaign(tmp_path / "acr", azurite, fake_batch, AUTO_DELETE_POOL=False)
    topas.write_app(WORKER_DOCKER_IMAGE=ACR_IMAGE, DOCKER_USER=None, DOCKER_TOKEN=None,
                    REGISTRY_IDENTITY=IDENTITY)
    pool_id = f"{topas.sim_id}-workers"
    missing = topas.run(RUNNER, "--no-input", env=azure_env)
    assert missing.returncode == 1
    assert f"pool {pool_id} does not exist, and the tool cannot make a pool that carries " \
           "REGISTRY_IDENTITY" in missing.stderr
    assert not [r for r in fake_batch.requests if r.operation == "Pools_CreatePool"]
    # made in the portal, as the message says: the tool reuses it
    fake_batch.create_pool_through_arm(arm_pool_body(pool_id, [
        {"registryServer": "physicsacr.azurecr.io", "identityReference": {"resourceId": IDENTITY}}]),
        [IDENTITY])
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert "3 of 3 task(s) succeeded" in result.stdout
    sent = [r.body for r in fake_batch.requests if r.operation == "Tasks_CreateTaskCollection"]
    assert all(t["containerSettings"]["registry"]["identityReference"] == {"resourceId": IDENTITY}
               for body in sent for t in body["value"])
