"""Where runs live: Ray start-up (never a stray cluster by accident) and storage every node reaches.

    python -c "from ipb.runtime import init_ray; init_ray()"

`train.storage` (Ray Train checkpoints, Tune results) is a URI (s3://bucket/prefix, gs://...,
with pyarrow's query options such as ?endpoint_override=host:port&scheme=http for an
S3-compatible server) or a path. On one machine any path works; on a cluster a path must be on
a file system every node mounts, which `check_storage` verifies before a run starts: with more
than one node alive by a marker every node must see, and on a cluster that may still add nodes
(an autoscaling cluster is its head alone when a sweep starts) by refusing a path on a local
disk. The tracking URI must be one every node reaches too (`check_tracking`). The Optuna study lives where `sweep.study_storage` says (`study_storage`). Cluster
configs set both for every node with IPB_TRAIN_STORAGE / IPB_STUDY_STORAGE, which an explicit
setting overrides (as MLFLOW_TRACKING_URI does for tracking.uri).
"""
from __future__ import annotations

import ipaddress
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from ipb.config import Config, ConfigError, expand_location, expand_path, is_uri

# Ray Train settings for an embedded single-machine Ray (a user's own value wins). Measured on
# 2 cores: a trial's start-up and end cost 4-5 s less (benchmarks/sweep.py).
LOCAL_TRAIN_ENV = {
    # the watcher is an extra actor process per trial, polling for spot-node drains that a
    # laptop never has (clusters keep it: their GPU workers are spot/preemptible)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # the controller notices a finished worker group at its next poll: 2 s by default
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


# warnings Ray prints into every command's output that ask nothing of the user:
QUIET_LOGGERS = (
    # "Token authentication is enabled": Ray 2.60's right choice for a local cluster. Setting
    # RAY_AUTH_MODE=token instead breaks a start once ray is imported (its cached config stays
    # 'disabled' while the GCS it starts expects a token)
    "ray._private.authentication.authentication_token_setup",
    # "Progress bars disabled": they are, on purpose (init_ray sets RAY_DATA_DISABLE_PROGRESS_BARS;
    # ingest prints one line per shard)
    "ray.data._internal.progress",
)


def init_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True):
    """Connect to RAY_ADDRESS / `address` when given (a cluster, e.g. inside `ray job submit`),
    else start an embedded local Ray (`address="local"`) that stops with this process."""
    import ray

    if ray.is_initialized():
        return ray
    # Ray Data's bars (ingest, from every task) drown our one line per shard
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kw = dict(address=address, ignore_reinit_error=True, log_to_driver=not quiet,
              configure_logging=True, logging_level="WARNING",
              # Ray's own INFO lines from every actor would bury our one line per epoch
              logging_config=ray.LoggingConfig(log_level="WARNING"))
    if address == "local":
        # the dashboard process also serves the State API that Ray Train's cleanup polls;
        # every worker of this job learns its own Ray's address (own_ray_address)
        kw.update(num_cpus=num_cpus,
                  runtime_env={"worker_process_setup_hook": f"{__name__}.own_ray_address"})
        for key, value in LOCAL_TRAIN_ENV.items():
            os.environ.setdefault(key, value)    # inherited by every process Ray starts
    import logging
    for name in QUIET_LOGGERS:       # before ray.init, which prints the first of them
        logging.getLogger(name).setLevel(logging.ERROR)
    start_local(ray, **kw)
    if address == "local":
        own_ray_address()
        from ipb.console import quiet_worker_count_warning
        quiet_worker_count_warning()
    import threading
    if threading.current_thread() is threading.main_thread():
        from ipb import stop
        stop.install()      # after ray.init, whose C++ handler dumps a stack on SIGTERM
    return ray


def own_ray_address():
    """RAY_ADDRESS := the Ray this process is connected to. In the driver and, as the local
    job's worker_process_setup_hook, in every Ray worker: whatever they ask "which Ray?" without
    an address (Ray Train's PlacementGroupCleaner polls the State API so) gets its own, not
    "ConnectionError: Found multiple active Ray instances" when another local Ray runs on the
    machine, e.g. a study and a quick sweep side by side. Set after the start: before
    it, RAY_ADDRESS would make ray.init connect instead of start. An empty RAY_ADDRESS (how a
    caller says "not the cluster I run in") counts as unset."""
    import ray
    if not os.environ.get("RAY_ADDRESS"):
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def start_local(ray, attempts: int = 3, **kw):
    """ray.init, retried: Ray gives a starting raylet a fixed 30 s, which a loaded 2-core
    machine can overrun ("The current node timed out during startup")."""
    for attempt in range(1, attempts + 1):
        try:
            return ray.init(**kw)
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            ray.shutdown()
            print(f"Ray start-up timed out (attempt {attempt}/{attempts}), retrying",
                  flush=True)


