"""Container images for the fake Batch service's sandbox, made from this machine's files.

There is no Docker here: an image is a folder holding a root file system plus the config
`docker create` reads (tests/fake_batch/containers.ContainerImage). They are made once per
test session from this machine's files: dash and coreutils (copied with the libraries they
load), Debian's busybox-static, bash, and this interpreter's Python (read-only binds):

- TOPAS_IMAGE, `myuser/topas:4.0` (private): dash as /bin/sh and a few coreutils — no unzip,
  no python3, no awk, no sed (busybox is not used here: its shell runs any of its applets,
  unzip and awk included, even without a link to them) — and a stand-in "TOPAS" installed
  under /root/topas (mode 0700) and reached through the image's ENTRYPOINT, as TOPAS images
  are commonly built.
- EXAMPLE_IMAGE, `myuser/waterphantom:1.0` (private): bash and a Python with numpy for the
  example simulation; its ENTRYPOINT refuses anything but a parameter file.
- PYTHON_IMAGE, `python:3.12-slim` (public): a Python with numpy and matplotlib, for the
  reducer. (The Python lives wherever this interpreter does — here under /root, so only
  root in the container can run it, as with images built under /root.)
- GENERIC_IMAGE, `myregistry.azurecr.io/sim:1.0` (private, user "u", password "p"): bash
  and the small tools, for the fake's own tests.
- OPENTOPAS_IMAGE, `opentopas/opentopas:v4.3.0-geant4-11.4.2` (public): laid out as
  OpenTOPAS's docker/Dockerfile.topas makes it — TOPAS under /Applications/TOPAS/
  OpenTOPAS-install/bin (on PATH), an empty /Applications/G4Data (the image holds no Geant4
  data; TOPAS_G4_DATA_DIR points there), WORKDIR /simulations, and an ENTRYPOINT that starts
  a virtual display and then `exec topas "$@"` — with tests/support/standin_topas.py as
  `topas` (real TOPAS is not run in CI).

Nothing here needs network; `busybox` and `bwrap` come from Debian packages that
run_tests.sh installs when it runs as root.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.azure_settings import FAKE_DOCKER_TOKEN
from tests.fake_batch.containers import ContainerImage, normalize

TOPAS_IMAGE = "myuser/topas:4.0"
EXAMPLE_IMAGE = "myuser/waterphantom:1.0"
PYTHON_IMAGE = "python:3.12-slim"
GENERIC_IMAGE = "myregistry.azurecr.io/sim:1.0"
OPENTOPAS_IMAGE = "opentopas/opentopas:v4.3.0-geant4-11.4.2"
TOPAS_BIN = "/Applications/TOPAS/OpenTOPAS-install/bin"
DOCKER_USER = "myuser"
EXAMPLE_HISTORIES = "20000"  # the example image runs fewer histories than the shipped example

BUSYBOX = Path("/usr/bin/busybox")
# What a minimal distribution image has (coreutils); deliberately no unzip, python3, awk, sed.
CORE_TOOLS = ("cp", "mkdir", "chmod", "cat", "ls", "rm", "mv", "ln", "id", "head", "tail", "sleep",
              "true", "false", "wc", "dirname", "basename", "touch", "uname", "readlink", "tr",
              "cut", "sort")
# A base image's tools. Deliberately absent: unzip, python3, awk, find.
SHELL_TOOLS = ("sh", "ash", "cat", "cp", "mkdir", "chmod", "ls", "rm", "mv", "ln", "echo",
               "printf", "test", "[", "env", "id", "head", "tail", "sleep", "true", "false",
               "wc", "dirname", "basename", "touch", "grep", "sed", "tr", "cut", "sort", "pwd",
               "uname", "readlink")
NODE_USER = "_azbatch:x:40001:40001:batch:/home/_azbatch:/bin/sh\n"

_TOPAS = """#!/bin/sh
# A stand-in for TOPAS: one parameter file in, one scorer file out.
case "$1" in
  *.txt) ;;
  *) echo "TOPAS: '$1' is not a parameter file (usage: topas <parameters.txt>)" >&2; exit 1 ;;
