"""`ray job submit -- python sweeps/ablation.py` on a real local Ray head with its job server.

    .venv/bin/pytest -s tests/test_job_submit.py        # about 1-3 minutes on 2 cores

A private head (tests/raycluster.py: own temp dir, ports, auth token; token auth on as Ray 2.60
does by default; dashboard and job server on 127.0.0.1) gets the repository as the job's
working dir (with the excludes the README documents), runs the first ablation configuration on
one fold with a tiny override, and the MLflow store outside the working dir must then hold a
FINISHED child run under the sweep's parent run. The head is stopped by its process ids.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from raycluster import RAY, LocalCluster, free_port
from tiny import TINY, write_tiny_table

REPO = Path(__file__).resolve().parents[1]
EXCLUDES = [".git", ".venv", "**/__pycache__", "mlflow.db", "mlruns", "mlartifacts",
            ".pytest_cache", "*.egg-info"]
UPLOAD_LIMIT = 100 * 2**20   # Ray refuses a working dir package over 100 MiB


def _wait_for_dashboard(cluster: LocalCluster, port: int, timeout: float = 120) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/version",
                                 headers={"Authorization": f"Bearer {cluster.token}"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        assert cluster.alive(), f"ray start exited:\n{cluster.log('head')[-3000:]}"
        assert time.monotonic() < deadline, \
            f"no dashboard on :{port} after {timeout}s:\n{cluster.log('head')[-3000:]}"
        time.sleep(1)


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _ray(cluster, *args, timeout):
    return subprocess.run([RAY, *args], env=cluster.env, capture_output=True, text=True,
                          timeout=timeout, cwd=cluster.root)


def test_working_dir_package_is_small():
    """What `ray job submit --working-dir .` uploads with these excludes, packed the way Ray
    packs it (its own walk that honours .gitignore and `excludes`)."""
    from ray._private.runtime_env.packaging import _get_excludes, _dir_travel
    size, n = 0, 0
    names = []

    def add(p: Path):
        nonlocal size, n
        if p.is_file():
            size += p.stat().st_size
            n += 1
            names.append(str(p.relative_to(REPO)))

    _dir_travel(REPO, [_get_excludes(REPO, EXCLUDES)], add, include_gitignore=True)
    assert not any(x.startswith((".venv/", ".git/")) for x in names)
    assert "sweeps/ablation.py" in names and "ipb/sweep.py" in names
    assert size < 10 * 2**20 < UPLOAD_LIMIT, f"working dir upload {size / 2**20:.1f} MiB"
    print(f"working dir upload: {n} files, {size / 2**20:.2f} MiB")


@pytest.mark.ray
def test_ray_job_submit_runs_the_ablation_sweep(tmp_path):
    from mlflow.tracking import MlflowClient

    table = write_tiny_table(tmp_path / "table")
    db = tmp_path / "job.db"
    cluster = LocalCluster("ipbjob")
    dash = free_port()
    job_id = f"ipb-ablation-{int(time.time())}"
    timings = {}
    try:
        gcs = f"127.0.0.1:{free_port()}"     # loopback only, like the dashboard
        cluster.start(["--head", "--node-ip-address=127.0.0.1",
                       f"--port={gcs.rsplit(':', 1)[1]}", "--num-cpus=2",
                       f"--temp-dir={cluster.root}", "--include-dashboard=true",
                       "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                       f"--ray-client-server-port={free_port()}"], "head")
        _wait_for_dashboard(cluster, dash)
        timings["head up"] = time.monotonic() - cluster.t0
        runtime_env = {"excludes": EXCLUDES,
                       # The job system gives the driver RAY_ADDRESS, not the actors: Ray
                       # Train's PlacementGroupCleaner then looks for "the" cluster on this
                       # machine and finds other test sessions' clusters too.
                       "env_vars": {"RAY_ADDRESS": gcs, "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                                    "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}}
        cmd = ["job", "submit", "--address", f"http://127.0.0.1:{dash}",
               "--submission-id", job_id, "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps(runtime_env), "--",
               "python", "sweeps/ablation.py", "--profile", "smoke", "--data", str(table),
               "--tracking-uri", f"sqlite:///{db}", *TINY,
               "sweep.limit=1", "sweep.folds=[0]", "patch.size=32", "train.epochs=1",
               "train.steps_per_epoch=1", "method.teacher_pretrain_epochs=0", "split.folds=5",
               "split.labeled_fraction=0.3", f"train.storage={tmp_path}/ray"]
        try:
            for _ in range(12):
                sub = _ray(cluster, *cmd, timeout=300)
                # the dashboard answers before its job agent has registered (slow on a
                # loaded machine); the job server itself says to try again
                if "No available agent to submit job" not in sub.stdout + sub.stderr:
                    break
                timings.setdefault("agent not ready at", time.monotonic() - cluster.t0)
                time.sleep(5)
        except subprocess.TimeoutExpired as e:
            logs = _ray(cluster, "job", "logs", "--address", f"http://127.0.0.1:{dash}",
                        job_id, timeout=60)
            pytest.fail(f"job {job_id} not done after {e.timeout}s; its log:\n"
                        f"{logs.stdout[-4000:]}")
        timings["job done"] = time.monotonic() - cluster.t0
        (tmp_path / "job_submit.log").write_text(sub.stdout + sub.stderr)
        print("\n".join(["---- ray job submit output (tail) ----",
                         *sub.stdout.splitlines()[-40:], "----"]))
        # the CLI prints this only when the job server reports status SUCCEEDED
        assert sub.returncode == 0 and f"Job '{job_id}' succeeded" in _plain(sub.stdout), \
            f"rc {sub.returncode}\n{sub.stdout[-4000:]}\n{sub.stderr[-2000:]}"
        # the sweep names the dashboard of the Ray it joined: this cluster's (Tune's TensorBoard
        # hint, which named its session dir, is gone from a sweep's output: issue 20)
        assert f"Ray dashboard: http://127.0.0.1:{dash}" in _plain(sub.stdout), \
            "the job ran on some other cluster"
    finally:
        left = cluster.stop()
        timings["stopped"] = time.monotonic() - cluster.t0
        print("timings: " + ", ".join(f"{k} +{v:.1f}s" for k, v in timings.items()))
    assert left == [], f"processes of the private cluster left: {left}"

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("ipb-ablation")
    assert exp is not None, "the job logged no experiment ipb-ablation"
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = {r.info.run_id for r in runs} - {r.info.run_id for r in children}
    assert len(children) == 1 and len(parents) == 1, [r.data.tags for r in runs]
    (child,) = children
    assert child.data.tags["mlflow.parentRunId"] in parents
    assert child.info.status == "FINISHED"
    assert child.data.tags["ipb.method"] == "ipb" and child.data.tags["ipb.arch"] == "vgg19"
    assert "test.tpr.mean" in child.data.metrics
