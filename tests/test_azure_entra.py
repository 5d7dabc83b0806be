"""No keys at all: Entra ID for Batch and storage, user-delegation SAS for the nodes.

Many institutional storage accounts disable shared keys. Here Azurite (HTTPS, `--oauth
basic`) and the fake Batch service (HTTPS, bearer tokens) are reached with tokens from a
local managed-identity endpoint (tests/support/entra.py) through azure-identity's
DefaultAzureCredential — the same path as `az login` or a VM's identity — and the campaign
runs with no account key in any file.
"""
from __future__ import annotations

import json
import shutil
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from common.backends.azure.entra import CLOUDS, batch_credential, cloud_of
from common.config.model import MAX_ENTRA_TIMEOUT_MINUTES
from conftest import AZURITE_ACCOUNT, AZURITE_KEY, FAKE_BATCH_ACCOUNT, REPO, write_json
from test_azure_e2e import REDUCER, RUNNER, AzureCampaign
from tests.fake_batch import FakeBatch
from tests.support.azurite import start_azurite
from tests.support.entra import TokenServer, claims_of
from tests.support.images import EXAMPLE_HISTORIES
from tests.support.tls import make_certificate

BATCH_AUDIENCE = "https://batch.core.windows.net/"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def azurite_https(certificate):
    server = start_azurite(tls=(certificate.cert, certificate.key))
    yield server
    server.stop()


@pytest.fixture
def tokens():
    server = TokenServer()
    yield server
    server.stop()


@pytest.fixture
def fake_https(test_images, certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))  # the fake's nodes reach Azurite
    fake = FakeBatch(FAKE_BATCH_ACCOUNT, tls=(certificate.cert, certificate.key),
                     token_audience=BATCH_AUDIENCE)
    fake.knobs.images = dict(test_images)
    fake.start()
    yield fake
    fake.stop()
    assert not fake.server_errors, "\n".join(fake.server_errors)


def test_a_campaign_runs_with_no_account_key_anywhere(tmp_path, azurite_https, fake_https, tokens,
                                                      certificate, script_env):
    campaign = AzureCampaign(tmp_path / "az", azurite_https, fake_https)
    app = dict(campaign.app)
    for key in ("STORAGE_ACCOUNT_KEY", "BATCH_ACCOUNT_KEY"):
        app.pop(key)
    write_json(campaign.root / "appconfig.json", app)
    # the longest timeout this path allows: its SAS URLs end where the delegation key does
    campaign.sim.update(TIMEOUT_MINUTES=MAX_ENTRA_TIMEOUT_MINUTES)
    write_json(campaign.simconfig, campaign.sim)
    env = {**script_env, **tokens.env, "BATCH_TOOL_POLL_SECONDS": "0.2",
           "REQUESTS_CA_BUNDLE": str(certificate.cert), "SSL_CERT_FILE": str(certificate.cert),
           "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential"}
    assert env["EXAMPLE_HISTORIES"] == EXAMPLE_HISTORIES
    runner = campaign.run(RUNNER, "--no-input", env=env)
    assert runner.returncode == 0, runner.stderr
    assert "4 of 4 task(s) succeeded" in runner.stdout
    reducer = campaign.run(REDUCER, "--no-input", env=env)
    assert reducer.returncode == 0, reducer.stderr
    assert (campaign.results / "results" / "DoseAtPhantom.csv").exists()

    # both services were reached with tokens for their own audience, nothing else
    assert {r.rstrip("/") for r in tokens.resources} == {"https://storage.azure.com",
                                                          BATCH_AUDIENCE.rstrip("/")}
    assert all(r.headers.get("authorization") is None for r in fake_https.requests)  # not recorded
    # the nodes got user-delegation SAS (signed with a key lent to the identity, skoid=...)
    prep = next(r.body["jobPreparationTask"] for r in fake_https.requests
                if r.operation == "Jobs_CreateJob")
    query = parse_qs(urlsplit(prep["resourceFiles"][0]["httpUrl"]).query)
    assert query["skoid"] == [tokens.object_id] and query["sp"] == ["r"]
    # every SAS URL handed to a node expires no later than the key that signs it
    urls = sas_urls([r.body for r in fake_https.requests
                     if r.operation in ("Jobs_CreateJob", "Tasks_CreateTaskCollection")])
    assert len(urls) >= 6
    for url in urls:
        signed = parse_qs(urlsplit(url).query)
        assert signed["se"][0] <= signed["ske"][0], url.split("?")[0]
    # and no key exists anywhere the tool wrote
    for path in campaign.root.rglob("*"):
        if path.is_file():
            assert AZURITE_KEY.encode() not in path.read_bytes()


def sas_urls(bodies: list) -> list[str]:
    """Every URL carrying a SAS signature in request bodies (resource and output files)."""
    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.startswith("http") and "sig=" in value:
            found.append(value)
    walk(bodies)
    return found


