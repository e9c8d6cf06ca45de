"""A small checker for KubeRay manifests, offline: the CRD schemas and the operator's extra rules.

    from kuberay_rules import crd_schema, unknown_fields, raycluster_rule_errors, rayjob_rule_errors
    from kuberay_rules import service_accounts, service_account_errors     # our own rule

The rules are those listed in shared/schemas/kuberay-v1.7.0/README.md (the operator's Go
validation, ray-operator/controllers/ray/utils/validation.go at v1.7.0) that matter for a
RayCluster with an autoscaler and a RayJob that runs a sweep; each returns a list of errors.
`service_account_errors` is a rule of this project, not the operator's: every Ray pod has a
bucket identity.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "cluster" / "kuberay"


def schemas_dir() -> Path:
    for cand in (REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0",
                 Path("/work/shared/schemas/kuberay-v1.7.0")):
        if cand.is_dir():
            return cand
    pytest.skip("shared/schemas/kuberay-v1.7.0 is not beside this checkout")


def crd_schema(kind: str) -> dict:
    crd = yaml.safe_load((schemas_dir() / f"ray.io_{kind.lower()}s.yaml").read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Keys the schema does not declare (`kubectl apply` refuses them, the API server would
    drop them silently), as paths."""
    if isinstance(obj, list):
        items = schema.get("items", {})
        return [e for i, v in enumerate(obj) for e in unknown_fields(v, items, f"{path}[{i}]")]
    if not isinstance(obj, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    props = schema.get("properties")
    if props is None:
        extra = schema.get("additionalProperties")
        return [e for k, v in obj.items() for e in unknown_fields(v, extra, f"{path}.{k}")] \
            if isinstance(extra, dict) else []
    errs = []
    for k, v in obj.items():
        errs += unknown_fields(v, props[k], f"{path}.{k}") if k in props else [f"{path}.{k}"]
    return errs


DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def _pods(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec.get("headGroupSpec", {}))] + [
        (g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs", [])]
    return [(name, g.get("template", {}).get("spec", {})) for name, g in groups]


def _env_names(pod: dict) -> set[str]:
    return {e["name"] for c in pod.get("containers", []) for e in c.get("env", [])}


def raycluster_rule_errors(rc: dict, secrets: dict[str, set[str]]) -> list[str]:
    """The operator's rules for a RayCluster (shared/schemas/kuberay-v1.7.0/README.md).
    `secrets`: Secret name -> its data keys, as created by the documented commands."""
    spec, errs = rc["spec"], []
    name = rc["metadata"]["name"]
    if not DNS1035.fullmatch(name) or len(name) > 63:
        errs.append(f"name {name!r} is not a DNS-1035 label of at most 63 characters")
    auto = spec.get("enableInTreeAutoscaling", False)
    v2 = spec.get("autoscalerOptions", {}).get("version") == "v2"
    if v2 and not auto:
        errs.append("autoscalerOptions.version v2 needs enableInTreeAutoscaling: true")
    for group, pod in _pods(spec):
        if not pod.get("containers"):
            errs.append(f"{group}: no container")
        if v2 and pod.get("restartPolicy", "Never") != "Never":
            errs.append(f"{group}: restartPolicy must be Never or unset with autoscaler v2")
        if "RAY_enable_autoscaler_v2" in _env_names(pod):
            errs.append(f"{group}: RAY_enable_autoscaler_v2 env with autoscalerOptions.version")
    for g in spec.get("workerGroupSpecs", []):
        lo, hi = g.get("minReplicas"), g.get("maxReplicas")
        if not auto and (lo is None or hi is None):
            errs.append(f"{g['groupName']}: min/maxReplicas needed without autoscaling")
        if any(v is not None and v < 0 for v in (lo, hi, g.get("replicas"))) or \
                (lo is not None and hi is not None and lo > hi):
            errs.append(f"{g['groupName']}: replicas negative or minReplicas > maxReplicas")
        if g.get("idleTimeoutSeconds") is not None and not v2:
            errs.append(f"{g['groupName']}: idleTimeoutSeconds needs autoscaler v2")
    for group, g in [("head", spec["headGroupSpec"])] + [
            (g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]:
        if g.get("resources") and set(g["resources"]) & {
                "num-cpus", "num-gpus", "memory", "resources"} & set(g.get("rayStartParams", {})):
            errs.append(f"{group}: resources both in rayStartParams and resources")
    auth = spec.get("authOptions", {})
    token_env = any("RAY_AUTH_TOKEN" in _env_names(p) for _, p in _pods(spec))
    if auth.get("mode") == "token":
        major_minor = tuple(int(x) for x in spec.get("rayVersion", "0.0").split(".")[:2])
        if major_minor < (2, 52):
            errs.append("authOptions token mode needs rayVersion >= 2.52.0")
        secret = auth.get("secretName")
        if secret and "auth_token" not in secrets.get(secret, set()):
            errs.append(f"authOptions.secretName {secret!r}: no Secret with key auth_token")
        if token_env:
            errs.append("RAY_AUTH_TOKEN in pod env as well as authOptions (the operator sets it)")
    elif token_env:
        errs.append("token passed only as pod env: the operator cannot reach the dashboard; "
                    "use spec.authOptions")
    return errs


def rayjob_rule_errors(job: dict) -> list[str]:
    spec, errs = job["spec"], []
    if not DNS1035.fullmatch(job["metadata"]["name"]):
        errs.append("name is not a DNS-1035 label")
    selector = "clusterSelector" in spec
    if selector == ("rayClusterSpec" in spec):
        errs.append("exactly one of rayClusterSpec and clusterSelector")
    mode = spec.get("submissionMode", "K8sJobMode")
    backoff = spec.get("backoffLimit")
    if backoff is not None and backoff < 0:
        errs.append("backoffLimit is negative")
    if backoff and (selector or mode == "InteractiveMode"):
        errs.append("BackoffLimit is incompatible with ClusterSelector mode / InteractiveMode")
    if selector:
        if not spec["clusterSelector"].get("ray.io/cluster"):
            errs.append("clusterSelector names no cluster")
        if mode == "SidecarMode":
            errs.append("clusterSelector is not supported with SidecarMode")
        if spec.get("suspend"):
            errs.append("ClusterSelector mode cannot be suspended")
        if "deletionStrategy" in spec:
            errs.append("ClusterSelector mode: no deletion strategy")
    if mode == "SidecarMode" and ({"submitterPodTemplate", "submitterConfig"} & set(spec)):
        errs.append("SidecarMode refuses submitterPodTemplate / submitterConfig")
    if spec.get("shutdownAfterJobFinishes") is False and "ttlSecondsAfterFinished" in spec:
        errs.append("ttlSecondsAfterFinished without shutdownAfterJobFinishes")
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if key in spec and spec[key] <= 0:
            errs.append(f"{key} must be positive")
    return errs


def documented_secrets() -> dict[str, set[str]]:
    """Secrets the documented `kubectl create secret generic NAME --from-literal=KEY=...`
    commands make (cluster/README.md and the manifests' headers)."""
    text = "\n".join(p.read_text() for p in [REPO / "cluster" / "README.md",
                                               *sorted(KUBERAY.glob("*.yaml"))])
    out: dict[str, set[str]] = {}
    for name, literals in re.findall(r"create secret generic (\S+)((?: --from-literal=\w+)+)",
                                     text):
        out.setdefault(name, set()).update(re.findall(r"--from-literal=(\w+)", literals))
    return out


def kuberay_docs() -> list[tuple[str, dict]]:
    """(file name, document) for every document of cluster/kuberay/*.yaml."""
    return [(p.name, d) for p in sorted(KUBERAY.glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]


def ray_manifests() -> list[tuple[str, dict]]:
    return [(n, d) for n, d in kuberay_docs() if d.get("apiVersion") == "ray.io/v1"]


# The annotations that bind a Kubernetes ServiceAccount to a cloud identity: EKS IAM roles for
# service accounts, GKE Workload Identity.
IDENTITY_ANNOTATIONS = ("eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account")


def service_accounts() -> dict[str, dict[str, str]]:
    """ServiceAccount name -> its annotations, for those the manifests create."""
    return {d["metadata"]["name"]: d["metadata"].get("annotations") or {}
            for _, d in kuberay_docs() if d.get("kind") == "ServiceAccount"}


def service_account_errors(doc: dict, accounts: dict[str, dict[str, str]]) -> list[str]:
    """Not an operator rule but ours: every Ray pod (head and each worker group of a RayCluster,
    or of a RayJob's own rayClusterSpec) reads and writes the bucket, so it must run as a
    ServiceAccount that the manifests create and that carries a cloud identity annotation;
    without serviceAccountName a pod runs as the namespace's `default`, which has none."""
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec")
    if not spec:
        return []              # a RayJob on an existing cluster: that cluster's pods count
    errs = []
    for group, pod in _pods(spec):
        name = pod.get("serviceAccountName")
        if not name:
            errs.append(f"{group}: no serviceAccountName (the pod would run as `default`, "
                        "with no bucket identity)")
        elif name not in accounts:
            errs.append(f"{group}: serviceAccountName {name!r} is not a ServiceAccount of "
                        f"cluster/kuberay/*.yaml (there: {sorted(accounts)})")
        elif not set(IDENTITY_ANNOTATIONS) & set(accounts[name]):
            errs.append(f"{group}: ServiceAccount {name!r} has none of the annotations "
                        f"{IDENTITY_ANNOTATIONS} that give it a cloud identity")
    return errs
