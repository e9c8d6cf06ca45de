"""Private local Ray clusters for tests: own temp dir, auth token and ports, stopped by process id.

    from raycluster import LocalCluster, free_port      # tests/test_cluster*.py, test_job_submit.py

Never `ray stop` (it stops every Ray on the machine, the session's `ray_local` included):
`stop()` ends the `ray start --block` processes it started, then anything still mentioning the
cluster's temp dir (raylet, GCS, dashboard, workers all carry it on their command line).

A node started with `private_disk(...)` runs in its own mount namespace (root: `unshare
--mount`) with an empty tmpfs over the cluster's temp dir and any other paths given: like a
second machine, it sees none of the head's files there, and the head none of its.
"""
from __future__ import annotations

import json
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
TESTS = os.path.dirname(os.path.abspath(__file__))
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

    def start(self, args: list[str], name: str, env: dict | None = None,
              wrap: list[str] | None = None) -> subprocess.Popen:
        """`ray start ARGS --block` in its own session, logging to ROOT/NAME.log; `wrap` is a
        command prefix (`private_disk`)."""
        with open(os.path.join(self.root, name + ".log"), "w") as log:
            # the agents' ports fixed up front: with port 0 the raylet waits a fixed ~15 s
            # for the agent to write its port file, and dies when a loaded machine is slower
            agents = [f"--dashboard-agent-grpc-port={free_port()}",
                      f"--metrics-export-port={free_port()}",
                      f"--runtime-env-agent-port={free_port()}"]
            p = subprocess.Popen([*(wrap or []), RAY, "start", *args, *COMMON, *agents],
                                 env=env or self.env, start_new_session=True, stdout=log,
                                 stderr=subprocess.STDOUT)
        self.procs.append(p)
        self._launched[p] = (args, name, env, wrap)
        return p

    def restart(self, p: subprocess.Popen) -> subprocess.Popen:
        """Start again, in its place in `procs`, a node whose `ray start` gave up (Ray waits a
        fixed 30 s for its raylet, too short on a loaded machine). Kills every process of this
        cluster first, so it is for a head that is still the only node."""
        args, name, env, wrap = self._launched.pop(p)
        self.kill_leftovers()
        new = self.start(args, name, env, wrap)
        self.procs.remove(new)
        self.procs[self.procs.index(p)] = new
        return new

    def private_disk(self, name: str, hide: list[str] = ()) -> tuple[list[str], dict]:
        """(command prefix, env) for a node NAME that shares no disk with the others: its own
        mount namespace with an empty tmpfs over ROOT and every path in `hide` (they must
        exist), its temp dir ROOT/NAME and TMPDIR inside that tmpfs, the token in its
        environment (the token file is under ROOT, hidden from it)."""
        private = os.path.join(self.root, name)
        script = ('set -e; for d in "$IPB_HIDE_ROOT" $IPB_HIDE; do '
                  'mount -t tmpfs -o size=2g,mode=1777 ipb-private "$d"; done; '
                  'mkdir -p "$TMPDIR"; exec "$@"')
        env = {k: v for k, v in self.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
        env.update(RAY_AUTH_TOKEN=self.token, TMPDIR=os.path.join(private, "tmp"),
                   IPB_HIDE_ROOT=self.root, IPB_HIDE=" ".join(hide))
        wrap = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                script, "private-disk"]
        return wrap, env

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


