"""MLflow glue without Ray: the global tracking URI put back, a short run's system metrics."""
from __future__ import annotations

import os
import time

import mlflow

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
