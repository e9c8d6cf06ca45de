"""One trial on the shared local Ray cluster: 2 DDP workers, MLflow run, kill-and-resume."""
from __future__ import annotations

import time

import pytest

from ipb.config import load_config
from tiny import TINY, write_tiny_table

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return write_tiny_table(tmp_path_factory.mktemp("table") / "t")


def _cfg(tmp_path, table, method, *extra):
    return load_config("smoke", [*TINY, f"data.table={table}", f"method.name={method}",
                                 "patch.size=32", "model.arch=vgg19", "train.num_workers=2",
                                 "train.steps_per_epoch=2", "train.epochs=2",
                                 "split.folds=5", "split.labeled_fraction=0.3",
                                 f"train.storage={tmp_path}/ray", *extra])


def _run(cfg, **kw):
    from ipb.train import fit
    return fit(cfg, cfg.data.table, progress=False, **kw)


def test_ipb_two_workers_logs_a_complete_mlflow_run(ray_local, tmp_path, table):
    from ipb.tracking import client, tracking_uri
    # with the optional fine-tuning stage, which runs through the students' DDP wrapper
    cfg = _cfg(tmp_path, table, "ipb", "train.finetune_epochs=1")
    out = _run(cfg)
    c = client(tracking_uri(cfg))
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    for k in ("ipb.method", "ipb.arch", "ipb.scales", "ipb.multi_label", "ipb.labeled_fraction",
              "ipb.fold", "ipb.seed", "ipb.sweep"):
        assert k in tags
    assert tags["ipb.method"] == "ipb" and tags["ipb.synthetic"] == "true"
    # SYNTHETIC in the tag, the dataset and the description; the run name stays short
    assert run.info.run_name.startswith(
        f"ipb-{cfg.model.arch}-f{cfg.train.fold}-s{cfg.train.seed}-"), run.info.run_name
    assert "SYNTHETIC" in tags["mlflow.note.content"]
    assert run.inputs.dataset_inputs[0].dataset.name.startswith("SYNTHETIC")
    m = run.data.metrics
    assert {"test.tpr.mean", "test.f1.mean", "test.precision.A", "val.tpr.mean",
            "ipb.pseudo_frac.A", "train.teacher"} <= set(m)
    # where the trial's time went (benchmarks/trial_time.py): the colonies to rank 0's worker
    # are part of training's time
    assert {"time.trial.before", "time.trial.train", "time.trial.result",
            "time.trial.data"} <= set(m)
    assert 0.0 < m["time.trial.data"] < m["time.trial.train"]
    # per-epoch history: one val point per epoch
    hist = c.get_metric_history(out["run_id"], "val.tpr.mean")
    assert len(hist) == 3   # 1 teacher pre-training epoch + 2 IPB epochs
    arts = {a.path for a in c.list_artifacts(out["run_id"])}
    assert {"confusion_test.png", "loss_curves.png", "pseudo_class_fractions.png",
            "config.yaml", "result.json", "model"} <= arts
    assert c.list_artifacts(out["run_id"], "model")[0].path == "model/student.pt"
    assert run.data.params["train.num_workers"] == "2"
    # the 2 workers' test shards together hold every test colony exactly once
    for part in ("test", "val"):
        cm = out["result"][f"cm_{part}"]
        assert sum(map(sum, cm)) == int(run.data.params[f"split.n_{part}"])


def test_worker_killed_mid_run_resumes_from_checkpoint(ray_local, tmp_path, table):
    cfg = _cfg(tmp_path, table, "mpl", "train.epochs=3", "train.max_failures=2")
    marker = tmp_path / "killed"
    out = _run(cfg, fault={"rank": 1, "epoch": 1, "marker": str(marker)})
    assert marker.exists(), "the fault was not injected"
    epochs = [h["epoch"] for h in out["result"]["history"]]
    assert epochs == list(range(len(epochs))) and len(epochs) == 4


def test_failed_run_is_marked_failed(ray_local, tmp_path, table):
    from ipb.tracking import client, tracking_uri
    cfg = _cfg(tmp_path, table, "mpl", "train.max_failures=0")
    marker = tmp_path / "killed"
    with pytest.raises(Exception):
        _run(cfg, fault={"rank": 0, "epoch": 0, "marker": str(marker)})
    c = client(tracking_uri(cfg))
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert runs and runs[0].info.status == "FAILED" and "ipb.error" in runs[0].data.tags


