"""MLflow glue without Ray: the global tracking URI put back, a short run's system metrics."""
from __future__ import annotations

import os
import time

import mlflow

from ipb.tracking import client, global_uri, system_metrics


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
