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
    """Train one trial here from `fit`'s loop config: `ipb.worker.run_worker` with checkpoints
    in train.storage. Returns (a context manager giving a local directory with the trial's
    final files, where its checkpoints are)."""
    import torch

    from ipb.config import from_dict
    from ipb.data.store import Store
    from ipb.runtime import train_storage
    from ipb.lineage import STATE_FILE
    from ipb.worker import run_worker, write_final

    cfg = from_dict(config["cfg"])
    if cfg.train.num_workers != 1:
        raise ConfigError(f"train.runner=inline runs one worker, but train.num_workers="
                          f"{cfg.train.num_workers}: set train.num_workers=1, or "
                          "train.runner=train for data-parallel workers")
    store = Store(train_storage(cfg))
    state = (config["name"], "inline", STATE_FILE)
    store.makedirs(*state[:-1])
    resume = None
    if store.exists(*state):
        resume = torch.load(io.BytesIO(store.read_bytes(*state)), map_location="cpu",
                            weights_only=False)
    fault = config.get("fault") or {}

    def report(metrics: dict[str, float], state_fn, tracker) -> None:
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

    device = torch.device("cuda" if cfg.train.use_gpu else "cpu")
    cfg, classes, size, out = run_worker(config, rank=0, world=1, device=device, resume=resume,
                                         report=report, name="inline worker")
    d = Path(tempfile.mkdtemp(prefix="ipb-inline-"))
    try:
        write_final(d, out, cfg, classes, size, bool(config.get("synthetic")))
    except BaseException:      # a stop or a full disk: its partial files go too
        shutil.rmtree(d, ignore_errors=True)
        raise
    return _owned_dir(d), store.path(*state[:-1])
