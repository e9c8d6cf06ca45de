"""Ray Tune sweeps shared by every script in sweeps/: grids, resume, MLflow.

    python sweeps/baselines.py --profile smoke          # a grid sweep (see sweeps/*.py)

A trial = (configuration, fold, seed). Each Tune trial is a small driver function that runs
`ipb.train.fit` (a TorchTrainer, Train V2) with `TuneReportCallback` forwarding rank-0 reports.
Every trial is an MLflow child run of the sweep's parent run and carries `ipb.trial_hash`
(hash of its resolved config, fold and seed): re-running a sweep skips trials whose hash has a
FINISHED run, so nothing is trained or logged twice. A failed trial is a FAILED run with its
error; the sweep goes on. Concurrent trials never share one SQLite file: with a sqlite URI and
`sweep.max_concurrent > 1` the sweep starts one local `mlflow server` for the writers.
`run_sweep` is the life of every sweep, grid or search (parent run, progress, then the report
and the champion model on the parent run); the table comes from the entry point
(`ipb.inputs.resolve_table`). The scripts' command line: ipb/sweep_cli.py; Optuna searches:
ipb/search.py.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ipb import stop
from ipb.config import Config, apply, config_hash, from_dict, to_dict, trial_hash


@dataclass
class Trial:
    label: str                 # the configuration's row name in reports
    cfg: Config
    hash: str

    def spec(self) -> dict[str, Any]:
        return {"label": self.label, "cfg": to_dict(self.cfg), "hash": self.hash}


def configuration_label(cfg: Config) -> str:
    """Row name in the paper's words: e.g. `ML+MS ipb vgg19 (10% labeled)`."""
    from ipb.models import model_info
    ms = model_info(cfg.model.arch)["multi_scale"]
    arch = cfg.model.arch.removeprefix("ms_")
    prefix = "+".join(p for p, on in (("ML", cfg.method.multi_label), ("MS", ms)) if on)
    return f"{prefix + ' ' if prefix else ''}{cfg.method.name} {arch}"


def expand(base: Config, configurations: list[dict[str, Any]]) -> list[Trial]:
    """configurations x sweep.folds x sweep.seeds -> trials (overrides validated here). A
    configuration's `_label` names its row in reports (default: `configuration_label`), its
    `_folds` (a subset of sweep.folds) restricts the folds it runs on."""
    trials = []
    if base.sweep.limit > 0:
        configurations = configurations[:base.sweep.limit]
    for conf in configurations:
        c = apply(base, {k: v for k, v in conf.items() if not k.startswith("_")})
        for fold in conf.get("_folds", base.sweep.folds):
            for seed in base.sweep.seeds:
                t = apply(c, {"train.fold": fold, "train.seed": seed})
                label = conf.get("_label") if "_label" in conf else configuration_label(t)
                trials.append(Trial(label, t, trial_hash(t)))
    return trials


DRIVER_RESOURCE = "ipb_driver"   # advertised by the cluster's head (cluster/*.yaml, kuberay)


def trial_resources(cfg: Config, pinned: bool = False) -> dict[str, float]:
    """What a Tune trial's own process asks for. A Ray Train trial only waits on its
    TorchTrainer: no CPU, so trials pack onto the CPUs/GPUs their workers ask for (a bundle
    must not be empty: memory it is). An inline trial trains in that process. `pinned` (the
    cluster advertises DRIVER_RESOURCE on its head): the driver of a Train trial runs there,
    never on a spot node whose loss would take the trial's controller and MLflow run along."""
    if cfg.train.runner == "inline":
        return {"CPU": cfg.train.cpus_per_worker,
                **({"GPU": cfg.train.gpus_per_worker} if cfg.train.use_gpu else {})}
    return {"CPU": 0, "memory": 256 * 2**20, **({DRIVER_RESOURCE: 0.001} if pinned else {})}


def driver_pinned() -> bool:
    """Whether this Ray cluster has a home for trial drivers (DRIVER_RESOURCE)."""
    import ray
    return DRIVER_RESOURCE in ray.cluster_resources()


