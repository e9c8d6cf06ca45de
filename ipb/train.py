"""One trial, data-parallel on Ray Train, logged to MLflow.

    ipb train --method ipb --arch ms_hrnet_w18 --fold 0 [--table TABLE] [--profile smoke] [k=v ...]

The colony table goes into the Ray object store once (`ipb.shared_table.put_table`; a sweep
does it once for all its trials) as an Arrow table; the driver splits it (fold, labeled fraction) into row
indices, and every worker reads its shard's rows out of that one copy (unlabeled / val / test by
rank, labeled whole) and runs `ipb.engine.run_trial` under DDP (gloo on CPU, NCCL on GPU). Rank
0 checkpoints every epoch to `train.storage` (a path, or s3:// / gs:// that every node reaches);
`FailureConfig(max_failures)` restarts a crashed worker group from the last checkpoint, and so
does re-running the same command (same `train.storage` / run name).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ipb.config import Config, from_dict, to_dict, trial_hash
from ipb.shared_table import put_table
from ipb.lineage import MODEL_FILE, RESULT_FILE, STATE_FILE
from ipb.worker import run_worker, trial_log, write_final


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: `ipb.worker.run_worker` in Ray Train's session (DDP,
    its checkpoints, its reports)."""
    import ray.train
    import ray.train.torch
    import torch

    import logging
    import ray.train.v2._internal.execution.context as train_context
    # one line per epoch is ours; Ray Train's worker context logs every report at INFO under
    # a logger named by its file path, which RunConfig's logging level does not reach
    for name in ("ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if rank == 0:
        sweep_handoffs()
    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if not (Path(d) / STATE_FILE).exists() and (Path(d) / RESULT_FILE).exists():
                _hand_on_finished(Path(d), rank, config)
                return
            resume = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)

    def wrap(model):
        if world == 1:
            return model.to(device)
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
            "find_unused_parameters": False})

    from ipb.console import quiet_sigterm_exit
    quiet_sigterm_exit()
    fault = config.get("fault") or {}

    def report(metrics: dict[str, float], state_fn, tracker) -> None:
        if (fault and rank == fault["rank"] and metrics["epoch"] == fault["epoch"]
                and not Path(fault["marker"]).exists()):
            # fault injection for the resume test: this worker dies once, hard
            Path(fault["marker"]).write_text(str(os.getpid()))
            os.kill(os.getpid(), 9)
        if tracker:
            tracker.log(metrics, step=int(metrics["epoch"]))
        if rank == 0 and state_fn is not None:
            with handoff_dir() as d:
                torch.save(state_fn(), d / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    device = ray.train.torch.get_device() if from_dict(config["cfg"]).train.use_gpu else \
        torch.device("cpu")
    cfg, classes, size, out = run_worker(config, rank=rank, world=world, device=device,
                                         resume=resume, report=report, wrap=wrap)
    _report_final(out["metrics"], rank, lambda d: write_final(
        d, out, cfg, classes, size, bool(config.get("synthetic"))))


def _report_final(metrics: dict[str, Any], rank: int, write: Callable[[Path], None]) -> None:
    """Every rank's last report: the numeric metrics, and on rank 0 the trial's final files
    (`write` fills a directory) as its checkpoint."""
    import ray.train
    final = {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "final": 1.0}
    if rank != 0:
        ray.train.report(final)
        return
    with handoff_dir() as d:
        write(d)
        ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(d))


HANDOFF_PREFIX = "ipb-handoff-"
STALE_HANDOFF_S = 3600      # a live report holds its directory for seconds, not an hour


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # another user's process
        return True
    return True