esac
[ -r "$1" ] || { echo "TOPAS: cannot read parameter file '$1'" >&2; exit 1; }
seed=unset
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in i:Ts/Seed*) seed=${line##*= } ;; esac
done < "$1"
echo "TOPAS 4.0 (stand-in), data in $TOPAS_G4_DATA_DIR, seed $seed"
printf '# TOPAS stand-in\\n0, 0, 0, %s\\n' "$seed" > Dose.csv
"""
_TOPAS_ENTRYPOINT = """#!/bin/sh
# As TOPAS images do: set up the environment, then run TOPAS on the arguments.
export TOPAS_G4_DATA_DIR=/root/topas/G4Data
exec /root/topas/bin/topas "$@"
"""
_EXAMPLE_ENTRYPOINT = """#!/bin/sh
# The image's own entry: run one simulation from a parameter file, nothing else.
case "$1" in
  *.txt) exec python3 pencil_beam.py "$1" ;;
esac
echo "waterphantom: usage: docker run myuser/waterphantom:1.0 <parameters.txt> (got: $*)" >&2
exit 64
"""


def _write(path: Path, text: str, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _base(root: Path, with_bash: bool) -> Path:
    """A root file system with busybox's tools (and bash with the host's libraries)."""
    for folder in ("bin", "usr/bin", "etc", "tmp", "proc", "dev", "home"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "root").mkdir(mode=0o700)
    (root / "root").chmod(0o700)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for tool in SHELL_TOOLS:
        (root / "bin" / tool).symlink_to("busybox")
    (root / "usr" / "bin" / "env").symlink_to("/bin/busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n" + NODE_USER)
    (root / "etc" / "group").write_text("root:x:0:\n_azbatch:x:40001:\n")
    if with_bash:
        shutil.copy2("/bin/bash", root / "bin" / "bash")
        for lib in ("lib", "lib64"):
            (root / "usr" / lib).mkdir(exist_ok=True)
            (root / lib).symlink_to(f"usr/{lib}")
    return root


def _libraries(binary: str) -> list[str]:
    """The shared libraries a binary loads (ldd), the loader included."""
    found = []
    for line in subprocess.run(["ldd", binary], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > 2 and parts[2].startswith("/"):
            found.append(parts[2])
        elif parts and parts[0].startswith("/"):
            found.append(parts[0])
    return found


def _copy_binary(root: Path, binary: str, target: str) -> None:
    """A host binary into the image at `target`, with every library it needs."""
    for source, where in [(binary, target)] + [(lib, lib) for lib in _libraries(binary)]:
        path = root / where.lstrip("/")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(source), path)


def _shell_only(root: Path) -> Path:
    """dash and core tools: the smallest image a task can be asked to live with."""
    for folder in ("bin", "usr/bin", "etc", "tmp", "proc", "dev", "home"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "root").mkdir(mode=0o700)
    (root / "root").chmod(0o700)
    _copy_binary(root, shutil.which("dash") or "/bin/dash", "/bin/sh")
    for tool in CORE_TOOLS:
        _copy_binary(root, shutil.which(tool) or f"/bin/{tool}", f"/bin/{tool}")
    _copy_binary(root, shutil.which("env") or "/usr/bin/env", "/usr/bin/env")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n" + NODE_USER)
    (root / "etc" / "group").write_text("root:x:0:\n_azbatch:x:40001:\n")
    return root


def _library_binds(root: Path) -> tuple[str, ...]:
    return tuple(f"/usr/{lib}" for lib in ("lib", "lib64") if (root / "usr" / lib).is_dir()
                 and Path(f"/usr/{lib}").is_dir())


def _python_binds(root: Path) -> tuple[str, ...]:
    """This interpreter (and its venv) at the same paths: mount points made in the image."""
    binds = []
    for prefix in dict.fromkeys((sys.base_prefix, sys.prefix)):
        (root / prefix.lstrip("/")).mkdir(parents=True, exist_ok=True)
        binds.append(prefix)
    return tuple(binds)


def _python_path() -> str:
    return f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin"


def build_images(folder: Path | None = None) -> dict[str, ContainerImage]:
    """Every test image by its full name (what FakeBatch.knobs.images takes)."""
    base = Path(folder or tempfile.mkdtemp(prefix="fake-batch-images-"))
    base.chmod(0o755)  # the sandbox's unprivileged user must reach the image folders
    images = [_topas(base / "topas"), _example(base / "example"), _python(base / "python"),
              _generic(base / "generic"), _opentopas(base / "opentopas")]
    return {image.reference: image for image in images}


def _topas(root: Path) -> ContainerImage:
    _shell_only(root)
    _write(root / "root" / "topas" / "bin" / "topas", _TOPAS)
    _write(root / "root" / "topas" / "entrypoint.sh", _TOPAS_ENTRYPOINT)
    (root / "root" / "topas" / "G4Data").mkdir()
    return ContainerImage(normalize(TOPAS_IMAGE), root, entrypoint=("/root/topas/entrypoint.sh",),
                          env=(("PATH", "/usr/local/bin:/usr/bin:/bin"),),
                          credentials=(DOCKER_USER, FAKE_DOCKER_TOKEN))


def _example(root: Path) -> ContainerImage:
    _base(root, with_bash=True)
    _write(root / "usr" / "local" / "bin" / "docker-entrypoint.sh", _EXAMPLE_ENTRYPOINT)
    return ContainerImage(normalize(EXAMPLE_IMAGE), root,
                          entrypoint=("/usr/local/bin/docker-entrypoint.sh",),
                          env=(("PATH", _python_path()), ("EXAMPLE_HISTORIES", EXAMPLE_HISTORIES),
                               ("MPLCONFIGDIR", "/tmp")),
                          binds=_library_binds(root) + _python_binds(root),
                          credentials=(DOCKER_USER, FAKE_DOCKER_TOKEN))


def _python(root: Path) -> ContainerImage:
    _base(root, with_bash=True)
    return ContainerImage(normalize(PYTHON_IMAGE), root, cmd=("python3",),
                          env=(("PATH", _python_path()), ("MPLCONFIGDIR", "/tmp")),
                          binds=_library_binds(root) + _python_binds(root))


def _generic(root: Path) -> ContainerImage:
    _base(root, with_bash=True)
    return ContainerImage(normalize(GENERIC_IMAGE), root, env=(("PATH", "/usr/bin:/bin"),),
                          binds=_library_binds(root), credentials=("u", "p"))


# The official image's entrypoint (docker/Dockerfile.topas), its Xvfb left out: there is no
# X server here, and headless TOPAS runs need none.
_OPENTOPAS_ENTRYPOINT = """#!/bin/bash
set -euo pipefail
XVFB_DISPLAY="${TOPAS_XVFB_DISPLAY:-:99}"
echo "Starting Xvfb on ${XVFB_DISPLAY} (stand-in: no X server)"
export DISPLAY="${XVFB_DISPLAY}"
exec topas "$@"
"""


def _opentopas(root: Path) -> ContainerImage:
    _base(root, with_bash=True)
    _write(root / TOPAS_BIN.lstrip("/") / "topas",
           f"#!{sys.executable}\n" + (Path(__file__).with_name("standin_topas.py")).read_text())
    _write(root / "usr" / "local" / "bin" / "topas-entrypoint.sh", _OPENTOPAS_ENTRYPOINT)
    for folder in ("Applications/G4Data", "simulations", "extensions"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return ContainerImage(normalize(OPENTOPAS_IMAGE), root,
                          entrypoint=("/usr/local/bin/topas-entrypoint.sh",),
                          env=(("PATH", f"{TOPAS_BIN}:{_python_path()}"),
                               ("TOPAS_G4_DATA_DIR", "/Applications/G4Data"),
                               ("MPLCONFIGDIR", "/tmp")),
                          workdir="/simulations",
                          binds=_library_binds(root) + _python_binds(root))


def remove(images: dict[str, ContainerImage]) -> None:
    for folder in {image.rootfs.parent for image in images.values()}:
        shutil.rmtree(folder, ignore_errors=True)

