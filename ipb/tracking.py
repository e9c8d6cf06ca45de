"""MLflow: experiments, parent/child runs, tags, per-epoch metrics and artifacts.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db ipb train --method ipb   # then: mlflow ui --backend-store-uri sqlite:///mlflow.db

The tracking URI is `MLFLOW_TRACKING_URI` when set, else `tracking.uri` (sqlite:///mlflow.db).
A plain path / file: store is refused (MLflow 3 deprecates it and many writers corrupt it).
Uses MlflowClient with explicit run ids (no fluent global state), so Ray workers and the driver
can log to the same run.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ipb import stop
from ipb.config import Config, flatten, to_dict, to_yaml, trial_hash
from ipb.lineage import (ARTIFACT_DIR, METHOD_DIR, MODEL_ARTIFACT, TEACHER_ARTIFACT, TEACHER_FILE,
                         teacher_key)

TAG_KEYS = ("ipb.method", "ipb.arch", "ipb.scales", "ipb.multi_label", "ipb.labeled_fraction",
            "ipb.fold", "ipb.seed", "ipb.sweep")


def tracking_uri(cfg: Config | None = None) -> str:
    """An explicit `tracking.uri` wins, then MLFLOW_TRACKING_URI, then sqlite:///mlflow.db."""
    default = Config().tracking.uri
    explicit = cfg.tracking.uri if cfg is not None and cfg.tracking.uri != default else None
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or default
    if "://" not in uri or uri.startswith("file:"):
        raise ValueError(f"tracking URI {uri!r} is a file store; use sqlite:///mlflow.db or an "
                         "http(s):// MLflow server (tracking.uri=... or MLFLOW_TRACKING_URI)")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Ray workers run in another directory: pin a relative SQLite path to ours
        uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri


def quiet_artifact_bars() -> None:
    """No "Downloading artifacts" progress bars: a trial's teacher download printed three into
    the sweep's output per trial; a bar for a file of a few MB is noise in any log."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class _Deferring:
    """An MlflowClient whose every call ends before a stop (Ctrl-C, SIGTERM) is raised: one
    raised inside a SQLite write left the database locked for the rest of the process
    (ipb/stop.py)."""

    def __init__(self, c):
        self._client = c

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_client":     # copy, pickle: not the client's
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with stop.deferred():
                return attr(*args, **kwargs)
        return call


def client(uri: str | None = None):
    quiet_artifact_bars()
    from mlflow.tracking import MlflowClient
    return _Deferring(MlflowClient(tracking_uri=uri or tracking_uri()))


def search(uri: str, experiment: str, flt: str = "", newest_first: bool = False) -> list:
    """The runs of `experiment` matching the filter `flt` (all of them, up to 50,000), newest
    first if asked; [] when the experiment does not exist yet."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    order = ["attributes.start_time DESC"] if newest_first else None
    return c.search_runs([exp.experiment_id], flt, max_results=50000, order_by=order)


# MLflow 3's UI opens an experiment of this kind in model-training mode (runs, not GenAI traces)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