# -- storage ---------------------------------------------------------------------------------

def storage_join(location: str, *parts: str) -> str:
    """`location`/parts, keeping a URI's query: s3://b/x?endpoint_override=H -> s3://b/x/t?..."""
    if not is_uri(location):
        return str(Path(location, *parts))
    base, sep, query = location.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


STORAGE_ENV, STUDY_ENV = "IPB_TRAIN_STORAGE", "IPB_STUDY_STORAGE"


def train_storage(cfg: Config) -> str:
    """`train.storage` for Ray Train / Tune (a URI as given, else the absolute local path): an
    explicit setting wins, then $IPB_TRAIN_STORAGE, then the default (~/ray_results)."""
    default = Config().train.storage
    chosen = cfg.train.storage if cfg.train.storage != default else None
    return expand_location(chosen or os.environ.get(STORAGE_ENV) or default)


def _local_path(location: str) -> str | None:
    """The directory a storage location names on this node's file system; None for object
    storage (s3://, gs://, ...), which every node reaches over the network."""
    if not is_uri(location):
        return location
    if location.startswith("file://"):
        return location[len("file://"):].partition("?")[0]
    return None


def _sees(path: str) -> bool:
    return os.path.exists(path)


# -- the cluster's shape: how many machines a run may span -------------------------------------

# Worker nodes the cluster's autoscaler may add; the cluster configs in cluster/ set it on every
# node, because at a sweep's start an autoscaling cluster is its head alone: the node count says
# nothing about where trials will run.
MAX_WORKERS_ENV = "IPB_CLUSTER_MAX_WORKERS"
# What `ray up` leaves on every head it starts: the resolved launcher config (Ray 2.x).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
# "1": the local train.storage is on a file system every node mounts, which NETWORK_FS misses.
SHARED_ENV = "IPB_SHARED_STORAGE"
# File system types (as /proc/mounts names them) that other machines can mount too.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "fuse.glusterfs", "ceph",
    "fuse.ceph-fuse", "gpfs", "beegfs", "wekafs", "afs", "fuse.gcsfuse", "fuse.s3fs",
    "fuse.mountpoint-s3", "fuse.juicefs", "fuse.sshfs", "fuse.rclone"})


def launcher_max_workers(config: dict) -> int:
    """Worker nodes a Ray cluster launcher config lets the autoscaler run: the global
    `max_workers` capped by the sum of the node types' bounds (a type without one gets the
    global bound, the head's type none, as Ray's own defaults filling does)."""
    total = config.get("max_workers")
    types = config.get("available_node_types") or {}
    if not types:
        return int(total or 0)
    head = config.get("head_node_type")
    per_type = sum(int(t.get("max_workers", 0 if name == head else (total or 0)))
                   for name, t in types.items())
    return min(int(total), per_type) if total is not None else per_type


def cluster_max_workers(environ=None, bootstrap: str = BOOTSTRAP_CONFIG
                        ) -> tuple[int | None, str]:
    """(worker nodes this cluster may add, where that number comes from); (None, "") on a
    machine that says nothing (a laptop, an embedded Ray). Sources: $IPB_CLUSTER_MAX_WORKERS,
    then the launcher config `ray up` put on this head. (Ray 2.60's GCS has a ClusterConfig
    slot for this, but no open-source autoscaler fills it.)"""
    environ = os.environ if environ is None else environ
    raw = environ.get(MAX_WORKERS_ENV, "").strip()
    if raw:
        try:
            return int(raw), f"${MAX_WORKERS_ENV}"
        except ValueError:
            raise ConfigError(
                f"${MAX_WORKERS_ENV}={raw!r} is not a whole number; set it to the most worker "
                "nodes this cluster's autoscaler may add (0 for a single machine) or unset it")
    path = Path(bootstrap).expanduser()
    if path.is_file():
        import yaml
        try:
            config = yaml.safe_load(path.read_text())
            return launcher_max_workers(config), str(path)
        except Exception:      # not a launcher config after all: no evidence either way
            return None, ""
    return None, ""


