"""Ray Tune sweeps shared by every script in sweeps/: grids, Optuna searches, resume, MLflow.

    python sweeps/baselines.py --profile smoke          # a grid sweep (see sweeps/*.py)

A trial = (configuration, fold, seed). Each Tune trial is a small driver function that runs
`ipb.train.fit` (a TorchTrainer, Train V2) with `TuneReportCallback` forwarding rank-0 reports.
Every trial is an MLflow child run of the sweep's parent run and carries `ipb.trial_hash`
(hash of its resolved config, fold and seed): re-running a sweep skips trials whose hash has a
FINISHED run, so nothing is trained or logged twice. A failed trial is a FAILED run with its
error; the sweep goes on. Concurrent trials never share one SQLite file: with a sqlite URI and
`sweep.max_concurrent > 1` the sweep starts one local `mlflow server` for the writers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ipb.config import Config, apply, config_hash, expand_path, from_dict, load_config, \
    parse_overrides, to_dict, to_yaml, trial_hash


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
    configuration's `_label` names its row in reports (default: `configuration_label`)."""
    trials = []
    if base.sweep.limit > 0:
        configurations = configurations[:base.sweep.limit]
    for conf in configurations:
        c = apply(base, {k: v for k, v in conf.items() if k != "_label"})
        for fold in base.sweep.folds:
            for seed in base.sweep.seeds:
                t = apply(c, {"train.fold": fold, "train.seed": seed})
                label = conf.get("_label") if "_label" in conf else configuration_label(t)
                trials.append(Trial(label, t, trial_hash(t)))
    return trials


def trial_driver(config: dict[str, Any]) -> None:
    """One Tune trial: a TorchTrainer fit that reports every epoch to Tune, on the sweep's
    table as put in the object store once for all trials (`ipb.train.shared_table`)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ipb.train import fit, table_data
    # MLflow prints a "View run at http://..." link per run against a server; in a sweep that
    # is a line per trial, and the local server's port is gone when the sweep ends
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    spec = config["trial"]
    cfg = from_dict(spec["cfg"])
    out = fit(cfg, data=table_data(config["data"]), parent_run_id=config["parent_run_id"],
              sweep=config["sweep"], experiment=config["experiment"],
              callbacks=[TuneReportCallback()], extra_tags={"ipb.config_label": spec["label"]})
    tune.report({"test.tpr.mean": out["metrics"]["test.tpr.mean"], "done": 1.0})


def _tune_storage(cfg: Config) -> str:
    from ipb.runtime import storage_join, train_storage
    return storage_join(train_storage(cfg), "tune")


def run_grid(kind: str, base: Config, configurations: list[dict[str, Any]], *,
             table: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a grid sweep; returns {"parent_run_id", "trials", "report"}."""
    from ray import tune

    from ipb import tracking
    from ipb.pipeline import resolve_table
    from ipb.runtime import check_storage, init_ray
    from ipb.train import shared_table

    trials = expand(base, configurations)
    init_ray(quiet=not progress)
    check_storage(base)
    table = table or resolve_table(base)
    experiment = base.tracking.experiment or f"ipb-{kind}"
    sweep_hash = config_hash({"kind": kind, "trials": sorted(t.hash for t in trials)})
    log = (lambda s: print(f"[sweep {kind}] {s}", file=sys.stderr, flush=True)) if progress \
        else (lambda s: None)
    with tracking.writers(base, base.sweep.max_concurrent) as uri, shared_table(table) as data:
        cfg_uri = apply(base, {"tracking.uri": uri})
        trials = [Trial(t.label, apply(t.cfg, {"tracking.uri": uri}), t.hash) for t in trials]
        parent = tracking.sweep_parent_run(cfg_uri, experiment, kind, sweep_hash, table)
        done = tracking.finished_trials(cfg_uri, experiment)
        todo = [t for t in trials if t.hash not in done]
        log(f"{len(trials)} trials ({len(trials) - len(todo)} already finished, "
            f"{len(todo)} to run, {base.sweep.max_concurrent} at a time); MLflow {uri}, "
            f"experiment {experiment!r}, parent run {parent}")
        t0 = time.time()
        if todo:
            tuner = tune.Tuner(
                # the driver only waits on its TorchTrainer: no CPU, so trials pack onto the
                # CPUs/GPUs their workers ask for (a bundle must not be empty: memory it is)
                tune.with_resources(trial_driver, {"CPU": 0, "memory": 256 * 2**20}),
                param_space={"trial": tune.grid_search([t.spec() for t in todo]),
                             "data": data, "parent_run_id": parent, "sweep": kind,
                             "experiment": experiment},
                tune_config=tune.TuneConfig(max_concurrent_trials=base.sweep.max_concurrent,
                                            trial_dirname_creator=lambda t: t.trial_id),
                run_config=tune.RunConfig(name=f"{kind}-{sweep_hash[:8]}-{int(t0)}",
                                          storage_path=_tune_storage(base), verbose=0),
            )
            results = tuner.fit()
            errors = [r for r in results if r.error]
            log(f"{len(todo) - len(errors)} trials finished, {len(errors)} failed "
                f"in {time.time() - t0:.0f}s")
        report = tracking.finish_sweep(cfg_uri, experiment, parent)
    return {"parent_run_id": parent, "trials": trials, "report": report,
            "experiment": experiment, "tracking_uri": base.tracking.uri}


