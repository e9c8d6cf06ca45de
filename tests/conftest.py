"""Shared fixtures: one local Ray cluster per test session, the real images, small tables."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """shared/data/real beside the checkout (CI and developers), else None."""
    for cand in (REPO.parent / "shared" / "data" / "real", Path("/work/shared/data/real")):
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def real_dir() -> Path:
    d = real_data_dir()
    if d is None:
        pytest.skip("shared/data/real is not beside this checkout")
    return d


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for every Ray test (address='local': never a stray cluster)."""
    import ray
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from ipb.runtime import LOCAL_TRAIN_ENV, start_local
    for key, value in LOCAL_TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        start_local(ray, address="local", num_cpus=2, include_dashboard=False,
                    log_to_driver=False, logging_level="WARNING",
                    object_store_memory=300 * 1024 * 1024)
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_stray_mlflow(tmp_path, monkeypatch):
    """Tests never write ./mlflow.db in the repo: each gets its own SQLite store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    yield


@pytest.fixture(scope="session")
def tiny_sweep(ray_local, tmp_path_factory):
    """One tiny grid sweep (supervised and IPB, fold 0) run as a user runs it, through a sweep
    script's main(): what it printed, its MLflow store, the table (a file:// URI, as a cluster
    job gives s3://...) and config. The sweep tests and the MLflow UI test share it."""
    import contextlib
    import io

    from ipb.config import load_config
    from ipb.sweep_cli import main
    from tiny import TINY, write_tiny_table
    d = tmp_path_factory.mktemp("sweep")
    table = f"file://{write_tiny_table(d / 'table')}"
    db = f"sqlite:///{d}/sweep.db"
    overrides = [*TINY, "patch.size=32", "train.epochs=1", "train.steps_per_epoch=1",
                 "method.teacher_pretrain_epochs=0", "method.pretext.epochs=1", "split.folds=5",
                 "split.labeled_fraction=0.3", "sweep.folds=[0]", f"train.storage={d}/ray"]
    confs = [{"method.name": "supervised"}, {"method.name": "ipb"}]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main("test", "the tests' tiny sweep", lambda cfg: confs,
                  ["--data", table, "--tracking-uri", db, *overrides])
    cfg = load_config("smoke", [*overrides, f"data.table={table}", f"tracking.uri={db}"])
    return {"rc": rc, "printed": printed.getvalue(), "db": db, "table": table, "cfg": cfg,
            "confs": confs}
