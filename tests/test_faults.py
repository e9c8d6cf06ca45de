"""Sweeps never misreport what ran (issue 23): a stopped sweep, two sweeps at once, a resumed
trial, split warnings. The claim and the report's dedup are tested without Ray; the rest on
the shared local Ray, bounded in time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tiny import TINY, write_tiny_table

HOLD = """import sys, time
from ipb.claims import claim
with claim(sys.argv[1], "h1"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(tmp_path, seconds):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_claimed_trial_is_refused_or_waited_for_and_freed_by_kill_9(tmp_path):
    from ipb.claims import TrialClaimed, claim
    p = _holder(tmp_path, 60)
    try:
        with pytest.raises(TrialClaimed, match=rf"pid {p.pid} on "):
            with claim(str(tmp_path), "h1"):
                pass
        with claim(str(tmp_path), "h2") as other:     # another trial: not blocked
            assert other.name == "h2.lock"
    finally:
        p.kill()                                       # kill -9: the kernel drops the lock
        p.wait(10)
    with claim(str(tmp_path), "h1") as path:
        assert path.read_text().startswith(f"pid {os.getpid()} ")
    p = _holder(tmp_path, 1.5)
    t0, said = time.time(), []
    with claim(f"file://{tmp_path}", "h1", wait=True, log=said.append):
        assert time.time() - t0 > 0.5 and "waiting for pid" in said[0]
    p.wait(10)
    with claim("s3://bucket/prefix", "h1") as none:    # object storage: no lock to take
        assert none is None


def test_report_counts_each_trial_once_the_newest_finished_run(tmp_path):
    """Two FINISHED runs of one trial hash (two sweeps that ran it at once) enter the
    report's rows once: the newer one."""
    from ipb.report import trial_runs
    from ipb.tracking import client
    uri = f"sqlite:///{tmp_path}/m.db"
    c = client(uri)
    exp = c.create_experiment("dup")
    ids = []
    for k, tpr in enumerate((0.5, 0.7)):
        r = c.create_run(exp, start_time=1000 + k, tags={
            "ipb.trial_hash": "h", "ipb.fold": "0", "ipb.method": "ipb", "ipb.arch": "a"})
        c.log_metric(r.info.run_id, "test.tpr.mean", tpr)
        c.set_terminated(r.info.run_id, "FINISHED")
        ids.append(r.info.run_id)
    df = trial_runs("dup", uri)
    assert len(df) == 1 and df["run_id"].iloc[0] == ids[1] and df["test.tpr.mean"].iloc[0] == .7
    assert len(trial_runs("dup", uri, hashes=["h"])) == 1


# -- on the shared local Ray -----------------------------------------------------------------

@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return f"file://{write_tiny_table(tmp_path_factory.mktemp('table') / 't')}"


def _overrides(d: Path, *extra: str) -> list[str]:
    # inline trials: no Train worker group to start, so a trial is seconds, not ~30 s
    return [*TINY, "patch.size=32", "train.runner=inline", "train.num_workers=1",
            "method.teacher_pretrain_epochs=0", "split.folds=5", "split.labeled_fraction=0.3",
            "sweep.folds=[0]", f"train.storage={d}/ray", "tracking.experiment=ipb-faults",
            *extra]


def _runs(uri: str):
    from ipb.tracking import client
    c = client(uri)
    exp = c.get_experiment_by_name("ipb-faults")
    return c, c.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_a_stopped_sweep_says_so_and_resumes_in_its_own_run(ray_local, table, tmp_path):
    """Issue 23 case 1: Ctrl-C during a sweep was exit 0, "1 trials finished, 0 failed", the
    parent FINISHED and the child RUNNING forever, and the re-run trained it from scratch.
    Now: exit 130, parent and child KILLED; the same command again resumes the trial from its
    checkpoint in the same MLflow run (case 10), and the parent ends FINISHED."""
    from ipb.sweep_cli import main
    db = f"sqlite:///{tmp_path}/m.db"
    argv = ["--data", table, "--tracking-uri", db,
            *_overrides(tmp_path, "train.epochs=12", "train.steps_per_epoch=4")]
    confs = [{"method.name": "supervised"}]
    stop = threading.Event()

    def interrupt_after_first_checkpoint():
        while not stop.is_set():
            if list((tmp_path / "ray").glob("*/inline/state.pt")):
                os.kill(os.getpid(), signal.SIGINT)      # what Ctrl-C sends the script
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_after_first_checkpoint, daemon=True)
    watcher.start()
    try:
        rc = main("faults", "test", lambda cfg: confs, argv)
    finally:
        stop.set()
    assert rc == 130
    c, runs = _runs(db)
    (parent,) = [r for r in runs if r.data.tags.get("ipb.role") == "sweep"]
    (child,) = [r for r in runs if r.data.tags.get("ipb.role") != "sweep"]
    assert parent.info.status == "KILLED" and parent.data.tags["ipb.sweep_status"] == \
        "interrupted"
    assert child.info.status == "KILLED"
    assert main("faults", "test", lambda cfg: confs, argv) == 0
    c, runs = _runs(db)
    children = [r for r in runs if r.data.tags.get("ipb.role") != "sweep"]
    assert [r.info.run_id for r in children] == [child.info.run_id]     # its own run, once
    again = c.get_run(child.info.run_id)
    # resumed from the checkpoint of the epoch it stopped after (0 or later), not retrained
    assert again.info.status == "FINISHED" and int(again.data.tags["ipb.resumed_from_epoch"]) >= 0
    assert "ipb.error" not in again.data.tags
    steps = [m.step for m in c.get_metric_history(child.info.run_id, "val.tpr.mean")]
    assert sorted(set(steps)) == list(range(12))        # every epoch once over both parts
    assert c.get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_two_sweeps_at_once_train_a_trial_once(ray_local, table, tmp_path):
    """Issue 23 case 2: two identical sweeps at once trained the same trial twice (two
    FINISHED runs of one hash). Here two drivers of one trial at once (as two sweeps' Tune
    trials are): one trains, the other waits for its claim and then skips the FINISHED trial."""
    from ipb.config import load_config
    from ipb.shared_table import put_table
    from ipb.sweep import expand
    from ipb.train import fit
    db = f"sqlite:///{tmp_path}/m.db"
    cfg = load_config("smoke", [*_overrides(tmp_path, "train.epochs=3"), f"tracking.uri={db}",
                                "method.name=supervised"])
    (trial,) = expand(cfg, [{}])
    data = put_table(table)
    from ipb import tracking
    parent = tracking.client(db).create_run(tracking.experiment_id("ipb-faults", db)).info.run_id
    outs: list[dict] = []

    def one():
        outs.append(fit(trial.cfg, data, parent_run_id=parent, sweep="faults",
                        experiment="ipb-faults", progress=False))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join(240)
    assert len(outs) == 2 and sorted(bool(o.get("skipped")) for o in outs) == [False, True]
    assert outs[0]["run_id"] == outs[1]["run_id"]
    c, runs = _runs(db)
    trial_runs = [r for r in runs if r.data.tags.get("ipb.trial_hash") == trial.hash]
    assert len(trial_runs) == 1 and trial_runs[0].info.status == "FINISHED"


