"""Config validation: every bad value is refused before anything has an effect.

A bad appconfig.json/simconfig.json ends the script with exit code 2 and one line per problem on
stderr, `error: <file>: <KEY>: <what is wrong>: <how to fix it>`, and creates nothing: no storage
folder, no nodes_output, no file anywhere. The original project's example files
(tests/data/seed_example, unchanged) are refused for their placeholders, one line per key.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

import batch_data_reducer
import batch_simulation_runner
from common.config import MAX_SIM_ID, SECRET_KEYS, Secret, load_settings
from common.errors import EXIT_USAGE, ToolError

SEED = Path(__file__).resolve().parent / "data" / "seed_example"
DELETE = object()  # as a mutation value: remove the key

# `error: <file>: <KEY>: <what>: <fix>` -- the fix is whatever follows the last ": ".
KEY_LINE = re.compile(r"^error: (?P<file>[^:]+): (?P<key>[A-Z_]+): (?P<what>.+): (?P<fix>\S.*)$")
# A problem with a whole file: `error: <file>[:<line>]: <what>: <fix>`.
FILE_LINE = re.compile(r"^error: (?P<file>[^:]+?)(?::(?P<lineno>\d+))?: (?P<what>.+): (?P<fix>\S.*)$")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# Distinctive fake secrets; the two account keys are valid base64 as real ones are.
FAKE_SECRETS = {
    "STORAGE_ACCOUNT_KEY": b64("fake-storage-key-QX7sKq2mZp-not-real"),
    "BATCH_ACCOUNT_KEY": b64("fake-batch-key-Wm4rTn8vLc-not-real"),
    "DOCKER_TOKEN": "dckr_pat_FAKE_Zr9XwQ3tYb",
    "GIT_TOKEN": "ghp_FAKE_Hn5JkL2pQr8sTu",
}
AZURE_APP = {
    "BACKEND": "azure",
    "STORAGE_ACCOUNT_NAME": "mystorage01",
    "STORAGE_ACCOUNT_DOMAIN": "core.windows.net",
    "BATCH_ACCOUNT_NAME": "mybatch01",
    "BATCH_ACCOUNT_URL": "https://mybatch01.westeurope.batch.azure.com",
    "WORKER_DOCKER_IMAGE": "myuser/topas:4.0",
    "REDUCER_DOCKER_IMAGE": "ghcr.io/myuser/pyreducer:latest",
    "STORAGE_ACCOUNT_KEY": FAKE_SECRETS["STORAGE_ACCOUNT_KEY"],
    "BATCH_ACCOUNT_KEY": FAKE_SECRETS["BATCH_ACCOUNT_KEY"],
}
# Keys of the original appconfig.json whose placeholder values cannot be real (the images,
# DOCKER_USER/TOKEN and GIT_* placeholders are well-formed, so they cannot be told apart).
SEED_PLACEHOLDER_KEYS = {"STORAGE_ACCOUNT_NAME", "STORAGE_ACCOUNT_KEY", "BATCH_ACCOUNT_NAME",
                         "BATCH_ACCOUNT_KEY", "BATCH_ACCOUNT_URL"}


@pytest.fixture(autouse=True)
def _no_secrets_in_environment(monkeypatch):
    """Secrets in the environment win over the files: keep the developer's out of these tests."""
    for key in SECRET_KEYS:
        monkeypatch.delenv(key, raising=False)


def _snapshot(root: Path) -> dict[str, tuple[bool, int | None]]:
    return {str(p.relative_to(root)): (p.is_dir(), None if p.is_dir() else p.lstat().st_mtime_ns)
            for p in root.rglob("*")}


