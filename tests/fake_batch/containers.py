"""Container tasks as a Batch node runs them: `docker create` semantics in a real sandbox.

What Microsoft documents for container tasks ("Use Azure Batch to run container workloads"),
and what this module makes the fake do:

- the image is pulled by its name *as written*; a private image needs credentials, and Batch
  applies a registry's credentials only when the image name starts with that registry
  (`myuser/topas:4.0` with credentials for `docker.io` fails: Azure/Batch#107);
- the container is made with `docker create`: the image's ENTRYPOINT stays unless
  containerRunOptions says `--entrypoint`, and the task's command line becomes its
  arguments (an override also drops the image's CMD, as Docker does);
- on Linux the task's user is mapped into the container: an admin auto-user is root, any
  other auto-user an unprivileged uid, so files an image keeps under /root are out of reach;
- AZ_BATCH_NODE_ROOT_DIR is mounted at the same path (or, with containerHostBatchBindMounts,
  only the folders listed, read-only where asked: "Batch Container Isolation Task"), the
  task's environment variables are set, and the working directory is the task's.

An "image" here is a folder holding a root file system plus its config (ContainerImage);
the container is bubblewrap (`bwrap`) with that folder as /, no network, a private /tmp and
the mapped uid (switched with setpriv, so it is a real other user when the fake runs as
root). Unlike Docker the image's own files are read-only: a task that writes outside its
mounts fails here, where Docker would give it a throw-away layer.
"""
from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCKER_HUB = "docker.io"
ROOT_UID = 0
POOL_USER_UID = 40001  # the non-admin auto-user of a pool (Batch's own uid is not documented)
TASK_USER_UID_BASE = 40100  # task-scoped non-admin auto-users: one uid per task


@dataclass(frozen=True)
class ContainerImage:
    """A test image: a root file system folder and the config `docker create` would read."""

    reference: str  # its full name, as normalize() gives it
    rootfs: Path
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = (("PATH", "/usr/local/bin:/usr/bin:/bin"),)
    workdir: str = "/"
    # Read-only host folders the image holds at the same path (e.g. a Python installation).
    binds: tuple[str, ...] = ()
    # (user, password) the registry demands for a pull; None: a public image.
    credentials: tuple[str, str] | None = None
    # An Azure Container Registry's image that this managed identity (ARM resource ID) may
    # pull (AcrPull), beside or instead of `credentials`.
    identity: str | None = None


