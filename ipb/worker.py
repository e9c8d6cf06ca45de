"""One trial's body on one worker, whichever session runs it.

    ipb train --method ipb --fold 0                   # a Ray Train worker runs this body
    python sweeps/study.py                            # the study's trials run it in-process

Two thin sessions call `run_worker`: a Ray Train worker (`ipb.train.train_loop_per_worker`,
data-parallel, checkpoints through Ray Train) and the in-process runner (`ipb.inline`, one
worker, checkpoints in train.storage). What they share is here: the worker's parts of the split
decoded into patch banks, rank 0's MLflow logger and system metrics, the trial's log lines, the
pre-trained teacher from the object store, `ipb.engine.run_trial`, and a finished trial's files
(`write_final`). What differs (the device, resuming, the per-epoch report and checkpoint, DDP
wrapping) is what each session passes in. Imports Ray and torch inside functions only, so the
file names below are importable anywhere.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ipb.config import Config, from_dict, to_dict
from ipb.lineage import METHOD_DIR, MODEL_FILE, RESULT_FILE, TEACHER_FILE

SHARDED = ("unlabeled", "val", "test")    # split over workers; labeled goes whole to each

# report(metrics, state_fn, tracker): a session's per-epoch report; state_fn() gives the
# checkpoint (None when there is nothing to save), tracker rank 0's MLflow logger or None
Report = Callable[[dict[str, float], Any, Any], None]


def shard(rows, part: str, rank: int, world: int):
    """This worker's rows (a DataFrame or row indices) of a part: every world-th row from its
    rank on (all ranks together cover every row once, so val/test metrics summed over ranks
    see each colony exactly once)."""
    if part not in SHARDED or world == 1:
        return rows
    if not hasattr(rows, "iloc"):
        return rows[rank::world]
    return rows.iloc[rank::world].reset_index(drop=True)


def run_worker(config: dict[str, Any], *, rank: int, world: int, device, resume: dict | None,
               report: Report, wrap=None, name: str = "worker"):
    """Train this worker's part of one trial from `fit`'s loop config on `device`: returns
    (cfg, classes, patch size, run_trial's output). `report` is the session's per-epoch report
    (it gets rank 0's MLflow logger), `wrap` DDP-wraps a model."""
    import ray

    from ipb.engine import run_trial
    t_data = time.time()
    cfg, classes, parts, size = worker_parts(config, rank, world)
    t_data = time.time() - t_data
    tracker, monitor = rank0_tracking(config, resume) if rank == 0 else (None, None)
    log = trial_log(config) if rank == 0 else (lambda s: None)
    log(f"{name} {rank}/{world}: {', '.join(f'{k} {len(v)}' for k, v in parts.items())} "
        f"colonies on this worker, patch {size}px, device {device}")
    teacher = ray.get(config["teacher"]) if config.get("teacher") is not None else None
    try:
        out = run_trial(cfg, parts, classes, device=device, wrap=wrap, rank=rank, world=world,
                        resume=resume, teacher_state=teacher, log=log,
                        report=lambda metrics, state_fn: report(metrics, state_fn, tracker))
    finally:
        if monitor is not None:
            monitor.finish()
    # the colonies to this worker: the table from the object store and the patch bank (in a
    # sweep decoded once per node, so a node's first trials wait for it; benchmarks/trial_time.py)
    out["metrics"]["time.trial.data"] = t_data
    return cfg, classes, size, out


def rank0_tracking(config: dict[str, Any], resume: dict | None):
    """(per-epoch MLflow logger, system-metrics monitor) of a trial's rank 0, or (None, None)
    without a run; a resumed run is tagged with the epoch it continued from."""
    if not config.get("run_id"):
        return None, None
    from ipb.tracking import EpochLogger, system_metrics
    tracker = EpochLogger(config["tracking_uri"], config["run_id"])
    if resume is not None:      # the run says that a restart continued it, and from where
        tracker.client.set_tag(config["run_id"], "ipb.resumed_from_epoch", str(resume["epoch"]))
    return tracker, system_metrics(config["tracking_uri"], config["run_id"],
                                   resume=resume is not None)


def trial_log(config: dict[str, Any]):
    """The trial's line writer: `[name +Ns] text` on stdout."""
    t_start = config.get("t_start", time.time())

    def log(s: str) -> None:
        # not print(): Ray Train patches it in workers to go to stdout AND its logger, which
        # shows every line twice in the terminal
        sys.stdout.write(f"[{config['name']} +{time.time() - t_start:.0f}s] {s}\n")
        sys.stdout.flush()
    return log


def worker_parts(config: dict[str, Any], rank: int, world: int):
    """(cfg, classes, parts, patch size) of this worker from a trial's loop config: its shard
    of each part, decoded into patch banks; torch threads set to train.cpus_per_worker."""
    import ray
    import torch

    from ipb.batches import patch_size
    from ipb.evaluation import Part
    from ipb.shared_table import node_bank
    cfg = from_dict(config["cfg"])
    classes = config["classes"]
    torch.set_num_threads(max(1, cfg.train.cpus_per_worker))
    size = patch_size(cfg)
    # zero-copy: an Arrow table from the object store maps its buffers; in a sweep the colonies
    # come decoded once per node for the sweep (ipb.shared_table), else each worker decodes
    # its shard
    table = ray.get(config["parts"]["rows"])
    bank = None
    if config["parts"].get("holder"):        # decoded once on this node for the sweep
        bank = node_bank(config["parts"]["holder"], size)
    parts = {}
    for name, index in config["parts"]["index"].items():
        idx = shard(index, name, rank, world)
        if bank is None:
            parts[name] = Part.from_rows(table.take(idx).to_pandas(), classes, size)
        else:
            meta = table.select(["label", "colony_id"]).take(idx)
            parts[name] = Part.of(bank.take(idx), meta["label"].to_pylist(),
                                  meta["colony_id"].to_pylist(), classes)
    return cfg, classes, parts, size


def write_final(d: Path, out: dict[str, Any], cfg: Config, classes: list[str], size: int,
                synthetic: bool) -> None:
    """A finished trial's files: the selected student, the pre-trained teacher (MPL family),
    result.json (metrics, confusion matrices, history) and a method's own artifacts."""
    import torch
    # the student's size in weights, beside its scores in the runs table
    out["metrics"]["model.n_weights"] = float(sum(p.numel() for p in out["model"].parameters()))
    torch.save({"state_dict": out["model"].state_dict(), "arch": cfg.model.arch,
                "width": cfg.model.width, "classes": classes, "patch_size": size,
                "config": to_dict(cfg), "synthetic": synthetic}, d / MODEL_FILE)
    if out["teacher"] is not None:
        torch.save({"state_dict": out["teacher"], "arch": cfg.model.arch, "classes": classes},
                   d / TEACHER_FILE)
    (d / RESULT_FILE).write_text(json.dumps({
        "metrics": out["metrics"], "cm_test": out["cm_test"].tolist(),
        "cm_val": out["cm_val"].tolist(), "history": out["history"], "classes": classes},
        default=float))
    for file, data in out.get("artifacts", {}).items():   # e.g. gan_balanced's grid
        (d / METHOD_DIR).mkdir(exist_ok=True)
        (d / METHOD_DIR / (("SYNTHETIC-" if synthetic else "") + file)).write_bytes(data)
