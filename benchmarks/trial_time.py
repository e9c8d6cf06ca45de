"""python benchmarks/trial_time.py [--data TABLE] [--fold 0] [key=value ...]

Where a study trial's time goes (issue 22). One trial per row type of `python sweeps/study.py`
(supervised, IPB (robust), IPB (learn), MPL (learn), FixMatch, ABC) on one fold, run as the
study runs them (`ipb.sweep.run_grid`, the study profile, sweep.max_concurrent trials at once)
into a temporary MLflow store, then split from each run's own timings:
  before        fit's split, run creation, checks and teacher lookup before training;
  steps         the engine's train steps, teacher pre-training included (per-epoch time.steps);
  eval          validation / test evaluation during training (time.eval);
  balance       IPB's pseudo-balancing pass and MPL's epoch plan (time.balance);
  other train   the rest of training: the final test, diagnostics, checkpoints, figures;
  result        the result's metrics and artifacts logged to MLflow;
  models        the logged models (student and colonies pyfunc).
Each row also prints its validation and test mean TPR to 6 digits: a change that only makes
trials faster must leave them exactly as they were (SYNTHETIC data unless --data).
Shares are of the summed trial time of all rows (a ratio inside one run, so machine load cancels
out). Then the sweep as a whole: its wall time against the trials' own times over the
concurrency (the rest is Ray / Tune start, trial start-up, the parent's report and champion),
and trials per hour = trials x 3600 / the sweep's wall time.
Last line: `trial time: steps <p>%, eval <p>%, balance <p>%, other train <p>%, result <p>%,
models <p>%, before <p>%; sweep overhead <p>%; <n> trials/hour (<k> at a time)`.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

from ipb.machine import describe

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("steps", "eval", "balance", "other train", "result", "models", "before")


def study_rows(cfg, fold: int) -> list[dict]:
    """The default study's row types, each on `fold` only (not the 50 % headroom row)."""
    spec = importlib.util.spec_from_file_location("study_script", ROOT / "sweeps" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [r for r in mod.configurations(cfg) if r.get("split.labeled_fraction") is None]
    return [{**r, "_folds": [fold]} for r in rows]


def split_times(uri: str, experiment: str, parent: str) -> dict[str, dict]:
    """label -> {part: seconds, "wall": seconds, "result_values": (val TPR, test TPR)} from
    the trials' MLflow runs."""
    from ipb.tracking import client
    c = client(uri)
    exp = c.get_experiment_by_name(experiment).experiment_id
    out = {}
    for r in c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}' and "
                                  "attributes.status = 'FINISHED'"):
        def total(key):
            return sum(m.value for m in c.get_metric_history(r.info.run_id, key))
        m = r.data.metrics
        train = m.get("time.trial.train", 0.0)
        t = {"steps": total("time.steps"), "eval": total("time.eval"),
             "balance": total("time.balance"), "result": m.get("time.trial.result", 0.0),
             "models": m.get("time.trial.models", 0.0), "before": m.get("time.trial.before", 0)}
        t["other train"] = max(0.0, train - t["steps"] - t["eval"] - t["balance"])
        t["wall"] = train + t["result"] + t["models"] + t["before"]
        t["result_values"] = (m.get("best.val.tpr.mean", float("nan")),
                              m.get("test.tpr.mean", float("nan")))
        out[r.data.tags.get("ipb.config_label", r.info.run_name)] = t
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a colony table (default: the study's SYNTHETIC set)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--profile", default="study")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    print(describe(), flush=True)
    import time

    from ipb.config import apply, load_config, parse_overrides
    from ipb.inputs import resolve_table
    from ipb.sweep import run_grid
    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(a.profile, {"tracking.uri": f"sqlite:///{d}/mlflow.db",
                                      "train.storage": f"{d}/ray",
                                      "tracking.experiment": "ipb-trial-time",
                                      **parse_overrides(a.overrides)})
        table = resolve_table(cfg, a.data) if a.data else resolve_table(cfg)
        cfg = apply(cfg, {"data.table": str(table)})
        from ipb.runtime import init_ray
        init_ray()           # started before the clock: a sweep script pays it once
        t0 = time.time()
        out = run_grid("trial-time", cfg, study_rows(cfg, a.fold), table, progress=False)
        sweep_wall = time.time() - t0
        times = split_times(out["tracking_uri"], out["experiment"], out["parent_run_id"])
    print(f"{'row (fold ' + str(a.fold) + ')':<28}" + "".join(f"{p:>12}" for p in PARTS)
          + f"{'wall s':>9}  val TPR, test TPR (a speed change must leave these as they were)")
    for label, t in times.items():
        print(f"{label[:27]:<28}" + "".join(f"{t[p]:>11.1f}s" for p in PARTS)
              + f"{t['wall']:>9.1f}  {t['result_values'][0]:.6f}, {t['result_values'][1]:.6f}")
    wall = sum(t["wall"] for t in times.values())
    share = {p: 100 * sum(t[p] for t in times.values()) / wall for p in PARTS}
    k = cfg.sweep.max_concurrent
    overhead = max(0.0, sweep_wall - wall / k)
    per_hour = len(times) * 3600 / sweep_wall
    print(f"sweep: {len(times)} trials in {sweep_wall:.0f}s, {k} at a time; the trials' own "
          f"time {wall:.0f}s / {k} = {wall / k:.0f}s; the rest {overhead:.0f}s (Tune and trial "
          "start-up, the parent's report and champion)")
    print("trial time: " + ", ".join(f"{p} {share[p]:.0f}%" for p in PARTS)
          + f"; sweep overhead {100 * overhead / sweep_wall:.0f}%; {per_hour:.0f} trials/hour "
          f"({k} at a time)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