# -- command line shared by sweeps/*.py --------------------------------------------------------

def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="smoke", help="smoke | paper | study | FILE.yaml")
    ap.add_argument("--data", help="a colony table, or a directory of raw images (+ labels.csv) "
                                   "that is ingested first; default: the cached SYNTHETIC set")
    ap.add_argument("--labels", help="label CSV for raw images given with --data")
    ap.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI or "
                                           "sqlite:///mlflow.db)")
    ap.add_argument("--max-concurrent", type=int, help="trials at a time")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value")
    return ap


def config_from_args(args) -> Config:
    extra: dict[str, Any] = {}
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        extra["tracking.uri"] = uri
    if args.max_concurrent:
        extra["sweep.max_concurrent"] = args.max_concurrent
    cfg = load_config(args.profile, {**extra, **parse_overrides(args.overrides)})
    if args.data:
        cfg = apply(cfg, {"data.table": str(data_table(cfg, args.data, args.labels))})
    return cfg


def start_command(cfg: Config) -> None:
    """What every sweep script does first: an unreachable MLflow server fails here in seconds
    (not after Ray and minutes of retries), and a watcher kills what the script starts if it
    is killed itself (ipb/reaper.py)."""
    from ipb.preflight import check_tracking_uri
    from ipb.reaper import start
    from ipb.tracking import tracking_uri
    check_tracking_uri(tracking_uri(cfg))
    start()


def data_table(cfg: Config, data: str, labels: str | None) -> Path | str:
    """--data: a colony table as is (a directory, or a URI such as s3://bucket/table), or a
    directory of raw images ingested (once) into a cached table."""
    from ipb.data.table import is_uri, read_manifest
    if is_uri(data):
        read_manifest(data)     # raw images are ingested from a local or shared directory
        return data
    path = Path(data).expanduser()
    if (path / "manifest.json").is_file():
        return path.resolve()
    from ipb.data.ingest import ingest
    from ipb.runtime import init_ray
    if labels is None and (path / "labels.csv").is_file():
        labels = str(path / "labels.csv")
    out = expand_path(cfg.data.cache_dir) / "tables" / config_hash(
        {"data": str(path.resolve()), "labels": labels, "seg": to_dict(cfg.segmentation)})
    if not (out / "manifest.json").is_file():
        init_ray()
        ingest(path, out, cfg, labels=labels)
    return out


def main(kind: str, description: str, configurations: Callable[[Config], list[dict]],
         argv: list[str] | None = None) -> int:
    args = parser(description).parse_args(argv)
    cfg = config_from_args(args)
    start_command(cfg)
    print(f"ipb sweep {kind}; resolved base config:\n{to_yaml(cfg)}", flush=True)
    out = run_grid(kind, cfg, configurations(cfg))
    print("\n" + out["report"]["markdown"])
    print(f"\nMLflow: experiment {out['experiment']!r}, parent run {out['parent_run_id']}.\n"
          f"Look at it with:  {mlflow_ui_command(out['tracking_uri'])}")
    return 0


def mlflow_ui_command(uri: str) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    if uri.startswith("http"):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --port 5000"


# -- Optuna search ---------------------------------------------------------------------------

def apply_suggestion(base: Config, params: dict[str, Any]) -> Config:
    """Sampled params are config keys, except `patch.scale`, a factor on both patch sides."""
    from ipb.models import model_info
    params = dict(params)
    scale = params.pop("patch.scale", 1.0)
    cfg = apply(base, params)
    # multiples of 16, never below what the sampled architecture accepts
    low = model_info(cfg.model.arch)["min_size"]
    side = lambda s: max(32, low, int(round(s * scale / 16)) * 16)   # noqa: E731
    return apply(cfg, {"patch.size": side(base.patch.size), "patch.ms_size": side(base.patch.ms_size)})


