"""Ray start-up shared by the CLI, sweeps and tests: never joins a stray cluster by accident.

    python -c "from ipb.runtime import init_ray; init_ray()"
"""
from __future__ import annotations

import os

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
