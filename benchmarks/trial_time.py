"""python benchmarks/trial_time.py [--data TABLE] [--fold 0] [--against REV] [key=value ...]

Where a study trial's time goes (issue 22). One trial per row type of `python sweeps/study.py`
(supervised, IPB (robust), IPB (learn), MPL (learn), FixMatch, ABC) on one fold, run as the
study runs them (`ipb.sweep.run_grid`, the study profile, sweep.max_concurrent trials at once)
into a temporary MLflow store, then split from each run's own timings:
  before        fit's split, run creation, checks and teacher lookup before training;
  data          the colonies to the worker: the table from Ray's object store and the patch
                bank (decoded once per node for a sweep, so the node's first trials wait for
                it: a one-off that a 7-trial run shows far larger than a whole study does);
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
models <p>%, before <p>%, data <p>%; sweep overhead <p>%; <n> trials/hour (<k> at a time)`.

`--runs URI [--parent RUN_ID]` runs nothing: the same split of a sweep already in an MLflow
store (default: its newest sweep), e.g. a whole `python sweeps/study.py`, per row type summed
over its folds, with the sweep's wall time from its parent run, and the bound a faster rest
could give: `steps alone: x<b> trials/hour at most` = the sweep's wall time over its steps'
time / the concurrency (nothing but training steps taking any time at all).

`--against REV` first runs the same row types with the code of git revision REV (`git archive`
into a temporary directory, run in a subprocess with that directory first on PYTHONPATH, its
own local Ray and MLflow store, the study profile with no overrides: an old commit does not
know today's keys), restricted to the rows both have; then this code's run, in the same
invocation so machine load is shared. It prints each row's TPRs side by side (the same to 6
digits, or not) and, last, `against <rev>: <n> trials in <s>s (<r> trials/hour), this code
<s>s (<r> trials/hour): x<ratio> trials/hour`. Issue 22's baseline is 416b91d, the commit the
issue was filed against.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("steps", "eval", "balance", "other train", "result", "models", "before", "data")


def study_rows(cfg, fold: int, root: Path = ROOT) -> list[dict]:
    """The default study's row types in `root`'s sweeps/study.py, each on `fold` only (not the
    50 % headroom row)."""
    spec = importlib.util.spec_from_file_location("study_script", root / "sweeps" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [r for r in mod.configurations(cfg) if r.get("split.labeled_fraction") is None]
    return [{**r, "_folds": [fold]} for r in rows]


# Run in a subprocess by --against with an older checkout first on sys.path. It loads this
# file for run_rows, so this file may import at its top only what 416b91d (issue 22's
# baseline) already had, and run_rows may call only what that revision has.
# argv: this file, root, fold, labels (json), data|"", store
AGAINST_DRIVER = r"""
import importlib.util, json, sys
from pathlib import Path
here, root, fold, labels, data, d = (Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]),
                                     json.loads(sys.argv[4]), sys.argv[5], Path(sys.argv[6]))
import ipb
assert Path(ipb.__file__).resolve().is_relative_to(root.resolve()), ipb.__file__
spec = importlib.util.spec_from_file_location("trial_time", here)
tt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tt)
_, rows, wall, times = tt.run_rows("study", {}, fold, data or None, d, labels, root)
print("AGAINST " + json.dumps({"wall": wall, "rows": [r["_label"] for r in rows],
                               "tprs": {k: t["result_values"] for k, t in times.items()}}))
