"""Cluster configs and cluster behaviour that can be checked without a cloud account.

    .venv/bin/pytest -q tests/test_cluster.py          # about 2-3 minutes on 2 cores

Offline checks of cluster/ (launcher YAMLs through Ray's own defaults filling and schema,
KubeRay manifests, the image's Dockerfile), then two real local clusters, each driven by a
script in a subprocess so that it never meets a Ray session of the pytest process:
- autoscaling with Ray's fake multi-node provider: trials that need more CPUs than the head has
  make the autoscaler add a worker node, which it removes again after the idle timeout;
- a head and a worker started with `ray start --address`, and a DDP TorchTrainer spanning both.
Both clusters run on 127.0.0.1 with their own temp dir, ports and auth token, and are stopped
by process id.
"""
from __future__ import annotations

import copy
import json
import re
import socket
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from raycluster import PRELUDE, run_script

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
RAY_VERSION = ray.__version__


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _pyproject_deps() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def _ray_pin() -> str:
    """'2.60' from the pyproject pin ray[...]==2.60.*"""
    pin = next(d for d in _pyproject_deps() if re.match(r"ray\[", d))
    m = re.search(r"==\s*(\d+\.\d+)\.\*", pin)
    assert m, f"pyproject.toml: ray pin {pin!r} is not of the form ==X.Y.*"
    return m.group(1)


# ---------------------------------------------------------------- launcher YAMLs (ray up)

@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_ray_schema_offline(name, monkeypatch):
    from ray.autoscaler._private.util import prepare_config, validate_config
    raw = yaml.safe_load((CLUSTER / name).read_text())
    # prepare_config only reads the provider's defaults.yaml shipped in the wheel; the steps of
    # `ray up` that need a cloud SDK and credentials (bootstrap_aws/gcp) come after it.
    _no_network(monkeypatch)
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)

    # Every key of the file survives defaults filling (no shallow-merge surprise).
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in raw, f"cluster/{name}: set {key!r} explicitly (defaults install nightly Ray)"
    assert config["setup_commands"] == [] and config["worker_setup_commands"] == [], \
        f"cluster/{name}: nothing may be installed at node start; put it in the image"
    assert 0 < config["idle_timeout_minutes"] <= 30
    assert config["docker"]["image"].endswith(f":ray{RAY_VERSION}-py311-gpu")

    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpus = sorted({w["resources"].get("GPU", 0) for w in workers.values()})
    assert gpus == [1, 8], f"cluster/{name}: want 1-GPU and 8-GPU worker types, got {gpus}"
    for wname, w in workers.items():
        assert w["min_workers"] == 0 and w["max_workers"] >= 1, wname
    assert not _is_spot(config["provider"]["type"], head["node_config"]), \
        "the head must be on-demand"
    for size in gpus:      # spot first for every size (its on-demand twin: a test below)
        assert any(_is_spot(config["provider"]["type"], w["node_config"])
                   for w in workers.values() if w["resources"].get("GPU") == size), size

    head_cmds = " ".join(config["head_start_ray_commands"])
    store = "s3://" if config["provider"]["type"] == "aws" else "gs://"
    assert re.search(r"mlflow server .*--backend-store-uri sqlite:////\S+ "
                     rf".*--artifacts-destination {store}", head_cmds)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert "export MLFLOW_TRACKING_URI=http://" in start.split("ray start")[0], \
            f"cluster/{name}: {key} must export MLFLOW_TRACKING_URI before `ray start`"
    assert "$RAY_HEAD_IP:5000" in " ".join(config["worker_start_ray_commands"])
    # checkpoints and Tune results in the bucket on every node; the study on the head's disk
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c).split("ray start")[0]
        assert re.search(rf"export IPB_TRAIN_STORAGE={store}my-ipb-bucket/", start), key
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    journal = re.search(r"export IPB_STUDY_STORAGE=(/home/ray/state/\S+);", head_start)
    assert journal and "/home/ray/state" in " ".join(config["docker"]["head_run_options"])
    for tname, t in types.items():
        node = t["node_config"]
        if config["provider"]["type"] == "aws":
            # Ray's default AMI (Ubuntu 18.04 DLAMI, CUDA 11.2) is too old for the image
            assert node.get("ImageId", "").startswith("ami-") and \
                node["ImageId"].lower() != "latest_dlami", tname
        elif "scheduling" in node:
            assert isinstance(node["scheduling"], dict), "GCP scheduling is a mapping"
            # Spot VMs are provisioningModel SPOT; the legacy `preemptible` is not used
            assert "preemptible" not in node["scheduling"], tname
            assert node["scheduling"]["provisioningModel"] in ("SPOT", "STANDARD"), tname
            assert node["scheduling"]["onHostMaintenance"] == "TERMINATE", tname  # GPU VMs
            assert node["scheduling"]["automaticRestart"] is False, tname


