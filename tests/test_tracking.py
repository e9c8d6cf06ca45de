"""MLflow glue without Ray: the global tracking URI put back, a short run's system metrics."""
from __future__ import annotations

import os
import time

import mlflow
import pytest

from ipb.tracking import client, end_run, global_uri, system_metrics


def test_global_uri_is_put_back_as_it_was(tmp_path, monkeypatch):
    inner = f"sqlite:///{tmp_path}/inner.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/outer.db")
    with global_uri(inner):
        assert mlflow.get_tracking_uri() == inner == os.environ["MLFLOW_TRACKING_URI"]
    assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"] == \
        f"sqlite:///{tmp_path}/outer.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(None)
    with global_uri(inner):
        assert mlflow.get_tracking_uri() == inner
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() != inner


def test_a_run_shorter_than_a_sampling_period_still_gets_system_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    c = client(uri)
    run_id = c.create_run(c.create_experiment("sysmetrics")).info.run_id
    monitor = system_metrics(uri, run_id, interval=5.0, per_point=2)   # a point every 10 s
    time.sleep(0.5)
    monitor.finish()
    keys = set(c.get_run(run_id).data.metrics)
    assert any(k.startswith("system/cpu") for k in keys), keys


def test_a_run_ended_by_two_processes_at_once_ends_once(tmp_path, monkeypatch):
    """A stopped sweep and its trial both end the trial's run; SQLite refuses the second
    process's ipb.error insert (UNIQUE constraint, seen in CI). end_run writes it again."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ipb.config import load_config
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = load_config("smoke", [f"tracking.uri={uri}"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = client(uri)
    run_id = c.create_run(c.create_experiment("race")).info.run_id
    c.set_tag(run_id, "ipb.error", "KeyboardInterrupt: the trial's own ending")
    real, calls = MlflowClient.set_tag, []

    def collide_once(self, rid, key, value, *a, **kw):
        calls.append(key)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "tags.key, tags.run_uuid")
        return real(self, rid, key, value, *a, **kw)
    monkeypatch.setattr(MlflowClient, "set_tag", collide_once)
    end_run(cfg, run_id, "KILLED", error="the sweep was stopped")
    run = c.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["ipb.error"] == "the sweep was stopped"
    assert calls == ["ipb.error", "ipb.error"]


def _datasets(name: str) -> list:
    from mlflow.entities import Dataset, DatasetInput
    return [DatasetInput(Dataset(name=name, digest="d1", source_type="local", source="{}"), [])]


def test_a_dataset_another_trial_logs_at_the_same_moment_is_linked(tmp_path, monkeypatch):
    """Two trials starting together log the same dataset; the store refuses the later insert
    (UNIQUE constraint: a study trial failed on it). log_inputs calls again and links it."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ipb.tracking import log_inputs
    c = client(f"sqlite:///{tmp_path}/m.db")
    exp = c.create_experiment("race")
    other, mine = (c.create_run(exp).info.run_id for _ in range(2))
    real, calls = MlflowClient.log_inputs, []

    def lose_the_race(self, run_id, datasets=None, **kw):
        calls.append(run_id)
        if len(calls) == 1:      # the other trial inserts it between this one's lookup and insert
            real(self, other, datasets=datasets, **kw)
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, datasets.name, datasets.digest")
        return real(self, run_id, datasets=datasets, **kw)
    monkeypatch.setattr(MlflowClient, "log_inputs", lose_the_race)
    log_inputs(c, mine, _datasets("train"))
    assert calls == [mine, mine]
    for run_id in (other, mine):
        assert [d.dataset.name for d in c.get_run(run_id).inputs.dataset_inputs] == ["train"]

    def broken(self, run_id, datasets=None, **kw):
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such run")
    monkeypatch.setattr(MlflowClient, "log_inputs", broken)
    with pytest.raises(MlflowException, match="no such run"):     # other errors: not retried
        log_inputs(c, mine, _datasets("val"))


def test_a_run_that_fails_while_starting_ends_failed_not_running(tmp_path, monkeypatch):
    """An error after the run exists (its inputs, its params) ends it FAILED with the error:
    left RUNNING, the sweep took it for its own stop and counted the trial interrupted."""
    from types import SimpleNamespace

    from ipb import tracking
    from ipb.config import load_config
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = load_config("smoke", [f"tracking.uri={uri}"])

    def unreadable(*a, **kw):
        raise OSError("table.parquet: unreadable")
    monkeypatch.setattr(tracking, "table_inputs", unreadable)
    split = SimpleNamespace(labeled=[0], val=[], unlabeled=[], test=[], classes=["a", "b"])
    with pytest.raises(OSError, match="unreadable"):
        tracking.start_trial_run(cfg, split, {"synthetic": True}, name="t", experiment="starts")
    c = client(uri)
    (run,) = c.search_runs([c.get_experiment_by_name("starts").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["ipb.error"] == "starting the run: OSError: table.parquet: unreadable"

    def store_down(*a, **kw):
        raise ConnectionError("tracking server gone")
    monkeypatch.setattr(tracking, "end_run", store_down)     # the first error is the one shown
    with pytest.raises(OSError, match="unreadable"):
        tracking.start_trial_run(cfg, split, {"synthetic": True}, name="t2", experiment="starts")


def test_a_sweeps_parent_run_logs_its_config_and_leaves_no_file_behind(tmp_path, monkeypatch):
    """The parent run's config YAML is an artifact; the file written for it is removed (one
    per sweep was left in the temp directory)."""
    import tempfile

    import yaml

    from ipb import tracking
    from ipb.config import load_config
    from ipb.data import table as table_mod
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(table_mod, "read_manifest", lambda t: {"synthetic": True})
    monkeypatch.setattr(tracking, "table_inputs", lambda t, m: [])
    uri = f"sqlite:///{tmp_path}/m.db"
    cfg = load_config("smoke", [f"tracking.uri={uri}"])
    run_id = tracking.sweep_parent_run(cfg, "sweeps", "grid", "abc123", tmp_path / "table")
    assert list(scratch.iterdir()) == []
    c = client(uri)
    (art,) = [a.path for a in c.list_artifacts(run_id)]
    assert art == f"ipb-{run_id}.yaml"
    saved = yaml.safe_load(open(c.download_artifacts(run_id, art, str(tmp_path))))
    assert saved["profile"] == "smoke"


@pytest.mark.timeout(240)
def test_the_sweeps_mlflow_server_serves_then_goes_with_its_log(tmp_path, monkeypatch):
    """A sqlite store with concurrent trials gets one local `mlflow server`; on exit the server
    is stopped and its log removed (one log per sweep was left in the temp directory)."""
    import tempfile

    from ipb.config import load_config
    from ipb.mlflow_server import writers
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cfg = load_config("smoke", [f"tracking.uri=sqlite:///{tmp_path}/m.db"])
    w = writers(cfg, 2)
    with w as url:
        assert url.startswith("http://127.0.0.1:") and w.log.parent == scratch
        client(url).create_experiment("served")
        pid = w.proc.pid
    assert list(scratch.iterdir()) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert client(f"sqlite:///{tmp_path}/m.db").get_experiment_by_name("served") is not None