@contextlib.contextmanager
def global_uri(uri: str):
    """`uri` as MLflow's global tracking URI for the duration: log_model, the registry's SQL
    store (it looks up a version's logged model with a default client) and models:/ URIs
    (resolved with the default registry) use it, whatever URI a call is given.
    set_tracking_uri also writes MLFLOW_TRACKING_URI, which our own `tracking_uri` reads:
    both are put back as they were. (A global URI MLflow holds is always the variable's value:
    setting one sets the other, and None unsets both, so the variable is all there is to keep.)"""
    import mlflow
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(env)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def experiment_id(name: str, uri: str | None = None) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        uri = uri or tracking_uri()
        # beside the database, not ./mlruns of whichever directory the first run started in
        where = str(Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / name) \
            if uri.startswith("sqlite:///") else None
        try:
            return c.create_experiment(name, artifact_location=where, tags=EXPERIMENT_KIND)
        except Exception:   # created concurrently by another trial
            exp = c.get_experiment_by_name(name)
    if exp.tags.get("mlflow.experimentKind") is None:    # an experiment made without it
        for k, v in EXPERIMENT_KIND.items():
            c.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def source_tags() -> dict[str, str]:
    """MLflow's source tags (user, entry point, git commit) as `mlflow.start_run` sets them.
    Computed in the process the command started: a trial driver is a Ray worker whose entry
    point is Ray's. The git commit is the ipb checkout's when the entry point is outside it."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils
    tags = {k: v for k, v in resolve_tags({}).items() if k.startswith(("mlflow.source",
                                                                      "mlflow.user"))}
    if "mlflow.source.git.commit" not in tags:
        here = str(Path(__file__).resolve().parent)
        for key, fn in (("commit", git_utils.get_git_commit), ("branch", git_utils.get_git_branch),
                        ("repoURL", git_utils.get_git_repo_url)):
            value = fn(here)
            if value:
                tags[f"mlflow.source.git.{key}"] = value
    return tags


def table_inputs(table: str, manifest: dict, split=None) -> list:
    """The colony table as MLflow dataset inputs: context `train` (name, digest of its shards
    and counts, source URI, schema, a profile with the class counts and the synthetic flag),
    and with a split its `val` and `test` rows (each its own digest and class counts)."""
    import hashlib
    import json

    import numpy as np

    from mlflow.entities import Dataset, DatasetInput, InputTag
    synthetic = bool(manifest.get("synthetic"))
    path = str(table).rstrip("/").partition("?")[0]
    stem = Path(path).name if Path(path).name != "table" else Path(path).parent.name
    digest = hashlib.sha256(json.dumps(
        [manifest.get(k) for k in ("format", "shards", "n_colonies", "classes")],
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    scheme = path.split("://")[0] if "://" in path and not path.startswith("file:") else "local"
    profile = {"synthetic": synthetic, "n_colonies": manifest.get("n_colonies"),
               "n_images": manifest.get("n_images"), "classes": manifest.get("classes"),
               "unlabeled": manifest.get("unlabeled"), "multi_label": manifest.get("multi_label")}
    if split is not None:
        profile["split"] = {p: len(getattr(split, p)) for p in ("labeled", "val", "unlabeled",
                                                                "test")}
    columns = ["colony_id", "label", "multi_label", "source", "group", "crop", "mask"]
    schema = {"mlflow_colspec": [{"name": c, "type": "binary" if c in ("crop", "mask") else
                                  "boolean" if c == "multi_label" else "string"} for c in columns]}
    name = ("SYNTHETIC " if synthetic else "") + stem
    ds = Dataset(name=name, digest=digest,
                 source_type=scheme, source=json.dumps({"uri": str(table)}),
                 schema=json.dumps(schema), profile=json.dumps(profile, default=str))
    out = [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "train"),
                                  InputTag("ipb.synthetic", str(synthetic).lower())])]
    # the fold's validation and test colonies as datasets of their own: which rows of the
    # table, and their class counts, readable beside the training input
    for part in ("val", "test") if split is not None else ():
        rows = np.asarray(getattr(split, part), np.int64)
        sub = hashlib.sha256(digest.encode() + part.encode() + rows.tobytes()).hexdigest()[:16]
        prof = {"synthetic": synthetic, "part": part, "fold": split.fold, "seed": split.seed,
                "n_colonies": int(len(rows)), "classes": split.counts.get(part, {})}
        part_ds = Dataset(name=f"{name} {part} (fold {split.fold})", digest=sub,
                          source_type=scheme, source=json.dumps({"uri": str(table),
                                                                 "split_part": part}),
                          schema=json.dumps(schema), profile=json.dumps(prof, default=str))
        out.append(DatasetInput(part_ds, tags=[InputTag("mlflow.data.context", part),
                                               InputTag("ipb.synthetic", str(synthetic).lower())]))
    return out


SYNTHETIC_NOTE = ("**SYNTHETIC data**: a generated stand-in for microscopy "
                  "(ipb.data.synth), not the paper's images; its numbers exercise the system.")


def trial_tags(cfg: Config, synthetic: bool, sweep: str = "") -> dict[str, str]:
    from ipb.models import model_info
    ms = model_info(cfg.model.arch)["multi_scale"]
    tags = {"ipb.method": cfg.method.name, "ipb.arch": cfg.model.arch,
            "ipb.scales": "ms" if ms else "single",
            "ipb.multi_label": str(cfg.method.multi_label).lower(),
            "ipb.labeled_fraction": str(cfg.split.labeled_fraction),
            "ipb.fold": str(cfg.train.fold), "ipb.seed": str(cfg.train.seed),
            "ipb.sweep": sweep or "none", "ipb.profile": cfg.profile,
            "ipb.synthetic": str(bool(synthetic)).lower(),
            "ipb.selected_on": cfg.train.select_on,
            "ipb.trial_hash": trial_hash(cfg)}
    if cfg.method.preset != "paper":
        tags["ipb.preset"] = cfg.method.preset
    if cfg.method.name == "supervised" and teacher_key(cfg):
        # this run's selected model is the pre-trained teacher of MPL-family trials of the
        # same split, seed and budget (find_teacher)
        tags["ipb.teacher_key"] = teacher_key(cfg)
    if cfg.train.select_on == "test":
        tags["ipb.note"] = "model selected on the TEST split (reproduction of the reference code)"
    return tags


def trial_experiment(cfg: Config, sweep: str = "", experiment: str | None = None) -> str:
    """The experiment a trial run lives in."""
    return experiment or cfg.tracking.experiment or ("ipb-" + (sweep or "train"))


def trial_run(cfg: Config, experiment: str, statuses: tuple[str, ...],
              parent_run_id: str | None = None, any_parent: bool = False):
    """The newest run of this trial (its `ipb.trial_hash`) in `experiment` whose status is
    one of `statuses`, under `parent_run_id` (None: a run without a parent) unless
    `any_parent`; or None."""
    runs = search(tracking_uri(cfg), experiment, f"tags.`ipb.trial_hash` = '{trial_hash(cfg)}'",
                  newest_first=True)
    for r in runs:
        if r.info.status in statuses and (
                any_parent or r.data.tags.get("mlflow.parentRunId") == parent_run_id):
            return r
    return None


@stop.deferred()    # all of its writes, or none cut in two (ipb/stop.py)
def start_trial_run(cfg: Config, split, manifest: dict, *, name: str,
                    parent_run_id: str | None = None, sweep: str = "",
                    experiment: str | None = None, table: str = "",
                    extra_tags: dict[str, str] | None = None,
                    reuse: tuple[str, ...] = ()) -> str:
    """Create the run (RUNNING) with tags and flattened params; returns its id. When this
    trial has a run of a status in `reuse` (an interrupted or failed run of the same trial and
    parent), that run is reopened instead: a resumed trial continues its own run, its metrics
    go on from the epoch it resumed at, and no second run of the trial appears."""
    from mlflow.entities import RunTag
    c = client(tracking_uri(cfg))
    exp = trial_experiment(cfg, sweep, experiment)
    synthetic = bool(manifest.get("synthetic"))
    tags = trial_tags(cfg, synthetic, sweep)
    # SYNTHETIC is a tag, the dataset's name and the run's description, not a run-name prefix:
    # as a prefix the UI's Run Name column read "SYNTHETIC si…" for every run
    tags["mlflow.runName"] = name
    if synthetic:
        tags["mlflow.note.content"] = SYNTHETIC_NOTE
    tags["ipb.table"] = table
    tags["ipb.classes"] = ",".join(split.classes)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags.update(extra_tags or {})
    if "mlflow.source.name" not in tags:     # a sweep passes its entry point's
        tags.update(source_tags())
    old = trial_run(cfg, exp, reuse, parent_run_id) if reuse else None
    if old is not None:
        run_id = old.info.run_id
        c.update_run(run_id, status="RUNNING")
    else:
        run_id = c.create_run(experiment_id(exp, tracking_uri(cfg)), tags=tags).info.run_id
    try:
        if old is not None:
            if "ipb.error" in old.data.tags:
                c.delete_tag(run_id, "ipb.error")
            tags["ipb.reopened_from"] = old.info.status
            c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            logged = old.data.params
        else:
            log_inputs(c, run_id, table_inputs(table, manifest, split))
            logged = {}
        params = {k: str(v)[:500] for k, v in flatten(to_dict(cfg)).items()}
        for p in ("labeled", "val", "unlabeled", "test"):
            params[f"split.n_{p}"] = str(len(getattr(split, p)))
        # a reopened run keeps the params it has (MLflow refuses to change one: e.g. the port
        # of the sweep's tracking server in tracking.uri)
        log_params(c, run_id, {k: v for k, v in params.items() if k not in logged})
        c.log_batch(run_id, tags=[RunTag("ipb.n_config_params", str(len(params)))])
    except Exception as e:
        # the run exists: left RUNNING, a sweep took the failure for its own stop ("the sweep
        # was stopped", counted interrupted, not failed). A stop (KeyboardInterrupt) is left
        # to the sweep or the re-run, which end or reopen a RUNNING run as they should.
        try:
            end_run(cfg, run_id, "FAILED", error=f"starting the run: {type(e).__name__}: {e}")
        except Exception:     # the store that failed may refuse this too: show the first error
            pass
        raise
    return run_id


def log_inputs(c, run_id: str, datasets: list, attempts: int = 3) -> None:
    """`c.log_inputs`, again when a trial starting beside this one logged the same dataset
    between the store's lookup and its insert. The store's unique key (experiment, name,
    digest) then refuses this insert ('UNIQUE constraint failed' on SQLite, 'duplicate key' on
    PostgreSQL, 'Duplicate entry' on MySQL) and rolls it back whole; the next call finds the
    dataset and links it. Seen when a study's first two trials started together on a new
    experiment: one trial failed."""
    from mlflow.exceptions import MlflowException
    for attempt in range(attempts):
        try:
            c.log_inputs(run_id, datasets=datasets)
            return
        except MlflowException as e:
            text = str(e)
            if attempt == attempts - 1 or not any(
                    m in text for m in ("UNIQUE constraint", "duplicate key", "Duplicate entry")):
                raise
            time.sleep(0.2 * (attempt + 1))


def system_metrics(uri: str, run_id: str, resume: bool = False, interval: float = 2.0,
                   per_point: int = 2):
    """MLflow's system-metrics monitor (CPU, memory, disk, network, NVIDIA GPUs: system/*
    metrics) on this run, started; call .finish() at the end. A point every interval x
    per_point seconds (4 s: a curve even for a 30 s trial; MLflow's 10 s x 1 gave those one
    point). A trial shorter than that still gets one (MLflow's own monitor drops it)."""
    import logging

    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class Monitor(SystemMetricsMonitor):
        published = False

        def publish_metrics(self, metrics):
            self.published = True
            return super().publish_metrics(metrics)

        @stop.deferred()       # its last write, as every other (ipb/stop.py)
        def finish(self):
            super().finish()
            if not self.published:
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
                self.mlflow_logger.flush()

    # "Started monitoring system metrics." and friends, at INFO, once per trial
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = Monitor(run_id, sampling_interval=interval, samples_before_logging=per_point,
                      resume_logging=resume, tracking_uri=uri)
    monitor.start()
    return monitor


class EpochLogger:
    """Per-epoch metrics from the rank-0 worker, one batched write per epoch."""

    def __init__(self, uri: str, run_id: str):
        self.client, self.run_id = client(uri), run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and k != "epoch"]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])


