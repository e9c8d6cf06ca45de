"""Where runs live: Ray start-up (never a stray cluster by accident) and storage every node reaches.

    python -c "from ipb.runtime import init_ray; init_ray()"

`train.storage` (Ray Train checkpoints, Tune results) is a URI (s3://bucket/prefix, gs://...,
with pyarrow's query options such as ?endpoint_override=host:port&scheme=http for an
S3-compatible server) or a path. On one node any path works; with more than one node alive a
path must be on a file system every node mounts, which `check_storage` verifies before a run
starts. The Optuna study lives where `sweep.study_storage` says (`study_storage`). Cluster
configs set both for every node with IPB_TRAIN_STORAGE / IPB_STUDY_STORAGE, which an explicit
setting overrides (as MLFLOW_TRACKING_URI does for tracking.uri).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

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
        # the dashboard process also serves the State API that Ray Train's cleanup polls
        kw.update(num_cpus=num_cpus)
        for key, value in LOCAL_TRAIN_ENV.items():
            os.environ.setdefault(key, value)    # inherited by every process Ray starts
    start_local(ray, **kw)
    try:  # progress bars are useful interactively, noise in logs
        ray.data.DataContext.get_current().enable_progress_bars = False
    except Exception:
        pass
    return ray


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


def check_storage(cfg: Config, timeout: float = 120) -> str:
    """`train_storage(cfg)`, after checking that every alive node reaches it: with more than one
    node, a local path must be the same directory on all of them (a marker written here has to
    be seen by a task on each node). Raises ConfigError naming `train.storage` otherwise."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    location = train_storage(cfg)
    path = _local_path(location)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if path is None or len(nodes) < 2:
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
            "Set train.storage to object storage (train.storage=s3://BUCKET/PREFIX or "
            "gs://BUCKET/PREFIX) or to a directory on a file system every node mounts (NFS, "
            f"EFS, Filestore), here or with ${STORAGE_ENV}; see cluster/README.md")
    return location


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