def sweep_handoffs() -> None:
    """Remove the handoff directories (`handoff_dir`) of processes that are gone and older
    than STALE_HANDOFF_S. A worker killed by SIGKILL (the OOM killer, the resume test) runs no
    clean-up and left the model's whole state in the temp directory, once per such worker (5
    of up to 12 MB here, from the tests; vgg19's with its optimiser ~1.7 GB). Run once as a
    rank-0 worker starts; the age keeps a live process whose pid this one cannot see (another
    PID namespace sharing /tmp) safe."""
    now = time.time()
    for old in Path(tempfile.gettempdir()).glob(HANDOFF_PREFIX + "*"):
        pid = old.name[len(HANDOFF_PREFIX):].split("-")[0]
        try:
            stale = now - old.stat().st_mtime > STALE_HANDOFF_S
        except OSError:
            continue
        if pid.isdigit() and stale and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def handoff_dir():
    """A directory, named by this process's pid, for the files rank 0 hands Ray Train's
    report (which copies them to train.storage); removed after (see sweep_handoffs)."""
    d = Path(tempfile.mkdtemp(prefix=f"{HANDOFF_PREFIX}{os.getpid()}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _hand_on_finished(d: Path, rank: int, config: dict[str, Any]) -> None:
    """The run's last checkpoint is this trial's final one (same name and trial hash), and its
    MLflow record is gone (a new tracking store, a clone sharing ~/ray_results): its result is
    reported again for the caller to log. Resuming from it failed (no state.pt there)."""
    if rank == 0:
        trial_log(config)("finished before: its stored result is logged again, not retrained")
    _report_final(json.loads((d / RESULT_FILE).read_text())["metrics"], rank,
                  lambda t: shutil.copytree(d, t, dirs_exist_ok=True))


def prepare_parts(cfg: Config, data: dict[str, Any]):
    """Split the table of `put_table` for (fold, seed): row indices per part, and the ref of
    the rows they index (the workers take their rows from it)."""
    from ipb.data.splits import make_split

    split = make_split(data["meta"], cfg.split, fold=cfg.train.fold,
                       multi_label=cfg.method.multi_label,
                       partial=cfg.method.multi_label_loss == "partial")
    index = {part: getattr(split, part) for part in ("labeled", "val", "test", "unlabeled")}
    return ({"rows": data["rows"], "index": index, "holder": data.get("holder")}, split,
            data["manifest"])


def fit_interruptible(trainer):
    """trainer.fit(), stoppable by Ctrl-C and SIGTERM. In the main thread Ray Train V2's fit
    installs its own SIGINT handler, which aborts the run and leaves the process to exit 1
    without a word (and our SIGTERM takes the SIGINT path); in a helper thread it does not,
    so the signal reaches this thread as KeyboardInterrupt: the run is marked KILLED and the
    command says so in one line (exit 130 / 143). Inside Tune (not the main thread) as is."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:       # handed to the caller's thread
            box["error"] = e
    t = threading.Thread(target=run, name="ipb-train-fit", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _trainer(cfg: Config, loop_config: dict[str, Any], name: str, callbacks):
    """The TorchTrainer of one trial: train.num_workers workers (GPUs when train.use_gpu),
    checkpoints in train.storage, train.max_failures restarts from the last checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from ipb.runtime import train_storage
    gpu = {"GPU": cfg.train.gpus_per_worker} if cfg.train.use_gpu else {}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **gpu}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=train_storage(cfg),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Train's INFO lines (resources requested, every report's checkpoint path) would
            # bury our one line per epoch
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or []),
    )


def _before_training(cfg: Config, run_id: str, split, progress: bool, name: str,
                     problem: str | None):
    """Checks that fail a trial before any training (the run is marked FAILED with the
    reason), and the pre-trained teacher of an MPL-family trial when a finished supervised run
    (or an earlier trial) of the same split, seed and budget has one: its ObjectRef, or None."""
    import ray

    from ipb import tracking
    from ipb.methods import method_class
    try:
        method_class(cfg.method.name).check_data(cfg, split.counts.get("unlabeled", {}))
        if problem and cfg.train.select_on == "val" and (
                not cfg.split.allow_weak_val or not len(split.val)):
            raise ValueError(problem)
        found = tracking.find_teacher(cfg, split.classes)
    except BaseException as e:
        tracking.end_run(cfg, run_id, "FAILED", error=f"{type(e).__name__}: {e}")
        raise
    if found is None:
        return None
    tracking.client(tracking.tracking_uri(cfg)).set_tag(run_id, "ipb.teacher_run", found[0])
    if progress:
        print(f"[{name}] teacher: the selected model of run {found[0]} (no pre-training)",
              file=sys.stderr, flush=True)
    return ray.put(found[1])


