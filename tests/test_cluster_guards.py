"""The guards that stop a cluster run before it writes where other nodes cannot reach, offline.

    .venv/bin/pytest -q tests/test_cluster_guards.py        # a few seconds, no Ray started

At a sweep's start an autoscaling cluster is its head alone, so the node count alone says
nothing: the decisions take the cluster's capacity (IPB_CLUSTER_MAX_WORKERS, or the launcher
config `ray up` leaves on the head) as a plain input. `check_storage` and the MLflow `writers`
are driven with `ray.nodes` replaced by a list, so no cluster and no server is started.
"""
from __future__ import annotations

import subprocess

import pytest

from ipb.config import ConfigError, load_config
# check_storage and writers need ipb.tracking, which imports torch (via ipb.methods): seconds
# on a loaded 2-core machine, paid once here rather than inside the first test
from ipb.mlflow_server import writers
from ipb.runtime import (MAX_WORKERS_ENV, NETWORK_FS, SHARED_ENV, check_storage,
                         cluster_max_workers, launcher_max_workers, mount_fs_type, storage_plan,
                         tracking_refusal)

MOUNTS = """\
/dev/nvme0n1p1 / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
tmpfs /tmp tmpfs rw 0 0
fs-1234.efs.us-west-2.amazonaws.com:/ /mnt/efs nfs4 rw,vers=4.1 0 0
10.0.0.2:/vol /mnt/my\\040share nfs rw 0 0
overlay /mnt/efs/scratch overlay rw 0 0
"""


# ---------------------------------------------------------------- train.storage

def test_local_storage_is_refused_on_a_cluster_that_can_grow():
    # the normal start of an autoscaling sweep: the head alone, 9 workers allowed
    assert storage_plan("/home/ray/ray_results", 1, 9, "ext4") == "refuse"
    assert storage_plan("/home/ray/ray_results", 1, None, "ext4") == "ok"      # one machine
    assert storage_plan("/home/ray/ray_results", 1, 0, "ext4") == "ok"         # cannot grow
    assert storage_plan(None, 1, 9, None) == "ok"                              # s3://, gs://
    assert storage_plan("/mnt/efs/ray", 1, 9, "nfs4") == "ok"    # shared: nothing to probe yet
    assert storage_plan("/mnt/efs/ray", 3, 9, "nfs4") == "probe"
    assert storage_plan("/data/ray", 2, None, "ext4") == "probe"  # nodes alive: the marker test
    assert storage_plan("/data/ray", 1, 9, "xfs", declared_shared=True) == "ok"
    assert storage_plan("/data/ray", 1, 9, None) == "refuse"     # no mount table: not shared


def test_mount_fs_type_takes_the_innermost_mount():
    assert mount_fs_type("/home/ray/ray_results", MOUNTS) == "ext4"
    assert mount_fs_type("/mnt/efs/ipb/ray", MOUNTS) == "nfs4"
    assert mount_fs_type("/mnt/efs", MOUNTS) == "nfs4"
    assert mount_fs_type("/mnt/efsx/ray", MOUNTS) == "ext4"          # a prefix, not a parent
    assert mount_fs_type("/mnt/efs/scratch/x", MOUNTS) == "overlay"
    assert mount_fs_type("/mnt/my share/ray", MOUNTS) == "nfs"       # \040 is a space
    assert {"nfs", "nfs4", "fuse.gcsfuse", "lustre"} <= NETWORK_FS
    assert not {"ext4", "xfs", "overlay", "tmpfs"} & NETWORK_FS


def test_cluster_capacity_from_env_or_the_launcher_config(tmp_path):
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    none = str(tmp_path / "absent.yaml")
    assert cluster_max_workers({}, none) == (None, "")
    assert cluster_max_workers({MAX_WORKERS_ENV: "9"}, none) == (9, f"${MAX_WORKERS_ENV}")
    assert cluster_max_workers({MAX_WORKERS_ENV: "0"}, none) == (0, f"${MAX_WORKERS_ENV}")
    with pytest.raises(ConfigError, match=MAX_WORKERS_ENV):
        cluster_max_workers({MAX_WORKERS_ENV: "many"}, none)
    # what `ray up` leaves on the head (the raw file here; Ray's copy has the defaults filled)
    boot = tmp_path / "ray_bootstrap_config.yaml"
    boot.write_text((repo / "cluster" / "aws.yaml").read_text())
    assert cluster_max_workers({}, str(boot)) == (9, str(boot))
    assert launcher_max_workers({"max_workers": 4, "head_node_type": "h",
                                 "available_node_types": {"h": {}, "w": {"max_workers": 2}}}) == 2
    assert launcher_max_workers({"max_workers": 4, "head_node_type": "h",
                                 "available_node_types": {"h": {}, "w": {}}}) == 4
    assert launcher_max_workers({"max_workers": 0}) == 0
    boot.write_text(": not yaml [")
    assert cluster_max_workers({}, str(boot)) == (None, "")