SEARCH_FIXED_KEYS = ("base", "data", "parent_run_id", "experiment")


def search_driver(config: dict[str, Any]) -> None:
    """One Optuna trial: the sampled configuration over every fold, reporting the running mean
    of validation mean TPR after each fold (ASHA stops poor configurations after fold 1)."""
    from ray import tune

    from ipb import tracking
    from ipb.train import fit, table_data
    base = from_dict(config["base"])
    # OptunaSearch puts the sampled values next to the fixed keys of the param space
    params = {k: v for k, v in config.items() if k not in SEARCH_FIXED_KEYS}
    cfg = apply_suggestion(base, params)
    done = tracking.finished_trials(cfg, config["experiment"], metric="best.val.tpr.mean")
    data = table_data(config["data"])
    scores = []
    for k, fold in enumerate(base.sweep.folds):
        c = apply(cfg, {"train.fold": fold})
        h = trial_hash(c)
        if h in done:                   # resumed search: this fold already ran
            scores.append(done[h])
        else:
            out = fit(c, data=data, parent_run_id=config["parent_run_id"], sweep="search",
                      experiment=config["experiment"],
                      extra_tags={"ipb.config_label": configuration_label(c) + " " +
                                  config_hash(params)[:6]})
            scores.append(out["metrics"]["best.val.tpr.mean"])
        tune.report({"objective": sum(scores) / len(scores), "folds_done": k + 1})


def run_search(base: Config, space: Callable, *, table: Path | None = None,
               progress: bool = True) -> dict[str, Any]:
    """OptunaSearch (define-by-run `space`), ConcurrencyLimiter and ASHA; the study lives in
    `sweep.study_storage` (default: SQLite in train.storage), so re-running continues it."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from ipb import tracking
    from ipb.pipeline import resolve_table
    from ipb.runtime import check_storage, init_ray, study_storage
    from ipb.train import shared_table

    init_ray(quiet=not progress)
    check_storage(base)
    table = table or resolve_table(base)
    experiment = base.tracking.experiment or "ipb-search"
    study = "search-" + config_hash({k: v for k, v in to_dict(base).items()
                                     if k not in ("tracking", "sweep")})[:10]
    storage, where = study_storage(base)
    n_done = sum(t.state.is_finished() for t in optuna.load_study(
        study_name=study, storage=storage).trials) if study in [
        s.study_name for s in optuna.get_all_study_summaries(storage)] else 0
    remaining = max(0, base.sweep.num_samples - n_done)
    with tracking.writers(base, base.sweep.max_concurrent) as uri, shared_table(table) as data:
        cfg_uri = apply(base, {"tracking.uri": uri})
        parent = tracking.sweep_parent_run(cfg_uri, experiment, "search", study, table)
        if progress:
            print(f"[sweep search] study {study} in {where}: {n_done} trials done, "
                  f"{remaining} to run; MLflow {uri}, parent run {parent}", file=sys.stderr)
        if remaining:
            searcher = ConcurrencyLimiter(
                OptunaSearch(space=space, metric="objective", mode="max", study_name=study,
                             storage=storage, seed=base.train.seed),
                max_concurrent=base.sweep.max_concurrent)
            tune.Tuner(
                tune.with_resources(search_driver, {"CPU": 0, "memory": 256 * 2**20}),
                param_space={"base": to_dict(cfg_uri), "data": data,
                             "parent_run_id": parent, "experiment": experiment},
                tune_config=tune.TuneConfig(
                    search_alg=searcher, num_samples=remaining,
                    scheduler=ASHAScheduler(time_attr="folds_done", metric="objective",
                                            mode="max", max_t=len(base.sweep.folds),
                                            grace_period=1, reduction_factor=2)),
                run_config=tune.RunConfig(name=f"{study}-{int(time.time())}",
                                          storage_path=_tune_storage(base), verbose=0),
            ).fit()
        report = tracking.finish_sweep(cfg_uri, experiment, parent)
        best = optuna.load_study(study_name=study, storage=storage)
        best_trial = best.best_trial if any(t.value is not None for t in best.trials) else None
    return {"parent_run_id": parent, "report": report, "experiment": experiment,
            "tracking_uri": base.tracking.uri, "study": study,
            "best": (best_trial.params, best_trial.value) if best_trial else None}