def _mutate(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = dict(data)
    for key, value in changes.items():
        if value is DELETE:
            result.pop(key, None)
        else:
            result[key] = value
    return result


class Setup:
    """A valid local campaign in tmp_path (the working directory): a copy of the original example
    simulation in sim/, appconfig.json and simconfig.json; mutate one key, run, check nothing
    was created."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sim_dir = root / "sim"
        shutil.copytree(SEED / "example_simulation", self.sim_dir)
        self.storage = root / "storage"
        self.appconfig = root / "appconfig.json"
        self.simconfig = root / "simconfig.json"
        self.app: dict[str, Any] = {"BACKEND": "local", "LOCAL_STORAGE_PATH": str(self.storage)}
        self.sim: dict[str, Any] = {
            "SIM_ID": "seed-in-water", "POOL_NODE_COUNT": 2, "POOL_VM_SIZE": "STANDARD_D2S_V3",
            "LOCAL_SIM_PATH": "sim", "RUN_SCRIPT": "main_run_script.sh",
            "REDUCER_SCRIPT": "builtin:topas",
            "OUTPUT_FILE_PATTERNS": ["IsoSeedI125S16_*", "phsp_cylinder*"], "TIMEOUT_MINUTES": 5,
        }
        self.write()

    def write(self, app: dict[str, Any] | None = None, sim: dict[str, Any] | None = None) -> "Setup":
        self.app = _mutate(self.app, app or {})
        self.sim = _mutate(self.sim, sim or {})
        self.appconfig.write_text(json.dumps(self.app, indent=2))
        self.simconfig.write_text(json.dumps(self.sim, indent=2))
        return self

    def azure(self, **changes: Any) -> "Setup":
        self.app = {"LOCAL_STORAGE_PATH": str(self.storage)}
        return self.write(app=_mutate(AZURE_APP, changes))

    def load(self, **kwargs: Any):
        return load_settings(self.simconfig, env=kwargs.pop("env", {}), **kwargs)

    def run(self, capsys, *argv: str, script=batch_simulation_runner) -> tuple[int, list[str]]:
        """Run a script in-process; return (exit code, stderr lines) after checking it had no effect."""
        before = _snapshot(self.root)
        code = script.main(list(argv) or ["simconfig.json"])
        out, err = capsys.readouterr()
        assert out == ""
        assert _snapshot(self.root) == before, "a refused run must not create or touch anything"
        assert not self.storage.exists()
        assert not (self.sim_dir / "nodes_output").exists()
        assert not (self.root / ".localbatch").exists()
        lines = err.splitlines()
        assert lines and all(line.startswith("error: ") for line in lines), err
        return code, lines


@pytest.fixture
def setup(tmp_path, monkeypatch) -> Setup:
    monkeypatch.chdir(tmp_path)
    return Setup(tmp_path)


def keyed(lines: list[str]) -> list[tuple[str, str]]:
    """(file, key) of each line, asserting every line has the one-line shape with a fix."""
    matches = [KEY_LINE.match(line) for line in lines]
    assert all(matches), lines
    return [(m["file"], m["key"]) for m in matches]  # type: ignore[index]


def assert_one_error(code: int, lines: list[str], file: str, key: str, *fragments: str) -> None:
    assert code == EXIT_USAGE
    assert keyed(lines) == [(file, key)], lines
    for fragment in fragments:
        assert fragment in lines[0]


# ----------------------------------------------------------------------------- simconfig keys


@pytest.mark.parametrize("sim_id, what", [
    ("water_phantom", "cannot name a blob container"),   # '_' is not allowed in containers
    ("water--phantom", "cannot name a blob container"),  # no double hyphen in containers
    ("-water", "cannot name a blob container"),
    ("water-", "cannot name a blob container"),
    ("water.phantom", "cannot name a blob container"),
    ("water phantom", "cannot name a blob container"),
    ("a" * (MAX_SIM_ID + 1), f"has {MAX_SIM_ID + 1} characters"),  # + "-workers-<stamp>" > 64
    ("ab", "has 2 characters"),
    (42, "must be a string, not a number"),
    (["water"], "must be a string, not a list"),
    ("", "is missing"),
    (DELETE, "is missing"),
])
def test_sim_id_that_cannot_name_batch_ids_and_a_container_is_refused(setup, capsys, sim_id, what):
    code, lines = setup.write(sim={"SIM_ID": sim_id}).run(capsys)
    assert_one_error(code, lines, "simconfig.json", "SIM_ID", what)


@pytest.mark.parametrize("sim_id", ["abc", "a" * MAX_SIM_ID, "Water-Phantom-01", "run2"])
def test_sim_id_at_the_limits_is_accepted(setup, sim_id):
    assert MAX_SIM_ID == 64 - len("-workers-20260101120000")
    assert setup.write(sim={"SIM_ID": sim_id}).load().sim.sim_id == sim_id


@pytest.mark.parametrize("value, what", [
    (DELETE, "is missing"),
    ("   ", "is missing"),
    ("no-such-folder", "'no-such-folder' is not a folder"),
    ("sim/main_run_script.sh", "is not a folder"),
    ("/path/to/AzureBatch/example/example_simulation", "is not a folder"),
    (7, "must be a string"),
])
def test_local_sim_path_that_is_not_a_folder_is_refused(setup, capsys, value, what):
    code, lines = setup.write(sim={"LOCAL_SIM_PATH": value}).run(capsys)
    # RUN_SCRIPT cannot be checked without the folder, and is not blamed for it.
    assert_one_error(code, lines, "simconfig.json", "LOCAL_SIM_PATH", what)


@pytest.mark.parametrize("value, what", [
    ("../appconfig.json", "is not inside"),
    ("../../etc/passwd", "is not inside"),
    ("/etc/passwd", "is not inside"),
    ("missing.sh", "'missing.sh' does not exist"),
    (".", "does not exist"),  # the folder itself is not a script
    (DELETE, "is missing"),
])
def test_run_script_outside_the_simulation_folder_or_missing_is_refused(setup, capsys, value, what):
    code, lines = setup.write(sim={"RUN_SCRIPT": value}).run(capsys)
    assert_one_error(code, lines, "simconfig.json", "RUN_SCRIPT", what)


def test_run_script_given_absolute_inside_the_folder_is_kept_relative(setup):
    settings = setup.write(sim={"RUN_SCRIPT": str(setup.sim_dir / "main_run_script.sh")}).load()
    assert settings.sim.run_script == "main_run_script.sh"


@pytest.mark.parametrize("key, value, what", [
    ("POOL_NODE_COUNT", 0, "is 0 and there are no Spot nodes (SPOT_NODE_COUNT)"),
    ("POOL_NODE_COUNT", -3, "is -3, outside 0.."),
    ("POOL_NODE_COUNT", 100_000, "outside 0.."),
    ("POOL_NODE_COUNT", 2.5, "must be a whole number"),
    ("POOL_NODE_COUNT", "2", "must be a whole number, not a string"),
    ("POOL_NODE_COUNT", True, "must be a whole number, not true/false"),
    ("POOL_NODE_COUNT", False, "must be a whole number, not true/false"),
    ("POOL_NODE_COUNT", None, "is missing"),
    ("POOL_NODE_COUNT", DELETE, "is missing"),
    ("TASK_COUNT", 0, "is 0, outside 1.."),
    ("TASK_COUNT", "4", "must be a whole number"),
    ("STARTING_NODE", -1, "is -1, outside 0.."),
    ("TIMEOUT_MINUTES", 0, "is 0, outside the range"),
    ("TIMEOUT_MINUTES", -5, "is -5, outside the range"),
    ("TIMEOUT_MINUTES", "30", "must be a number, not a string"),
    ("TIMEOUT_MINUTES", True, "must be a number, not true/false"),
    ("TIMEOUT_MINUTES", 10**9, "outside the range"),
    ("REDUCER_FAN_IN", 1, "is 1, outside 2..1000"),
    ("REDUCER_FAN_IN", 1001, "is 1001, outside 2..1000"),
    ("REDUCER_FAN_IN", "16", "must be a whole number, not a string"),
    ("REDUCER_NODE_COUNT", 0, "is 0, outside 1..2000"),
    ("REDUCER_NODE_COUNT", 4.0, "must be a whole number"),
])
def test_counts_and_timeout_out_of_range_or_of_the_wrong_type_are_refused(setup, capsys, key, value,
                                                                          what):
    code, lines = setup.write(sim={key: value}).run(capsys)
    assert_one_error(code, lines, "simconfig.json", key, what)


@pytest.mark.parametrize("value, what", [
    ([], "is empty"),
    (["", "  "], "is empty"),
    ("IsoSeedI125S16_*", "must be a list of strings, not a string"),
    ([1, 2], "must be a list of strings"),
    (DELETE, "is missing"),
    (["../escape/*.csv"], "leaves the task's working directory"),
    (["out/../../x*"], "leaves the task's working directory"),
    (["/etc/*"], "leaves the task's working directory"),
])
def test_bad_output_file_patterns_are_refused(setup, capsys, value, what):
    code, lines = setup.write(sim={"OUTPUT_FILE_PATTERNS": value}).run(capsys)
    assert_one_error(code, lines, "simconfig.json", "OUTPUT_FILE_PATTERNS", what)


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("name", ["simconfig.json", "appconfig.json"])
def test_json_syntax_error_names_the_file_and_line(setup, capsys, name):
    (setup.root / name).write_text('{\n  "SIM_ID": "x",\n  "POOL_NODE_COUNT": 2,,\n  "A": 1\n}\n')
    code, lines = setup.run(capsys)
    assert code == EXIT_USAGE and len(lines) == 1, lines
    match = FILE_LINE.match(lines[0])
    assert match and match["file"] == name and match["lineno"] == "3", lines
    assert "invalid JSON at line 3" in lines[0]


@pytest.mark.parametrize("name, content, what", [
    ("simconfig.json", "[1, 2]", "holds a JSON list, not an object"),
    ("simconfig.json", '"just a string"', "holds a JSON str, not an object"),
    ("appconfig.json", "null", "not an object"),
    ("simconfig.json", "", "invalid JSON at line 1"),
])
def test_a_config_that_is_not_a_json_object_is_refused(setup, capsys, name, content, what):
    (setup.root / name).write_text(content)
    code, lines = setup.run(capsys)
    assert code == EXIT_USAGE and len(lines) == 1, lines
    match = FILE_LINE.match(lines[0])
    assert match and match["file"] == name and what in lines[0], lines


def test_missing_simconfig_is_refused(setup, capsys):
    code, lines = setup.run(capsys, "nope.json")
    assert code == EXIT_USAGE and len(lines) == 1, lines
    assert FILE_LINE.match(lines[0])["file"] == "nope.json"  # type: ignore[index]
    assert "file not found" in lines[0]


def test_missing_appconfig_is_refused(setup, capsys):
    code, lines = setup.run(capsys, "simconfig.json", "--appconfig", "other/app.json")
    assert code == EXIT_USAGE and len(lines) == 1, lines
    assert FILE_LINE.match(lines[0])["file"] == "other/app.json"  # type: ignore[index]
    assert "file not found" in lines[0]


def test_unreadable_files_are_refused_each_with_its_line(setup, capsys):
    (setup.root / "folder.json").mkdir()  # reading a folder fails, even as root
    (setup.root / "latin1.json").write_bytes(b'{"SIM_ID": "caf\xe9"}')
    code, lines = setup.run(capsys, "latin1.json", "--appconfig", "folder.json")
    assert code == EXIT_USAGE
    assert sorted(FILE_LINE.match(line)["file"] for line in lines) == ["folder.json",  # type: ignore[index]
                                                                      "latin1.json"]
    assert any("cannot be read (IsADirectoryError)" in line for line in lines)
    assert any("cannot be read (UnicodeDecodeError)" in line for line in lines)


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize("file, changes, key, what", [
    ("simconfig.json", {"TIMEOUT_MINUTE": 5}, "TIMEOUT_MINUTE", "did you mean TIMEOUT_MINUTES?"),
    ("simconfig.json", {"POOL_NODES_COUNT": 2}, "POOL_NODES_COUNT", "did you mean POOL_NODE_COUNT?"),
    ("appconfig.json", {"LOCAL_STORAGE_PAHT": "x"}, "LOCAL_STORAGE_PAHT",
     "did you mean LOCAL_STORAGE_PATH?"),
    ("appconfig.json", {"FROBNICATE": 1}, "FROBNICATE", "remove it (known keys: BACKEND"),
])
def test_unknown_keys_are_refused_with_a_hint(setup, capsys, file, changes, key, what):
    setup.write(**{"sim" if file == "simconfig.json" else "app": changes})
    code, lines = setup.run(capsys)
    assert_one_error(code, lines, file, key, "is not a known key", what)


@pytest.mark.parametrize("file, changes, key, where", [
    ("simconfig.json", {"BACKEND": "local"}, "BACKEND", "belongs in appconfig.json"),
    ("simconfig.json", {"GIT_REPO": "reducers"}, "GIT_REPO", "belongs in appconfig.json"),
    ("appconfig.json", {"SIM_ID": "x"}, "SIM_ID", "belongs in simconfig.json"),
    ("appconfig.json", {"POOL_VM_SIZE": "STANDARD_D2S_V3"}, "POOL_VM_SIZE",
     "belongs in simconfig.json"),
])
def test_a_key_in_the_wrong_file_is_refused(setup, capsys, file, changes, key, where):
    setup.write(**{"sim" if file == "simconfig.json" else "app": changes})
    code, lines = setup.run(capsys)
    assert_one_error(code, lines, file, key, where)


def test_comment_keys_are_allowed(setup):
    setup.write(app={"_comment": "local run"}, sim={"// note": "x", "#": 1}).load()


# ----------------------------------------------------------------------------- backend


@pytest.mark.parametrize("value, what", [
    ("lokal", "is 'lokal'"),
    ("Azure Batch", "is 'Azure Batch'"),
    (5, "must be a string, not a number"),
    (["local"], "must be a string, not a list"),
])
def test_unknown_backend_is_refused_with_the_choices(setup, capsys, value, what):
    code, lines = setup.write(app={"BACKEND": value}).run(capsys)
    # Only BACKEND: a bad value is not taken for azure (no flood of azure keys "missing").
    assert_one_error(code, lines, "appconfig.json", "BACKEND", what, "use one of: local, azure")


def test_backend_option_with_a_bad_value_is_refused_by_the_parser(setup, capsys):
    code, lines = setup.run(capsys, "simconfig.json", "--backend", "kubernetes")
    assert code == EXIT_USAGE and len(lines) == 1, lines
    assert "--backend" in lines[0] and "invalid choice: 'kubernetes'" in lines[0]


def test_backend_option_overrides_the_file(setup, capsys):
    code, lines = setup.run(capsys, "simconfig.json", "--backend", "azure")
    assert code == EXIT_USAGE
    assert {key for _, key in keyed(lines)} == {
        "STORAGE_ACCOUNT_NAME", "BATCH_ACCOUNT_NAME",
        "BATCH_ACCOUNT_URL", "WORKER_DOCKER_IMAGE", "REDUCER_DOCKER_IMAGE"}
    assert setup.azure().load(backend="local").backend == "local"


# ----------------------------------------------------------------------------- azure keys


def test_missing_batch_key_means_entra_id(setup):
    app = setup.azure(BATCH_ACCOUNT_KEY=DELETE).load().app
    assert app.batch_account_key is None


def test_missing_storage_key_means_entra_id_and_user_delegation_sas(setup):
    app = setup.azure(STORAGE_ACCOUNT_KEY=DELETE, BATCH_ACCOUNT_KEY=DELETE).load().app
    assert app.storage_account_key is None and app.secrets() == ()


def test_pool_image_and_node_agent_are_configurable(setup):
    app = setup.azure(POOL_IMAGE={"publisher": "canonical", "offer": "ubuntu-24_04-lts",
                                  "sku": "server"}, NODE_AGENT_SKU_ID="batch.node.ubuntu 24.04").load().app
    assert (app.pool_image.offer, app.pool_image.version) == ("ubuntu-24_04-lts", "latest")
    assert setup.azure().load().app.pool_image.offer == "ubuntu-hpc"


@pytest.mark.parametrize("image", [["a"], {"publisher": "p"}, {"publisher": "p", "offer": "o",
                                                               "sku": 1}, {"publisher": "p", "x": 1}])
def test_bad_pool_image_is_refused(setup, capsys, image):
    code, lines = setup.azure(POOL_IMAGE=image).run(capsys, "simconfig.json")
    assert code == EXIT_USAGE
    assert [key for _, key in keyed(lines)] == ["POOL_IMAGE"]


def test_valid_azure_appconfig_loads(setup):
    app = setup.azure().load().app
    assert app.backend == "azure"
    assert app.storage_account_key == Secret(FAKE_SECRETS["STORAGE_ACCOUNT_KEY"])
    assert app.batch_account_url == AZURE_APP["BATCH_ACCOUNT_URL"]


@pytest.mark.parametrize("key, value, what", [
    ("BATCH_ACCOUNT_URL", DELETE, "is missing"),
    ("BATCH_ACCOUNT_URL", "mybatch01.westeurope.batch.azure.com", "is not an http(s) URL"),
    ("BATCH_ACCOUNT_URL", "ftp://mybatch01.westeurope.batch.azure.com", "is not an http(s) URL"),
    ("BATCH_ACCOUNT_URL", "https://batch_account_url.batch.azure.com", "valid host name"),
    ("BATCH_ACCOUNT_URL", "https://", "is not an http(s) URL"),
    ("BATCH_ACCOUNT_URL", "https://-bad-.example.com", "valid host name"),
    ("STORAGE_ACCOUNT_KEY", "storage_account_key", "is not a valid base64 account key"),
    ("STORAGE_ACCOUNT_KEY", "abc", "is not a valid base64 account key"),
    ("STORAGE_ACCOUNT_KEY", 12345, "must be a string"),
    ("BATCH_ACCOUNT_KEY", "batch account key!", "is not a valid base64 account key"),
    ("STORAGE_ACCOUNT_NAME", DELETE, "is missing"),
    ("STORAGE_ACCOUNT_NAME", "storage_account_name", "is not a storage account name"),
    ("STORAGE_ACCOUNT_NAME", "MyStorage", "is not a storage account name"),
    ("STORAGE_ACCOUNT_NAME", "ab", "is not a storage account name"),
    ("STORAGE_ACCOUNT_NAME", "a" * 25, "is not a storage account name"),
    ("BATCH_ACCOUNT_NAME", "batch-account", "is not a Batch account name"),
    ("STORAGE_ACCOUNT_DOMAIN", "core windows net", "is not a domain name"),
    ("WORKER_DOCKER_IMAGE", DELETE, "is missing"),
    ("WORKER_DOCKER_IMAGE", "MyUser/Topas:4.0", "is not a valid Docker image name"),
    ("WORKER_DOCKER_IMAGE", "my image", "is not a valid Docker image name"),
    ("WORKER_DOCKER_IMAGE", 4, "must be a string"),
    ("REDUCER_DOCKER_IMAGE", DELETE, "is missing"),
    ("REDUCER_DOCKER_IMAGE", "user/pyreducer:bad tag", "is not a valid Docker image name"),
])
def test_bad_azure_key_is_refused(setup, capsys, key, value, what):
    code, lines = setup.azure(**{key: value}).run(capsys)
    assert_one_error(code, lines, "appconfig.json", key, what)


def test_azure_needs_a_vm_size_in_simconfig(setup, capsys):
    code, lines = setup.azure().write(sim={"POOL_VM_SIZE": DELETE}).run(capsys)
    assert_one_error(code, lines, "simconfig.json", "POOL_VM_SIZE", "is missing")
    setup.write(app={"BACKEND": "local"}).load()  # the local backend has no VMs


@pytest.mark.parametrize("backend", ["azure", "local"])
@pytest.mark.parametrize("given, missing", [("DOCKER_USER", "DOCKER_TOKEN"),
                                            ("DOCKER_TOKEN", "DOCKER_USER")])
def test_docker_user_and_token_come_together(setup, capsys, backend, given, missing):
    values = {"DOCKER_USER": "myuser", "DOCKER_TOKEN": FAKE_SECRETS["DOCKER_TOKEN"]}
    if backend == "azure":
        setup.azure()
    code, lines = setup.write(app={given: values[given]}).run(capsys)
    assert_one_error(code, lines, "appconfig.json", missing, "is missing while its pair is given")


@pytest.mark.parametrize("key", ["DOCKER_USER", "DOCKER_TOKEN"])
def test_a_docker_credential_of_the_wrong_type_is_reported_once(setup, capsys, key):
    setup.write(app={"DOCKER_USER": "myuser", "DOCKER_TOKEN": FAKE_SECRETS["DOCKER_TOKEN"],
                     key: 12345})
    code, lines = setup.run(capsys)
    assert_one_error(code, lines, "appconfig.json", key, "must be a string")  # not also "missing"


def test_docker_token_from_the_environment_pairs_with_the_user(setup):
    setup.write(app={"DOCKER_USER": "myuser"})
    assert setup.load(env={"DOCKER_TOKEN": "from-env"}).app.docker_token == Secret("from-env")


def test_original_example_appconfig_is_refused_one_line_per_placeholder(setup, capsys):
    shutil.copy(SEED / "appconfig.json", setup.appconfig)
    code, lines = setup.run(capsys)
    assert code == EXIT_USAGE
    assert sorted(keyed(lines)) == sorted(("appconfig.json", key) for key in SEED_PLACEHOLDER_KEYS)


# ----------------------------------------------------------------------------- several at once


SEVERAL_SIM = {"SIM_ID": "my_sim", "POOL_NODE_COUNT": 0, "RUN_SCRIPT": "../run.sh",
               "OUTPUT_FILE_PATTERNS": [], "TIMEOUT_MINUTES": "soon", "TIMEOUT": 5}
SEVERAL_APP = {"BATCH_ACCOUNT_URL": "batch.example.com", "STORAGE_ACCOUNT_KEY": "placeholder",
               "WORKER_DOCKER_IMAGE": DELETE, "SIM_ID": "x"}
SEVERAL_EXPECTED = sorted(
    [("simconfig.json", key) for key in ("SIM_ID", "POOL_NODE_COUNT", "RUN_SCRIPT",
                                         "OUTPUT_FILE_PATTERNS", "TIMEOUT_MINUTES", "TIMEOUT")]
    + [("appconfig.json", key) for key in ("BATCH_ACCOUNT_URL", "STORAGE_ACCOUNT_KEY",
                                           "WORKER_DOCKER_IMAGE", "SIM_ID")])


def test_several_problems_are_all_reported_in_one_run(setup, capsys):
    code, lines = setup.azure(**SEVERAL_APP).write(sim=SEVERAL_SIM).run(capsys)
    assert code == EXIT_USAGE
    assert sorted(keyed(lines)) == SEVERAL_EXPECTED


def test_load_settings_raises_one_usage_error_with_every_line(setup):
    setup.azure(**SEVERAL_APP).write(sim=SEVERAL_SIM)
    with pytest.raises(ToolError) as caught:
        setup.load()
    assert caught.value.exit_code == EXIT_USAGE
    assert len(caught.value.lines) == len(SEVERAL_EXPECTED)


# ----------------------------------------------------------------------------- the reducer


@pytest.mark.parametrize("changes, what", [
    ({"REDUCER_SCRIPT": DELETE}, "is missing"),
    ({"REDUCER_SCRIPT": "builtin:other"}, "is not a built-in reducer"),
    ({"REDUCER_SCRIPT": "reduce.sh"}, "has no source (no REDUCER_PATH, and no GIT_USER/GIT_REPO"),
    ({"REDUCER_SCRIPT": "reduce.sh", "REDUCER_PATH": "sim"}, "'reduce.sh' does not exist"),
    ({"REDUCER_SCRIPT": "../appconfig.json", "REDUCER_PATH": "sim"}, "is not inside"),
])
def test_reducer_refuses_a_reducer_script_it_cannot_get(setup, capsys, changes, what):
    code, lines = setup.write(sim=changes).run(capsys, script=batch_data_reducer)
    assert_one_error(code, lines, "simconfig.json", "REDUCER_SCRIPT", what)


def test_reducer_refuses_a_reducer_path_that_is_not_a_folder(setup, capsys):
    setup.write(sim={"REDUCER_SCRIPT": "reduce.sh", "REDUCER_PATH": "no-such-folder"})
    code, lines = setup.run(capsys, script=batch_data_reducer)
    assert_one_error(code, lines, "simconfig.json", "REDUCER_PATH", "is not a folder")


def test_reducer_reports_a_missing_source_together_with_other_problems(setup, capsys):
    setup.write(sim={"REDUCER_SCRIPT": "reduce.sh", "POOL_NODE_COUNT": 0})
    code, lines = setup.run(capsys, script=batch_data_reducer)
    assert code == EXIT_USAGE
    assert sorted(keyed(lines)) == [("simconfig.json", "POOL_NODE_COUNT"),
                                    ("simconfig.json", "REDUCER_SCRIPT")]


def test_reducer_script_from_git_or_a_folder_loads(setup):
    setup.write(app={"GIT_USER": "someone", "GIT_REPO": "reducers"},
                sim={"REDUCER_SCRIPT": "reduce.sh"})
    assert setup.load(for_reducer=True).sim.reducer_script == "reduce.sh"
    (setup.sim_dir / "reduce.sh").write_text("#!/bin/sh\n")
    setup.write(app={"GIT_USER": DELETE, "GIT_REPO": DELETE}, sim={"REDUCER_PATH": "sim"})
    assert setup.load(for_reducer=True).sim.reducer_path == setup.sim_dir


def test_runner_does_not_need_a_reducer_script(setup):
    assert setup.write(sim={"REDUCER_SCRIPT": DELETE}).load().sim.reducer_script is None


# ----------------------------------------------------------------------------- what loads


def test_shipped_configs_load_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(REPO / "simconfig.json", env={})
    sim = settings.sim
    assert settings.backend == "local"
    assert sim.local_sim_path == REPO / "examples" / "water_phantom"
    assert (sim.local_sim_path / sim.run_script).is_file()
    assert sim.local_results_path == REPO / "examples" / "water_phantom" / "nodes_output"
    assert settings.app.local_storage_path == REPO / ".localbatch"
    assert sim.task_count == sim.pool_node_count == 4
    assert sim.reducer_script == "builtin:topas"
    assert list(tmp_path.iterdir()) == []


def test_relative_paths_resolve_against_the_config_files_not_the_working_directory(setup,
                                                                                  monkeypatch):
    setup.write(app={"LOCAL_STORAGE_PATH": "store"}, sim={"LOCAL_RESULTS_PATH": "results"})
    elsewhere = setup.root / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = setup.load()
    assert settings.sim.local_sim_path == setup.sim_dir
    assert settings.sim.local_results_path == setup.root / "results"
    assert settings.app.local_storage_path == setup.root / "store"


def test_defaults(setup):
    sim = setup.write(sim={"TIMEOUT_MINUTES": DELETE}).load().sim
    assert sim.task_count == sim.pool_node_count == 2  # TASK_COUNT defaults to POOL_NODE_COUNT
    assert sim.starting_node == 1
    assert list(sim.task_indices) == [1, 2]
    assert sim.local_results_path == setup.sim_dir / "nodes_output"
    assert sim.timeout_minutes == 60.0
    assert (sim.reducer_fan_in, sim.reducer_node_count) == (16, 1)
    sim = setup.write(sim={"TASK_COUNT": 5, "STARTING_NODE": 0}).load().sim
    assert (sim.pool_node_count, sim.task_count, list(sim.task_indices)) == (2, 5, [0, 1, 2, 3, 4])


def test_original_appconfig_without_backend_means_azure(setup):
    original = json.loads((SEED / "appconfig.json").read_text())
    assert "BACKEND" not in original
    fixed = {**original, **{k: v for k, v in AZURE_APP.items() if k != "BACKEND"}}
    setup.appconfig.write_text(json.dumps(fixed))
    app = setup.load().app
    assert app.backend == "azure"
    assert app.storage_account_domain == "core.windows.net"  # it said blob.core.windows.net


@pytest.mark.parametrize("domain, normalised", [
    ("core.windows.net", "core.windows.net"),
    ("blob.core.windows.net", "core.windows.net"),
    ("Blob.Core.Windows.Net.", "core.windows.net"),
    ("core.chinacloudapi.cn", "core.chinacloudapi.cn"),
    (DELETE, "core.windows.net"),
])
def test_storage_account_domain_accepts_both_forms(setup, domain, normalised):
    assert setup.azure(STORAGE_ACCOUNT_DOMAIN=domain).load().app.storage_account_domain == normalised


def test_secrets_from_the_environment_win_over_the_file(setup):
    env_key = b64("key-from-the-environment")
    setup.azure(DOCKER_USER="myuser", DOCKER_TOKEN="file-token")
    app = setup.load(env={"STORAGE_ACCOUNT_KEY": env_key, "DOCKER_TOKEN": "env-token"}).app
    assert app.storage_account_key.reveal() == env_key
    assert app.docker_token.reveal() == "env-token"
    assert app.batch_account_key.reveal() == FAKE_SECRETS["BATCH_ACCOUNT_KEY"]  # not in env


def test_secret_in_the_environment_satisfies_a_required_key(setup):
    setup.azure(STORAGE_ACCOUNT_KEY=DELETE, BATCH_ACCOUNT_KEY="batch_account_key")
    app = setup.load(env={"STORAGE_ACCOUNT_KEY": FAKE_SECRETS["STORAGE_ACCOUNT_KEY"],
                          "BATCH_ACCOUNT_KEY": FAKE_SECRETS["BATCH_ACCOUNT_KEY"]}).app
    assert app.batch_account_key.reveal() == FAKE_SECRETS["BATCH_ACCOUNT_KEY"]


# ----------------------------------------------------------------------------- secrets


def _leaks(text: str, secrets: dict[str, Any]) -> list[str]:
    found = []
    for value in secrets.values():
        value = str(value)
        if value in text:
            found.append(value)
        try:  # nor the decoded account key
            decoded = base64.b64decode(value, validate=True).decode()
        except Exception:
            continue
        if decoded in text:
            found.append(decoded)
    return found


def test_settings_never_show_their_secrets(setup):
    settings = setup.azure(DOCKER_USER="myuser", DOCKER_TOKEN=FAKE_SECRETS["DOCKER_TOKEN"],
                           GIT_USER="someone", GIT_REPO="reducers",
                           GIT_TOKEN=FAKE_SECRETS["GIT_TOKEN"]).load()
    assert sorted(settings.app.secrets()) == sorted(FAKE_SECRETS.values())  # they were loaded
    for text in (repr(settings), str(settings), repr(settings.app), str(settings.app),
                 f"{settings.app.docker_token}", repr(settings.app.git_token)):
        assert _leaks(text, FAKE_SECRETS) == [], text


def test_errors_never_show_secrets(setup, capsys, monkeypatch):
    bad_secrets = {"STORAGE_ACCOUNT_KEY": "NotBase64-Secret-Q9x!Zk",
                   "BATCH_ACCOUNT_KEY": 918273645546372819,
                   "DOCKER_TOKEN": "dckr_pat_misplaced_Vb7Nq2"}
    # valid secrets, wrong secrets, a secret under a typo key and in the wrong file, bad others
    setup.azure(DOCKER_USER="My User", GIT_TOKEN=FAKE_SECRETS["GIT_TOKEN"], GIT_USER="a b",
                BATCH_ACCOUNT_URL="not a url", **{k: v for k, v in bad_secrets.items()
                                                  if k != "DOCKER_TOKEN"},
                DOCKER_TOKN=bad_secrets["DOCKER_TOKEN"])
    setup.write(sim={"SIM_ID": "bad_id", "POOL_NODE_COUNT": 0,
                     "STORAGE_ACCOUNT_KEY": FAKE_SECRETS["STORAGE_ACCOUNT_KEY"]})
    monkeypatch.setenv("DOCKER_TOKEN", FAKE_SECRETS["DOCKER_TOKEN"])
    code, lines = setup.run(capsys, "simconfig.json", "-v")
    assert code == EXIT_USAGE and len(lines) >= 8, lines
    assert _leaks("\n".join(lines), {**FAKE_SECRETS, **bad_secrets}) == [], lines


# ----------------------------------------------------------------------------- the original example


@pytest.fixture
def seed_copy(tmp_path, monkeypatch) -> Path:
    """The original example files, unchanged, in the working directory."""
    shutil.copytree(SEED, tmp_path, dirs_exist_ok=True)
    (tmp_path / "SOURCE.md").unlink()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_seed(capsys, root: Path, script, *argv: str) -> tuple[int, list[str]]:
    before = _snapshot(root)
    code = script.main(["simconfig.json", *argv])
    out, err = capsys.readouterr()
    assert out == "" and _snapshot(root) == before
    return code, err.splitlines()


@pytest.mark.parametrize("script", [batch_simulation_runner, batch_data_reducer])
def test_original_example_with_local_backend_is_refused_for_its_placeholder_path_only(
        seed_copy, capsys, script):
    code, lines = _run_seed(capsys, seed_copy, script, "--backend", "local")
    assert_one_error(code, lines, "simconfig.json", "LOCAL_SIM_PATH",
                     "'/path/to/AzureBatch/example/example_simulation' is not a folder")


def test_original_example_as_it_is_gets_one_line_per_placeholder(seed_copy, capsys):
    code, lines = _run_seed(capsys, seed_copy, batch_simulation_runner)
    assert code == EXIT_USAGE
    assert sorted(keyed(lines)) == sorted([("simconfig.json", "LOCAL_SIM_PATH")]
                                          + [("appconfig.json", k) for k in SEED_PLACEHOLDER_KEYS])


def test_original_example_loads_once_its_path_is_set(seed_copy):
    sim = json.loads((seed_copy / "simconfig.json").read_text())
    (seed_copy / "simconfig.json").write_text(json.dumps({**sim, "LOCAL_SIM_PATH": "example_simulation"}))
    settings = load_settings(seed_copy / "simconfig.json", backend="local", env={})
    assert settings.sim.local_sim_path == seed_copy / "example_simulation"
    assert settings.sim.run_script == "main_run_script.sh"
    assert settings.sim.output_file_patterns == ("IsoSeedI125S16_*", "phsp_cylinder*")


# ----------------------------------------------------------------------------- real processes


def _subprocess(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_KEYS}
    before = _snapshot(root)
    result = subprocess.run([sys.executable, str(REPO / "batch_simulation_runner.py"), *argv],
                            cwd=root, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout == ""
    assert _snapshot(root) == before
    return result


def test_process_exits_2_with_every_problem_on_stderr(setup):
    setup.azure(**SEVERAL_APP).write(sim=SEVERAL_SIM)
    result = _subprocess(setup.root, "simconfig.json")
    assert result.returncode == EXIT_USAGE
    assert sorted(keyed(result.stderr.splitlines())) == SEVERAL_EXPECTED
    assert not setup.storage.exists()


def test_process_exits_2_for_a_bad_backend_option(setup):
    result = _subprocess(setup.root, "simconfig.json", "--backend", "nowhere")
    assert result.returncode == EXIT_USAGE
    assert len(result.stderr.splitlines()) == 1 and "invalid choice: 'nowhere'" in result.stderr


def test_process_refuses_the_original_example_naming_local_sim_path(seed_copy):
    result = _subprocess(seed_copy, "--backend", "local")  # default ./simconfig.json
    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "error: simconfig.json: LOCAL_SIM_PATH: '/path/to/AzureBatch/example/example_simulation' "
        "is not a folder: give the path of the simulation folder (relative to this file, or "
        "absolute)"]


def test_bad_secret_from_the_environment_is_named_as_such(setup, capsys, monkeypatch):
    monkeypatch.setenv("BATCH_ACCOUNT_KEY", "not base64 at all!")
    code, lines = setup.azure().run(capsys, "simconfig.json")
    assert code == EXIT_USAGE
    assert lines == ["error: environment variable BATCH_ACCOUNT_KEY: is not a valid base64 account "
                     "key (it wins over appconfig.json): set it to the key from the Azure portal "
                     "(Batch account > Keys), or unset it"]


def test_url_credentials_are_never_echoed(setup, capsys):
    code, lines = setup.azure(BATCH_ACCOUNT_URL="https://user:hunter2@bad_host.example").run(
        capsys, "simconfig.json")
    assert code == EXIT_USAGE and "hunter2" not in "\n".join(lines)


def test_local_storage_path_that_is_a_file_is_refused(setup, capsys):
    (setup.root / "afile").write_text("x")
    setup.app["LOCAL_STORAGE_PATH"] = str(setup.root / "afile")
    setup.write(app=setup.app)
    code, lines = setup.run(capsys, "simconfig.json")
    assert code == EXIT_USAGE and "LOCAL_STORAGE_PATH" in lines[0]


# ----------------------------------------------------------------------------- inputs that got through


def _sim_text(setup: Setup, **raw: str) -> str:
    """simconfig.json as text, with some values written raw (what json.dumps cannot write)."""
    body = {k: v for k, v in setup.sim.items() if k not in raw}
    text = json.dumps(body, indent=2)[:-2]
    return text + "".join(f',\n  "{k}": {v}' for k, v in raw.items()) + "\n}\n"


@pytest.mark.parametrize("key, raw, what", [
    ("POOL_NODE_COUNT", "9" * 5000, "is a 5,000-digit number, outside 0..2000"),
    ("TIMEOUT_MINUTES", "-" + "1" * 5000, "is a 5,000-digit number, outside the range"),
    ("SIM_ID", "1" * 5000, "must be a string, not a number"),
    ("OUTPUT_FILE_PATTERNS", "[" * 100_000 + "]" * 100_000, "is nested too deeply"),
    ("SIM_ID", '"dup-one", "SIM_ID": "dup-two"', "is given twice"),
])
def test_raw_values_json_lets_through_are_refused(setup, capsys, key, raw, what):
    setup.simconfig.write_text(_sim_text(setup, **{key: raw}))
    code, lines = setup.run(capsys)
    assert_one_error(code, lines, "simconfig.json", key, what)


@pytest.mark.parametrize("file, key, value, what", [
    ("sim", "LOCAL_SIM_PATH", "sim\x00/x", "contains a NUL character"),
    ("sim", "RUN_SCRIPT", "main_run_script.sh\x00", "contains a NUL character"),
    ("sim", "OUTPUT_FILE_PATTERNS", ["IsoSeed\x00*"], "contains a NUL character"),
    ("app", "LOCAL_STORAGE_PATH", "store\x00", "contains a NUL character"),
    ("sim", "LOCAL_SIM_PATH", "~nosuchuser4242/sim", "home folder of an unknown user"),
    ("sim", "LOCAL_RESULTS_PATH", ".", "is the folder of simconfig.json itself"),
    ("sim", "LOCAL_RESULTS_PATH", "sim/main_run_script.sh", "is a file, not a folder"),
    ("app", "LOCAL_STORAGE_PATH", "sim", "is inside the simulation folder"),
    ("app", "LOCAL_STORAGE_PATH", "sim/store", "is inside the simulation folder"),
    ("app", "LOCAL_STORAGE_PATH", ".", "holds the simulation folder"),
    ("app", "GIT_USER", "..", "is not a GitHub name"),
    ("app", "GIT_REPO", ".", "is not a GitHub name"),
])
def test_values_that_got_through_are_refused(setup, capsys, file, key, value, what):
    setup.write(**{file: {key: value}})
    code, lines = setup.run(capsys)
    name = "simconfig.json" if file == "sim" else "appconfig.json"
    assert_one_error(code, lines, name, key, what)


def test_a_pool_image_key_given_twice_is_named_with_its_setting(setup, capsys):
    setup.appconfig.write_text('{"BACKEND": "local", "POOL_IMAGE": {"publisher": "a", "offer": "b", '
                               '"sku": "c", "sku": "d"}}')
    code, lines = setup.run(capsys)
    assert_one_error(code, lines, "appconfig.json", "POOL_IMAGE", "has 'sku' twice")


def _file_error(lines: list[str], file: str, *fragments: str) -> None:
    assert len(lines) == 1, lines
    match = FILE_LINE.match(lines[0])
    assert match and match["file"] == file, lines
    for fragment in fragments:
        assert fragment in lines[0], lines


def test_a_byte_order_mark_is_refused_with_the_right_fix(setup, capsys):
    setup.simconfig.write_bytes(b"\xef\xbb\xbf" + setup.simconfig.read_bytes())
    code, lines = setup.run(capsys)
    assert code == EXIT_USAGE
    _file_error(lines, "simconfig.json", "byte-order mark", "remove the byte-order mark")
    assert "double quotes" not in lines[0]


@pytest.mark.parametrize("where", ["--appconfig", "beside"])
def test_an_appconfig_link_that_loops_is_refused(setup, capsys, where):
    setup.appconfig.unlink()
    if where == "beside":  # found by name, not skipped for ./appconfig.json elsewhere
        setup.appconfig.symlink_to("appconfig.json")
        code, lines = setup.run(capsys)
        _file_error(lines, "appconfig.json", "is a link that loops")
    else:
        (setup.root / "loop.json").symlink_to("loop.json")
        code, lines = setup.run(capsys, "simconfig.json", "--appconfig", "loop.json")
        _file_error(lines, "loop.json", "is a link that loops")
    assert code == EXIT_USAGE


@pytest.mark.parametrize("name", ["simconfig.json", "appconfig.json"])
def test_a_config_that_is_a_fifo_is_refused_without_hanging(setup, name):
    (setup.root / name).unlink()
    os.mkfifo(setup.root / name)  # reading it would wait for a writer forever
    result = _subprocess(setup.root, "simconfig.json")  # a time limit: a hang fails the test
    assert result.returncode == EXIT_USAGE
    _file_error(["error: " + line[len("error: "):] for line in result.stderr.splitlines()], name,
                "is a FIFO (named pipe), not a file")


def test_git_base_url_credentials_are_never_echoed(setup, capsys):
    code, lines = setup.write(app={"GIT_BASE_URL": "ftp://me:hunter2pw@git.example.org"}).run(capsys)
    assert_one_error(code, lines, "appconfig.json", "GIT_BASE_URL", "is not a URL")
    assert "hunter2pw" not in lines[0]