def _is_spot(provider: str, node_config: dict) -> bool:
    if provider == "aws":
        return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling") or {}
    return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


def _prepared(name, monkeypatch) -> dict:
    from ray.autoscaler._private.util import prepare_config
    _no_network(monkeypatch)
    return prepare_config(yaml.safe_load((CLUSTER / name).read_text()))


def _workers(config) -> dict:
    return {k: v for k, v in config["available_node_types"].items()
            if k != config["head_node_type"]}


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_spot_worker_type_has_an_on_demand_twin(name, monkeypatch):
    """When the region has no spot capacity, the autoscaler must have somewhere else to go:
    beside each spot type an on-demand type with the same resources and machine, of lower
    `priority` (Ray 2.60's autoscaler v2, the default of `ray up`, prefers the higher one) and
    a smaller name (autoscaler v1 ignores priority and takes the larger name on a tie)."""
    config = _prepared(name, monkeypatch)
    provider = config["provider"]["type"]
    workers = _workers(config)
    machine = "InstanceType" if provider == "aws" else "machineType"
    spot = {k: w for k, w in workers.items() if _is_spot(provider, w["node_config"])}
    assert spot, f"cluster/{name}: no spot worker type"
    for sname, s in spot.items():
        twins = [k for k, w in workers.items() if k not in spot
                 and w["resources"] == s["resources"]
                 and w["node_config"][machine] == s["node_config"][machine]]
        assert twins, (f"cluster/{name}: spot type {sname!r} has no on-demand twin (same "
                       f"resources and {machine}); add one of lower priority")
        for t in twins:
            assert workers[t].get("priority", 0) < s.get("priority", 0), \
                f"cluster/{name}: {t!r} must have a lower priority than {sname!r}"
            assert t < sname, f"cluster/{name}: {t!r} must sort before {sname!r} (autoscaler v1)"
            assert workers[t]["min_workers"] == 0
            rest = {k: v for k, v in s["node_config"].items()
                    if k not in ("InstanceMarketOptions", "scheduling")}
            assert {k: v for k, v in workers[t]["node_config"].items() if k != "scheduling"} \
                == rest, f"cluster/{name}: {t!r} differs from {sname!r} beyond the market"


README_TEXT = (CLUSTER / "README.md").read_text()