def log_trial_result(run_id: str, cfg: Config, out: dict[str, Any], model_file: Path) -> None:
    """Final metrics + artifacts: confusion matrices, curves, pseudo-class plot, config, model."""
    import json

    import numpy as np

    from mlflow.entities import Metric

    from ipb import plots
    c = client(tracking_uri(cfg))
    classes = out["classes"]
    run = c.get_run(run_id)
    synthetic = run.data.tags.get("ipb.synthetic") == "true"
    title = ("SYNTHETIC data - " if synthetic else "") + run.info.run_name
    metrics = [Metric(k, float(v), 0, 0) for k, v in out["metrics"].items()
               if isinstance(v, (int, float))]
    c.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        plots.confusion_png(np.array(out["cm_test"]), classes, d / "confusion_test.png",
                            f"{title}\ntest confusion (rows: true)")
        plots.confusion_png(np.array(out["cm_val"]), classes, d / "confusion_val.png",
                            f"{title}\nval confusion (rows: true)")
        hist = out["history"]
        loss_keys = sorted({k for h in hist for k in h if k.startswith("train.")
                            and k not in ("train.h", "train.mask_rate")})
        plots.curves_png(hist, loss_keys, d / "loss_curves.png", title, "loss")
        plots.curves_png(hist, [f"val.tpr.{c_}" for c_ in classes] + ["val.tpr.mean"],
                         d / "val_tpr.png", title, "val TPR (recall)")
        plots.pseudo_fractions_png(hist, classes, d / "pseudo_class_fractions.png", title)
        (d / "config.yaml").write_text(to_yaml(cfg))
        (d / "result.json").write_text(json.dumps(out, default=float, indent=1))
        for f in d.iterdir():
            c.log_artifact(run_id, str(f))
        c.log_artifact(run_id, str(model_file), artifact_path=ARTIFACT_DIR)
    if (model_file.parent / METHOD_DIR).is_dir():    # Method.final_report's files
        c.log_artifacts(run_id, str(model_file.parent / METHOD_DIR), METHOD_DIR)
    teacher_file = model_file.parent / TEACHER_FILE
    if teacher_file.is_file() and teacher_key(cfg):
        c.log_artifact(run_id, str(teacher_file), artifact_path=ARTIFACT_DIR)
        c.set_tag(run_id, "ipb.teacher_artifact", TEACHER_ARTIFACT)
        c.set_tag(run_id, "ipb.teacher_key", teacher_key(cfg))
    m = out["metrics"]
    if "collapse.final" in m:
        c.set_tag(run_id, "ipb.collapsed", str(bool(m["collapse.final"])).lower())
        c.set_tag(run_id, "ipb.collapsed_during", str(bool(m["collapse.any"])).lower())