def _fake_cluster(monkeypatch, ips, max_workers=None):
    import ray
    nodes = [{"Alive": True, "NodeID": f"n{i}", "NodeManagerAddress": ip}
             for i, ip in enumerate(ips)]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "remote", lambda *a, **k: pytest.fail("no task may be started"))
    import ray.util
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: ips[0])
    if max_workers is None:
        monkeypatch.delenv(MAX_WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(MAX_WORKERS_ENV, str(max_workers))


def test_check_storage_refuses_a_local_path_with_only_the_head_up(tmp_path, monkeypatch):
    _fake_cluster(monkeypatch, ["10.0.0.5"], max_workers=9)
    monkeypatch.delenv(SHARED_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    local = load_config("smoke", [f"train.storage={tmp_path}/ray"])
    with pytest.raises(ConfigError, match=r"train.storage=.*may add up to 9 worker nodes"):
        check_storage(local)
    monkeypatch.setenv(SHARED_ENV, "1")            # the user says it is a shared file system
    assert check_storage(local) == f"{tmp_path}/ray"
    bucket = load_config("smoke", ["train.storage=s3://bucket/ipb/ray"])
    assert check_storage(bucket) == "s3://bucket/ipb/ray"


# ---------------------------------------------------------------- tracking URI

def test_tracking_uri_other_nodes_cannot_reach_is_refused():
    sqlite = "sqlite:////home/ray/mlflow.db"
    head_only = ["10.0.0.5"]
    assert tracking_refusal(sqlite, head_only, None) is None                # one machine
    why = tracking_refusal(sqlite, head_only, 9, "10.0.0.5", f"${MAX_WORKERS_ENV}")
    assert why and "may add up to 9 worker nodes" in why
    assert "mlflow server --host 0.0.0.0" in why and "--tracking-uri http://10.0.0.5:5000" in why
    assert tracking_refusal(sqlite, ["10.0.0.5", "10.0.0.7"], None)        # two machines
    # a loopback server: on another node 127.0.0.1 is that node
    for uri in ("http://127.0.0.1:5000", "http://localhost:5000", "http://[::1]:5000"):
        assert tracking_refusal(uri, head_only, 9), uri
        assert tracking_refusal(uri, ["10.0.0.5", "10.0.0.7"], None), uri
    # every node on this machine (the multi-node tests run so): loopback reaches them all
    assert tracking_refusal("http://127.0.0.1:5000", ["127.0.0.1", "127.0.0.1"], None) is None
    assert tracking_refusal(sqlite, ["127.0.0.1", "127.0.0.1"], None) is None
    # two nodes of one machine share its address: they reach its loopback server too
    assert tracking_refusal("http://127.0.0.1:5000", ["192.0.2.2", "192.0.2.2"], None) is None
    # an address every node reaches
    assert tracking_refusal("http://10.0.0.5:5000", head_only, 9) is None
    assert tracking_refusal("http://mlflow:5000", ["10.0.0.5", "10.0.0.7"], 9) is None
    assert tracking_refusal("https://mlflow.lab.example.org", head_only, 9) is None


def test_sweep_writers_refuse_sqlite_before_starting_a_server(tmp_path, monkeypatch):
    """Before: the sweep's own server on 127.0.0.1 was handed to trials on every node."""
    _fake_cluster(monkeypatch, ["10.0.0.5"], max_workers=9)
    monkeypatch.setattr(subprocess, "Popen",
                        lambda *a, **k: pytest.fail("a local mlflow server was started"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = load_config("smoke")
    for concurrent in (4, 1):      # 1: the SQLite URI itself would have gone to every node
        with pytest.raises(ConfigError, match=r"tracking URI 'sqlite:.*http://10\.0\.0\.5:5000"):
            with writers(cfg, concurrent):
                pass
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    with writers(cfg, 4) as uri:
        assert uri == "http://10.0.0.5:5000"


def test_check_storage_refuses_sqlite_tracking_on_a_cluster(tmp_path, monkeypatch):
    """`ipb train` on a cluster goes through check_storage, not the sweep's writers."""
    _fake_cluster(monkeypatch, ["10.0.0.5"], max_workers=9)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ConfigError, match="tracking URI 'sqlite:"):
        check_storage(load_config("smoke", ["train.storage=s3://bucket/ipb/ray"]))