def _unescape_mount(field: str) -> str:
    """/proc/mounts writes a space in a mount point as \\040 (octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_fs_type(path: str, mounts: str) -> str | None:
    """The type of the file system that holds the absolute `path`, from the text of
    /proc/mounts: the innermost mount point above it (the last one, when a point is mounted
    over twice)."""
    best, best_len = None, -1
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1]).rstrip("/") or "/"
        inside = point == "/" or path == point or path.startswith(point + "/")
        if inside and len(point) >= best_len:
            best, best_len = fields[2], len(point)
    return best


def _fs_type_here(path: str) -> str | None:
    probe = Path(path).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:   # train.storage may not exist yet
        probe = probe.parent
    try:
        return mount_fs_type(os.path.realpath(probe), Path("/proc/mounts").read_text())
    except OSError:          # not Linux: no mount table to read
        return None


def storage_plan(path: str | None, alive_nodes: int, max_workers: int | None,
                 fs_type: str | None, declared_shared: bool = False) -> str:
    """How `check_storage` treats train.storage, from plain facts: "ok" (nothing to check),
    "probe" (every alive node must see a marker written here) or "refuse".
    `path`: the local directory it names (None for object storage); `max_workers`: worker
    nodes the cluster may add (None: unknown, a single machine); `fs_type`: that of `path`."""
    if path is None:
        return "ok"            # object storage: every node reaches it over the network
    if max_workers and not (declared_shared or fs_type in NETWORK_FS):
        # nodes that do not exist yet cannot be probed, and a local disk is never theirs
        return "refuse"
    return "probe" if alive_nodes >= 2 else "ok"


def _storage_advice() -> str:
    return ("Set train.storage to object storage (train.storage=s3://BUCKET/PREFIX or "
            "gs://BUCKET/PREFIX) or to a directory on a file system every node mounts (NFS, "
            f"EFS, Filestore), here or with ${STORAGE_ENV}; see cluster/README.md")


def check_storage(cfg: Config, timeout: float = 120) -> str:
    """`train_storage(cfg)`, after checking that every node of the cluster reaches it, and that
    the tracking URI does (`check_tracking`). A local path is refused up front on a cluster
    whose autoscaler may add nodes, unless it is on a network file system (or $IPB_SHARED_STORAGE
    says it is shared); with more than one node alive it must be the same directory on all of
    them (a marker written here has to be seen by a task on each node). Raises ConfigError
    naming `train.storage` otherwise."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ipb.tracking import tracking_uri

    location = train_storage(cfg)
    path = _local_path(location)
    alive = [n for n in ray.nodes() if n["Alive"]]
    nodes = [n["NodeID"] for n in alive]
    max_workers, source = cluster_max_workers()
    fs_type = _fs_type_here(path) if path is not None and max_workers else None
    plan = storage_plan(path, len(nodes), max_workers, fs_type,
                        os.environ.get(SHARED_ENV, "").strip() == "1")
    if plan == "refuse":
        raise ConfigError(
            f"train.storage={location!r} is a directory on this node's own disk (file system "
            f"{fs_type or 'unknown'}), and this Ray cluster may add up to {max_workers} worker "
            f"nodes ({source}) that share no disk with it: Ray Train workers and Tune trials "
            "there would write checkpoints and results where no other node finds them. "
            f"{_storage_advice()}. If that directory is on a shared file system that this "
            f"check does not recognise, set {SHARED_ENV}=1")
    check_tracking(tracking_uri(cfg), [n["NodeManagerAddress"] for n in alive],
                   max_workers, source)
    if plan == "ok":
        return location
    marker = Path(path, f".ipb-shared-{uuid.uuid4().hex}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    sees = ray.remote(num_cpus=0, max_retries=0)(_sees)
    try:
        seen = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(str(marker)) for node in nodes], timeout=timeout)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ConfigError(
            f"train.storage={location!r} is a directory that {len(blind)} of the "
            f"{len(nodes)} nodes of this Ray cluster cannot see (node {', '.join(blind)}); Ray "
            "Train workers and Tune trials on every node write checkpoints and results there. "
            f"{_storage_advice()}")
    return location