@pytest.mark.parametrize("name", LAUNCHERS)
def test_workers_have_their_own_documented_cloud_identity(name, monkeypatch):
    """Workers must not run as the head's autoscaler identity: Ray creates that one for the
    head only (AWS: launching with it needs iam:PassRole, which Ray's head role lacks; GCP: it
    holds compute.admin). Each worker identity is named in cluster/README.md, with what it may
    do, and on AWS with the head's iam:PassRole on it."""
    # what `ray up` makes for the head (ray/autoscaler/_private/{aws,gcp}/config.py; not
    # imported: the GCP module needs the Google client libraries)
    DEFAULT_RAY_INSTANCE_PROFILE, DEFAULT_SERVICE_ACCOUNT_ID = "ray-autoscaler-v1", \
        "ray-autoscaler-sa-v1"
    config = _prepared(name, monkeypatch)
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    for wname, w in _workers(config).items():
        node = w["node_config"]
        if config["provider"]["type"] == "aws":
            profile = node.get("IamInstanceProfile", {})
            ident = profile.get("Name") or profile.get("Arn", "").rsplit("/", 1)[-1]
            head_profile = head.get("IamInstanceProfile", {}).get("Name",
                                                                  DEFAULT_RAY_INSTANCE_PROFILE)
            reused = ident in (DEFAULT_RAY_INSTANCE_PROFILE, head_profile)
        else:
            emails = [a["email"] for a in node.get("serviceAccounts", [])]
            assert len(emails) == 1, f"cluster/{name}: {wname}: one service account, not {emails}"
            ident = emails[0].split("@")[0]
            reused = ident == DEFAULT_SERVICE_ACCOUNT_ID or \
                emails == [a["email"] for a in head.get("serviceAccounts", [])]
        assert ident, f"cluster/{name}: worker type {wname!r} has no cloud identity for the bucket"
        assert not reused, (f"cluster/{name}: worker type {wname!r} reuses the head's "
                            f"autoscaler identity {ident!r}; give workers their own")
        assert re.search(rf"\|[^\n]*`{re.escape(ident)}`[^\n]*\|", README_TEXT), \
            f"cluster/README.md: no row of the identity table for {ident!r}"
        if config["provider"]["type"] == "aws":
            assert re.search(rf"iam:PassRole[^\n]*{re.escape(ident)}", README_TEXT), \
                f"cluster/README.md: the head's iam:PassRole on {ident!r} is not documented"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_says_the_cluster_can_grow(name, monkeypatch):
    """At a sweep's start an autoscaling cluster is its head alone; every node's `ray start`
    exports IPB_CLUSTER_MAX_WORKERS with what the autoscaler may add, so ipb's guards refuse
    storage and tracking URIs that other nodes would not reach (ipb/runtime.py)."""
    from ipb.runtime import MAX_WORKERS_ENV, launcher_max_workers
    config = _prepared(name, monkeypatch)
    want = launcher_max_workers(config)
    assert want == 9
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c).split("ray start")[0]
        m = re.search(rf"export {MAX_WORKERS_ENV}=(\d+);", start)
        assert m and int(m.group(1)) == want, \
            f"cluster/{name}: {key} must export {MAX_WORKERS_ENV}={want} before `ray start`"


# ---------------------------------------------------------------- KubeRay manifests

def _kuberay(name):
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]
    assert docs, f"cluster/kuberay/{name} is empty"
    return docs


def _containers(pod_template):
    return pod_template["spec"]["containers"]