class NetworkNamespace:
    """A network namespace joined to this one by a veth pair, for a node on "another machine":
    its own loopback (nothing of the head's 127.0.0.1) and one link, HEAD_IP here <-> NODE_IP
    there. Both ends of the pair carry the same name (each in its own namespace), so
    GLOO_SOCKET_IFNAME=name is right on every node. `prefix` runs a command in it. Root and
    iproute2 needed: `make()` returns None with the reason when they are missing. `remove()`
    deletes the namespace and the pair (by name: nothing else is touched)."""

    def __init__(self, tag: str):
        self.name = f"ipb{tag}"
        self.link = f"ipb{tag}"[:15]
        n = int(tag, 16) % 250 + 2
        self.head_ip, self.node_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.prefix = ["ip", "netns", "exec", self.name]

    @classmethod
    def make(cls) -> "tuple[NetworkNamespace | None, str]":
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return None, "network namespaces need root and iproute2 (`ip`)"
        ns = cls(secrets.token_hex(3))
        peer = ns.link[:11] + "peer"
        steps = [["ip", "netns", "add", ns.name],
                 ["ip", "link", "add", ns.link, "type", "veth", "peer", "name", peer],
                 ["ip", "link", "set", peer, "netns", ns.name],
                 [*ns.prefix, "ip", "link", "set", peer, "name", ns.link],
                 ["ip", "addr", "add", f"{ns.head_ip}/24", "dev", ns.link],
                 ["ip", "link", "set", ns.link, "up"],
                 [*ns.prefix, "ip", "addr", "add", f"{ns.node_ip}/24", "dev", ns.link],
                 [*ns.prefix, "ip", "link", "set", ns.link, "up"],
                 [*ns.prefix, "ip", "link", "set", "lo", "up"]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                ns.remove()
                return None, f"cannot make a network namespace ({' '.join(step)}: " \
                             f"{done.stderr.strip()[:200]})"
        return ns, ""

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def net_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def mount_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def pids_in_namespace(pid: int, marker: str) -> list[int]:
    """Processes in the mount namespace of `pid` whose command line (or Ray's process title)
    mentions `marker`, e.g. the Ray Train workers of a `private_disk` node."""
    ns, found = mount_namespace(pid), []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            if marker in cmd and mount_namespace(int(d)) == ns:
                found.append(int(d))
        except OSError:
            continue
    return found


# The start of every cluster script (`run_script`): a private temp dir, auth token and ports;
# `connect` retries while a loaded machine starts the head; cleanup by process id.
PRELUDE = r'''
import json, os, sys, threading, time
from raycluster import LocalCluster, free_port
CLUSTER = LocalCluster()
ROOT = CLUSTER.root
for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):   # this script's own ray.init uses the token too
    os.environ.pop(key, None)
os.environ.update(CLUSTER.env)
import ray

T0 = CLUSTER.t0
PROCS = CLUSTER.procs
stamp = CLUSTER.stamp
start = CLUSTER.start

def connect(address, restarts=2, **init_kw):
    deadline = time.monotonic() + 180   # a loaded 2-core machine starts GCS slowly
    while True:
        try:
            return ray.init(address=address, **{"log_to_driver": False, **init_kw})
        except Exception:
            ray.shutdown()
            head = PROCS[0]
            if head.poll() is not None and restarts > 0:
                tail = CLUSTER.log("head").strip().splitlines()[-3:]
                print(f"{stamp()} head exited (rc {head.returncode}), starting it again; its "
                      f"log ends: {' | '.join(tail)}", flush=True)
                restarts -= 1
                CLUSTER.restart(head)
            elif time.monotonic() > deadline or head.poll() is not None:
                raise
            time.sleep(1)

def stop_all():
    ray.shutdown()
    left = CLUSTER.stop()
    print(f"{stamp()} stopped; processes left: {left}", flush=True)
'''


def run_script(tmp_path, name: str, source: str, timeout: float,
               env: dict | None = None) -> tuple[dict, str]:
    """Run a cluster script (PRELUDE + ...) in its own process, so that it never meets a Ray
    session of the pytest process; returns (the dict it printed as `RESULT {json}`, its
    stdout). Its lines that start with "+" (time stamps) are echoed for `pytest -s`."""
    script = tmp_path / f"{name}.py"
    script.write_text(f"import sys\nsys.path.insert(0, {TESTS!r})\n{source}")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout, env=env)
    lines = proc.stdout.splitlines()
    for line in lines:
        if line.startswith("+"):
            print(f"[{name}] {line}")
    results = [json.loads(ln[7:]) for ln in lines if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and results, \
        f"{name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert lines[-1].endswith("processes left: []"), lines[-1]
    return results[0], proc.stdout
