"""The manifest's lock: exclusive (fcntl.flock on a `.lock` file beside it), waited for a
bounded time, and whoever holds it too long is named — and who is alive at all.

A change of the manifest holds the lock for milliseconds; a process that holds it for
seconds is stuck (or is not ours: `flock`, an editor), and a script waiting on it silently
would hang for ever. So the wait is bounded (LOCK_WAIT_SECONDS, or $BATCH_TOOL_LOCK_WAIT_SECONDS),
the wait is said once with the holder, and then the change is refused (exit 2). The holder
comes from the kernel's table of locks (/proc/locks on Linux), else from what the last
holder of ours wrote into the lock file.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from common.errors import ToolError

LOCK_WAIT_SECONDS = 30.0
LOCK_WAIT_ENV = "BATCH_TOOL_LOCK_WAIT_SECONDS"
PID_MAX = 4_194_304  # Linux's largest pid (PID_MAX_LIMIT); 0, 1 and negatives are no process


@contextmanager
def held(lock_path: Path, guarded: Path, say: Callable[[str], None] | None) -> Iterator[None]:
    """The exclusive lock on `lock_path` (which guards `guarded`) for the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        _acquire(fd, lock_path, guarded, say)
        _write_holder(fd)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _acquire(fd: int, lock_path: Path, guarded: Path, say: Callable[[str], None] | None) -> None:
    limit = _lock_wait_seconds()
    deadline, said = time.monotonic() + limit, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not said and say is not None:
            say(f"waiting for the lock on {guarded}, held by {_holder(fd)} (at most {limit:g} s)")
            said = True
        if time.monotonic() >= deadline:
            raise ToolError(f"{guarded}: its lock ({lock_path.name}) has been held by "
                            f"{_holder(fd)} for more than {limit:g} s (a change takes "
                            "milliseconds): let that process finish, or stop it if it is "
                            "stuck, then run again", exit_code=2)
        time.sleep(0.05)


def _lock_wait_seconds() -> float:
    try:
        value = float(os.environ.get(LOCK_WAIT_ENV, LOCK_WAIT_SECONDS))
    except ValueError:
        return LOCK_WAIT_SECONDS
    return value if 0 <= value < 86400 else LOCK_WAIT_SECONDS


def _write_holder(fd: int) -> None:
    """Who holds the lock, for whoever waits for it: pid, host, program."""
    text = f"pid {os.getpid()} on {socket.gethostname()} ({Path(sys.argv[0]).name or 'python'})"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError:
        pass  # only a courtesy to the next one


def _holder(fd: int) -> str:
    """Who holds the lock on `fd`'s file: the kernel's own table (/proc/locks) first — the
    holder may be any program — then what the last holder of ours wrote."""
    status = os.fstat(fd)
    inode = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == inode and parts[4].isdigit():
                return f"pid {parts[4]} ({_program(int(parts[4]))})"
    except OSError:
        pass
    try:
        written = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        written = ""
    shown = "".join(c if c.isprintable() else "?" for c in written)
    return shown or "another process"


def _program(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "no longer there"
    text = " ".join(w.decode("utf-8", "replace") for w in words if w)[:120]
    return "".join(c if c.isprintable() else "?" for c in text) or "?"


def process_start(pid: int) -> float | None:
    """When process `pid` started (Unix time), from /proc; None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