"""


def run_rows(profile: str, overrides: dict, fold: int, data: str | None, store: Path,
             labels: list[str] | None = None, root: Path = ROOT) -> tuple:
    """The study's row types (those in `labels`) on `fold`, run as the study runs them into an
    MLflow store under `store`: (cfg, the rows run, the sweep's wall s, split_times). Runs with
    whichever ipb is imported: this code, or --against's older checkout (no overrides there:
    an old commit does not know today's keys)."""
    import time

    from ipb.config import apply, load_config
    from ipb.inputs import resolve_table
    from ipb.runtime import init_ray
    from ipb.sweep import run_grid
    cfg = load_config(profile, {"tracking.uri": f"sqlite:///{store}/mlflow.db",
                                "train.storage": f"{store}/ray",
                                "tracking.experiment": "ipb-trial-time", **overrides})
    table = resolve_table(cfg, data) if data else resolve_table(cfg)
    cfg = apply(cfg, {"data.table": str(table)})
    rows = [r for r in study_rows(cfg, fold, root) if labels is None or r["_label"] in labels]
    init_ray()           # started before the clock: a sweep script pays it once
    t0 = time.time()
    out = run_grid("trial-time", cfg, rows, table, progress=False)
    wall = time.time() - t0
    return cfg, rows, wall, split_times(out["tracking_uri"], out["experiment"],
                                        out["parent_run_id"])


def checkout(rev: str, into: Path) -> Path:
    """The tree of git revision `rev` of this repository, extracted under `into`."""
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", b"") or b""
        raise SystemExit(f"--against {rev}: `git archive` failed in {ROOT} "
                         f"({err.decode(errors='replace').strip() or e}); it needs a git "
                         "checkout whose history holds that revision (a shallow clone may "
                         "not: git fetch --unshallow)") from None
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    if not (into / "ipb").is_dir() or not (into / "sweeps" / "study.py").is_file():
        raise SystemExit(f"--against {rev}: that revision has no ipb/ package or "
                         "sweeps/study.py to run")
    return into


def ray_temp_base() -> str:
    """The directory Ray makes its `ray/` in for this process's environment (ray._common.utils:
    RAY_TMPDIR, else TMPDIR on Linux, else /tmp)."""
    if os.environ.get("RAY_TMPDIR"):
        return os.environ["RAY_TMPDIR"]
    if sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        return os.environ["TMPDIR"]
    return "/tmp"


def run_against(rev: str, fold: int, labels: list[str], data: str | None) -> dict:
    """The rows `labels` (those `rev` has) run with `rev`'s code: wall, rows run, TPRs."""
    with tempfile.TemporaryDirectory(prefix="ipb-against-") as d:
        code = checkout(rev, Path(d) / "code")
        store = Path(d) / "store"
        store.mkdir()
        (Path(d) / "tmp").mkdir()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(code)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
            # the old code's temporary files go with this directory: 416b91d left a sweep's
            # config YAML and its MLflow server's log in /tmp. Ray's own directory stays
            # where Ray puts it (its socket paths have a length limit)
            "TMPDIR": str(Path(d) / "tmp"), "RAY_TMPDIR": ray_temp_base()}
        print(f"running the rows with {rev}'s code ({code}); this takes as long as the run "
              "after it, or longer", flush=True)
        r = subprocess.run([sys.executable, "-c", AGAINST_DRIVER, str(Path(__file__).resolve()),
                            str(code), str(fold),
                            json.dumps(labels), data or "", str(store)],
                           cwd=code, env=env, capture_output=True, text=True)
        line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("AGAINST ")),
                    None)
        if r.returncode != 0 or line is None:
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-30:])
            raise SystemExit(f"--against {rev}: its run failed (exit {r.returncode}):\n{tail}")
        return json.loads(line[len("AGAINST "):])


def trial_split(c, r) -> dict:
    """{part: seconds, "wall": seconds, "result_values": (val TPR, test TPR)} of one finished
    trial's MLflow run `r` (client `c`); runs from before `time.trial.data` existed count their
    data time in "other train"."""
    def total(key):
        return sum(m.value for m in c.get_metric_history(r.info.run_id, key))
    m = r.data.metrics
    train = m.get("time.trial.train", 0.0)
    t = {"steps": total("time.steps"), "eval": total("time.eval"),
         "balance": total("time.balance"), "result": m.get("time.trial.result", 0.0),
         "models": m.get("time.trial.models", 0.0), "before": m.get("time.trial.before", 0),
         "data": m.get("time.trial.data", 0.0)}
    t["other train"] = max(0.0, train - t["steps"] - t["eval"] - t["balance"] - t["data"])
    t["wall"] = train + t["result"] + t["models"] + t["before"]
    t["result_values"] = (m.get("best.val.tpr.mean", float("nan")),
                          m.get("test.tpr.mean", float("nan")))
    return t


