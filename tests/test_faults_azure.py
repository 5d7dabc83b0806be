"""Nothing lost, nothing left billing, nothing leaked — on the Azure backend, against the fake
Batch service and Azurite: malformed input sends no request; transient faults are survived;
a real Ctrl-C at each step leaves nothing that bills; no secret appears anywhere."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

import batch_data_reducer
import batch_simulation_runner
from conftest import AZURITE_ACCOUNT, AZURITE_KEY, REPO, write_json
from test_azure_e2e import (REDUCER, RUNNER, AzureCampaign, azure_campaign,  # noqa: F401
                            azure_env)
from tests.azure_settings import FAKE_DOCKER_TOKEN, FAKE_GIT_TOKEN
from tests.support.proxy import start_in_subprocess

DELETE = object()


@pytest.fixture
def az(azure_campaign) -> AzureCampaign:
    return azure_campaign


# ---------------------------------------------------------------------------- bad input

SIM_CHANGES = [
    ("SIM_ID", 42), ("SIM_ID", "bad_id"), ("SIM_ID", "a" * 60), ("SIM_ID", "-lead"),
    ("POOL_NODE_COUNT", "4"), ("POOL_NODE_COUNT", 0), ("POOL_NODE_COUNT", 10**9),
    ("POOL_NODE_COUNT", True), ("TASK_COUNT", -1), ("TASK_COUNT", 10**7), ("STARTING_NODE", 1.5),
    ("TIMEOUT_MINUTES", 0), ("TIMEOUT_MINUTES", 10**8), ("TIMEOUT_MINUTES", "soon"),
    ("LOCAL_SIM_PATH", "/no/such/folder"), ("LOCAL_SIM_PATH", 7), ("RUN_SCRIPT", "../../etc/passwd"),
    ("RUN_SCRIPT", "missing.sh"), ("OUTPUT_FILE_PATTERNS", []), ("OUTPUT_FILE_PATTERNS", "*.csv"),
    ("OUTPUT_FILE_PATTERNS", ["../secret/*"]), ("POOL_VM_SIZE", DELETE), ("MAX_TASK_RETRIES", 1000),
    ("TASK_SLOTS_PER_NODE", 0), ("AUTO_DELETE_POOL", "yes"), ("SEED_PARAMETER_FILES", ["../x.txt"]),
    ("POOL_NODE_COUNTS", 4),
    # got through before: a NUL reached the OS (ValueError), ~user raised RuntimeError, and
    # "." made the downloads land among the configs
    ("LOCAL_SIM_PATH", "examples/water\x00phantom"), ("RUN_SCRIPT", "run_simulation.sh\x00"),
    ("OUTPUT_FILE_PATTERNS", ["Dose\x00*"]), ("LOCAL_SIM_PATH", "~nosuchuser4242/sim"),
    ("LOCAL_RESULTS_PATH", "."), ("LOCAL_RESULTS_PATH", "simconfig.json"),
]
APP_CHANGES = [
    ("BACKEND", "aws"), ("BACKEND", ["azure"]), ("BATCH_ACCOUNT_URL", "batch.example.com"),
    ("BATCH_ACCOUNT_URL", "https://bad_host.batch.azure.com"), ("BATCH_ACCOUNT_KEY", "not base64!"),
    ("STORAGE_ACCOUNT_KEY", "not base64!"), ("STORAGE_ACCOUNT_NAME", "Has-Caps"),
    ("WORKER_DOCKER_IMAGE", "UPPER/Case"), ("REDUCER_DOCKER_IMAGE", DELETE),
    ("POOL_IMAGE", {"publisher": "microsoft-dsvm"}), ("POOL_IMAGE", "ubuntu"),
    ("DOCKER_TOKEN", DELETE), ("STORAGE_ACCOUNT_URL", "ftp://x"), ("SIM_ID", "in-the-wrong-file"),
    ("LOCAL_STORAGE_PATH", "store\x00"), ("LOCAL_STORAGE_PATH", "examples/water_phantom/store"),
    ("GIT_USER", ".."),
]


def refused(az: AzureCampaign, capsys, script=batch_simulation_runner, argv=None) -> list[str]:
    code = script.main(argv or [str(az.simconfig)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), lines
    assert az.fake.request_count == 0  # refused before any request
    return lines


@pytest.mark.parametrize("key, value", SIM_CHANGES, ids=[f"sim-{k}-{i}" for i, (k, _) in enumerate(SIM_CHANGES)])
def test_bad_simconfig_value_sends_nothing(az, capsys, key, value):
    if value is DELETE:
        az.sim.pop(key)
        write_json(az.simconfig, az.sim)
    else:
        az.update(**{key: value})
    [line] = refused(az, capsys)
    assert f"simconfig.json: {key}:" in line


@pytest.mark.parametrize("key, value", APP_CHANGES, ids=[f"app-{k}-{i}" for i, (k, _) in enumerate(APP_CHANGES)])
def test_bad_appconfig_value_sends_nothing(az, capsys, key, value):
    app = dict(az.app)
    if value is DELETE:
        app.pop(key)
    else:
        app[key] = value
    write_json(az.root / "appconfig.json", app)
    lines = refused(az, capsys)
    assert any(f"appconfig.json: {key}:" in line or (key == "DOCKER_TOKEN" and "DOCKER_TOKEN" in line)
               for line in lines), lines


@pytest.mark.parametrize("argv", [["--backend", "gcp"], ["--no-such-option"], ["--yes", "--no-input"],
                                  ["--attach", "--cleanup"], ["a.json", "b.json"]])
def test_bad_arguments_send_nothing(az, capsys, argv):
    refused(az, capsys, argv=[str(az.simconfig), *argv])


def test_unreadable_and_malformed_files_send_nothing(az, capsys):
    az.simconfig.write_text("[1, 2, 3]")
    assert "holds a JSON list" in refused(az, capsys)[0]
    az.simconfig.write_text('{"SIM_ID": "x",\n "POOL_NODE_COUNT": }')
    assert "simconfig.json:2:" in refused(az, capsys)[0]
    az.simconfig.write_text("{}")
    az.simconfig.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        assert "cannot be read" in refused(az, capsys)[0]
    az.simconfig.chmod(0o644)
    refused(az, capsys, argv=[str(az.root / "absent.json")])
    refused(az, capsys, script=batch_data_reducer, argv=[str(az.root / "absent.json")])


def _raw_simconfig(az: AzureCampaign, **raw: str) -> None:
    """Write values json.dumps cannot: a 5,000-digit number, a key twice, 100,000 brackets."""
    body = json.dumps({k: v for k, v in az.sim.items() if k not in raw}, indent=2)[:-2]
    az.simconfig.write_text(body + "".join(f',\n  "{k}": {v}' for k, v in raw.items()) + "\n}\n")


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)  # read naively, it waits for a writer forever


def _loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


# (what, file named in the line, key named or None, how to break the campaign)
FILE_CHANGES = [
    ("5,000 digits", "simconfig.json", "POOL_NODE_COUNT",
     lambda az: _raw_simconfig(az, POOL_NODE_COUNT="7" * 5000)),
    ("a key twice", "simconfig.json", "SIM_ID",
     lambda az: _raw_simconfig(az, SIM_ID='"first-id", "SIM_ID": "second-id"')),
    ("nested 100,000 deep", "simconfig.json", "OUTPUT_FILE_PATTERNS",
     lambda az: _raw_simconfig(az, OUTPUT_FILE_PATTERNS="[" * 100_000 + "]" * 100_000)),
    ("byte-order mark", "simconfig.json", None,
     lambda az: az.simconfig.write_bytes(b"\xef\xbb\xbf" + az.simconfig.read_bytes())),
    ("a FIFO", "simconfig.json", None, lambda az: _fifo(az.simconfig)),
    ("a link that loops", "appconfig.json", None, lambda az: _loop(az.root / "appconfig.json")),
]


@pytest.mark.parametrize("what, file, key, change", FILE_CHANGES, ids=[c[0] for c in FILE_CHANGES])
def test_malformed_config_files_send_nothing(az, capsys, monkeypatch, what, file, key, change):
    monkeypatch.chdir(az.root)
    change(az)
    [line] = refused(az, capsys, argv=["simconfig.json"])
    assert line.startswith(f"error: {file}: {key}: " if key else f"error: {file}: "), line


def test_at_least_25_malformed_inputs_are_covered():
    assert len(SIM_CHANGES) + len(APP_CHANGES) + len(FILE_CHANGES) + 5 + 5 >= 25


# ---------------------------------------------------------------------------- transient faults


def test_campaign_survives_busy_batch_and_throttled_storage(az, azure_env, azurite):
    az.fake.knobs.busy_fraction = 0.2  # 20% of Batch requests answered 503
    proxy, url = start_in_subprocess(azurite.url, fail_fraction=0.2)  # and 20% of storage ones
    try:
        az.app["STORAGE_ACCOUNT_URL"] = url
        write_json(az.root / "appconfig.json", az.app)
        runner = az.run(RUNNER, "--no-input", env=azure_env)
        assert runner.returncode == 0, runner.stderr
        reducer = az.run(REDUCER, "--no-input", env=azure_env)
        assert reducer.returncode == 0, reducer.stderr
    finally:
        proxy.terminate()
    assert (az.results / "results" / "DoseAtPhantom.csv").exists()
    assert az.fake.request_count < 500  # retried, but bounded
    assert az.leftovers() == ([], [])


def test_a_storage_refusal_mid_run_is_one_line_and_nothing_bills(az, azure_env, azurite):
    """The blob store keeps the backend contract: a 403 after the job ran (a rotated key, a
    removed role) reaches the user as one line with exit 1 — never "internal error" — and the
    guard deletes what bills first."""
    # listing the task outputs, which happens once the tasks are done (not the merged result)
    proxy, url = start_in_subprocess(azurite.url, forbid=r"prefix=nodes_output%2F(&|$)")
    try:
        az.app["STORAGE_ACCOUNT_URL"] = url
        write_json(az.root / "appconfig.json", az.app)
        az.update(TASK_COUNT=1, POOL_NODE_COUNT=1)
        runner = az.run(RUNNER, "--no-input", env=azure_env)
    finally:
        proxy.terminate()
    assert runner.returncode == 1, runner.stderr
    assert "internal error" not in runner.stderr and "Traceback" not in runner.stderr
    last = runner.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: storage account {AZURITE_ACCOUNT}: listing blobs ({az.sim_id})")
    assert "AuthorizationPermissionMismatch" in last and "STORAGE_ACCOUNT_KEY" in last
    assert "The campaign stopped with an error. Delete job" in runner.stderr, runner.stderr
    assert az.leftovers() == ([], [])


# ---------------------------------------------------------------------------- Ctrl-C, for real


@pytest.mark.parametrize("step", ["Uploading", "Submitting", "nodes:", "Waiting", "Downloading"])
def test_real_sigint_at_each_step_leaves_nothing_billing(az, azure_env, step):
    az.fake.knobs.node_start_delay = 1.0  # long enough to interrupt while nodes start
    if step in ("Waiting", "Downloading"):
        az.sim_dir = az.root / "examples" / "water_phantom"
        (az.sim_dir / "run_simulation.sh").write_text("#!/bin/bash\nsleep 3\necho ok > DoseAtPhantom.csv\n")
    proc = subprocess.Popen([sys.executable, "-u", RUNNER, str(az.simconfig), "--no-input"],
                            cwd=az.root, env=azure_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while step not in seen:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, seen
        seen += line
        assert time.monotonic() < deadline, seen
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode in (0, 130), err  # a late signal may find the run already done
    assert "Traceback" not in err
    assert az.leftovers() == ([], []), err
    blobs = BlobServiceClient(az.app["STORAGE_ACCOUNT_URL"], credential={
        "account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}).get_container_client(az.sim_id)
    if step != "Uploading":
        assert blobs.exists()  # data is never deleted by an interrupt


# ---------------------------------------------------------------------------- secrets


def test_no_secret_anywhere(az, azure_env, azurite, tmp_path):
    git = tmp_path / "git" / "someone" / "reducers"
    git.mkdir(parents=True)
    (git / "reduce.sh").write_text('#!/bin/bash\nmkdir -p "$1/results"; ls "$1" > "$1/results/runs.txt"\n')
    for command in (["git", "init", "-q", str(git)], ["git", "-C", str(git), "add", "."],
                    ["git", "-C", str(git), "-c", "user.email=t@x", "-c", "user.name=t", "commit", "-qm", "r"]):
        subprocess.run(command, check=True)
    (git.parent / "reducers.git").symlink_to(git)
    az.app.update(GIT_USER="someone", GIT_REPO="reducers", GIT_TOKEN=FAKE_GIT_TOKEN,
                  GIT_BASE_URL=f"file://{tmp_path / 'git'}")
    write_json(az.root / "appconfig.json", az.app)
    az.update(REDUCER_SCRIPT="reduce.sh", TASK_COUNT=2, POOL_NODE_COUNT=2)
    outputs = []
    # (a dry run of the campaign again needs --overwrite, as the real run would: its runs exist)
    for script, args in ((RUNNER, ["--no-input"]), (RUNNER, ["--dry-run", "--overwrite"]),
                         (RUNNER, ["--status"]),
                         (REDUCER, ["--no-input", "-v"])):
        done = az.run(script, *args, env=azure_env)
        assert done.returncode == 0, done.stderr
        outputs += [done.stdout, done.stderr]
    secrets = {"storage key": AZURITE_KEY, "batch key": az.fake.account_key,
               "registry password": FAKE_DOCKER_TOKEN, "git token": FAKE_GIT_TOKEN}
    manifest = (az.root / f"{az.sim_id}.campaign.json").read_text()
    blobs = _every_blob(azurite)
    for name, secret in secrets.items():
        for text in outputs + [manifest]:
            assert secret not in text, name
        for blob_name, data in blobs.items():
            assert secret.encode() not in data, (name, blob_name)
        for task in az.fake.tasks:
            assert secret not in task.command_line, name
            assert secret not in json.dumps(task.environment), name
    # The registry password goes where Batch needs it — the auto pool's container registries —
    # and nowhere else the fake received.
    sent = [json.dumps(r.body) for r in az.fake.requests if r.body is not None]
    carrying = [s for s in sent if FAKE_DOCKER_TOKEN in s]
    assert carrying and all('"containerRegistries"' in s for s in carrying)
    assert not any(AZURITE_KEY in s or FAKE_GIT_TOKEN in s or az.fake.account_key in s for s in sent)


def _every_blob(azurite) -> dict[str, bytes]:
    service = BlobServiceClient(azurite.url, credential={"account_name": AZURITE_ACCOUNT,
                                                          "account_key": AZURITE_KEY})
    found = {}
    for container in service.list_containers():
        box = service.get_container_client(container.name)
        for blob in box.list_blobs():
            data = box.download_blob(blob.name).readall()
            found[f"{container.name}/{blob.name}"] = data
            if blob.name.endswith(".zip"):
                import io
                import zipfile
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    for member in archive.namelist():
                        found[f"{container.name}/{blob.name}!{member}"] = archive.read(member)
    return found
