"""Task processes of the local backend die with the agent that started them.

Every task process carries, in its environment, the mark of the agent that started it
(LOCALBATCH_AGENT=<pool folder>#<agent id>), and so does everything it starts, whatever
process group or session it moves to. Three places kill by that mark:

- the reaper: a small process each agent starts, holding the read end of a pipe whose write
  end only the agent has. However the agent ends (SIGKILL included) the kernel closes that
  end, the reaper reads end-of-file and kills every process with the agent's mark;
- a new agent of the pool, before it reports the old one's running tasks as lost (in case
  the reaper was killed too);
- deleting a pool whose agent is gone.

The mark is read from /proc/<pid>/environ (Linux). A process that empties its own
environment loses the mark; TOPAS and shell scripts do not.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

MARK_VARIABLE = "LOCALBATCH_AGENT"
_PROC = Path("/proc")


def agent_mark(pool: Path, agent_id: str) -> str:
    return f"{pool}#{agent_id}"


def _marks() -> list[tuple[int, str]]:
    """(pid, mark) of every process of this user that carries a mark."""
    key = f"{MARK_VARIABLE}=".encode()
    found = []
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, a zombie, or another user's
            continue
        for item in environ.split(b"\0"):
            if item.startswith(key):
                found.append((int(entry.name), item[len(key):].decode(errors="replace")))
                break
    return found


def kill_marked(pool: Path, only: str | None = None, spare: str | None = None) -> int:
    """SIGKILL the task processes of this pool's agents: of the agent marked `only` when
    given, else of every agent but `spare`. Returns how many were signalled."""
    prefix = f"{pool}#"
    killed = 0
    for pid, mark in _marks():
        if not mark.startswith(prefix) or mark == spare or (only is not None and mark != only):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed


def start_reaper(pool: Path, mark: str) -> int:
    """Start the reaper of the calling agent; returns the pipe's write end, which the agent
    keeps open (never writing to it) for as long as it lives."""
    read_end, write_end = os.pipe()  # neither is inherited by tasks (close_fds, O_CLOEXEC)
    proc = subprocess.Popen([sys.executable, "-m", "common.backends.local.reaper", str(pool), mark],
                            stdin=read_end, stdout=subprocess.DEVNULL, cwd=pool,
                            start_new_session=True)  # survives a kill of the agent's group
    os.close(read_end)
    (pool / "reaper.pid").write_text(str(proc.pid))
    return write_end


def reap(pool: Path, mark: str) -> int:
    """The reaper: wait for the agent's end of the pipe to close, then kill its tasks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    killed = kill_marked(pool, only=mark)
    if killed:
        print(f"reaper: the agent {mark} ended; killed {killed} task process(es)",
              file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(reap(Path(sys.argv[1]), sys.argv[2]))