def test_raycluster_manifest():
    (rc,) = _kuberay("raycluster.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = rc["spec"]
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True
    head = _containers(spec["headGroupSpec"]["template"])
    groups = spec["workerGroupSpecs"]
    for c in head + [c for g in groups for c in _containers(g["template"])]:
        assert c["image"].rsplit(":", 1)[1] == f"ray{RAY_VERSION}-py311-gpu", c["image"]
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http://mlflow"), c["name"]
    for c in head:
        res = c.get("resources", {})
        assert "nvidia.com/gpu" not in res.get("limits", {}) | res.get("requests", {})
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpus = []
    for g in groups:
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1, g["groupName"]
        (c,) = _containers(g["template"])
        lim, req = c["resources"]["limits"], c["resources"]["requests"]
        assert lim["nvidia.com/gpu"] == req["nvidia.com/gpu"] >= 1, g["groupName"]
        gpus.append(lim["nvidia.com/gpu"])
    assert sorted(gpus) == [1, 8]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_trial_drivers_have_a_home_off_the_spot_nodes(name, monkeypatch):
    """Issue 19 fault 4: a lost spot node took the trial's driver (and its Train controller
    and MLflow run) with it. The head, never spot, advertises the resource that a Train
    trial's driver asks for (ipb/sweep.py trial_resources); no worker type advertises it."""
    from ipb.sweep import DRIVER_RESOURCE
    config = _prepared(name, monkeypatch)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get(DRIVER_RESOURCE, 0) >= 100, f"cluster/{name}: head"
    for k, w in _workers(config).items():
        assert DRIVER_RESOURCE not in w["resources"], f"cluster/{name}: {k}"


def test_kuberay_head_is_the_home_of_trial_drivers():
    from ipb.sweep import DRIVER_RESOURCE
    (rc,) = _kuberay("raycluster.yaml")
    params = rc["spec"]["headGroupSpec"]["rayStartParams"]
    # the operator passes it to `ray start --resources=...`: a JSON object in quotes
    assert json.loads(json.loads(params["resources"]))[DRIVER_RESOURCE] >= 100
    for g in rc["spec"]["workerGroupSpecs"]:
        assert DRIVER_RESOURCE not in g.get("rayStartParams", {}).get("resources", "")


def test_trials_ask_for_the_driver_home_and_are_retried_after_a_lost_node():
    from ipb.config import load_config
    from ipb.sweep import DRIVER_RESOURCE, trial_resources, tune_run_config
    cfg = load_config("paper")
    assert trial_resources(cfg, pinned=True)[DRIVER_RESOURCE] > 0
    assert DRIVER_RESOURCE not in trial_resources(cfg)         # a local Ray has no such home
    rc = tune_run_config("x", cfg, [])
    assert rc.failure_config.max_failures == cfg.train.max_failures > 0


def test_kuberay_head_state_survives_the_head_pod():
    """Issue 19 fault 7: the head was a single point of failure. The RayCluster keeps its GCS
    state in the Redis of redis.yaml (its Service, its port), whose password is a Secret the
    documented commands create."""
    from kuberay_rules import documented_secrets, kuberay_docs
    (rc,) = _kuberay("raycluster.yaml")
    ft = rc["spec"]["gcsFaultToleranceOptions"]
    m = re.fullmatch(r"redis://([\w-]+):(\d+)", ft["redisAddress"])
    assert m, ft["redisAddress"]
    services = {d["metadata"]["name"]: d for n, d in kuberay_docs() if d["kind"] == "Service"}
    assert m.group(1) in services, f"no Service {m.group(1)!r} in cluster/kuberay"
    assert int(m.group(2)) in [p["port"] for p in services[m.group(1)]["spec"]["ports"]]
    ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in documented_secrets().get(ref["name"], set()), ref
    assert "redis-password" not in rc["spec"]["headGroupSpec"]["rayStartParams"]


def test_rayjob_manifest_runs_an_existing_sweep_script():
    (job,) = _kuberay("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    (rc,) = _kuberay("raycluster.yaml")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]
    entry = job["spec"]["entrypoint"]
    m = re.search(r"python (\S*?)(sweeps/\w+\.py)", entry)
    assert m, f"rayjob entrypoint {entry!r} does not run a sweeps/*.py script"
    assert m.group(2) == "sweeps/ablation.py"
    assert (REPO / m.group(2)).is_file(), f"rayjob runs {m.group(2)}, which is not in the repo"
    assert "--profile paper" in entry and "--data $IPB_BUCKET/" in entry
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://mlflow")
    # the submitter's shell expands $IPB_BUCKET, so it has the variable from the ConfigMap
    (sub,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert any(e["name"] == "IPB_BUCKET" and e["valueFrom"]["configMapKeyRef"]["name"] ==
               "ipb-bucket" for e in sub["env"])


def test_every_ray_pod_has_a_bucket_identity():
    """Ray pods read the table and write checkpoints in the bucket: each names a ServiceAccount
    that the manifests create, with an IRSA / Workload Identity annotation
    (tests/kuberay_rules.py), which cluster/README.md documents with read and write."""
    from kuberay_rules import ray_manifests, service_account_errors, service_accounts
    accounts = service_accounts()
    for fname, doc in ray_manifests():
        errs = service_account_errors(doc, accounts)
        assert not errs, f"cluster/kuberay/{fname}: {errs}"
    (rc,) = [d for _, d in ray_manifests() if d["kind"] == "RayCluster"]
    name = rc["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    assert re.search(rf"\|[^\n]*`{name}`[^\n]*read and write", README_TEXT), \
        f"cluster/README.md: the identity table must give {name!r} read and write"
    assert "service account needs read access for the data" not in README_TEXT


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_kuberay_bucket_is_one_value():
    """EKS wants s3://, GKE gs://: the manifests name the bucket once (ConfigMap ipb-bucket,
    key uri), every other place reads it through IPB_BUCKET, and the README's instructions
    switch that one value."""
    from kuberay_rules import kuberay_docs
    docs = kuberay_docs()
    cms = [d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] ==
           "ipb-bucket"]
    assert len(cms) == 1, "cluster/kuberay: want one ConfigMap ipb-bucket (key uri: the bucket)"
    (cm,) = cms
    assert re.fullmatch(r"(s3|gs)://[\w.-]+", cm["data"]["uri"])
    for fname, d in docs:
        if d is cm:
            continue
        hard = [v for v in _strings(d) if re.search(r"\b(s3|gs)://", v)]
        assert not hard, f"cluster/kuberay/{fname}: bucket URI written out: {hard}"
        for tmpl in [d.get("spec", {}).get("template")] + \
                [g["template"] for g in _ray_groups(d)]:
            for c in (tmpl or {}).get("spec", {}).get("containers", []):
                names = [e["name"] for e in c.get("env", [])]
                used = "$(IPB_BUCKET)" in json.dumps(c)
                if used:   # Kubernetes expands $(VAR) only from variables defined before
                    assert "IPB_BUCKET" in names and all(
                        "$(IPB_BUCKET)" not in json.dumps(e) for e in
                        c["env"][:names.index("IPB_BUCKET")]), f"{fname}: {c['name']}"
    uri = re.escape(cm["data"]["uri"])
    assert re.search(rf"sed -i \S*\"s#{uri}#\$\w+#\"\s+cluster/kuberay/bucket\.yaml",
                     README_TEXT), "cluster/README.md: no sed that sets the bucket's URI"


def _ray_groups(doc) -> list[dict]:
    spec = doc.get("spec", {}) if doc.get("kind") == "RayCluster" else {}
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])] if spec else []