# -- tracking: an MLflow URI every node reaches -----------------------------------------------

def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def tracking_refusal(uri: str, node_ips: list[str], max_workers: int | None,
                     here: str = "HEAD", source: str = "") -> str | None:
    """Why `uri` cannot be the tracking URI of a run on this cluster, or None. A SQLite file
    and a loopback server (http://127.0.0.1:PORT, localhost) exist on this machine only: fine
    while every node is on it (one node, or nodes on 127.0.0.1 as in tests), refused when the
    cluster has nodes on other machines or may add some (`max_workers` > 0). `node_ips`: the
    alive nodes' addresses; `here`: this node's, for the advice."""
    sqlite = uri.startswith("sqlite:")
    if not (sqlite or _loopback(urlsplit(uri).hostname)):
        return None
    # nodes on one machine share its address (two Ray nodes here both say 192.0.2.2)
    elsewhere = len({ip for ip in node_ips if not _loopback(ip)}) >= 2
    if not (elsewhere or max_workers):
        return None
    why = (f"may add up to {max_workers} worker nodes ({source or 'its autoscaler'})"
           if max_workers else f"has {len(node_ips)} nodes ({', '.join(sorted(node_ips))})")
    what = ("a SQLite file on this machine, which trials on other nodes cannot reach (each "
            "would open a database of its own on its own disk, or be handed the local "
            "server's http://127.0.0.1 address, which there is that node itself)" if sqlite
            else "an address of this machine only: on any other node it names that node itself")
    return (f"tracking URI {uri!r} is {what}, and this Ray cluster {why}. Run one MLflow "
            "server that every node reaches, on the head: `mlflow server --host 0.0.0.0 "
            "--port 5000 --workers 1 --backend-store-uri sqlite:////home/ray/mlflow/mlflow.db "
            "--artifacts-destination s3://BUCKET/mlflow-artifacts` (the cluster configs in "
            f"cluster/ start it), and pass --tracking-uri http://{here}:5000 (or tracking.uri=, "
            "MLFLOW_TRACKING_URI) with the head's private IP, never localhost; see "
            "cluster/README.md, 'MLflow: one server, many writers'")


def check_tracking(uri: str, node_ips: list[str] | None = None,
                   max_workers: int | None = None, source: str = "") -> str:
    """`uri`, after refusing one that other nodes of this Ray cluster cannot reach
    (`tracking_refusal`). Without Ray running there is no cluster to refuse it on."""
    import ray
    if not ray.is_initialized():
        return uri
    if node_ips is None:
        node_ips = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        max_workers, source = cluster_max_workers()
    if tracking_refusal(uri, node_ips, max_workers, source=source):
        raise ConfigError(tracking_refusal(uri, node_ips, max_workers, _node_ip(), source))
    return uri


def _node_ip() -> str:
    try:
        import ray.util
        return ray.util.get_node_ip_address()
    except Exception:
        return "HEAD"


def study_storage(cfg: Config):
    """(Optuna storage, description) for `sweep.study_storage`: a SQLAlchemy URL (sqlite:///,
    postgresql://...) -> RDBStorage; a file path -> a journal file (JournalStorage), which works
    on a shared file system; empty -> SQLite in `train.storage` when that is a local path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    where = cfg.sweep.study_storage or os.environ.get(STUDY_ENV, "")
    if not where:
        path = _local_path(train_storage(cfg))
        if path is None:
            raise ConfigError(
                f"sweep.study_storage (or ${STUDY_ENV}) is empty and train.storage="
                f"{train_storage(cfg)!r} is "
                "object storage, where an SQLite study cannot live. Set sweep.study_storage to "
                "a database URL (postgresql://USER:PASSWORD@HOST:5432/optuna, any SQLAlchemy "
                "URL) or a journal file on storage that outlives the cluster, a shared file "
                "system or the head's persistent volume (/mnt/shared/ipb/optuna.journal); "
                "see cluster/README.md")
        where = f"sqlite:///{Path(path, 'optuna.db')}"
    if is_uri(where):
        if where.startswith("sqlite:///"):
            Path(where[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(where), where
    journal = expand_path(where)
    journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(journal))), f"journal {journal}"