def find_teacher(cfg: Config, classes: list[str]) -> tuple[str, dict] | None:
    """(run id, state dict) of the pre-trained teacher an MPL-family trial would train first:
    the selected model of a FINISHED supervised run with the same `teacher_key` (or the
    teacher an earlier MPL-family trial pre-trained), in any experiment of the store."""
    if cfg.method.name == "supervised":
        return None
    key = teacher_key(cfg)
    if key is None:
        return None
    import torch
    c = client(tracking_uri(cfg))
    exps = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(exps, f"tags.`ipb.teacher_key` = '{key}' and "
                               "attributes.status = 'FINISHED'", max_results=1) if exps else []
    if not runs:
        return None
    run = runs[0]
    with tempfile.TemporaryDirectory() as d:
        path = c.download_artifacts(run.info.run_id, run.data.tags.get(
            "ipb.teacher_artifact", MODEL_ARTIFACT), d)
        saved = torch.load(path, map_location="cpu", weights_only=True)
    if list(saved.get("classes", [])) != list(classes) or saved.get("arch") != cfg.model.arch:
        return None        # the same key over a table whose classes changed: train afresh
    return run.info.run_id, saved["state_dict"]


@stop.deferred()    # all of its writes, or none cut in two (ipb/stop.py)
def end_run(cfg: Config, run_id: str, status: str, error: str | None = None) -> None:
    """End a run with `status` (and its error as the tag ipb.error). Two processes may end one
    run at the same moment: a stopped sweep ends its RUNNING trials while each trial ends its
    own. A SQLite store then refuses the second one's tag (its insert collides with the first's:
    UNIQUE constraint failed, seen in CI); the tag exists by then, so writing it again updates."""
    from mlflow.exceptions import MlflowException
    c = client(tracking_uri(cfg))
    if error:
        try:
            c.set_tag(run_id, "ipb.error", error[:5000])
        except MlflowException:
            c.set_tag(run_id, "ipb.error", error[:5000])
    c.set_terminated(run_id, status=status)


