"""Shared test fixtures: tiny campaigns in tmp folders, and no local pool agent left behind."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

from common.backends.local.backend import LocalBackend


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


class Campaign:
    """A simulation folder, appconfig.json and simconfig.json in one tmp folder."""

    def __init__(self, root: Path, run_script: str, **sim: object) -> None:
        self.root = root
        self.sim_dir = root / "sim"
        self.sim_dir.mkdir(parents=True, exist_ok=True)
        script = self.sim_dir / "run.sh"
        script.write_text(run_script)
        script.chmod(0o755)
        self.storage = root / "storage-root"
        self.appconfig = write_json(root / "appconfig.json", {
            "BACKEND": "local", "LOCAL_STORAGE_PATH": str(self.storage)})
        self.sim = {"SIM_ID": "tiny-campaign", "POOL_NODE_COUNT": 2, "LOCAL_SIM_PATH": "sim",
                    "RUN_SCRIPT": "run.sh", "REDUCER_SCRIPT": "builtin:topas",
                    "OUTPUT_FILE_PATTERNS": ["out_*.txt"], "TIMEOUT_MINUTES": 5, **sim}
        self.simconfig = write_json(root / "simconfig.json", self.sim)

    def update(self, **sim: object) -> None:
        self.sim.update(sim)
        write_json(self.simconfig, self.sim)

    @property
    def container(self) -> Path:
        return self.storage / "storage" / str(self.sim["SIM_ID"]).lower()

    @property
    def results(self) -> Path:
        return self.sim_dir / "nodes_output"


ECHO_SCRIPT = """#!/bin/bash
set -e
echo "task $1 seed $SIM_SEED"
echo "value $1" > "out_$1.txt"
echo "note on stderr for $1" >&2
"""


@pytest.fixture
def campaign(tmp_path: Path):
    made = Campaign(tmp_path / "campaign", ECHO_SCRIPT)
    yield made
    stop_local_pools(made.storage)


def stop_local_pools(root: Path) -> None:
    """Tests must not leave agents running: delete every pool under a storage root."""
    backend = LocalBackend(root)
    for pool in (root / "pools").glob("*") if (root / "pools").exists() else []:
        backend.delete_pool(pool.name)


@pytest.fixture
def script_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the scripts as subprocesses: fast example, no terminal tricks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZ_BATCH", "SIM_"))}
    env.update(EXAMPLE_HISTORIES="20000", LOCALBATCH_AGENT_IDLE_SECONDS="60",
               PYTHONPATH=str(REPO), COLUMNS="200")
    return env


# ---------------------------------------------------------------------------- Azurite

from tests.support.azurite import ACCOUNT as AZURITE_ACCOUNT
from tests.support.azurite import KEY as AZURITE_KEY  # noqa: F401
from tests.support.azurite import start_azurite


@pytest.fixture(scope="session")
def azurite():
    server = start_azurite()
    yield server
    server.stop()


# ---------------------------------------------------------------------------- fake Batch

from tests.fake_batch import FakeBatch

FAKE_BATCH_ACCOUNT = "fakebatch"
# A made-up base64 key for the fake account (not a secret: nothing real accepts it).
FAKE_BATCH_KEY = "ZmFrZS1iYXRjaC1rZXktZm9yLXRlc3RzLW9ubHktbm90LWEtc2VjcmV0LTAxMjM0NTY3ODk="


@pytest.fixture(scope="session")
def test_images():
    """The container images the fake's registries hold (tests/support/images.py).

    Container tasks run in a bubblewrap sandbox: without it they cannot run at all. In CI
    (CI=true) that is an error, never a silent skip; elsewhere the tests that need it skip.
    """
    from tests.fake_batch.containers import sandbox_available
    from tests.support.images import build_images, remove
    missing = sandbox_available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"container sandbox unavailable in CI: {missing} (run_tests.sh installs it)")
        pytest.skip(f"container sandbox unavailable: {missing}")
    images = build_images()
    yield images
    remove(images)


@pytest.fixture
def fake_batch(test_images):
    """A running fake Azure Batch account (tests/fake_batch) on a free 127.0.0.1 port.

    `fake_batch.url`, `.account_name`, `.account_key`, `.client(**kwargs)`; `.requests` /
    `.request_count` / `.tasks` to inspect; `.knobs` to inject faults. Its registries hold the
    test images. Stopped (and every task process killed) at teardown, which also fails the
    test if the fake itself misbehaved.
    """
    fake = FakeBatch(FAKE_BATCH_ACCOUNT, FAKE_BATCH_KEY)
    fake.knobs.images = dict(test_images)
    fake.start()
    yield fake
    fake.stop()
    assert not fake.server_errors, "fake Batch crashed:\n" + "\n".join(fake.server_errors)
    assert not fake.response_problems, "fake Batch answered off-spec: " + "; ".join(
        fake.response_problems[:5])


# ---------------------------------------------------------------------------- test tiers

# A test that uses one of these runs processes, servers or containers: the full tier only.
# Others that do so without them say `pytest.mark.slow` themselves.
SLOW_FIXTURES = frozenset({"azurite", "fake_batch", "test_images", "script_env", "campaign"})


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
