"""A watcher that outlives an `ipb` command and kills what it started once the command is gone.

    python -m ipb.reaper PID FD        # started by `ipb ingest|train|run` (ipb.cli), not by hand

Why: Ray's raylet starts a DashboardAgent and a RuntimeEnvAgent that ignore SIGTERM; when the
command that started an embedded Ray is killed (`kill -9`, OOM killer, a closed terminal) they
stay alive under init (PPID 1) indefinitely (measured after `kill -9` of an ingest: both alive
70 s later, SIGTERM ignored). The watcher is a separate session (Ctrl-C does not reach it) that
records the command's descendants every INTERVAL_S and reads one end of a pipe the command
holds; when the pipe closes (the command exited, however), it waits GRACE_S for Ray's own
shutdown, then SIGKILLs every recorded process still alive with the same start time (a recycled
pid is never hit). Linux only (/proc); elsewhere `start` does nothing.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

INTERVAL_S = 1.0
GRACE_S = 3.0
LOOK_S = 0.1       # during the grace period: how often the recorded processes' children are read
_held: list[int] = []          # the command's end of the pipe, open until it exits


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in (b"Z", b"X"):    # a zombie holds no resources; its parent reaps it
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live descendant of `root`."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
                starts[int(name)] = st[1]
    out, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out[child] = starts[child]
                todo.append(child)
    return out


def watch(pid: int, fd: int) -> int:
    """The watcher's loop (this process); returns how many leftovers it killed."""
    me = os.getpid()
    seen: dict[int, int] = {}
    while True:
        ready, _, _ = select.select([fd], [], [], INTERVAL_S)
        if ready and not os.read(fd, 64):
            break                                 # EOF: the command is gone
        seen.update({p: t for p, t in descendants(pid).items() if p != me})
    # what a recorded process (the raylet) started since the last look: a worker forked in the
    # command's last second was never seen as the command's descendant, and outlived it. Looked
    # for through the grace period, from its first moment: once the raylet has exited, its
    # workers hang under init and nothing links them to the command (CI, a loaded machine:
    # two ray::IDLE workers forked in the last second lived on after a look made only at the
    # end of the grace period)
    end = time.monotonic() + GRACE_S
    while True:
        for p in list(seen):
            if (_stat(p) or (0, None))[1] == seen[p]:
                seen.update({c: t for c, t in descendants(p).items() if c != me})
        if time.monotonic() >= end:
            break
        time.sleep(LOOK_S)
    killed = 0
    for p, start in seen.items():
        st = _stat(p)
        if st is not None and st[1] == start:
            try:
                os.kill(p, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def start() -> subprocess.Popen | None:
    """Start the watcher for this process (once); None off Linux or with IPB_NO_REAPER=1."""
    if _held or not sys.platform.startswith("linux") or os.environ.get("IPB_NO_REAPER") == "1":
        return None
    r, w = os.pipe()                # not inheritable: no child of ours keeps it open
    proc = subprocess.Popen([sys.executable, "-m", "ipb.reaper", str(os.getpid()), str(r)],
                            pass_fds=(r,), stdin=subprocess.DEVNULL, start_new_session=True)
    os.close(r)
    _held.append(w)
    return proc


if __name__ == "__main__":
    sys.exit(0 if watch(int(sys.argv[1]), int(sys.argv[2])) >= 0 else 1)
