"""Clusters whose nodes share no disk: storage in a bucket, and manifests the operator accepts.

    .venv/bin/pytest -q tests/test_cluster_storage.py        # about 3 minutes on 2 cores

One scenario (a script in its own process, tests/raycluster.py) on a two-node Ray cluster whose
worker node is another machine as far as a test can make one (issue 19): its own network
namespace, joined to the head by a veth pair (HEAD_IP <-> NODE_IP; its 127.0.0.1 is its own),
and its own mount namespace with an empty tmpfs over the cluster's temp dir and this test's
directory (its MLflow database, the table it wrote, any local `train.storage`): it sees none of
the head's files there, and no service of the head but at HEAD_IP. S3 is moto's server and
MLflow one server whose artifacts go to the bucket, both listening at HEAD_IP only (started
here, stopped by process id; the namespace and the pair removed at the end). Without root or
iproute2 the nodes share the loopback network (HEAD_IP = 127.0.0.1) and the network test is
skipped with the reason. In that scenario:
- `ipb ingest SOURCE --out s3://...` writes a colony table into the bucket (its tasks run on
  both nodes; SOURCE is in a directory both see, as a shared file system would be);
- a sweep with `train.storage` a local path fails before any training, naming the setting;
- the same sweep on `s3://` trains one trial with 2 workers (one per node) from that table read
  in place; once a checkpoint is in the bucket every process of the worker node is killed
  (SIGKILL: a reclaimed spot machine) and a new worker node started in its place; the trial
  resumes from the bucket, each node decoding the table itself; a re-run adds no MLflow run.
Offline: every KubeRay manifest against the CRD schemas of shared/schemas/kuberay-v1.7.0
(unknown fields refused, as `kubectl apply` does) and the operator's extra rules listed there
(tests/kuberay_rules.py), and the Optuna study storages.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kuberay_rules import (crd_schema, documented_secrets, ray_manifests, raycluster_rule_errors,
                           rayjob_rule_errors, unknown_fields)
from raycluster import PRELUDE, NetworkNamespace, free_port, run_script

BUCKET = "ipb-test"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert proc.poll() is None, f"{url}: server exited:\n{log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{url}: no answer in {timeout}s"
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it runs in its own session), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _server(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen([sys.executable, "-m", *args], stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)


@pytest.fixture(scope="module")
def net():
    """The worker node's network: {"ns": NetworkNamespace or None, "why": reason if None,
    "head": the address the head and every service listen at}."""
    ns, why = NetworkNamespace.make()
    try:
        yield {"ns": ns, "why": why, "head": ns.head_ip if ns else "127.0.0.1"}
    finally:
        if ns is not None:
            ns.remove()


@pytest.fixture(scope="module")
def s3(net, tmp_path_factory):
    """moto's S3 server at the head's address with an empty bucket; {"endpoint", "query", "fs"}."""
    import pyarrow.fs as pafs
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    host, port = net["head"], free_port()
    proc = _server(["moto.server", "-H", host, "-p", str(port)], log,
                   {**os.environ, **AWS_ENV})
    try:
        _wait_http(f"http://{host}:{port}/", proc, log, timeout=60)
        fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                               endpoint_override=f"{host}:{port}", scheme="http",
                               allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        yield {"endpoint": f"http://{host}:{port}", "fs": fs, "host": host, "port": port,
               "query": f"?endpoint_override={host}:{port}&scheme=http"}
    finally:
        _stop(proc)


def _bucket_listing(fs) -> list[str]:
    import pyarrow.fs as pafs
    infos = fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


SCENARIO = PRELUDE + r'''
import signal, socket, subprocess, urllib.request
import pyarrow.fs as pafs
from raycluster import pids_in_namespace
from tiny import TINY
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
P = json.loads(os.environ["IPB_SCENARIO"])
out = {}

def log(s):
    print(f"{stamp()} {s}", flush=True)

def runs(experiment):
    from ipb.tracking import client
    c = client(P["mlflow"])
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id])

def kill_worker_node(fs, root, worker, stop):
    """Once Ray Train has registered a checkpoint (its checkpoint manager's snapshot is in the
    bucket; a checkpoint uploaded before every rank reported is not one yet) and the worker
    node trains, SIGKILL every process of that node at once (raylet, object store, agents,
    workers: a reclaimed spot machine), then start a new worker node in its place, as the
    autoscaler would: a fresh mount namespace, nothing of the old node's disk or store."""
    while not stop.is_set():
        files = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True,
                                                                     allow_not_found=True))
                 if "/tune/" not in i.path]
        ckpts = [f for f in files if "/checkpoint_" in f]
        known = any(f.endswith("/checkpoint_manager_snapshot.json") for f in files)
        trainers = pids_in_namespace(worker.pid, "RayTrainWorker") if known and ckpts else []
        if trainers:
            pids = pids_in_namespace(worker.pid, "")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            out["killed"] = {"pids": pids, "trainers": trainers, "node": P["worker_node"],
                             "checkpoints_then": sorted(ckpts), "at": stamp()}
            log(f"killed the worker node: {len(pids)} processes, Ray Train worker(s) {trainers}")
            args, _, env, wrap = CLUSTER._launched[worker]
            start(args, "worker2", env=env, wrap=wrap)
            return
        time.sleep(0.3)