def finished_trials(c, experiment_id: str, parent: str) -> list:
    return c.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}' and "
                                          "attributes.status = 'FINISHED'", max_results=50000)


def split_times(uri: str, experiment: str, parent: str) -> dict[str, dict]:
    """label -> trial_split of each finished trial of the sweep `parent` (one per label)."""
    from ipb.tracking import client
    c = client(uri)
    exp = c.get_experiment_by_name(experiment).experiment_id
    return {r.data.tags.get("ipb.config_label", r.info.run_name): trial_split(c, r)
            for r in finished_trials(c, exp, parent)}


def sweep_split(uri: str, parent: str | None) -> dict:
    """A sweep already in the store at `uri` (`parent`, or the newest sweep parent run):
    {"rows": label -> summed split and "n" trials, "wall": the sweep's s, "k": its concurrency,
    "run_id", "restored": trials it did not train (a stored result logged again: no steps)}."""
    from mlflow.exceptions import MlflowException

    from ipb.student import checked_store
    from ipb.tracking import client
    try:        # a SQLite path that is no file: MLflow would make an empty store there
        c = client(checked_store("--runs", uri, fix="give --runs the URI of an existing store"))
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    if parent is None:
        found = [r for e in c.search_experiments() for r in c.search_runs(
                 [e.experiment_id], "tags.`ipb.role` = 'sweep'", max_results=1,
                 order_by=["attributes.start_time DESC"])]
        if not found:
            raise SystemExit(f"--runs {uri}: no sweep's parent run (tag ipb.role=sweep) there")
        run = max(found, key=lambda r: r.info.start_time)
    else:
        try:
            run = c.get_run(parent)
        except MlflowException:
            raise SystemExit(f"--parent {parent}: no such run in {uri}; leave --parent out for "
                             "the newest sweep there") from None
    if not run.info.end_time:
        raise SystemExit(f"--runs: sweep {run.info.run_id} has not ended (status "
                         f"{run.info.status}); its wall time is not known yet")
    by_label: dict[str, dict] = {}
    trials = finished_trials(c, run.info.experiment_id, run.info.run_id)
    restored = 0
    for r in trials:
        t = trial_split(c, r)
        if t["steps"] == 0:     # every method trains steps: this one's result was stored
            restored += 1
            continue
        acc = by_label.setdefault(r.data.tags.get("ipb.config_label", r.info.run_name),
                                  {p: 0.0 for p in (*PARTS, "wall", "n")})
        for p in (*PARTS, "wall"):
            acc[p] += t[p]
        acc["n"] += 1
    if not by_label:
        raise SystemExit(f"--runs: sweep {run.info.run_id} trained no trials ({len(trials)} "
                         f"finished, {restored} of them stored results logged again, not "
                         "retrained): nothing to split")
    # the trials' own config (sweep.max_concurrent), as each trial run logs it
    k = max(int(r.data.params.get("sweep.max_concurrent", 1)) for r in trials)
    return {"rows": by_label, "wall": (run.info.end_time - run.info.start_time) / 1000, "k": k,
            "run_id": run.info.run_id, "restored": restored}