def tune_run_config(name: str, base: Config, callbacks: list):
    """The Tune RunConfig of every sweep: its storage, quiet, and `train.max_failures`
    retries of a trial whose process died (a lost node): the retry resumes from the trial's
    last checkpoint in its own MLflow run (ipb.train.fit)."""
    from ray import tune
    # verbose=0 silences Tune's old reporter only: the new one (RAY_AIR_NEW_OUTPUT, on by
    # default) prints its "Configuration for experiment" box and a TensorBoard hint into every
    # sweep's output whatever the verbosity; our progress line says what a user needs
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return tune.RunConfig(name=name, storage_path=_tune_storage(base), verbose=0,
                          callbacks=callbacks,
                          failure_config=tune.FailureConfig(max_failures=base.train.max_failures))


def fresh_trial_process(compiled: bool) -> None:
    """What a new process gave each trial before sweeps reused them (sweep.reuse_actors): the
    last trial's garbage collected, its cached GPU memory returned, and with train.compile no
    code compiled for another trial (torch.compile's cache lives as long as the process)."""
    import gc

    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if compiled:
        torch._dynamo.reset()


def trial_driver(config: dict[str, Any]) -> None:
    """One Tune trial: a TorchTrainer fit that reports every epoch to Tune, on the sweep's
    table as put in the object store once for all trials (`ipb.shared_table`)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ipb.console import quiet_sigterm_exit
    from ipb.shared_table import table_data
    from ipb.train import fit
    quiet_sigterm_exit()
    # MLflow prints a "View run at http://..." link per run against a server; in a sweep that
    # is a line per trial, and the local server's port is gone when the sweep ends
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    spec = config["trial"]
    cfg = from_dict(spec["cfg"])
    fresh_trial_process(cfg.train.compile)
    try:
        out = fit(cfg, table_data(config["data"]), parent_run_id=config["parent_run_id"],
                  sweep=config["sweep"], experiment=config["experiment"],
                  callbacks=[TuneReportCallback()], tune_trial=True,
                  extra_tags={**config["tags"], **tune_trial_tags(),
                              "ipb.config_label": spec["label"]})
    except Exception:
        # the trial's own error (its MLflow run is FAILED with it): reported, not raised, so
        # that Tune's retries (FailureConfig) are spent on lost processes and nodes only
        traceback.print_exc()
        tune.report({"done": 1.0, "failed": 1.0})
        return
    tune.report({"test.tpr.mean": out["metrics"]["test.tpr.mean"], "done": 1.0})


def tune_trial_tags() -> dict[str, str]:
    """The Tune trial a run belongs to (id and name, as Tune's own logs and storage name it),
    so a run in the MLflow UI leads to its trial directory and back."""
    from ray import tune
    ctx = tune.get_context()
    return {"ipb.tune_trial_id": str(ctx.get_trial_id()),
            "ipb.tune_trial_name": str(ctx.get_trial_name())}


def _tune_storage(cfg: Config) -> str:
    from ipb.runtime import storage_join, train_storage
    return storage_join(train_storage(cfg), "tune")


@dataclass
class Sweep:
    """What a running sweep's body gets: the URI its trials log to, the base config with
    that URI, the name of the shared table, the parent run, the entry point's source tags."""
    kind: str
    cfg: Config
    uri: str
    data: str
    parent: str
    experiment: str
    tags: dict[str, str]
    log: Callable[[str], None]
    progress: bool

    def callbacks(self, total: int) -> list:
        from ipb.console import progress_callback
        return [progress_callback(total, self.log)] if self.progress else []


def grid_space(trials: list[Trial]) -> dict[str, str]:
    """The parent run's params: every config key the trials vary (`space.<key>`: its values),
    the rows and the trial count -- what the sweep searched, readable in the UI."""
    from ipb.config import identity
    values: dict[str, set[str]] = {}
    for t in trials:
        for k, v in identity(t.cfg).items():
            values.setdefault(k, set()).add(str(v))
    out = {f"space.{k}": ", ".join(sorted(v))[:500] for k, v in sorted(values.items())
           if len(v) > 1}
    out["sweep.rows"] = str(len({t.label for t in trials}))
    out["sweep.n_trials"] = str(len(trials))
    return out


def run_sweep(kind: str, base: Config, table: Path | str, sweep_hash: str,
              body: Callable[[Sweep], None], *, experiment: str,
              progress: bool = True, space: dict[str, str] | None = None) -> dict[str, Any]:
    """The life of every sweep, grid or search: Ray and storage checked, one MLflow writer in
    front of SQLite, the table in the object store once, the parent run (reopened when the
    same sweep runs again), `body` (the Tune run), then the report and the champion model on
    the parent run."""
    from ipb import tracking
    from ipb.console import ray_dashboard
    from ipb.logged_models import register_champion
    from ipb.mlflow_server import writers
    from ipb.report import log_report
    from ipb.runtime import check_storage, init_ray
    from ipb.shared_table import shared_table

    init_ray(quiet=not progress)
    check_storage(base)
    # MLflow prints a "View run at" link when it ends a run on a server: the sweep's own
    # server is gone by the end; the sweep prints the link that lasts
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    log = (lambda s: print(f"[sweep {kind}] {s}", file=sys.stderr, flush=True)) if progress \
        else (lambda s: None)
    if progress and ray_dashboard():
        log(f"Ray dashboard: {ray_dashboard()}")
    tags = tracking.source_tags()
    with writers(base, base.sweep.max_concurrent) as uri, shared_table(table) as data:
        cfg_uri = apply(base, {"tracking.uri": uri})
        parent = tracking.sweep_parent_run(cfg_uri, experiment, kind, sweep_hash, table, tags,
                                           params=space)
        try:
            body(Sweep(kind, cfg_uri, uri, data, parent, experiment, tags, log, progress))
        except BaseException as e:
            stopped = isinstance(e, KeyboardInterrupt)
            if stopped:
                tracking.client(uri).set_tag(parent, "ipb.sweep_status", "interrupted")
            tracking.end_run(cfg_uri, parent, "KILLED" if stopped else "FAILED",
                             error=f"{type(e).__name__}: {e}")
            raise
        report = log_report(experiment, uri, parent)
        champion = register_champion(uri, experiment, parent)
        if champion:
            log(f"champion: {champion['uri']} (version {champion['version']}) = run "
                f"{champion['run_id']}, {champion['label']}, validation mean TPR "
                f"{champion['val']:.4f}")
        tracking.log_sweep_summary(uri, experiment, parent, champion)
        tracking.end_run(cfg_uri, parent, "FINISHED")
    uri = tracking.tracking_uri(base)
    return {"parent_run_id": parent, "report": report, "experiment": experiment,
            "experiment_id": tracking.experiment_id(experiment, uri), "tracking_uri": uri,
            "champion": champion, "table": table}


def cannot_run(trials: list[Trial], manifest: dict[str, Any]) -> dict[str, str]:
    """label -> why, for the rows whose method cannot run on this table at all (e.g.
    mpl_balanced where U holds colonies of unknown class): checked once per row before Tune
    starts, so the sweep says it in one line instead of a failed trial (and its traceback) per
    (fold, seed). `train.fit` checks each trial's own split again."""
    from ipb.methods import method_class
    unknown = {"unlabeled": int(manifest.get("unlabeled", 0)),
               "multi_label": int(manifest.get("multi_label", 0))}
    out: dict[str, str] = {}
    for t in trials:
        if t.label not in out:
            try:
                method_class(t.cfg.method.name).check_data(t.cfg, unknown)
            except ValueError as e:
                out[t.label] = str(e)
    return out


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a sweep before every trial ran: its parent run ends KILLED
    with the counts, the script exits 130 (143 for SIGTERM); the same command resumes it."""

    def __init__(self, counts: dict[str, int]):
        super().__init__(f"sweep interrupted: {counts['finished']} trials finished, "
                         f"{counts['failed']} failed, {counts['interrupted']} interrupted "
                         "(their runs KILLED); run the same command again to resume them")
        self.counts = counts


def outcome(s: Sweep, experiment: str, todo: list[Trial], results) -> dict[str, int]:
    """What the Tune run did to `todo`, read from the trials' MLflow runs (Tune's results
    say nothing of a trial its stop cut short): finished, failed (a run FAILED, or an error
    before any run), interrupted (a run KILLED or left RUNNING by the stop, or never started).
    Runs left RUNNING are ended KILLED, so none stays RUNNING forever."""
    from ipb import tracking
    errored = {r.config["trial"]["hash"] for r in results if r.config and (
        r.error or (r.metrics or {}).get("failed"))}
    states = tracking.trial_states(s.cfg, experiment, s.parent)
    # a trial this sweep waited for, which another sweep finished, counts as finished
    states.update({h: ("FINISHED", rid) for h, rid in
                   tracking.finished_trials(s.cfg, experiment).items()})
    counts = {"finished": 0, "failed": 0, "interrupted": 0}
    for t in todo:
        status, run_id = states.get(t.hash, (None, None))
        if status == "RUNNING":
            tracking.end_run(s.cfg, run_id, "KILLED", error="the sweep was stopped")
            status = "KILLED"
        if status == "FINISHED":
            counts["finished"] += 1
        elif status == "FAILED" or (status is None and t.hash in errored):
            counts["failed"] += 1
        else:
            counts["interrupted"] += 1
    return counts


def run_grid(kind: str, base: Config, configurations: list[dict[str, Any]],
             table: Path | str, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a grid sweep over `table` (`ipb.inputs.resolve_table`); returns
    `run_sweep`'s dict and "trials"."""
    from ray import tune

    from ipb import tracking
    from ipb.data.table import read_manifest

    trials = expand(base, configurations)
    if not trials:    # else Tune runs nothing and the parent run still ends FINISHED
        raise ValueError(f"sweep {kind!r} has 0 trials (grid of {len(configurations)} "
                         f"configurations, sweep.folds={list(base.sweep.folds)}, sweep.seeds="
                         f"{list(base.sweep.seeds)}, sweep.limit={base.sweep.limit}); widen "
                         "the filter that emptied it")
    experiment = base.tracking.experiment or f"ipb-{kind}"
    sweep_hash = config_hash({"kind": kind, "trials": sorted(t.hash for t in trials)})

    def body(s: Sweep) -> None:
        todo_all = [Trial(t.label, apply(t.cfg, {"tracking.uri": s.uri}), t.hash) for t in trials]
        done = tracking.finished_trials(s.cfg, experiment)
        todo = [t for t in todo_all if t.hash not in done]
        finished = len(todo_all) - len(todo)
        skip = cannot_run(todo, read_manifest(table))
        for label, why in skip.items():
            n = sum(t.label == label for t in todo)
            s.log(f"not run: {label!r} ({n} trials): {why}")
            key = f"ipb.not_run.{config_hash({'label': label})[:8]}"
            tracking.client(tracking.tracking_uri(s.cfg)).set_tag(s.parent, key,
                                                                  f"{label}: {why}"[:5000])
        runnable = [t for t in todo if t.label not in skip]
        not_run, todo = len(todo) - len(runnable), runnable
        s.log(f"{len(trials)} trials ({finished} already "
              f"finished, {not_run} not run, {len(todo)} to run, "
              f"{base.sweep.max_concurrent} at a time); MLflow {s.uri}, "
              f"experiment {experiment!r}, parent run {s.parent}")
        if not todo:
            return
        t0 = time.time()
        with stop.tune_handlers_undone():
            results = tune.Tuner(
                tune.with_resources(trial_driver, trial_resources(base, driver_pinned())),
                param_space={"trial": tune.grid_search([t.spec() for t in todo]),
                             "data": s.data, "parent_run_id": s.parent, "sweep": kind,
                             "experiment": experiment, "tags": s.tags},
                tune_config=tune.TuneConfig(max_concurrent_trials=base.sweep.max_concurrent,
                                            trial_dirname_creator=lambda t: t.trial_id,
                                            reuse_actors=base.sweep.reuse_actors),
                run_config=tune_run_config(f"{kind}-{sweep_hash[:8]}-{int(t0)}", base,
                                           s.callbacks(len(todo))),
            ).fit()
        counts = outcome(s, experiment, todo, results)
        s.log(f"{counts['finished']} trials finished, {counts['failed']} failed, "
              f"{counts['interrupted']} interrupted in {time.time() - t0:.0f}s")
        if counts["interrupted"]:
            raise SweepInterrupted(counts)

    out = run_sweep(kind, base, table, sweep_hash, body, experiment=experiment,
                    progress=progress, space=grid_space(trials))
    return {**out, "trials": trials}
