"""One-worker trials in the calling process, without a Ray Train worker group.

    python sweeps/study.py        # the `study` profile runs every trial so (train.runner=inline)

Why: on this 2-core machine a Ray Train trial spends ~25-30 s starting and stopping its
controller, worker, synchronization and placement-group actors (measured: `fit` of a 1-step
trial took 25-33 s), which for the study's 60 small CPU trials is more than their training. An
inline trial runs `ipb.engine.run_trial` in the process that called `ipb.train.fit` (a Tune
trial, or `ipb train`): the same engine, the same rows from the object store, the same MLflow
run and files. It checkpoints every epoch to `<train.storage>/<run name>/inline/state.pt` (a
path or a bucket, written whole) and a re-run of the same trial resumes from it. What it does
not have: several workers (DDP; it needs train.num_workers=1) and `train.max_failures`
restarts inside one run -- a failed trial is resumed by running the sweep again.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ipb.config import ConfigError


@contextlib.contextmanager
def _owned_dir(path: Path):
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_inline(config: dict[str, Any]):
    """Train one trial here from `fit`'s loop config. Returns (a context manager giving a
    local directory with the trial's final files, where its checkpoints are)."""
    import ray
    import torch

    from ipb.data.store import Store
    from ipb.engine import run_trial
    from ipb.runtime import train_storage
    from ipb.train import STATE_FILE, rank0_tracking, trial_log, worker_parts, write_final

    cfg, classes, parts, size = worker_parts(config, 0, 1)
    if cfg.train.num_workers != 1:
        raise ConfigError(f"train.runner=inline runs one worker, but train.num_workers="
                          f"{cfg.train.num_workers}: set train.num_workers=1, or "
                          "train.runner=train for data-parallel workers")
    device = torch.device("cuda" if cfg.train.use_gpu else "cpu")
    store = Store(train_storage(cfg))
    state = (config["name"], "inline", STATE_FILE)
    store.makedirs(*state[:-1])
    resume = None
    if store.exists(*state):
        resume = torch.load(io.BytesIO(store.read_bytes(*state)), map_location="cpu",
                            weights_only=False)
    tracker, monitor = rank0_tracking(config, resume)
    log = trial_log(config)
    fault = config.get("fault") or {}

    def report(metrics: dict[str, float], state_fn) -> None:
        if tracker:
            tracker.log(metrics, step=int(metrics["epoch"]))
        buf = io.BytesIO()
        torch.save(state_fn(), buf)
        store.write_bytes(buf.getvalue(), *state)
        if config.get("tune_trial"):
            # a sweep's trial: Tune's stop (Ctrl-C, SIGTERM) ends the trial at this report,
            # after its checkpoint, instead of waiting for its last epoch
            from ray import tune
            tune.report({k: float(v) for k, v in metrics.items()
                         if isinstance(v, (int, float))})
        if fault and metrics["epoch"] == fault["epoch"] and not Path(fault["marker"]).exists():
            # fault injection for the resume test: the trial fails once, after its checkpoint
            Path(fault["marker"]).write_text(str(os.getpid()))
            raise RuntimeError(f"injected fault at epoch {fault['epoch']}")

    log(f"inline worker: {', '.join(f'{k} {len(v)}' for k, v in parts.items())} colonies, "
        f"patch {size}px, device {device}")
    teacher = ray.get(config["teacher"]) if config.get("teacher") is not None else None
    try:
        out = run_trial(cfg, parts, classes, device=device, resume=resume,
                        teacher_state=teacher, report=report, log=log)
    finally:
        if monitor is not None:
            monitor.finish()
    d = Path(tempfile.mkdtemp(prefix="ipb-inline-"))
    write_final(d, out, cfg, classes, size, bool(config.get("synthetic")))
    return _owned_dir(d), store.path(*state[:-1])