def test_inline_runner_resumes_a_failed_trial_from_its_checkpoint(ray_local, tmp_path, table):
    """train.runner=inline: the trial trains in this process (no Train worker group), logs
    the same MLflow run, checkpoints each epoch in train.storage, and the same trial run again
    after a failure resumes from the last checkpoint."""
    from ipb.tracking import client, tracking_uri
    cfg = _cfg(tmp_path, table, "ipb", "train.runner=inline", "train.num_workers=1",
               "train.epochs=3")
    marker = tmp_path / "failed"
    with pytest.raises(Exception, match="injected fault at epoch 1"):
        _run(cfg, fault={"rank": 0, "epoch": 1, "marker": str(marker)})
    c = client(tracking_uri(cfg))
    (failed,) = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert failed.info.status == "FAILED"
    out = _run(cfg)
    epochs = [h["epoch"] for h in out["result"]["history"]]
    assert epochs == list(range(4))          # 1 pre-training + 3 IPB epochs, none twice
    # issue 23 case 10: the resumed trial continues its own MLflow run, not a second one
    assert out["run_id"] == failed.info.run_id
    assert len(c.search_runs([e.experiment_id for e in c.search_experiments()])) == 1
    steps = [m.step for m in c.get_metric_history(out["run_id"], "val.tpr.mean")]
    assert sorted(set(steps)) == list(range(4))
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ipb.resumed_from_epoch"] == "1"
    assert "ipb.error" not in run.data.tags
    assert "test.tpr.mean" in run.data.metrics and out["checkpoint"].endswith("inline")
    # issue 20: the student's weight count, and the config count under its own name
    from ipb.models import create_model
    model = create_model(cfg.model.arch, len(out["result"]["classes"]), width=cfg.model.width)
    assert run.data.metrics["model.n_weights"] == sum(p.numel() for p in model.parameters())
    assert int(run.data.tags["ipb.n_config_params"]) > 50 and "ipb.n_params" not in run.data.tags
    with pytest.raises(Exception, match="train.num_workers=1"):
        _run(_cfg(tmp_path, table, "supervised", "train.runner=inline", "train.num_workers=2"))


def test_a_sweep_decodes_its_table_once_per_node(ray_local, table):
    """Workers on one node share one ColonyBank per patch size, built by that node's
    _NodeBank (the compressed table crosses the network, not the decoded bank), and the node
    banks end with the sweep's table holder."""
    import numpy as np
    import ray
    from ipb.data.patches import ColonyBank
    from ipb.data.table import load_colonies
    from ipb.shared_table import bank_name, node_bank, shared_table

    def alive():
        return [a for a in ray.util.list_named_actors() if "-bank-" in a]

    @ray.remote(num_cpus=0)
    def worker(holder, size):
        bank = node_bank(holder, size)
        return len(bank), bank.size, bank.crop(0).copy(), ray.get_runtime_context().get_node_id()

    with shared_table(table) as name:
        first, second = ray.get([worker.remote(name, 32), worker.remote(name, 32)])
        assert first[3] == second[3] and alive() == [bank_name(name, first[3])]
        other = ray.get(worker.remote(name, 48))      # another patch size: the same actor
        assert len(alive()) == 1
        # a node bank that died (out of memory while decoding) is started again, once
        ray.kill(ray.get_actor(bank_name(name, first[3])))
        again = ray.get(worker.remote(name, 32))
        assert np.array_equal(again[2], first[2]) and alive() == [bank_name(name, first[3])]
    rows = load_colonies(table, columns=["crop", "mask"]).to_dict("records")
    for n, size, crop0, _ in (first, second, other):
        assert n == len(rows) and size in (32, 48)
        assert np.array_equal(crop0, ColonyBank.from_rows(rows[:1], size).crop(0))
    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(), "the node banks outlived the sweep"


def test_a_compiled_mpl_trial_runs_on_two_ddp_workers(ray_local, tmp_path, table):
    """train.compile under DDP (each worker compiles its networks' forward, then wraps them),
    through the MPL step and its grad-share diagnostic (a graph backpropagated twice)."""
    from ipb.tracking import client, tracking_uri
    cfg = _cfg(tmp_path, table, "mpl", "model.arch=small_cnn", "train.compile=true",
               "train.epochs=1", "method.teacher_pretrain_epochs=1")
    out = _run(cfg)
    run = client(tracking_uri(cfg)).get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.compile"] == "True"
    assert 0.0 <= run.data.metrics["test.tpr.mean"] <= 1.0 and "train.mpl_grad_share" in \
        run.data.metrics


def test_the_handoff_directory_goes_and_a_dead_workers_is_swept(tmp_path, monkeypatch):
    """Rank 0 hands each epoch's state to Ray Train through a directory of its own, removed
    after; one a SIGKILLed worker left (its pid gone, an hour old) is removed when the next
    worker starts, a live process's or a fresh one is not."""
    import os
    import tempfile

    from ipb import train
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old = time.time() - 2 * train.STALE_HANDOFF_S
    dead = 2 ** 22 + 12345                   # above Linux's pid_max default: no such process
    left = {}
    for name, pid, mtime in (("dead", dead, old), ("fresh", dead, None),
                             ("live", os.getppid(), old)):
        d = tmp_path / f"{train.HANDOFF_PREFIX}{pid}-{name}"
        d.mkdir()
        (d / "state.pt").write_bytes(b"x" * 10)
        if mtime:
            os.utime(d, (mtime, mtime))
        left[name] = d
    train.sweep_handoffs()
    with train.handoff_dir() as d:
        assert d.parent == tmp_path and d.name.startswith(f"{train.HANDOFF_PREFIX}{os.getpid()}-")
        (d / "state.pt").write_bytes(b"y")
    assert not d.exists()
    assert not left["dead"].exists() and left["fresh"].exists() and left["live"].exists()