# -- sweeps: parent runs, resume (their local MLflow server: ipb/mlflow_server.py) ---------------

def log_params(c, run_id: str, params: dict[str, str]) -> None:
    """Params in batches of 100, the most one MLflow call takes."""
    from mlflow.entities import Param
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


@stop.deferred()    # all of its writes, or none cut in two (ipb/stop.py)
def sweep_parent_run(cfg: Config, experiment: str, kind: str, sweep_hash: str,
                     table: str | Path, tags: dict[str, str] | None = None,
                     params: dict[str, str] | None = None) -> str:
    """The parent run of this sweep: reopened when the same sweep is run again (resume);
    `params` (what the sweep searches) logged when it is created."""
    c = client(tracking_uri(cfg))
    exp = experiment_id(experiment, tracking_uri(cfg))
    found = c.search_runs([exp], f"tags.`ipb.sweep_hash` = '{sweep_hash}'", max_results=1)
    if found:
        c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    from ipb.data.table import read_manifest
    manifest = read_manifest(table)
    synthetic = bool(manifest.get("synthetic"))
    run = c.create_run(exp, run_name=f"sweep {kind}",
                       tags={**({"mlflow.note.content": SYNTHETIC_NOTE} if synthetic else {}),
                             "ipb.sweep": kind, "ipb.sweep_hash": sweep_hash,
                             "ipb.role": "sweep", "ipb.synthetic": str(synthetic).lower(),
                             "ipb.table": str(table), "ipb.profile": cfg.profile,
                             **(tags or {})})
    log_inputs(c, run.info.run_id, table_inputs(str(table), manifest))
    log_params(c, run.info.run_id, {k: str(v)[:6000] for k, v in (params or {}).items()})
    # in a directory of its own, removed after: one file per sweep was left in /tmp
    with tempfile.TemporaryDirectory(prefix="ipb-config-") as d:
        f = Path(d) / f"ipb-{run.info.run_id}.yaml"
        f.write_text(to_yaml(cfg))
        c.log_artifact(run.info.run_id, str(f))
    return run.info.run_id


