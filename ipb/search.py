"""Optuna searches on Ray Tune: a define-by-run space, ASHA over folds, resumable studies.

    python sweeps/search.py --profile smoke sweep.num_samples=8

Each Tune trial (`search_driver`) is one sampled configuration run over every fold, reporting
the running mean of validation mean TPR so ASHA can stop a poor one after its first fold; the
folds are ordinary trials of `ipb.train.fit` (MLflow child runs, skipped by hash on resume).
The Optuna study lives in `sweep.study_storage`, so re-running the command continues it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ipb import stop
from ipb.config import Config, apply, config_hash, from_dict, identity, to_dict, trial_hash
from ipb.sweep import Sweep, configuration_label, driver_pinned, fresh_trial_process, \
    run_sweep, trial_resources, tune_run_config, tune_trial_tags


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


SEARCH_FIXED_KEYS = ("base", "data", "parent_run_id", "experiment", "tags")


def search_driver(config: dict[str, Any]) -> None:
    """One Optuna trial: the sampled configuration over every fold, reporting the running mean
    of validation mean TPR after each fold (ASHA stops poor configurations after fold 1)."""
    from ray import tune

    from ipb import tracking
    from ipb.console import quiet_sigterm_exit
    from ipb.shared_table import table_data
    from ipb.train import fit
    quiet_sigterm_exit()
    base = from_dict(config["base"])
    # OptunaSearch puts the sampled values next to the fixed keys of the param space
    params = {k: v for k, v in config.items() if k not in SEARCH_FIXED_KEYS}
    cfg = apply_suggestion(base, params)
    fresh_trial_process(cfg.train.compile)
    done = tracking.finished_trials(cfg, config["experiment"], metric="best.val.tpr.mean")
    data = table_data(config["data"])
    scores = []
    for k, fold in enumerate(base.sweep.folds):
        c = apply(cfg, {"train.fold": fold})
        h = trial_hash(c)
        if h in done:                   # resumed search: this fold already ran
            scores.append(done[h])
        else:
            out = fit(c, data, parent_run_id=config["parent_run_id"], sweep="search",
                      experiment=config["experiment"],
                      extra_tags={**config["tags"], **tune_trial_tags(), "ipb.config_label":
                                  configuration_label(c) + " " + config_hash(params)[:6]})
            scores.append(out["metrics"]["best.val.tpr.mean"])
        tune.report({"objective": sum(scores) / len(scores), "folds_done": k + 1})


def study_name(base: Config) -> str:
    """The Optuna study of a search over `base`: named by what its trials compute (the trial
    hash's keys), so a re-run with other workers, storage, tracking or `train.compile`, or after
    a new method was added, continues the same study."""
    return "search-" + config_hash(identity(base))[:10]


def run_search(base: Config, space: Callable, table: Path | str, *,
               progress: bool = True) -> dict[str, Any]:
    """OptunaSearch (define-by-run `space`), ConcurrencyLimiter and ASHA over `table`; the
    study lives in `sweep.study_storage` (default: SQLite in train.storage), so re-running
    continues it."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from ipb.runtime import study_storage

    experiment = base.tracking.experiment or "ipb-search"
    study = study_name(base)
    storage, where = study_storage(base)
    n_done = sum(t.state.is_finished() for t in optuna.load_study(
        study_name=study, storage=storage).trials) if study in [
        s.study_name for s in optuna.get_all_study_summaries(storage)] else 0
    remaining = max(0, base.sweep.num_samples - n_done)

    def body(s: Sweep) -> None:
        s.log(f"study {study} in {where}: {n_done} trials done, {remaining} to run; MLflow "
              f"{s.uri}, parent run {s.parent}")
        s.log(f"Optuna dashboard:  {optuna_dashboard_command(where)}")
        if not remaining:
            return
        # trials at once: TPE's constant liar counts running trials as bad so concurrent
        # suggestions spread out instead of piling onto one region (Optuna's advice)
        sampler = optuna.samplers.TPESampler(seed=base.train.seed,
                                             constant_liar=base.sweep.max_concurrent > 1)
        searcher = ConcurrencyLimiter(
            OptunaSearch(space=space, metric="objective", mode="max", study_name=study,
                         storage=storage, sampler=sampler),
            max_concurrent=base.sweep.max_concurrent)
        with stop.tune_handlers_undone():
            tune.Tuner(
                tune.with_resources(search_driver, trial_resources(base, driver_pinned())),
                param_space={"base": to_dict(s.cfg), "data": s.data, "parent_run_id": s.parent,
                             "experiment": experiment, "tags": s.tags},
                tune_config=tune.TuneConfig(
                    search_alg=searcher, num_samples=remaining,
                    reuse_actors=base.sweep.reuse_actors,
                    scheduler=ASHAScheduler(time_attr="folds_done", metric="objective",
                                            mode="max", max_t=len(base.sweep.folds),
                                            grace_period=1, reduction_factor=2)),
                run_config=tune_run_config(f"{study}-{int(time.time())}", base,
                                           s.callbacks(remaining)),
            ).fit()

    out = run_sweep("search", base, table, study, body, experiment=experiment,
                    progress=progress, space={
                        "space.fn": f"{space.__module__}.{space.__qualname__}",
                        "sweep.num_samples": str(base.sweep.num_samples),
                        "sweep.folds": str(list(base.sweep.folds)), "optuna.study": study})
    best = optuna.load_study(study_name=study, storage=storage)
    best_trial = best.best_trial if any(t.value is not None for t in best.trials) else None
    return {**out, "study": study, "optuna_dashboard": optuna_dashboard_command(where),
            "best": (best_trial.params, best_trial.value) if best_trial else None}


def optuna_dashboard_command(where: str) -> str:
    """`where` as `study_storage` describes it: a database URL or "journal PATH"."""
    return f"optuna-dashboard {where.removeprefix('journal ')}  (pip install optuna-dashboard)"