def watch_node_banks(stop):
    """The sweep's per-node bank actors (ipb.shared_table), as they appear."""
    seen = set()
    while not stop.is_set():
        seen |= {a for a in ray.util.list_named_actors() if "-bank-" in a}
        out["node_banks"] = sorted(seen)
        time.sleep(0.2)

try:
    port = free_port()
    address = f"{P['host']}:{port}"
    if P["ifname"]:     # gloo (DDP on CPU) binds where the hostname resolves: not this link
        CLUSTER.env["GLOO_SOCKET_IFNAME"] = P["ifname"]
    # ipb_driver: trial drivers on the head, as the cluster configs do (ipb/sweep.py)
    start(["--head", f"--node-ip-address={P['host']}", f"--port={port}", "--num-cpus=1",
           '--resources={"ipb_driver": 1000}',
           f"--temp-dir={ROOT}/head", "--include-dashboard=false",
           f"--ray-client-server-port={free_port()}"], "head")
    connect(address, log_to_driver=True)
    wrap, env = CLUSTER.private_disk("worker", hide=[P["private"]])
    worker = start([f"--address={address}", f"--node-ip-address={P['node_ip']}", "--num-cpus=1",
                    f"--temp-dir={ROOT}/worker"], "worker", env=env, wrap=P["netns"] + wrap)
    deadline = time.monotonic() + 120
    while len([n for n in ray.nodes() if n["Alive"]]) < 2:
        assert worker.poll() is None, CLUSTER.log("worker")[-3000:]
        assert time.monotonic() < deadline, "the worker node did not join in 120 s"
        time.sleep(0.5)
    head_node = ray.get_runtime_context().get_node_id()
    worker_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head_node)
    log("two nodes up")

    def sees(paths):
        return {p: os.path.exists(p) for p in paths}
    probe = ray.remote(num_cpus=0)(sees)
    paths = [os.path.join(P["private"], "mlflow.db"), os.path.join(ROOT, "auth_token"),
             P["source"]]
    out["views"] = {name: ray.get(probe.options(scheduling_strategy=On(node, soft=False))
                                  .remote(paths))
                    for name, node in (("head", head_node), ("worker", worker_node))}

    def network(s3_port):
        """This node's network namespace, and whether it reaches the S3 server at the head's
        address and at its own 127.0.0.1."""
        def reach(host):
            try:
                socket.create_connection((host, s3_port), timeout=3).close()
                return True
            except OSError:
                return False
        return {"netns": os.readlink("/proc/self/ns/net"), "ip": ray.util.get_node_ip_address(),
                "s3_at_head": reach(P["host"]), "s3_at_loopback": reach("127.0.0.1")}
    probe = ray.remote(num_cpus=0)(network)
    out["network"] = {name: ray.get(probe.options(scheduling_strategy=On(node, soft=False))
                                    .remote(P["s3_port"]))
                      for name, node in (("head", head_node), ("worker", worker_node))}

    # ingest straight into the bucket, through the CLI, on this cluster
    table = f"s3://{P['bucket']}/tables/crops{P['query']}"
    t = time.monotonic()
    ing = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ipb"), "ingest",
                          P["source"], "--out", table, "data.shard_size=16"],
                         env={**os.environ, "RAY_ADDRESS": address}, capture_output=True,
                         text=True, timeout=300)
    from ipb.data.table import load_colonies, read_manifest
    manifest = read_manifest(table) if ing.returncode == 0 else {}
    out["ingest"] = {"rc": ing.returncode, "s": round(time.monotonic() - t, 1),
                     "tail": (ing.stdout + ing.stderr)[-2000:], "manifest": manifest,
                     "rows": len(load_colonies(table)) if manifest else 0}
    log(f"ingest into the bucket: rc {ing.returncode}, {out['ingest']['rows']} colonies")

    from ipb.config import load_config
    from ipb.sweep import run_grid
    from ipb.train import fit
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(P["mlflow"] + "/health", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline, "no MLflow server"
            time.sleep(0.5)
    base = [*TINY, f"data.table={table}", "method.name=supervised", "model.arch=vgg19",
            "patch.size=32", "train.num_workers=2", "train.epochs=8",
            "train.steps_per_epoch=3", "train.max_failures=2", "split.folds=5",
            "split.labeled_fraction=0.3", "sweep.folds=[0]", f"tracking.uri={P['mlflow']}",
            "tracking.experiment=ipb-s3"]

    # a local train.storage with two nodes: refused before any training
    local = load_config("smoke", base + [f"train.storage={P['private']}/ray-local"])
    out["local"] = {}
    for how, call in (("sweep", lambda: run_grid("s3", local, [{}], table)),
                      ("train", lambda: fit(local, table))):
        t = time.monotonic()
        try:
            call()
            out["local"][how] = {"error": None}
        except Exception as e:
            out["local"][how] = {"type": type(e).__name__, "error": str(e),
                                 "s": round(time.monotonic() - t, 1)}
    out["local"]["runs"] = len(runs("ipb-s3"))
    log(f"local storage refused: {out['local']['sweep'].get('type')}")
    # fault 6: a SQLite tracking URI on nodes at two addresses (the sweep's own MLflow server
    # would hand the worker node http://127.0.0.1, which there is that node itself)
    sqlite = load_config("smoke", base + [f"train.storage=s3://{P['bucket']}/ray{P['query']}",
                                          f"tracking.uri=sqlite:///{P['private']}/local.db",
                                          "sweep.max_concurrent=2"])
    t = time.monotonic()
    try:
        run_grid("s3", sqlite, [{}], table)
        out["sqlite"] = {"error": None}
    except Exception as e:
        out["sqlite"] = {"type": type(e).__name__, "error": str(e),
                         "s": round(time.monotonic() - t, 1)}
    log(f"sqlite tracking refused: {out['sqlite'].get('type')}")

    storage = f"s3://{P['bucket']}/ray{P['query']}"
    cfg = load_config("smoke", base + [f"train.storage={storage}"])
    fs, root = pafs.FileSystem.from_uri(storage)
    stop = threading.Event()
    P["worker_node"] = worker_node
    killer = threading.Thread(target=kill_worker_node, args=(fs, root, worker, stop),
                              daemon=True)
    killer.start()
    watcher = threading.Thread(target=watch_node_banks, args=(stop,), daemon=True)
    watcher.start()
    t = time.monotonic()
    run_grid("s3", cfg, [{}], table)
    stop.set()
    out["sweep_s"] = round(time.monotonic() - t, 1)
    out["nodes"] = {"head": head_node, "worker": worker_node,
                    "alive_after": [n["NodeID"] for n in ray.nodes() if n["Alive"]]}
    first = runs("ipb-s3")
    t = time.monotonic()
    run_grid("s3", cfg, [{}], table)
    out["rerun_s"] = round(time.monotonic() - t, 1)
    from ipb.tracking import client
    c = client(P["mlflow"])
    out["runs"] = [{"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
                    "role": r.data.tags.get("ipb.role", "trial"),
                    "storage": r.data.tags.get("ipb.storage"),
                    "resumed_from": r.data.tags.get("ipb.resumed_from_epoch"),
                    "epochs": sorted(m.step for m in c.get_metric_history(r.info.run_id,
                                                                          "time.epoch")),
                    "artifacts": [a.path for a in c.list_artifacts(r.info.run_id)]}
                   for r in first]
    out["runs_after_rerun"] = len(runs("ipb-s3"))
    print("RESULT " + json.dumps(out), flush=True)
finally:
    stop_all()
'''


@pytest.fixture(scope="module")
def scenario(s3, net, tmp_path_factory):
    """Runs SCENARIO once; (its RESULT dict, its stdout, the bucket's files afterwards)."""
    import dataclasses

    from ipb.config import load_config
    from ipb.data.synth import write_class_folders
    private = tmp_path_factory.mktemp("s3cluster")      # hidden from the worker node
    shared = tmp_path_factory.mktemp("shared")          # seen by both, as NFS would be
    small = dataclasses.replace(load_config("smoke").synth, wells=4, size=384, seed=3)
    write_class_folders(shared / "crops", small, n_per_class=10)
    env = {**os.environ, **AWS_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_S3_ENDPOINT_URL": s3["endpoint"]}
    port = free_port()
    mlflow = _server(["mlflow", "server", "--backend-store-uri",
                      f"sqlite:///{private}/mlflow.db", "--artifacts-destination",
                      f"s3://{BUCKET}/mlflow", "--host", net["head"], "--port", str(port),
                      "--workers", "1"], private / "mlflow.log", env)
    try:
        env.pop("MLFLOW_TRACKING_URI", None)
        env["IPB_SCENARIO"] = json.dumps({
            "private": str(private), "source": str(shared / "crops"), "bucket": BUCKET,
            "query": s3["query"], "mlflow": f"http://{net['head']}:{port}",
            "host": net["head"], "s3_port": s3["port"],
            "node_ip": net["ns"].node_ip if net["ns"] else net["head"],
            "netns": net["ns"].prefix if net["ns"] else [],
            "ifname": net["ns"].link if net["ns"] else ""})
        res, stdout = run_script(private, "s3cluster", SCENARIO, timeout=600, env=env)
        (private / "s3cluster.out").write_text(stdout)       # for a look after a failure
    finally:
        _stop(mlflow)
    listing = _bucket_listing(s3["fs"])
    print("bucket after the scenario:\n  " + "\n  ".join(listing))
    return res, stdout, listing


@pytest.mark.slow
def test_worker_node_shares_no_disk_with_the_head(scenario):
    views = scenario[0]["views"]
    assert all(views["head"].values()), views
    private, token, source = views["worker"].values()
    assert not private and not token and source, views


@pytest.mark.slow
def test_worker_node_is_on_another_network(scenario, net):
    """Issue 19: the nodes share no network but the veth link: the worker node's 127.0.0.1 is
    its own (the head's services are not there), the S3 server answers at the head's address,
    and the whole scenario (ingest, the refused local storage, the killed and resumed trial,
    MLflow) ran so: nothing of it assumed 127.0.0.1 or a shared disk."""
    if net["ns"] is None:
        pytest.skip(net["why"])
    head, worker = scenario[0]["network"]["head"], scenario[0]["network"]["worker"]
    assert head["netns"] != worker["netns"], (head, worker)
    assert (head["ip"], worker["ip"]) == (net["ns"].head_ip, net["ns"].node_ip)
    assert worker["s3_at_head"] and not worker["s3_at_loopback"], worker


@pytest.mark.slow
def test_ingest_writes_the_table_into_the_bucket(scenario):
    res, _, listing = scenario
    ing = res["ingest"]
    assert ing["rc"] == 0, ing["tail"]
    assert ing["manifest"]["n_colonies"] == ing["rows"] >= 60
    assert set(ing["manifest"]["classes"]) == {"Debris", "Dense", "Differentiated", "Spread"}
    table = [k for k in listing if k.startswith(f"{BUCKET}/tables/crops/")]
    assert f"{BUCKET}/tables/crops/manifest.json" in table
    shards = [k for k in table if k.endswith(".parquet")]
    assert len(shards) == len(ing["manifest"]["shards"]) >= 2
    assert not any(k.endswith(".tmp") for k in table)


@pytest.mark.slow
def test_local_storage_fails_before_training_naming_the_setting(scenario):
    local = scenario[0]["local"]
    for how in ("sweep", "train"):
        err = local[how]
        assert err.get("type") == "ConfigError", err
        assert "train.storage=" in err["error"] and "s3://BUCKET" in err["error"], err
        assert "1 of the 2 nodes" in err["error"] and err["s"] < 60, err
    assert local["runs"] == 0, "the refused sweep created MLflow runs"


@pytest.mark.slow
def test_sqlite_tracking_is_refused_when_the_nodes_are_at_two_addresses(scenario, net):
    """Fault 6 on nodes really apart: refused before any trial, naming the way out."""
    if net["ns"] is None:
        pytest.skip(f"the nodes share one address here: {net['why']}")
    err = scenario[0]["sqlite"]
    assert err.get("type") == "ConfigError", err
    assert "SQLite file on this machine" in err["error"] and "mlflow server" in err["error"]
    assert err["s"] < 60, err


@pytest.mark.slow
def test_s3_trial_checkpoints_in_the_bucket_and_resumes_after_a_lost_node(scenario):
    res, _, listing = scenario
    trials = [r for r in res["runs"] if r["role"] == "trial"]
    assert len(trials) == 1 and trials[0]["status"] == "FINISHED", res["runs"]
    trial = trials[0]
    assert trial["storage"].startswith(f"s3://{BUCKET}/ray?")
    assert sorted(set(trial["epochs"])) == list(range(8)), trial["epochs"]
    assert {"confusion_test.png", "result.json", "model"} <= set(trial["artifacts"])
    killed = res.get("killed")
    assert killed and killed["checkpoints_then"], "the worker node was not killed"
    assert killed["trainers"] and set(killed["trainers"]) <= set(killed["pids"])
    # the node is gone and a new one took its place
    nodes = res["nodes"]
    assert nodes["worker"] not in nodes["alive_after"] and len(nodes["alive_after"]) == 2
    replacement = (set(nodes["alive_after"]) - {nodes["head"]}).pop()
    # each node that trained decoded the table itself (ipb.shared_table), the new one too
    banks = {name.rsplit("-bank-", 1)[1] for name in res["node_banks"]}
    assert banks == {nodes["head"], nodes["worker"], replacement}, (banks, nodes)
    # the restarted worker group loaded a checkpoint from the bucket (no other copy exists)
    assert trial["resumed_from"] is not None, "the restarted workers started from scratch"
    resumed = int(trial["resumed_from"])
    assert 0 <= resumed < 7
    ckpts = {k.split("/checkpoint_")[0] for k in listing
             if "/checkpoint_" in k and f"{BUCKET}/ray/tune/" not in k}
    assert ckpts == {f"{BUCKET}/ray/{trial['name'].removeprefix('SYNTHETIC ')}"}, ckpts
    assert any(k.startswith(f"{BUCKET}/ray/tune/") for k in listing)
    assert any(k.startswith(f"{BUCKET}/mlflow/") for k in listing)


@pytest.mark.slow
def test_rerun_adds_no_mlflow_run(scenario):
    res = scenario[0]
    assert res["runs_after_rerun"] == len(res["runs"]) == 2      # the parent and the trial
    assert res["rerun_s"] < res["sweep_s"]


# ---------------------------------------------------------------- Optuna study storage

def test_study_storage_journal_file_and_sqlalchemy_url(tmp_path):
    import optuna

    from ipb.config import ConfigError, load_config
    from ipb.runtime import study_storage
    journal = tmp_path / "shared" / "optuna.journal"
    for where, kind in ((str(journal), "JournalStorage"),
                        (f"sqlite:///{tmp_path}/study.db", "RDBStorage")):
        cfg = load_config("smoke", [f"sweep.study_storage={where}",
                                    "train.storage=s3://bucket/ray"])
        storage, _ = study_storage(cfg)
        assert type(storage).__name__ == kind
        optuna.create_study(study_name="s", storage=storage).optimize(lambda t: 1.0, 2)
        again, _ = study_storage(cfg)                   # a re-run continues the same study
        assert len(optuna.load_study(study_name="s", storage=again).trials) == 2
    assert journal.is_file()
    with pytest.raises(ConfigError, match=r"sweep.study_storage .*postgresql://"):
        study_storage(load_config("smoke", ["train.storage=s3://bucket/ray"]))
    local, _ = study_storage(load_config("smoke", [f"train.storage={tmp_path}/ray"]))
    assert type(local).__name__ == "RDBStorage" and (tmp_path / "ray" / "optuna.db").is_file()


def test_storage_locations_keep_uris_whole(monkeypatch):
    from ipb.config import expand_location, load_config
    from ipb.runtime import STORAGE_ENV, storage_join, train_storage
    uri = "s3://b/x?endpoint_override=127.0.0.1:9000&scheme=http"
    assert expand_location(uri) == uri
    assert storage_join(uri, "tune") == "s3://b/x/tune?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage_join("/data/ray", "tune") == "/data/ray/tune"
    monkeypatch.setenv(STORAGE_ENV, "gs://lab/ray")
    assert train_storage(load_config("smoke")) == "gs://lab/ray"           # cluster default
    assert train_storage(load_config("smoke", ["train.storage=/nfs/r"])) == "/nfs/r"   # explicit


# ---------------------------------------------------------------- KubeRay manifests

def test_kuberay_manifests_match_the_crd_schemas():
    import jsonschema
    manifests = ray_manifests()
    assert {d["kind"] for _, d in manifests} == {"RayCluster", "RayJob"}
    for name, doc in manifests:
        schema = crd_schema(doc["kind"])
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        assert not errors, f"{name}: {errors}"
        assert not unknown_fields(doc, schema), f"{name}: {unknown_fields(doc, schema)}"


def test_kuberay_manifests_pass_the_operator_rules():
    secrets = documented_secrets()
    for name, doc in ray_manifests():
        errs = (raycluster_rule_errors(doc, secrets) if doc["kind"] == "RayCluster"
                else rayjob_rule_errors(doc))
        assert not errs, f"{name}: {errs}"
    (rc,) = [d for _, d in ray_manifests() if d["kind"] == "RayCluster"]
    assert rc["spec"]["authOptions"]["mode"] == "token" and rc["spec"]["rayVersion"]
    assert rc["spec"]["autoscalerOptions"]["version"] == "v2"
    (job,) = [d for _, d in ray_manifests() if d["kind"] == "RayJob"]
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    token = next(e for e in submitter["env"] if e["name"] == "RAY_AUTH_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": rc["spec"]["authOptions"]["secretName"],
                                                  "key": "auth_token"}


def test_the_checkers_catch_what_the_operator_refuses():
    """The manifests as they were before issue 11, and other refusals: each is caught."""
    import copy

    import jsonschema
    (rc,) = [d for _, d in ray_manifests() if d["kind"] == "RayCluster"]
    (job,) = [d for _, d in ray_manifests() if d["kind"] == "RayJob"]
    secrets = documented_secrets()
    bad_job = copy.deepcopy(job)
    bad_job["spec"]["backoffLimit"] = 1
    assert any("BackoffLimit" in e for e in rayjob_rule_errors(bad_job))
    env_only = copy.deepcopy(rc)
    del env_only["spec"]["authOptions"]
    env_only["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "token"}}})
    assert any("operator cannot reach" in e for e in raycluster_rule_errors(env_only, secrets))
    restart = copy.deepcopy(rc)
    restart["spec"]["workerGroupSpecs"][0]["template"]["spec"]["restartPolicy"] = "Always"
    assert any("restartPolicy" in e for e in raycluster_rule_errors(restart, secrets))
    wrong_key = {k: {"token"} for k in secrets}
    assert any("auth_token" in e for e in raycluster_rule_errors(rc, wrong_key))
    typo = copy.deepcopy(rc)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    assert unknown_fields(typo, crd_schema("RayCluster")) == \
        [".spec.workerGroupSpecs[0].maxReplica"]
    wrong_type = copy.deepcopy(rc)
    wrong_type["spec"]["authOptions"]["mode"] = "tokens"
    assert list(jsonschema.Draft7Validator(crd_schema("RayCluster")).iter_errors(wrong_type))
