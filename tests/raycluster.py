"""Private local Ray clusters for tests: own temp dir, auth token and ports, stopped by process id.

    from raycluster import LocalCluster, free_port      # tests/test_cluster.py, test_job_submit.py

Never `ray stop` (it stops every Ray on the machine, the session's `ray_local` included):
`stop()` ends the `ray start --block` processes it started, then anything still mentioning the
cluster's temp dir (raylet, GCS, dashboard, workers all carry it on their command line).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
# Ports Ray would otherwise take from fixed defaults, and a small object store for 2 cores.
COMMON = ["--block", "--dashboard-agent-listen-port=0", "--min-worker-port=0",
          "--max-worker-port=0", "--object-store-memory=100000000", "--disable-usage-stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_mentioning(marker: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                found.append(int(d))
    return found


class LocalCluster:
    """`ray start` processes sharing one private temp dir and token (token auth on, as Ray 2.60
    does by default). `env` is what every process talking to this cluster needs: the token,
    no RAY_ADDRESS inherited from elsewhere, and this interpreter's bin first on PATH so that a
    job's `python` is the one that has `ipb` and `ray`."""

    def __init__(self, prefix: str = "ipbrc"):
        # short path under /tmp: Ray's unix socket paths have a length limit
        self.root = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.token = secrets.token_hex(32)
        token_path = os.path.join(self.root, "auth_token")
        with open(token_path, "w") as f:
            f.write(self.token)
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path,
                        RAY_TMPDIR=self.root,
                        PATH=os.path.dirname(sys.executable) + os.pathsep
                        + os.environ.get("PATH", ""))
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.procs: list[subprocess.Popen] = []
        self._launched: dict[subprocess.Popen, tuple] = {}   # how each was started
        self.t0 = time.monotonic()

    def stamp(self) -> str:
        return f"+{time.monotonic() - self.t0:5.1f}s"

    def start(self, args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        """`ray start ARGS --block` in its own session, logging to ROOT/NAME.log."""
        with open(os.path.join(self.root, name + ".log"), "w") as log:
            # the agents' ports fixed up front: with port 0 the raylet waits a fixed ~15 s
            # for the agent to write its port file, and dies when a loaded machine is slower
            agents = [f"--dashboard-agent-grpc-port={free_port()}",
                      f"--metrics-export-port={free_port()}",
                      f"--runtime-env-agent-port={free_port()}"]
            p = subprocess.Popen([RAY, "start", *args, *COMMON, *agents], env=env or self.env,
                                 start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        self._launched[p] = (args, name, env)
        return p

    def restart(self, p: subprocess.Popen) -> subprocess.Popen:
        """Start again, in its place in `procs`, a node whose `ray start` gave up (Ray waits a
        fixed 30 s for its raylet, too short on a loaded machine). Kills every process of this
        cluster first, so it is for a head that is still the only node."""
        args, name, env = self._launched.pop(p)
        self.kill_leftovers()
        new = self.start(args, name, env)
        self.procs.remove(new)
        self.procs[self.procs.index(p)] = new
        return new

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.root, name + ".log")) as f:
                return f.read()
        except OSError:
            return ""

    def kill_leftovers(self) -> list[int]:
        """SIGKILL whatever mentions ROOT (raylet, GCS, workers of a node whose `ray start`
        is gone); returns the pids still there after 5 s."""
        for pid in pids_mentioning(self.root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while (left := pids_mentioning(self.root)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def stop(self) -> list[int]:
        """SIGTERM the `ray start --block` processes (they tear their nodes down), then kill
        their process groups and whatever still mentions ROOT. Returns the pids left (none
        expected); ROOT is removed when nothing is left."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()   # reap: a zombie would still be listed under /proc
        left = self.kill_leftovers()
        if not left:
            shutil.rmtree(self.root, ignore_errors=True)
        return left
