"""benchmarks/trial_time.py --against REV: the old revision's tree is what runs, a revision git
does not know is refused by name, and the comparison says when the two runs' results differ
(the sweeps themselves take minutes: run the benchmark, not a test, for those)."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("trial_time", ROOT / "benchmarks" / "trial_time.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_against_extracts_the_revisions_tree_and_names_an_unknown_one(tmp_path):
    mod = _script()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    code = mod.checkout(head, tmp_path / "code")
    assert (code / "sweeps" / "study.py").read_bytes() == subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{head}:sweeps/study.py"], capture_output=True,
        check=True).stdout
    assert (code / "ipb" / "engine.py").is_file()
    with pytest.raises(SystemExit, match="no-such-revision.*git archive"):
        mod.checkout("no-such-revision", tmp_path / "other")
    compile(mod.AGAINST_DRIVER, "against-driver", "exec")    # the subprocess's code parses
    # the subprocess loads this file under the old revision's ipb: nothing of ipb at its top
    tree = ast.parse((ROOT / "benchmarks" / "trial_time.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    assert not [x for x in names if x == "ipb" or x.startswith("ipb.")], names


def test_against_flags_rows_whose_results_moved_and_ends_with_the_ratio(capsys):
    mod = _script()
    before = {"wall": 360.0, "rows": ["supervised", "IPB (learn)"],
              "tprs": {"supervised": [0.867063, 0.754515], "IPB (learn)": [0.811508, 0.824953]}}
    now = {"supervised": {"result_values": (0.867063, 0.754515)},
           "IPB (learn)": {"result_values": (0.825397, 0.822588)}}
    mod.print_against("416b91d", before, now, 180.0)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[1].startswith("supervised") and out[1].endswith("same")
    assert out[2].startswith("IPB (learn)") and out[2].endswith("DIFFERENT")
    assert out[3].startswith("the TPRs differ")
    assert out[-1] == ("against 416b91d: 2 trials in 360s (20 trials/hour), this code 2 in "
                       "180s (40 trials/hour): x2.00 trials/hour")


def test_runs_splits_a_finished_sweep_by_row_type_and_bounds_what_a_faster_rest_gives(
        tmp_path, capsys):
    """--runs: each row type's parts summed over its trials, shares, and the steps-alone bound
    from the parent run's wall time and the trials' sweep.max_concurrent."""
    from mlflow.entities import Metric, Param

    from ipb.tracking import client
    mod = _script()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = client(uri)
    exp = c.create_experiment("s", artifact_location=str(tmp_path / "art"))
    parent = c.create_run(exp, start_time=1_000, tags={"ipb.role": "sweep"}).info.run_id
    for label, steps, data in [("supervised", [10.0, 10.0], 4.0),
                               ("supervised", [10.0, 10.0], 0.0), ("IPB (learn)", [30.0], 1.0)]:
        run = c.create_run(exp, start_time=0, tags={"mlflow.parentRunId": parent,
                                                    "ipb.config_label": label}).info.run_id
        metrics = [Metric("time.steps", v, 0, e) for e, v in enumerate(steps)]
        metrics += [Metric(k, v, 0, 0) for k, v in (
            ("time.trial.train", sum(steps) + data + 2.0), ("time.trial.data", data),
            ("time.trial.before", 1.0), ("time.trial.result", 0.5), ("time.trial.models", 0.0),
            ("best.val.tpr.mean", 0.5), ("test.tpr.mean", 0.5))]
        c.log_batch(run, metrics=metrics, params=[Param("sweep.max_concurrent", "2")])
        c.set_terminated(run, "FINISHED")
    c.set_terminated(parent, "FINISHED", end_time=51_000)      # a 50 s sweep
    split = mod.sweep_split(uri, None)     # the newest sweep: this one
    assert (split["wall"], split["k"], split["run_id"], split["restored"]) == (50.0, 2, parent, 0)
    sup = split["rows"]["supervised"]
    assert (sup["n"], sup["steps"], sup["data"], sup["other train"]) == (2, 40.0, 4.0, 4.0)
    assert sup["wall"] == 2 * 1.5 + 40.0 + 4.0 + 4.0
    mod.print_sweep_split(split)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"sweep {parent}: 3 finished trials in 50s (216 trials/hour)")
    # 70 s of steps over 2 slots = 35 s of the sweep's 50 s
    assert out[-1].startswith("steps alone: x1.43 trials/hour at most")
    # a trial the sweep did not train (its stored result logged again: no steps) is left out,
    # and then the sweep's wall time bounds nothing
    run = c.create_run(exp, start_time=0, tags={"mlflow.parentRunId": parent,
                                                "ipb.config_label": "supervised"}).info.run_id
    c.log_batch(run, metrics=[Metric("time.trial.train", 9.0, 0, 0)],
                params=[Param("sweep.max_concurrent", "2")])
    c.set_terminated(run, "FINISHED")
    split = mod.sweep_split(uri, parent)
    assert split["restored"] == 1 and split["rows"]["supervised"]["n"] == 2
    mod.print_sweep_split(split)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"sweep {parent}: 4 finished trials") and "not trained" in out[1]
    assert not any(line.startswith("steps alone") for line in out)
    client(f"sqlite:///{tmp_path}/empty.db")         # a store, with no sweep in it
    with pytest.raises(SystemExit, match="no sweep's parent run"):
        mod.sweep_split(f"sqlite:///{tmp_path}/empty.db", None)
    # bad input: a store that is not there is named, and not made; a parent it does not hold
    with pytest.raises(SystemExit, match="no MLflow store .*typo.db"):
        mod.sweep_split(f"sqlite:///{tmp_path}/typo.db", None)
    assert not (tmp_path / "typo.db").exists()
    with pytest.raises(SystemExit, match="--parent nope: no such run"):
        mod.sweep_split(uri, "nope")