def run_name(cfg: Config) -> str:
    """The trial's Train run name (its checkpoint directory in train.storage) and MLflow run
    name: from the trial hash, so the same trial finds its checkpoints again from another
    sweep process (whose tracking.uri, the port of its MLflow server, differs)."""
    preset = "" if cfg.method.preset == "paper" else f"-{cfg.method.preset}"
    return (f"{cfg.method.name}{preset}-{cfg.model.arch}-f{cfg.train.fold}-s{cfg.train.seed}-"
            f"{trial_hash(cfg)[:8]}")


def fit(cfg: Config, table: Path | str | dict[str, Any], *, parent_run_id: str | None = None,
        sweep: str = "", experiment: str | None = None, progress: bool = True,
        fault: dict | None = None, callbacks: list | None = None,
        extra_tags: dict[str, str] | None = None, tune_trial: bool = False) -> dict[str, Any]:
    """Train one (config, fold, seed) on Ray Train and log it as one MLflow run.

    `table`: a colony table (a directory or a URI, as `ipb.inputs.resolve_table` gives it),
    read, checked and put in the object store here; or a sweep's `put_table` dict (its
    storage already checked). Returns {"run_id", "metrics", "result", "checkpoint", "name",
    "models"}. The MLflow run is FINISHED on success and FAILED (with the error as a tag) on
    any exception, which is re-raised; run again, the trial resumes from its last checkpoint
    in its own MLflow run. The trial is claimed for its life (`ipb.claims`): in a sweep
    (`parent_run_id`) a trial another process trains is waited for and, once FINISHED, not
    trained again (the result has "skipped"); `ipb train` refuses it. `fault` ({"rank",
    "epoch", "marker"}) kills that worker once at that epoch (tests of resume).
    """
    from ipb import tracking
    from ipb.claims import claim
    from ipb.runtime import check_storage, train_storage

    t_enter = time.time()
    data = table
    if not isinstance(data, dict):
        check_storage(cfg)
        data = put_table(table)   # a directory or a URI: kept as given
    parts, split, manifest = prepare_parts(cfg, data)
    name = run_name(cfg)
    say = (lambda s: print(f"[{name}] {s}", file=sys.stderr, flush=True)) if progress \
        else (lambda s: None)
    with claim(train_storage(cfg), trial_hash(cfg), wait=bool(parent_run_id), log=say) as lock:
        exp = tracking.trial_experiment(cfg, sweep, experiment)
        done = tracking.trial_run(cfg, exp, ("FINISHED",), any_parent=True) \
            if parent_run_id else None
        if done is not None:      # another sweep finished it while this one waited
            say(f"finished already as run {done.info.run_id}: not trained again")
            return {"run_id": done.info.run_id, "metrics": dict(done.data.metrics),
                    "result": None, "checkpoint": None, "name": name, "models": None,
                    "experiment_id": done.info.experiment_id, "skipped": "finished"}
        # a RUNNING run of this trial is one whose process died when this process holds its
        # lock, or in a sweep (Tune runs one instance of a trial at a time: a retry after a
        # lost node finds its predecessor's run RUNNING)
        reuse = ("FAILED", "KILLED") + (("RUNNING",) if lock or parent_run_id else ())
        run_id = tracking.start_trial_run(
            cfg, split, manifest, name=name, parent_run_id=parent_run_id, sweep=sweep,
            experiment=exp, table=data["table"], reuse=reuse,
            extra_tags={**(extra_tags or {}), "ipb.storage": train_storage(cfg)})
        return _train_and_log(cfg, parts, split, manifest, name, run_id, progress, fault,
                              callbacks, tune_trial, t_enter, in_sweep=bool(parent_run_id))


