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
    # and no key exists anywhere the tool wrote
    for path in campaign.root.rglob("*"):
        if path.is_file():
            assert AZURITE_KEY.encode() not in path.read_bytes()


def test_dry_run_without_keys_sends_nothing(tmp_path, azurite_https, fake_https, tokens, certificate,
                                            script_env):
    campaign = AzureCampaign(tmp_path / "az", azurite_https, fake_https)
    app = {k: v for k, v in campaign.app.items() if not k.endswith("_KEY")}
    write_json(campaign.root / "appconfig.json", app)
    env = {**script_env, **tokens.env, "REQUESTS_CA_BUNDLE": str(certificate.cert)}
    result = campaign.run(RUNNER, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert fake_https.request_count == 0 and tokens.resources == []


def test_sovereign_clouds_get_their_own_scope_and_authority():
    china = cloud_of("https://acct.chinanorth2.batch.chinacloudapi.cn")
    assert china.batch_scope == "https://batch.chinacloudapi.cn/.default"
    assert china.authority == "login.chinacloudapi.cn"
    gov = cloud_of("https://acct.usgovvirginia.batch.usgovcloudapi.net")
    assert gov.batch_scope == "https://batch.core.usgovcloudapi.net/.default"
    assert gov.authority == "login.microsoftonline.us"
    assert cloud_of("https://acct.westeurope.batch.azure.com") is CLOUDS[0]
    assert cloud_of("http://127.0.0.1:1234") is CLOUDS[0]
