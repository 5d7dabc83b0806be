"""The Geant4 data sets: found and checked on this machine (hostile folders refused), keyed by
content (read once), packed deterministically, staged on a node (verified, read-only, a
damaged or partial data set named in one line), used in place by the local backend."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import stat
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest

from common.geant4 import data as gd
from common.geant4 import stage
from common.backends.local.shared import place
from common.config import load_settings
from common.errors import ToolError
from common.geant4.upload import (SHARED_CONTAINER, archive_blob, compresses, in_place,
                                  write_archive)
from common.config.model import MAX_SIM_ID
from conftest import write_json
from tests.support.geant4 import make_geant4_data


@pytest.fixture
def data(tmp_path) -> Path:
    return make_geant4_data(tmp_path / "G4Data", size=3000)


def test_data_sets_are_recognised_by_geant4s_names():
    assert stage.dataset_of("G4EMLOW8.6.1") == ("G4EMLOW", "G4LEDATA")
    assert stage.dataset_of("PhotonEvaporation6.1") == ("PhotonEvaporation", "G4LEVELGAMMADATA")
    assert stage.dataset_of("G4SAIDDATA2.0") == ("G4SAIDDATA", "G4SAIDXSDATA")
    assert stage.dataset_of("G4TENDL1.4") == ("G4TENDL", "G4PARTICLEHPDATA")
    for other in ("G4EMLOW", "notes", "G4EMLOW8.6.1.tar.gz", "appconfig.json", "G4FOO1.0"):
        assert stage.dataset_of(other) is None


def test_the_shared_container_is_no_campaigns_container():
    assert len(SHARED_CONTAINER) > MAX_SIM_ID  # so no campaign's cleanup can name it


def test_scan_leaves_other_entries_alone_and_names_what_topas_lacks(data):
    (data / "appconfig.json").write_text('{"STORAGE_ACCOUNT_KEY": "x"}')
    (data / "notes").mkdir()
    folder = gd.scan(data)
    assert [d.folder for d in folder.datasets] == sorted(p.name for p in data.iterdir()
                                                         if stage.dataset_of(p.name))
    assert set(folder.ignored) == {"appconfig.json", "notes"}
    assert folder.missing_for_topas() == ()


def small_simconfig(root: Path) -> Path:
    (root / "sim").mkdir()
    (root / "sim" / "run.sh").write_text("#!/bin/sh\n")
    return write_json(root / "simconfig.json", {
        "SIM_ID": "g4-test", "POOL_NODE_COUNT": 1, "LOCAL_SIM_PATH": "sim", "RUN_SCRIPT": "run.sh",
        "OUTPUT_FILE_PATTERNS": ["*.csv"]})


@pytest.mark.parametrize("missing", ["G4ENSDFSTATE3.0", "G4EMLOW8.6.1"])
def test_a_folder_without_what_every_run_reads_is_refused_at_config(tmp_path, data, missing):
    import shutil
    shutil.rmtree(data / missing)
    write_json(tmp_path / "appconfig.json", {"BACKEND": "local", "GEANT4_DATA_DIR": str(data)})
    simconfig = small_simconfig(tmp_path)
    with pytest.raises(ToolError) as refused:
        load_settings(simconfig)
    assert refused.value.exit_code == 2
    [line] = refused.value.lines
    name = missing.rstrip("0123456789.")
    assert "appconfig.json: GEANT4_DATA_DIR:" in line and f"no {name} data set" in line


@pytest.mark.parametrize("app, words", [
    ({"GEANT4_DATA_URL": "https://a.blob.core.windows.net/g4/11.3"}, "together with GEANT4_DATA_DIR"),
    ({"GEANT4_DATA_DIR": None, "GEANT4_DATA_URL": "https://a.blob.core.windows.net/g4?sv=x&sig=y"},
     "query string"),
    ({"GEANT4_DATA_DIR": "absent"}, "is not a folder"),
])
def test_bad_data_settings_are_one_line_each(tmp_path, data, app, words):
    values = {"BACKEND": "local", "GEANT4_DATA_DIR": str(data), **app}
    write_json(tmp_path / "appconfig.json", {k: v for k, v in values.items() if v is not None})
    simconfig = small_simconfig(tmp_path)
    with pytest.raises(ToolError) as refused:
        load_settings(simconfig)
    assert any(words in line for line in refused.value.lines), refused.value.lines
    assert "sig=y" not in "".join(refused.value.lines)


def test_links_out_of_a_data_set_fifos_and_secrets_are_refused(data, tmp_path):
    os.symlink("/etc/passwd", data / "G4EMLOW8.6.1" / "passwd")
    os.mkfifo(data / "G4NDL4.7.1" / "pipe")
    with pytest.raises(ToolError) as refused:
        gd.scan(data)
    assert refused.value.exit_code == 2
    text = "\n".join(refused.value.lines)
    assert "passwd: is a link to /etc/passwd" in text and "pipe: is a FIFO" in text
    (data / "G4EMLOW8.6.1" / "passwd").unlink()
    (data / "G4NDL4.7.1" / "pipe").unlink()
    (data / "G4EMLOW8.6.1" / "brem_SB" / "secret").write_text("key: c2VjcmV0LWtleS12YWx1ZQ==\n")
    with pytest.raises(ToolError) as secret:
        gd.content_keys(gd.scan(data), secrets=("c2VjcmV0LWtleS12YWx1ZQ==",),
                        environ={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert "holds the value of a secret" in secret.value.lines[0]


def test_content_keys_are_read_once_and_change_with_a_byte(data, tmp_path, monkeypatch):
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = gd.content_keys(gd.scan(data), environ=environ)
    reads = []
    monkeypatch.setattr(gd, "_content_key", lambda d, s: reads.append(d.folder) or "x")
    assert gd.content_keys(gd.scan(data), environ=environ) == first
    assert reads == []  # unchanged: sizes and times, not the bytes
    path = data / "G4ENSDFSTATE3.0" / "ENSDFSTATE.dat"
    content = bytearray(path.read_bytes())
    content[10] ^= 1
    path.write_bytes(bytes(content))
    monkeypatch.undo()
    again = gd.content_keys(gd.scan(data), environ=environ)
    assert again["G4ENSDFSTATE3.0"] != first["G4ENSDFSTATE3.0"]
    assert {k: v for k, v in again.items() if k != "G4ENSDFSTATE3.0"} == {
        k: v for k, v in first.items() if k != "G4ENSDFSTATE3.0"}


def test_archives_are_deterministic(data):
    dataset = gd.scan(data).datasets[0]
    one, two = io.BytesIO(), io.BytesIO()
    assert write_archive(dataset, one) == write_archive(dataset, two)
    assert one.getvalue() == two.getvalue()
    os.utime(dataset.files[0][1], (1, 1))
    three = io.BytesIO()
    write_archive(gd.scan(data).datasets[0], three)
    assert three.getvalue() == one.getvalue()  # times do not count


# ---------------------------------------------------------------------------- the node's side


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def storage(tmp_path):
    """A folder served over HTTP as a container (query strings, like a SAS, ignored)."""
    root = tmp_path / "served"
    (root / "box").mkdir(parents=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root / "box", f"http://127.0.0.1:{server.server_address[1]}/box?sv=x&sig=SECRET"
    server.shutdown()


def _publish_to(folder: Path, data: Path, tmp_path: Path) -> str:
    found = gd.scan(data)
    keys = gd.content_keys(found, environ={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    entries = []
    for dataset in found.datasets:
        compressed = compresses(dataset)
        blob = archive_blob(dataset.folder, keys[dataset.folder], compressed)
        (folder / blob).parent.mkdir(parents=True, exist_ok=True)
        with (folder / blob).open("wb") as out:
            size, md5 = write_archive(dataset, out, compressed=compressed)
        entries.append({"name": dataset.folder, "blob": blob, "size": size,
                        "md5": stage.base64.b64encode(md5).decode(), "files": len(dataset.files),
                        "bytes": dataset.bytes, "digest": dataset.digest})
    key = gd.set_key(keys)
    (folder / "sets").mkdir(exist_ok=True)
    (folder / "sets" / f"{key}.json").write_text(json.dumps({"datasets": entries}))
    return key


def test_a_node_stages_once_verified_and_read_only(storage, data, tmp_path):
    folder, source = storage
    key = _publish_to(folder, data, tmp_path)
    root = tmp_path / "node" / "shared" / "geant4-data"
    entries, fetched = stage.stage(source, key, "archives", "", root)
    assert fetched and len(entries) == 6
    staged = root / key
    assert (staged / "G4ENSDFSTATE3.0" / "ENSDFSTATE.dat").read_bytes() == \
        (data / "G4ENSDFSTATE3.0" / "ENSDFSTATE.dat").read_bytes()
    for path in staged.rglob("*"):
        assert not stat.S_IMODE(path.stat().st_mode) & 0o222, path  # read-only
    assert not list(root.glob("*.partial")) and not list(staged.rglob("*.archive"))
    assert stage.stage(source, key, "archives", "", root) == (entries, False)  # a later job: verified only
    # A staged copy that lost a file is staged again, not trusted.
    lost = staged / "G4NDL4.7.1" / "Elastic" / "CrossSection" / "1_1_Hydrogen.z"
    lost.parent.chmod(0o755)
    lost.unlink()
    assert stage.stage(source, key, "archives", "", root)[1] is True
    assert lost.exists()


def test_data_that_hardly_compresses_goes_as_a_plain_tar_and_stages(storage, tmp_path):
    data = make_geant4_data(tmp_path / "G4Data", size=3000)
    ndl = data / "G4NDL4.7.1" / "Elastic" / "CrossSection" / "1_1_Hydrogen.z"
    ndl.write_bytes(os.urandom(300_000))  # G4NDL's files are zlib streams already
    for other in (data / "G4NDL4.7.1").rglob("*.z"):
        if other != ndl:
            other.write_bytes(os.urandom(300_000))
    found = {d.folder: d for d in gd.scan(data).datasets}
    assert not compresses(found["G4NDL4.7.1"]) and compresses(found["G4EMLOW8.6.1"])
    folder, source = storage
    key = _publish_to(folder, data, tmp_path)
    assert [p.name.endswith(".tar") for p in folder.glob("datasets/G4NDL4.7.1-*")] == [True]
    entries, fetched = stage.stage(source, key, "archives", "", tmp_path / "node" / "geant4-data")
    staged = tmp_path / "node" / "geant4-data" / key / "G4NDL4.7.1" / "Elastic" / "CrossSection"
    assert (staged / "1_1_Hydrogen.z").read_bytes() == ndl.read_bytes()


def test_a_damaged_archive_is_named_in_one_line_without_its_signature(storage, data, tmp_path, capsys,
                                                                     monkeypatch):
    folder, source = storage
    key = _publish_to(folder, data, tmp_path)
    [damaged] = folder.glob("datasets/G4PARTICLEXS4.1-*.tar.gz")
    damaged.write_bytes(damaged.read_bytes()[:-10])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("G4STAGE_SOURCE", source)
    monkeypatch.setenv("G4STAGE_KEY", key)
    monkeypatch.setenv("AZ_BATCH_NODE_SHARED_DIR", str(tmp_path / "node"))
    assert stage.main() == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("batch-campaigns: Geant4 data set G4PARTICLEXS4.1: the download has ")
    assert "SECRET" not in line
    assert not (tmp_path / stage.ENV_FILE).exists()


def test_an_archive_that_leaves_its_data_set_is_refused(storage, data, tmp_path):
    folder, source = storage
    key = _publish_to(folder, data, tmp_path)
    [target] = list(folder.glob("datasets/G4ENSDFSTATE3.0-*"))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        info = tarfile.TarInfo("../../../escaped")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    target.write_bytes(raw.getvalue())
    listing = json.loads((folder / "sets" / f"{key}.json").read_text())
    for entry in listing["datasets"]:
        if entry["blob"] == target.relative_to(folder).as_posix():
            entry["size"] = len(raw.getvalue())
            entry["md5"] = stage.base64.b64encode(hashlib.md5(raw.getvalue()).digest()).decode()
    (folder / "sets" / f"{key}.json").write_text(json.dumps(listing))
    with pytest.raises(stage.StageError, match="not a plain file inside the data set"):
        stage.stage(source, key, "archives", "", tmp_path / "node" / "geant4-data")
    assert not list(tmp_path.rglob("escaped"))


def test_the_env_file_names_each_data_set_for_geant4(storage, data, tmp_path, monkeypatch):
    folder, source = storage
    key = _publish_to(folder, data, tmp_path)
    monkeypatch.chdir(tmp_path)
    for name, value in (("G4STAGE_SOURCE", source), ("G4STAGE_KEY", key),
                        ("AZ_BATCH_NODE_SHARED_DIR", str(tmp_path / "node"))):
        monkeypatch.setenv(name, value)
    assert stage.main() == 0
    text = (tmp_path / stage.ENV_FILE).read_text()
    staged = tmp_path / "node" / "geant4-data" / key
    assert f"export TOPAS_G4_DATA_DIR='{staged}'" in text
    assert f"export G4LEDATA='{staged}/G4EMLOW8.6.1'" in text
    assert f"export G4ENSDFSTATEDATA='{staged}/G4ENSDFSTATE3.0'" in text


def test_local_backend_uses_the_folder_in_place_and_names_a_partial_set(data, tmp_path):
    shared = in_place(gd.scan(data))
    spec = {"local_path": shared.local_path, "datasets": [list(d) for d in shared.datasets],
            "checks": [list(c) for c in shared.checks]}
    assert place(spec, tmp_path / "prep") is None
    assert f"export G4LEDATA='{data.resolve()}/G4EMLOW8.6.1'" in (tmp_path / "prep" / stage.ENV_FILE).read_text()
    (data / "PhotonEvaporation6.1" / "z1.a3").unlink()  # being unpacked again, say
    problem = place(spec, tmp_path / "prep2")
    assert problem.startswith("Geant4 data set PhotonEvaporation6.1 in ") and "2 of 3 files" in problem
    assert list(data.rglob("*"))  # nothing in the folder was touched


@pytest.mark.parametrize("name, blob", [("../../escape", "datasets/x.tar.gz"),
                                        ("G4EMLOW8.6.1", "datasets/../../x.tar.gz"),
                                        ("G4EMLOW8.6.1", "/etc/passwd")])
def test_a_list_of_data_sets_that_points_elsewhere_is_refused(storage, data, tmp_path, name, blob):
    folder, source = storage
    key = _publish_to(folder, data, tmp_path)
    listing = json.loads((folder / "sets" / f"{key}.json").read_text())
    listing["datasets"][0].update(name=name, blob=blob)
    (folder / "sets" / f"{key}.json").write_text(json.dumps(listing))
    with pytest.raises(stage.StageError, match="not a data set this tool uploaded"):
        stage.stage(source, key, "archives", "", tmp_path / "node" / "geant4-data")
    assert not list(tmp_path.rglob("escape*"))


def test_a_key_that_is_no_key_deletes_nothing(tmp_path, monkeypatch, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    monkeypatch.setenv("G4STAGE_SOURCE", "http://127.0.0.1:9/box")
    monkeypatch.setenv("G4STAGE_KEY", "../../victim")
    monkeypatch.setenv("AZ_BATCH_NODE_SHARED_DIR", str(tmp_path / "node" / "shared"))
    assert stage.main() == 2
    assert (victim / "keep").exists()
    assert "is not one this tool sets" in capsys.readouterr().err