class ContainerError(Exception):
    """The container could not be made: carries a failureInfo code and message."""

    def __init__(self, code: str, message: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.message, self.detail = code, message, detail


# ---------------------------------------------------------------------------- names


def _has_registry(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost"


def registry_of(reference: str) -> str | None:
    """The registry an image name spells out, or None when Docker would assume docker.io."""
    first = reference.split("/", 1)[0]
    return first if "/" in reference and _has_registry(first) else None


def normalize(reference: str) -> str:
    """Docker's full form: docker.io/library/python:3.12-slim, docker.io/user/topas:latest."""
    name = reference
    if registry_of(name) is None:
        name = f"{DOCKER_HUB}/{name}" if "/" in name else f"{DOCKER_HUB}/library/{name}"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


@dataclass(frozen=True)
class Registry:
    server: str
    username: str
    password: str
    identity: str | None = None  # identityReference.resourceId, when that is how it signs in


def pull(images: dict[str, ContainerImage], name: str, registries: list[Registry],
         identities: tuple[str, ...] = ()) -> ContainerImage:
    """The image a node gets for `name`, or ContainerError as `docker pull` would fail.
    `identities` are the pool's managed identities: an identityReference signs in only with
    one of them, and only an identity the registry grants pulls gets the image."""
    image = images.get(normalize(name))
    written = registry_of(name)
    if image is None:
        raise ContainerError("ContainerInvalidImage", "One or more container images specified are invalid",
                             f"Error response from daemon: pull access denied for {name}, repository "
                             "does not exist or may require 'docker login'")
    if image.credentials is None and image.identity is None:
        return image
    usable = [r for r in registries if written is not None and r.server.lower() == written.lower()]
    signed = [r for r in usable if r.identity]
    if signed:
        held = signed[0].identity.lower() in (i.lower() for i in identities)
        if held and image.identity is not None and signed[0].identity.lower() == image.identity.lower():
            return image
        why = ("the identity is not assigned to the pool" if not held else
               "the identity has no pull rights (AcrPull) on this registry")
        raise ContainerError("ContainerInvalidImage", "One or more container images specified are invalid",
                             f"Error response from daemon: Get \"https://{written}/v2/\": unauthorized: "
                             f"managed identity {signed[0].identity}: {why}")
    usable = [r for r in usable if not r.identity]
    if image.credentials is None:
        usable = []  # only the identity opens this registry
    if not usable:
        raise ContainerError("ContainerInvalidImage", "One or more container images specified are invalid",
                             f"Error response from daemon: pull access denied for {name}, repository "
                             "does not exist or may require 'docker login': denied: requested "
                             "access to the resource is denied")
    if (usable[0].username, usable[0].password) != image.credentials:
        raise ContainerError("ContainerInvalidImage", "One or more container images specified are invalid",
                             f"Error response from daemon: Get \"https://{written}/v2/\": unauthorized: "
                             "incorrect username or password")
    return image


# ---------------------------------------------------------------------------- docker create


@dataclass(frozen=True)
class RunOptions:
    """The containerRunOptions this fake understands (others are refused, not ignored)."""

    entrypoint: str | None = None
    env: tuple[tuple[str, str], ...] = ()


def parse_run_options(text: str | None) -> RunOptions:
    words = shlex.split(text or "")
    entrypoint: str | None = None
    env: list[tuple[str, str]] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word.startswith("--entrypoint="):
            entrypoint = word.split("=", 1)[1]
        elif word == "--entrypoint" and index + 1 < len(words):
            index += 1
            entrypoint = words[index]
        elif word in ("-e", "--env") and index + 1 < len(words):
            index += 1
            key, _, value = words[index].partition("=")
            env.append((key, value))
        elif word == "--rm":
            pass
        else:
            raise ContainerError("ContainerInvalidSettings",
                                 "At least one value of specified task container settings is invalid",
                                 f"containerRunOptions: the fake does not emulate {word!r}")
        index += 1
    return RunOptions(entrypoint, tuple(env))


def container_argv(image: ContainerImage, options: RunOptions, command_line: str) -> list[str]:
    """What runs in the container: entrypoint + command line (or the image's CMD)."""
    if options.entrypoint is not None:
        entry = [options.entrypoint] if options.entrypoint else []
        default_cmd: tuple[str, ...] = ()  # Docker drops CMD with an overridden entrypoint
    else:
        entry, default_cmd = list(image.entrypoint), image.cmd
    args = shlex.split(command_line) if command_line.strip() else list(default_cmd)
    argv = entry + args
    if not argv:
        raise ContainerError("ContainerInvalidSettings",
                             "At least one value of specified task container settings is invalid",
                             "Error response from daemon: No command specified")
    return argv


def user_for(identity: dict[str, Any] | None, serial: int) -> int:
    """The uid Batch maps the task's user to: root only for an admin auto-user. Without a
    userIdentity the spec says "the Task runs as a non-administrative user unique to the
    Task": not the pool's auto-user, whom another task could share files with."""
    if identity is None:
        return TASK_USER_UID_BASE + serial % 1000
    auto = identity.get("autoUser") or {}
    if str(auto.get("elevationLevel", "nonadmin")).lower() == "admin":
        return ROOT_UID
    if str(auto.get("scope", "pool")).lower() == "task":
        return TASK_USER_UID_BASE + serial % 1000
    return POOL_USER_UID


# ---------------------------------------------------------------------------- the sandbox


def sandbox_available() -> str | None:
    """None when container tasks can run here, else why not."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (Debian package 'bubblewrap')"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    return None


@dataclass(frozen=True)
class Launch:
    """One container start: what bwrap needs, computed from the task and its node."""

    image: ContainerImage
    argv: list[str]
    uid: int
    env: dict[str, str]
    working_dir: Path
    mounts: tuple[Path, ...] = field(default=())  # read-write, at the same path (node root)
    read_only: tuple[Path, ...] = field(default=())  # read-only, at the same path


def _image_tree(rootfs: Path) -> list[str]:
    """Bind each top-level entry of the image's folder; / itself stays bwrap's tmpfs, so mount
    points for the node's folders can be made anywhere."""
    args: list[str] = []
    for entry in sorted(rootfs.iterdir()):
        target = f"/{entry.name}"
        if entry.name in ("proc", "dev", "tmp"):
            continue
        if entry.is_symlink():
            args += ["--symlink", os.readlink(entry), target]
        elif entry.is_dir():
            args += ["--ro-bind", str(entry), target]
        else:
            args += ["--ro-bind", str(entry), target]
    return args


def bwrap_command(launch: Launch) -> list[str]:
    image = launch.image
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
            *_image_tree(image.rootfs), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    unprivileged = os.geteuid() == 0 and launch.uid != ROOT_UID
    for host in image.binds:
        # Out of the task user's reach on the host is out of its reach in the image too: the
        # mount point stays an empty folder inside whatever made it unreachable (/root).
        if not unprivileged or _reachable(host):
            args += ["--ro-bind", host, host]
    for mount in launch.mounts:
        args += ["--bind", str(mount), str(mount)]
    for mount in launch.read_only:
        args += ["--ro-bind", str(mount), str(mount)]
    inside_image = (image.rootfs / str(launch.working_dir).lstrip("/")).exists()
    if not inside_image and not any(m == launch.working_dir or m in launch.working_dir.parents
                                    for m in launch.mounts + launch.read_only):
        args += ["--dir", str(launch.working_dir)]  # as `docker create -w` makes a missing one
    args += ["--uid", str(launch.uid), "--gid", str(launch.uid), "--chdir", str(launch.working_dir),
             "--clearenv"]
    for key, value in launch.env.items():
        args += ["--setenv", key, value]
    args += ["--", *launch.argv]
    # a real other user, not just a uid inside the namespace: the host kernel checks it
    return as_user(args, launch.uid)


def _reachable(path: str) -> bool:
    """Whether a user other than the owner can reach `path` (x on every folder above it)."""
    current = Path(path)
    for folder in (current, *current.parents):
        try:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def container_env(image: ContainerImage, options: RunOptions, task_env: dict[str, str]) -> dict[str, str]:
    """The image's environment, then every task variable (Batch maps them all), then -e."""
    env = dict(image.env)
    env.update(task_env)
    env.update(dict(options.env))
    return env


def as_user(command: list[str], uid: int) -> list[str]:
    """The command run as `uid` — a real other user when the fake runs as root."""
    if os.geteuid() == 0 and uid != ROOT_UID:
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    return command


def start(launch: Launch, stdout: Any, stderr: Any) -> subprocess.Popen:
    return subprocess.Popen(bwrap_command(launch), stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=stderr, start_new_session=True, env={})


def give_to(path: Path, uid: int) -> None:
    """Make `path` (and what is below it) the user's, as a node's task folders are."""
    if os.geteuid() != 0:
        return
    for folder, dirs, files in os.walk(path):
        os.chown(folder, uid, uid)
        for name in files:
            os.chown(os.path.join(folder, name), uid, uid, follow_symlinks=False)