def _announce(split, problem: str | None, run_id: str, name: str, uri: str, progress: bool,
              in_sweep: bool) -> None:
    """The split's warnings (on the run, and printed) and the run's line."""
    from ipb import tracking
    warnings = list(split.warnings) + ([problem] if problem else [])
    if warnings:     # a user sees them, and so does the run
        tracking.client(uri).set_tag(run_id, "ipb.split_warnings", "\n".join(warnings)[:5000])
        if progress:
            for w in warnings:
                print(f"[{name}] split WARNING {w}", file=sys.stderr, flush=True)
    if progress:
        # a sweep's trial names its run only: the sweep's local tracking server (its port in
        # `uri`) is gone when the sweep ends, and the sweep prints the link that lasts
        where = "" if in_sweep else f" at {uri}"
        print(f"[{name}] MLflow run {run_id}{where}; split " + "; ".join(
            f"{p} {len(getattr(split, p))}" for p in ("labeled", "val", "unlabeled", "test")),
            file=sys.stderr, flush=True)


def _session(cfg: Config, loop_config: dict[str, Any], name: str, callbacks):
    """Train in the configured session: (a context giving the final files' directory, the
    checkpoint's location)."""
    if cfg.train.runner == "inline":       # one worker in this process (ipb/inline.py)
        from ipb.inline import run_inline
        return run_inline(loop_config)
    result = fit_interruptible(_trainer(cfg, loop_config, name, callbacks))
    if result.error:
        raise result.error
    return result.checkpoint.as_directory(), result.checkpoint.path


def _train_and_log(cfg: Config, parts, split, manifest, name: str, run_id: str,
                   progress: bool, fault, callbacks, tune_trial: bool,
                   t_enter: float, in_sweep: bool = False) -> dict[str, Any]:
    """`fit` once its run exists: split warnings, the checks before training, Ray Train (or
    inline), the result and the model logged, the run ended."""
    from mlflow.entities import Metric

    from ipb import tracking
    from ipb.logged_models import log_student
    uri = tracking.tracking_uri(cfg)
    problem = split.selection_problem()
    _announce(split, problem, run_id, name, uri, progress, in_sweep)
    teacher = _before_training(cfg, run_id, split, progress, name, problem)
    loop_config = {"cfg": to_dict(cfg), "classes": split.classes, "parts": parts,
                   "run_id": run_id, "tracking_uri": uri, "name": name, "fault": fault,
                   "t_start": time.time(), "synthetic": bool(manifest.get("synthetic")),
                   "teacher": teacher, "tune_trial": tune_trial}
    try:
        t0 = time.time()
        files, checkpoint = _session(cfg, loop_config, name, callbacks)
        t1 = time.time()
        with files as d:
            out = json.loads((Path(d) / RESULT_FILE).read_text())
            tracking.log_trial_result(run_id, cfg, out, Path(d) / MODEL_FILE)
            t2 = time.time()
            if cfg.tracking.log_models == "every" or not tune_trial:
                models = log_student(uri, run_id, Path(d) / MODEL_FILE)
            else:    # the sweep logs its champion's (logged_models.register_champion)
                models = None
                tracking.client(uri).set_tag(run_id, "ipb.model.deferred", "champion")
        # where the trial's wall time went (benchmarks/trial_time.py): before training
        # (split, run, teacher lookup), training (Ray Train or inline; the engine logs its
        # steps / evaluation per epoch), the result's metrics and figures, the logged models
        tracking.client(uri).log_batch(run_id, metrics=[
            Metric(k, v, int(time.time() * 1000), 0) for k, v in (
                ("time.trial.before", t0 - t_enter), ("time.trial.train", t1 - t0),
                ("time.trial.result", t2 - t1), ("time.trial.models", time.time() - t2))])
        tracking.end_run(cfg, run_id, "FINISHED")
        if progress:
            how = "Ray Train" if cfg.train.runner == "train" else "training (inline)"
            print(f"[{name}] {how} {t1 - t0:.0f}s, MLflow artifacts {time.time() - t1:.0f}s",
                  file=sys.stderr, flush=True)
    except BaseException as e:
        # Ctrl-C or a stop signal: KILLED (a re-run resumes it); anything else: FAILED
        stopped = isinstance(e, (KeyboardInterrupt, SystemExit))
        tracking.end_run(cfg, run_id, "KILLED" if stopped else "FAILED",
                         error=f"{type(e).__name__}: {e}")
        raise
    return {"run_id": run_id, "metrics": out["metrics"], "result": out,
            "checkpoint": checkpoint, "name": name, "models": models,
            "experiment_id": tracking.client(uri).get_run(run_id).info.experiment_id}