def test_kuberay_cluster_says_it_can_grow():
    """IPB_CLUSTER_MAX_WORKERS on every Ray pod equals what the worker groups may reach."""
    from ipb.runtime import MAX_WORKERS_ENV
    (rc,) = _kuberay("raycluster.yaml")
    spec = rc["spec"]
    want = sum(g["maxReplicas"] for g in spec["workerGroupSpecs"])
    for g in _ray_groups(rc):
        (c,) = [c for c in _containers(g["template"]) if c["name"].startswith("ray-")]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get(MAX_WORKERS_ENV) == str(want), (g.get("groupName", "head"), env)


def test_mlflow_manifest():
    docs = {d["kind"]: d for d in _kuberay("mlflow.yaml")}
    assert {"PersistentVolumeClaim", "Deployment", "Service"} <= set(docs)
    dep = docs["Deployment"]
    assert dep["apiVersion"] == "apps/v1" and dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = " ".join(c["command"] + c["args"])
    assert "mlflow server" in args and "--backend-store-uri=sqlite:////mlflow/" in args
    claim = dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    svc = docs["Service"]
    assert svc["metadata"]["name"] == "mlflow" and svc["spec"]["ports"][0]["port"] == 5000
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


# ---------------------------------------------------------------- image

def test_dockerfile_installs_the_pinned_package():
    text = (CLUSTER / "image" / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    base = next(ln for ln in lines if ln.startswith("FROM "))
    m = re.fullmatch(r"FROM rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu", base)
    assert m, f"Dockerfile base {base!r} is not rayproject/ray:X.Y.Z-py311-gpu"
    assert m.group(1).startswith(_ray_pin() + "."), (m.group(1), _ray_pin())
    assert m.group(1) == RAY_VERSION
    # `pip install .` after copying pyproject.toml installs every dependency with its pin.
    assert re.search(r"COPY\s.*\bpyproject\.toml\b", text)
    assert re.search(r"COPY\s.*\bipb\b", text)
    assert re.search(r"pip install [^\n]*\s\.\s", text), "Dockerfile must `pip install .`"
    # torch comes from the CUDA index first; its pins must equal pyproject's.
    for dep in _pyproject_deps():
        if dep.startswith(("torch==", "torchvision==")):
            assert f'"{dep}"' in text, f"Dockerfile does not pin {dep} like pyproject.toml"
    ignore = (CLUSTER / "image" / "Dockerfile.dockerignore").read_text().split()
    for pattern in (".git", ".venv", "mlflow.db", "**/__pycache__"):
        assert pattern in ignore, f"Dockerfile.dockerignore must exclude {pattern}"


# ---------------------------------------------------------------- local clusters

AUTOSCALE = PRELUDE + r'''
from ray import tune
port = free_port()
ip = "127.0.0.1"     # every node on loopback: nothing listens beyond this machine
config = {  # the fake provider's example.yaml, which the 2.60 wheel does not ship
    "cluster_name": "ipb-fake", "max_workers": 1, "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                 "disable_node_updaters": True, "disable_launch_config_check": True,
                 "gcs_address": f"{ip}:{port}"},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
        "ray.worker.cpu2": {"resources": {"CPU": 2, "object_store_memory": 100 * 2**20},
                            "node_config": {}, "min_workers": 0, "max_workers": 1}},
    "head_node_type": "ray.head.default", "auth": {}, "docker": {},
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
    "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": []}
cfg = os.path.join(ROOT, "autoscaling.json")
json.dump(config, open(cfg, "w"))
events, done = [], threading.Event()
try:
    # AutoscalingCluster.start() would run `ray stop --force` (every Ray on the machine), so
    # the head is started here the way it does, minus that.
    start(["--head", f"--node-ip-address={ip}", f"--port={port}", "--num-cpus=1",
           f"--temp-dir={ROOT}", f"--autoscaling-config={cfg}", "--include-dashboard=false",
           f"--ray-client-server-port={free_port()}"], "head",
          env=dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1"))
    connect(f"{ip}:{port}")
    print(f"{stamp()} head up: {len(ray.nodes())} node, {ray.cluster_resources()['CPU']} CPU",
          flush=True)

    def watch():
        seen = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        while not done.is_set():
            alive = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
            for nid in alive.keys() - seen:
                events.append(["added", nid, round(time.monotonic() - T0, 1)])
                print(f"{stamp()} AUTOSCALER node added   {nid[-5:]} "
                      f"CPU={alive[nid]['Resources'].get('CPU')}", flush=True)
            for nid in seen - alive.keys():
                events.append(["removed", nid, round(time.monotonic() - T0, 1)])
                print(f"{stamp()} AUTOSCALER node removed {nid[-5:]}", flush=True)
            seen = set(alive)
            time.sleep(0.5)
    threading.Thread(target=watch, daemon=True).start()

    def trial(config):
        time.sleep(3)
        tune.report({"score": config["x"] * 2,
                     "node": ray.get_runtime_context().get_node_id()})

    results = tune.Tuner(
        tune.with_resources(trial, {"CPU": 2}),   # the head has 1 CPU: needs a new node
        param_space={"x": tune.grid_search([1, 2])},
        run_config=tune.RunConfig(storage_path=os.path.join(ROOT, "tune"), name="fake",
                                  verbose=0)).fit()
    print(f"{stamp()} trials finished, errors={results.num_errors}", flush=True)
    deadline = time.monotonic() + 90
    while not any(e[0] == "removed" for e in events) and time.monotonic() < deadline:
        time.sleep(1)
    done.set()
    print("RESULT " + json.dumps({
        "errors": results.num_errors, "scores": sorted(r.metrics["score"] for r in results),
        "trial_nodes": sorted({r.metrics["node"] for r in results}),
        "head": ray.get_runtime_context().get_node_id(), "events": events}), flush=True)
finally:
    done.set()
    stop_all()
'''

TWO_NODES = PRELUDE + r'''
port = free_port()
ip = "127.0.0.1"     # both nodes on loopback: nothing listens beyond this machine
try:
    start(["--head", f"--node-ip-address={ip}", f"--port={port}", "--num-cpus=1",
           f"--temp-dir={ROOT}/head", "--include-dashboard=false",
           f"--ray-client-server-port={free_port()}"], "head")
    connect(f"{ip}:{port}")
    start([f"--address={ip}:{port}", f"--node-ip-address={ip}", "--num-cpus=1",
           f"--temp-dir={ROOT}/worker"], "worker")
    deadline = time.monotonic() + 90
    while len([n for n in ray.nodes() if n["Alive"]]) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in PROCS), ROOT
        time.sleep(0.5)
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    print(f"{stamp()} two nodes up", flush=True)

    from ray import train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config):
        import torch
        import torch.distributed as dist
        model = train.torch.prepare_model(torch.nn.Linear(4, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rank = train.get_context().get_world_rank()
        g = torch.Generator().manual_seed(rank)   # different data per rank
        for _ in range(3):
            loss = model(torch.randn(8, 4, generator=g)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        w = next(model.parameters()).detach().clone()
        ws = [torch.zeros_like(w) for _ in range(dist.get_world_size())]
        dist.all_gather(ws, w)
        with open(os.path.join(config["out"], f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "node": ray.get_runtime_context().get_node_id(),
                       "replicas_equal": all(torch.equal(ws[0], v) for v in ws)}, f)
        train.report({"loss": float(loss)})

    out = os.path.join(ROOT, "ranks")
    os.makedirs(out)
    TorchTrainer(loop, train_loop_config={"out": out},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1},
                                              placement_strategy="STRICT_SPREAD"),
                 run_config=RunConfig(storage_path=os.path.join(ROOT, "train"), name="ddp")
                 ).fit()
    ranks = [json.load(open(os.path.join(out, f))) for f in sorted(os.listdir(out))]
    print(f"{stamp()} DDP done", flush=True)
    print("RESULT " + json.dumps({"nodes": nodes, "ranks": ranks}), flush=True)
finally:
    stop_all()
'''


@pytest.mark.slow
def test_autoscaler_adds_and_removes_a_node(tmp_path):
    res, _ = run_script(tmp_path, "autoscale", AUTOSCALE, timeout=240)
    assert res["errors"] == 0 and res["scores"] == [2, 4]
    added = [e for e in res["events"] if e[0] == "added"]
    removed = [e for e in res["events"] if e[0] == "removed"]
    assert len(added) == 1, res["events"]
    assert res["trial_nodes"] == [added[0][1]] != [res["head"]]
    assert removed and removed[0][1] == added[0][1] and removed[0][2] > added[0][2]


@pytest.mark.slow
def test_ddp_trial_spans_head_and_worker_node(tmp_path):
    res, _ = run_script(tmp_path, "two_nodes", TWO_NODES, timeout=240)
    assert len(res["nodes"]) == 2
    assert sorted(r["node"] for r in res["ranks"]) == res["nodes"]
    assert all(r["replicas_equal"] for r in res["ranks"])