def print_sweep_split(split: dict) -> None:
    """Per row type: trials, each part summed over them; shares; the steps-alone bound."""
    by_label, wall, k = split["rows"], split["wall"], split["k"]
    n = int(sum(t["n"] for t in by_label.values()))
    print(f"sweep {split['run_id']}: {n + split['restored']} finished trials in {wall:.0f}s "
          f"({(n + split['restored']) * 3600 / wall:.0f} trials/hour), {k} at a time")
    if split["restored"]:
        print(f"{split['restored']} of them were not trained in this sweep (stored results "
              "logged again), so they are left out below and the sweep's wall time is not "
              "theirs alone: no bound is given")
    print(f"{'row (summed over its trials)':<32}{'n':>4}" + "".join(f"{p:>12}" for p in PARTS)
          + f"{'wall s':>9}")
    for label, t in by_label.items():
        print(f"{label[:31]:<32}{int(t['n']):>4}" + "".join(f"{t[p]:>11.0f}s" for p in PARTS)
              + f"{t['wall']:>9.0f}")
    total = {p: sum(t[p] for t in by_label.values()) for p in (*PARTS, "wall")}
    print("trial time: " + ", ".join(f"{p} {100 * total[p] / total['wall']:.0f}%" for p in PARTS)
          + f"; the trials' time / {k} = {total['wall'] / k:.0f}s of the sweep's {wall:.0f}s",
          flush=True)
    if not split["restored"]:
        print(f"steps alone: x{wall / (total['steps'] / k):.2f} trials/hour at most (the "
              f"sweep's wall time over its training steps' time / {k}: what it would gain if "
              "nothing but the steps took any time)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a colony table (default: the study's SYNTHETIC set)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--profile", default="study")
    ap.add_argument("--against", metavar="REV",
                    help="first run the same rows with git revision REV's code (e.g. 416b91d, "
                         "issue 22's baseline) and print the ratio of trials per hour")
    ap.add_argument("--runs", metavar="URI",
                    help="run nothing: split a sweep already in this MLflow store (e.g. "
                         "sqlite:///mlflow.db after python sweeps/study.py)")
    ap.add_argument("--parent", metavar="RUN_ID",
                    help="with --runs: the sweep's parent run (default: the newest sweep)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    from ipb.machine import describe
    if a.runs:
        if a.against or a.overrides:
            ap.error("--runs splits a finished sweep: it takes no --against or key=value")
        print_sweep_split(sweep_split(a.runs, a.parent))
        return 0
    if a.parent:
        ap.error("--parent goes with --runs")
    print(describe(), flush=True)

    from ipb.config import load_config, parse_overrides
    overrides = parse_overrides(a.overrides)
    labels = [r["_label"] for r in study_rows(load_config(a.profile, overrides), a.fold)]
    before = None
    if a.against:
        before = run_against(a.against, a.fold, labels, a.data)
        labels = before["rows"]
    with tempfile.TemporaryDirectory() as d:
        cfg, _, sweep_wall, times = run_rows(a.profile, overrides, a.fold, a.data, Path(d),
                                             labels)
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
    if before is not None:
        print_against(a.against, before, times, sweep_wall)
    return 0


def print_against(rev: str, before: dict, times: dict, sweep_wall: float) -> None:
    """Each row's TPRs under `rev` and now, then the trials-per-hour ratio (the last line)."""
    print(f"{'row':<28}{rev + ' val, test':>24}{'this code val, test':>24}")
    same = True
    for label, (val, test) in before["tprs"].items():
        now = times.get(label, {}).get("result_values", (float("nan"), float("nan")))
        eq = f"{val:.6f}, {test:.6f}" == f"{now[0]:.6f}, {now[1]:.6f}"
        same &= eq
        print(f"{label[:27]:<28}{val:>14.6f}, {test:.6f}{now[0]:>14.6f}, {now[1]:.6f}"
              f"  {'same' if eq else 'DIFFERENT'}")
    n_old, n_new = len(before["tprs"]), len(times)
    print(("every row's TPRs are the same to 6 digits" if same else
           "the TPRs differ: the two are not the same computation (e.g. bf16, or a change "
           "that moved float order); say why before comparing speed"), flush=True)
    old_h, new_h = n_old * 3600 / before["wall"], n_new * 3600 / sweep_wall
    print(f"against {rev}: {n_old} trials in {before['wall']:.0f}s ({old_h:.0f} trials/hour), "
          f"this code {n_new} in {sweep_wall:.0f}s ({new_h:.0f} trials/hour): "
          f"x{new_h / old_h:.2f} trials/hour", flush=True)


if __name__ == "__main__":
    sys.exit(main())