def test_a_seven_day_timeout_without_a_storage_key_is_refused_before_anything_happens(
        tmp_path, azurite_https, fake_https, tokens, certificate, script_env):
    campaign = AzureCampaign(tmp_path / "az", azurite_https, fake_https)
    write_json(campaign.root / "appconfig.json",
               {k: v for k, v in campaign.app.items() if not k.endswith("_KEY")})
    campaign.sim.update(TIMEOUT_MINUTES=7 * 24 * 60)
    write_json(campaign.simconfig, campaign.sim)
    env = {**script_env, **tokens.env, "REQUESTS_CA_BUNDLE": str(certificate.cert)}
    result = campaign.run(RUNNER, "--no-input", env=env)
    assert result.returncode == 2
    assert ("TIMEOUT_MINUTES: 10080 minutes is longer than storage can sign for without "
            "STORAGE_ACCOUNT_KEY") in result.stderr
    assert "use at most 9955 minutes, or set STORAGE_ACCOUNT_KEY" in result.stderr
    assert fake_https.request_count == 0 and tokens.resources == []


def test_dry_run_without_keys_sends_nothing(tmp_path, azurite_https, fake_https, tokens, certificate,
                                            script_env):
    campaign = AzureCampaign(tmp_path / "az", azurite_https, fake_https)
    app = {k: v for k, v in campaign.app.items() if not k.endswith("_KEY")}
    write_json(campaign.root / "appconfig.json", app)
    env = {**script_env, **tokens.env, "REQUESTS_CA_BUNDLE": str(certificate.cert)}
    result = campaign.run(RUNNER, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert fake_https.request_count == 0 and tokens.resources == []


# The Batch service's resource ID in each cloud, as Microsoft documents it:
# - Azure: "Batch resource endpoint https://batch.core.windows.net/" — learn.microsoft.com,
#   azure/batch/batch-aad-auth ("Authenticate Azure Batch services with Microsoft Entra ID");
# - Azure China: "https://batch.chinacloudapi.cn/" — the same page on docs.azure.cn
#   (docs.azure.cn/zh-cn/batch/batch-aad-auth);
# - all three, Azure Government's "https://batch.core.usgovcloudapi.net/" included: the Azure
#   CLI's cloud table, Azure/azure-cli src/azure-cli-core/azure/cli/core/cloud.py
#   (batch_resource_id of AZURE_PUBLIC_CLOUD, AZURE_CHINA_CLOUD, AZURE_US_GOV_CLOUD).
# The service takes a token only when its audience "should exactly match (including forward
# slash)" the resource ID (its error, quoted in Azure/azure-sdk-for-net#8026); azure-identity
# asks a managed identity or `az` for the scope minus "/.default" (_scopes_to_resource).
DOCUMENTED_BATCH_RESOURCES = {
    "https://acct.westeurope.batch.azure.com": ("https://batch.core.windows.net/",
                                                "login.microsoftonline.com"),
    "https://acct.chinanorth2.batch.chinacloudapi.cn": ("https://batch.chinacloudapi.cn/",
                                                        "login.chinacloudapi.cn"),
    "https://acct.usgovvirginia.batch.usgovcloudapi.net": ("https://batch.core.usgovcloudapi.net/",
                                                           "login.microsoftonline.us"),
}


def test_sovereign_clouds_get_their_own_scope_and_authority():
    from azure.identity._internal import _scopes_to_resource
    for url, (resource, authority) in DOCUMENTED_BATCH_RESOURCES.items():
        cloud = cloud_of(url)
        assert cloud.batch_resource == resource and cloud.authority == authority
        assert cloud.batch_scope == resource + "/.default"
        assert _scopes_to_resource(cloud.batch_scope) == resource  # what azure-identity asks
    assert cloud_of("https://acct.westeurope.batch.azure.com") is CLOUDS[0]
    assert cloud_of("http://127.0.0.1:1234") is CLOUDS[0]
    # the public cloud's scope is the one azure-batch itself defaults to
    from azure.batch._configuration import BatchClientConfiguration
    default = BatchClientConfiguration("https://x.batch.azure.com", credential=object())
    assert default.credential_scopes == [CLOUDS[0].batch_scope]


class _Recorder:
    """A transport that sends nothing: it keeps the request the Batch client would send."""

    def __init__(self) -> None:
        self.requests: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request, **kwargs):
        from azure.core.exceptions import ServiceRequestError
        self.requests.append(request)
        raise ServiceRequestError("recorded, not sent")


@pytest.mark.parametrize("url", sorted(DOCUMENTED_BATCH_RESOURCES))
def test_each_cloud_asks_for_and_sends_a_token_for_its_documented_batch_resource(
        url, tokens, monkeypatch):
    """What the code sends: the managed identity is asked for the documented resource, and
    the Batch request carries a token with exactly that audience."""
    from azure.batch import BatchClient
    from azure.core.exceptions import ServiceRequestError

    from common.backends.azure import entra
    for name, value in tokens.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")
    entra.entra_credential.cache_clear()
    try:
        app = type("App", (), {"batch_account_url": url, "batch_account_key": None,
                               "batch_account_name": "acct"})()
        credential, scopes = batch_credential(app)
        recorder = _Recorder()
        client = BatchClient(url, credential, credential_scopes=scopes, transport=recorder,
                             retry_total=0)
        with pytest.raises(ServiceRequestError):
            client.get_pool("p")
    finally:
        entra.entra_credential.cache_clear()
    resource = DOCUMENTED_BATCH_RESOURCES[url][0]
    assert tokens.resources == [resource]
    bearer = recorder.requests[0].headers["Authorization"].split(" ", 1)[1]
    assert claims_of(bearer)["aud"] == resource