def trial_states(cfg: Config, experiment: str, parent_run_id: str) -> dict[str, tuple[str, str]]:
    """trial hash -> (status, run id) of the newest run of each trial under a sweep's parent
    run."""
    runs = search(tracking_uri(cfg), experiment, f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                  newest_first=True)
    out: dict[str, tuple[str, str]] = {}
    for r in runs:
        h = r.data.tags.get("ipb.trial_hash")
        if h and h not in out:
            out[h] = (r.info.status, r.info.run_id)
    return out


def finished_trials(cfg: Config, experiment: str, metric: str | None = None) -> dict[str, Any]:
    """trial hash -> run id (or the value of `metric`) of FINISHED trial runs."""
    runs = search(tracking_uri(cfg), experiment, "attributes.status = 'FINISHED'")
    return {r.data.tags["ipb.trial_hash"]: (r.data.metrics.get(metric) if metric else r.info.run_id)
            for r in runs if "ipb.trial_hash" in r.data.tags}


def log_sweep_summary(uri: str, experiment: str, parent_run_id: str,
                      champion: dict | None) -> None:
    """The parent run's metrics: how many trials finished under it, and the champion's
    validation (what chose it) and test mean TPR, so the runs view shows the sweep's result."""
    import time

    from mlflow.entities import Metric
    c = client(uri)
    runs = search(uri, experiment, f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                  "attributes.status = 'FINISHED'")
    now = int(time.time() * 1000)
    metrics = {"sweep.trials_finished": float(len(runs))}
    if champion:
        metrics["champion.val.tpr.mean"] = float(champion["val"])
        test = c.get_run(champion["run_id"]).data.metrics.get("test.tpr.mean")
        if test is not None:
            metrics["champion.test.tpr.mean"] = float(test)
    c.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