@pytest.mark.ray
@pytest.mark.timeout(200)
def test_split_warnings_are_shown_logged_and_fatal_when_selection_is_meaningless(
        ray_local, table, tmp_path, capsys):
    """Issue 23 case 5: split.labeled_fraction=0.005 selected the model on a 1-colony val set
    and nobody was told. `ipb splits` prints the warnings; a trial fails before training
    with what to do, its run FAILED with the reason; split.allow_weak_val=true runs it with
    the warnings on the run."""
    from ipb.cli import main as cli
    from ipb.config import load_config
    from ipb.train import fit
    db = f"sqlite:///{tmp_path}/m.db"
    assert cli(["splits", table, "--fold", "0", "split.labeled_fraction=0.02",
                "split.folds=5"]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "the validation set is empty" in out
    # 0.15: one validation colony, of class A only
    cfg = load_config("smoke", [*_overrides(tmp_path, "train.epochs=1"), f"tracking.uri={db}",
                                "method.name=supervised", "split.labeled_fraction=0.15"])
    with pytest.raises(ValueError, match="split.allow_weak_val=true"):
        fit(cfg, table, progress=False)
    c, (run,) = _runs(db)[0], _runs(db)[1]
    assert run.info.status == "FAILED" and "meaningless" in run.data.tags["ipb.error"]
    out = fit(load_config("smoke", [*_overrides(tmp_path, "train.epochs=1"),
                                    f"tracking.uri={db}", "method.name=supervised",
                                    "split.labeled_fraction=0.15",
                                    "split.allow_weak_val=true"]), table, progress=False)
    tags = c.get_run(out["run_id"]).data.tags
    assert "meaningless" in tags["ipb.split_warnings"]
