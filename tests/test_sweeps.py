"""Sweep configs (every script, every configuration resolves), and one grid sweep on the shared
local Ray: trials become child runs of one parent, re-running skips them (no duplicates)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import signal
import sys
from pathlib import Path

import pytest

from ipb.config import load_config
from ipb.search import apply_suggestion
from ipb.sweep import cannot_run, expand
from tiny import TINY, write_tiny_table

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
SCRIPTS = ["ablation", "baselines", "labeled_fraction", "study"]


def _module(name):
    spec = importlib.util.spec_from_file_location(f"sweeps_{name}", SWEEPS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    # importable by name, as a script's functions are in __main__: Tune pickles the searcher
    sys.modules[f"sweeps_{name}"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("profile", ["smoke", "paper", "study"])
def test_every_sweep_configuration_resolves(script, profile):
    cfg = load_config(profile)
    confs = _module(script).configurations(cfg)
    trials = expand(cfg, confs)
    assert len(trials) == sum(len(c.get("_folds", cfg.sweep.folds))
                              for c in confs) * len(cfg.sweep.seeds)
    assert len({t.hash for t in trials}) == len(trials)      # every trial distinct
    assert all(t.cfg.train.fold in cfg.sweep.folds for t in trials)


def test_rows_that_cannot_run_on_the_table_are_named_once_before_tune():
    trials = expand(load_config("smoke", ["sweep.folds=[0,1]"]),
                    [{"_label": "oracle", "method.name": "mpl_balanced"},
                     {"_label": "IPB", "method.name": "ipb"}])
    why = cannot_run(trials, {"unlabeled": 3, "multi_label": 2})
    assert list(why) == ["oracle"] and "5 unlabeled colonies have none" in why["oracle"]
    assert cannot_run(trials, {"unlabeled": 0, "multi_label": 0}) == {}


def test_study_rows_pair_every_row_with_its_supervised_teacher():
    """The study's rows: supervised rows first, each MPL-family row's teacher is the
    supervised row of its labeled fraction (same teacher_key), --ablation adds one row per
    robust switch."""
    from ipb.config import PRESETS
    from ipb.lineage import teacher_key
    mod = _module("study")
    cfg = load_config("study")
    trials = expand(cfg, mod.configurations(cfg))
    methods = [t.cfg.method.name for t in trials]
    assert methods.index("mpl") > max(i for i, m in enumerate(methods) if m == "supervised")
    sup = {teacher_key(t.cfg) for t in trials if t.cfg.method.name == "supervised"}
    assert all(teacher_key(t.cfg) in sup for t in trials
               if t.cfg.method.name in ("mpl", "mpl_balanced", "ipb"))
    n_plain = len(mod.configurations(cfg))
    learn_only = [k for k, v in PRESETS["learn"].items() if PRESETS["robust"].get(k) != v]
    ablation = mod.configurations(cfg, ablation=True)
    # + the paper's MPL and IPB, the oracle, MPL (robust), IPB (robust) + fine-tune,
    # jitter_space, one row per switch
    assert len(ablation) == n_plain + 6 + len(PRESETS["robust"]) + len(learn_only)
    # a random student goes back to the full lr with its init (else it measures the lr)
    init = next(r for r in ablation if "without student_init" in r["_label"])
    assert init["method.mpl.student_init"] == "random" and init["method.mpl.student_lr_scale"] == 1.0
    # --switches: the learn preset's own switches alone, on the first 3 pairs, learn's
    # twins in --ablation's rows
    switches = mod.configurations(cfg, switches=True)[n_plain:]
    assert len(switches) == len(learn_only) and all(r["_folds"] == [0, 1, 2] for r in switches)
    assert {r["_label"] for r in switches} <= {r["_label"] for r in ablation}
    # the default study: FixMatch and ABC, IPB (learn) and its twin without balancing
    labels = [r["_label"] for r in mod.configurations(cfg)]
    assert {"FixMatch", "IPB (learn)", "MPL (learn): IPB (learn) without balancing",
            "supervised (50% labeled)", "FixMatch + IPB balancing"} <= set(labels)
    # FixMatch + IPB balancing is the FixMatch row but for the method: the balancing's effect
    fm = {t.label: t.cfg for t in trials if t.cfg.train.fold == 0}
    a, b = fm["FixMatch"], fm["FixMatch + IPB balancing"]
    assert a.method.name == "fixmatch" and b.method.name == "fixmatch_ipb"
    assert dataclasses.replace(b, method=dataclasses.replace(b.method, name="fixmatch")) == a


def test_ablation_is_table_2():
    labels = {t.label for t in expand(load_config("smoke", ["sweep.folds=[0]"]),
                                       _module("ablation").configurations(load_config("smoke")))}
    for want in ("ipb vgg19", "MS ipb vgg19", "ML ipb vgg19", "ML+MS ipb hrnet_w18",
                 "supervised vgg19", "supervised hrnet_w18", "MS supervised hrnet_w18"):
        assert want in labels


def test_a_search_keeps_its_optuna_study_when_only_the_running_changes():
    """The study is named by what the trials compute: more workers, another tracking server,
    train.compile or a new method's keys at their defaults continue it; a learning rate or an
    old key's value starts another."""
    from ipb.search import study_name
    base = load_config("smoke")
    same = ["train.num_workers=2", "tracking.uri=sqlite:///x.db", "train.compile=true",
            "data.cache_dir=/tmp/elsewhere", "sweep.num_samples=50"]
    assert study_name(load_config("smoke", same)) == study_name(base)
    assert study_name(load_config("smoke", ["train.lr=0.01"])) != study_name(base)
    assert study_name(load_config("smoke", ["method.threshold=0.5"])) == \
        study_name(load_config("smoke", ["method.mpl.threshold=0.5"])) != study_name(base)


def test_search_space_applies():
    from optuna.trial import FixedTrial
    mod = _module("search")
    params = {"model.arch": "ms_vgg19", "patch.scale": 1.25, "method.mpl.threshold": 0.7,
              "train.lr": 1e-3, "method.mpl.student_warmup_lr_scale": 0.1, "method.lambda_u": 1.0,
              "model.width": 0.25}
    mod.space(FixedTrial(params))
    base = load_config("smoke", ["patch.size=64", "patch.ms_size=96"])
    cfg = apply_suggestion(base, params)
    assert cfg.model.arch == "ms_vgg19" and cfg.model.width == 0.25
    assert (cfg.patch.size, cfg.patch.ms_size) == (80, 128)   # x1.25, multiples of 16
    # scaled down, never below what the sampled architecture accepts
    small = apply_suggestion(load_config("smoke", ["patch.ms_size=64"]),
                             {**params, "patch.scale": 0.75})
    assert small.patch.ms_size == 64 and small.patch.ms_size >= 64


def test_table_uri_reads_like_a_directory(tmp_path):
    """--data / data.table as a URI (s3://, gs://, here file://): read with pyarrow's
    filesystems by whoever needs it, never copied, never mistaken for raw images."""
    import pandas as pd

    from ipb.data.table import TableError, load_colonies, read_manifest
    from ipb.inputs import resolve_table
    table = write_tiny_table(tmp_path / "table")
    uri = f"file://{table}"
    assert read_manifest(uri) == read_manifest(table)
    pd.testing.assert_frame_equal(load_colonies(uri), load_colonies(table))
    cfg = load_config("smoke", [f"data.table={uri}"])
    assert resolve_table(cfg) == uri and resolve_table(load_config("smoke"), uri) == uri
    with pytest.raises(TableError, match="nowhere: no manifest.json"):
        resolve_table(cfg, f"file://{tmp_path}/nowhere")
    with pytest.raises(TableError, match="cannot open this table URI"):
        read_manifest("nosuchscheme://bucket/table")


@pytest.mark.ray
def test_grid_sweep_logs_children_and_resumes(tiny_sweep, tmp_path, monkeypatch):
    """conftest's tiny sweep: trials are child runs of one parent, the report is on it, and
    the same sweep again trains and logs nothing new."""
    from ipb import tracking
    from ipb.sweep import run_grid
    s = tiny_sweep
    assert s["rc"] == 0 and "SYNTHETIC" in s["printed"] and "2 finished trial runs" in s["printed"]
    # issue 20: the sweep's own output holds none of the noise a user asked what to do about
    for noise in ("Configuration for experiment", "TensorBoard", "resolved base config",
                  "preset: paper", "Progress bars disabled", "Traceback"):
        assert noise not in s["printed"], noise
    assert "ipb sweep test: profile smoke; set beside the defaults:" in s["printed"]
    c = tracking.client(s["db"])
    exp = c.get_experiment_by_name("ipb-test").experiment_id
    runs = c.search_runs([exp])
    parent = next(r for r in runs if r.data.tags.get("ipb.role") == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["ipb.method"] for r in children} == {"supervised", "ipb"}
    # sweep.reuse_actors: the second trial ran in the first one's Tune process (no new process
    # and imports per trial); each trial's claim file names the process that trained it
    holders = {p.read_text() for p in (Path(s["cfg"].train.storage) / "claims").glob("*.lock")}
    assert len(holders) == 1 and next(iter(holders)).startswith("pid "), holders
    parent_arts = {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/table_tpr.csv",
            "report/tpr_per_class.png"} <= parent_arts
    # issue 20: the parent says what the sweep searched and what it found
    p = c.get_run(parent.info.run_id).data
    assert p.params["space.method.name"] == "ipb, supervised" and p.params["sweep.n_trials"] == "2"
    assert p.metrics["sweep.trials_finished"] == 2
    assert p.metrics["champion.val.tpr.mean"] == max(r.data.metrics["best.val.tpr.mean"]
                                                     for r in children)
    assert "champion.test.tpr.mean" in p.metrics
    assert not parent.info.run_name.startswith("SYNTHETIC")
    assert "SYNTHETIC" in parent.data.tags["mlflow.note.content"]
    _check_mlflow_as_users_see_it(c, exp, parent, children, s["db"], tmp_path, monkeypatch)
    # the same sweep again: nothing new is trained or logged
    again = run_grid("test", s["cfg"], s["confs"], s["table"], progress=False)
    assert again["parent_run_id"] == parent.info.run_id
    assert len(c.search_runs([exp])) == len(runs)


def _check_mlflow_as_users_see_it(c, exp, parent, children, uri, tmp_path, monkeypatch):
    """Issue 14: the experiment opens on its runs; each trial has source tags, the table as a
    dataset input, system metrics and two logged models; the champion is the best trial by
    validation; `ipb predict models:/...@champion` and the pyfunc model classify an image."""
    import mlflow
    from mlflow.types import DataType
    import numpy as np

    from ipb.cli import main as cli
    from ipb.logged_models import ALIAS, SCORE, registered_name
    assert c.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    for r in children:
        t = r.data.tags
        assert t["mlflow.source.git.commit"] and t["mlflow.source.name"], t
        assert t["ipb.tune_trial_id"] and t["ipb.tune_trial_name"], t      # issue 20
        # issue 20: the fold's val and test rows are inputs of their own
        by = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i
              for i in r.inputs.dataset_inputs}
        assert sorted(by) == ["test", "train", "val"]
        ds, test = by["train"], by["test"]
        assert json.loads(test.dataset.profile)["n_colonies"] > 0 and "(fold" in test.dataset.name
        profile = json.loads(ds.dataset.profile)
        assert ds.dataset.name.startswith("SYNTHETIC") and profile["synthetic"] is True
        assert profile["classes"] == {"A": 24, "B": 16, "C": 10}
        assert json.loads(ds.dataset.source)["uri"].startswith("file://")
        assert any(k.startswith("system/cpu_utilization") for k in r.data.metrics), r.data.metrics
        models = c.search_logged_models([exp], f"source_run_id = '{r.info.run_id}'")
        assert {m.name for m in models} == {"student", "colonies"}
    # the logged network takes any batch size (issue 20: torch.export had fixed it at 1)
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", uri)
        net = mlflow.pyfunc.load_model(children[0].data.tags["ipb.model.student"])
        side = int(children[0].data.params["patch.size"])
        for n in (1, 5):
            x = np.random.default_rng(n).standard_normal((n, 1, side, side)).astype(np.float32)
            assert np.asarray(net.predict(x)).shape == (n, 3)
    mv = c.get_model_version_by_alias(registered_name("ipb-test"), ALIAS)
    best = max(children, key=lambda r: r.data.metrics[SCORE])
    champion = c.get_run(parent.info.run_id).data.tags
    assert mv.run_id == champion["ipb.champion.run_id"]
    assert best.data.metrics[SCORE] == c.get_run(mv.run_id).data.metrics[SCORE]
    image = np.full((96, 96), 120, np.uint8)
    image[30:66, 30:66] = (60 + 80 * (np.indices((36, 36)).sum(0) % 2)).astype(np.uint8)
    store = Path(uri.removeprefix("sqlite:///")).parent      # the sweep's db and artifacts
    before = {p for p in store.rglob("*") if p.is_file()}
    assert any(store.glob("mlartifacts/**/code/ipb/data/entropy.py"))    # the model's code
    from PIL import Image
    Image.fromarray(image).save(tmp_path / "well.png")
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", uri)
        model = mlflow.pyfunc.load_model(champion["ipb.champion.uri"])
        df = model.predict([str(tmp_path / "well.png")], params={"test_patches": 3})
        # issue 20: the champion has a signature (image paths in, colonies.csv's columns out,
        # the param test_patches); numpy images go past the schema check
        sig = model.metadata.signature
        assert sig.inputs.input_types() == [DataType.string] and \
            "test_patches" in [p.name for p in sig.params.params] and "p_A" in sig.outputs.input_names()
        same = model.unwrap_python_model().predict(None, [image])
    assert {"class", "p_A", "x0"} <= set(df.columns) and list(same.columns) == list(df.columns)
    # issue 20: loading and predicting wrote bytecode and numba caches into the artifact store.
    # MLflow itself still drops `registered_model_meta` (a few bytes, the same each time) into
    # a local store's model directory when a models:/ URI is loaded without dst_path
    written = {p for p in store.rglob("*") if p.is_file()} - before
    assert not [p for p in written if not p.name.startswith("sweep.db")
                and p.name != "registered_model_meta"], sorted(written)[:5]
    assert cli(["predict", champion["ipb.champion.uri"], str(tmp_path / "well.png"), "--out",
                str(tmp_path / "pred"), "--tracking-uri", uri]) == 0
    assert (tmp_path / "pred" / "colonies.csv").is_file()


@pytest.mark.ray
def test_finished_trials_in_ray_storage_are_logged_again_in_a_new_tracking_store(tiny_sweep,
                                                                                tmp_path):
    """`make run` in a second clone (a new mlflow.db, the same ~/ray_results) failed every
    trial: Ray Train resumed from the finished trial's final checkpoint, which has no
    state.pt. Now the stored result is logged again, not retrained: the same test scores."""
    from ipb import tracking
    from ipb.config import apply
    from ipb.sweep import run_grid
    s = tiny_sweep
    old = tracking.client(s["db"])
    before = {r.data.tags["ipb.trial_hash"]: r.data.metrics["test.tpr.mean"]
              for r in old.search_runs([old.get_experiment_by_name("ipb-test").experiment_id])
              if "ipb.trial_hash" in r.data.tags}
    db = f"sqlite:///{tmp_path}/second.db"
    handler = signal.getsignal(signal.SIGINT)
    out = run_grid("test", apply(s["cfg"], {"tracking.uri": db}), s["confs"], s["table"],
                   progress=False)
    # Tune's fit left its own handler: the next Ctrl-C went to a finished Tune run
    assert signal.getsignal(signal.SIGINT) is handler
    c = tracking.client(db)
    runs = [r for r in c.search_runs([c.get_experiment_by_name("ipb-test").experiment_id])
            if "ipb.trial_hash" in r.data.tags]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), \
        [(r.info.run_name, r.info.status) for r in runs]
    assert {r.data.tags["ipb.trial_hash"]: r.data.metrics["test.tpr.mean"] for r in runs} == before
    assert out["report"]["markdown"]


@pytest.mark.ray
def test_optuna_search_runs_and_resumes(ray_local, tmp_path):
    """sweeps/search.py's own space, end to end: Optuna samples, ASHA, MLflow child runs with
    the objective, the study stored in <storage>/optuna.db, and a re-run that adds nothing."""
    from ipb import tracking
    from ipb.search import run_search
    table = write_tiny_table(tmp_path / "table")
    cfg = load_config("smoke", [*TINY, f"data.table={table}", "patch.size=32", "patch.ms_size=64",
                                "train.epochs=1", "train.steps_per_epoch=1",
                                "method.teacher_pretrain_epochs=0", "split.folds=5",
                                "split.labeled_fraction=0.3", "sweep.folds=[0]",
                                "sweep.num_samples=2", f"train.storage={tmp_path}/ray",
                                f"tracking.uri=sqlite:///{tmp_path}/search.db"])
    handler = signal.getsignal(signal.SIGINT)
    out = run_search(cfg, _module("search").space, table, progress=False)
    assert signal.getsignal(signal.SIGINT) is handler      # Tune's fit left its own
    assert (tmp_path / "ray" / "optuna.db").is_file()
    c = tracking.client(tracking.tracking_uri(cfg))
    exp = c.get_experiment_by_name("ipb-search").experiment_id
    runs = c.search_runs([exp])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["parent_run_id"]]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert all("best.val.tpr.mean" in r.data.metrics for r in children)
    params, value = out["best"]
    assert set(params) >= {"model.arch", "patch.scale", "method.mpl.threshold"}
    assert value == max(r.data.metrics["best.val.tpr.mean"] for r in children)
    again = run_search(cfg, _module("search").space, table, progress=False)
    assert again["study"] == out["study"] and again["parent_run_id"] == out["parent_run_id"]
    assert len(c.search_runs([exp])) == len(runs)


@pytest.mark.ray
def test_study_end_to_end_on_a_tiny_table(ray_local, tmp_path, monkeypatch, capsys):
    """sweeps/study.py through its own main(): supervised, the oracle MPL (which cannot run on
    a U with unlabeled colonies: the sweep says why in one line, runs none of its trials and
    goes on) and IPB (robust), which starts from the supervised run's model; the report's last line."""
    import re

    from ipb import tracking
    from ipb.study import IPB_ROBUST, MPL_BALANCED, SUPERVISED
    mod = _module("study")
    rows = mod.configurations
    keep = {SUPERVISED, MPL_BALANCED, IPB_ROBUST}
    monkeypatch.setattr(mod, "configurations", lambda cfg, *flags: [   # the oracle: --ablation
        r for r in rows(cfg, True) if r["_label"] in keep])
    db = f"sqlite:///{tmp_path}/study.db"
    assert mod.main(["--profile", "smoke", "--data", str(write_tiny_table(tmp_path / "t")),
                     "--tracking-uri", db, *TINY, "train.runner=inline", "patch.size=32",
                     "split.folds=5",
                     "split.labeled_fraction=0.3", "sweep.folds=[0,1]",
                     "tracking.log_models=champion", f"train.storage={tmp_path}/ray"]) == 0
    cap = capsys.readouterr()
    last, out = cap.out.strip().splitlines()[-1], cap.out + cap.err
    assert re.fullmatch(r"study: ipb-supervised [+-]\d\.\d{3} \(p=\S+\), ipb-mpl nan "
                        r"\(p=nan\), minority [+-]\d\.\d{3}, collapsed \d/2, headroom \S+, "
                        r"wall \d+ min",
                        last), last
    c = tracking.client(db)
    runs = c.search_runs([c.get_experiment_by_name("ipb-study").experiment_id])
    by = {}
    for r in runs:
        by.setdefault(r.data.tags.get("ipb.config_label"), []).append(r)
    # the oracle row cannot run where U has unlabeled colonies: one line, no trial, no run
    assert MPL_BALANCED not in by
    assert re.search(r"not run: 'MPL \(balanced, oracle\)' \(2 trials\): method "
                     r"mpl_balanced resamples U by its true classes, but 20 unlabeled", out)
    assert "Traceback" not in out
    sup_ids = {r.info.run_id for r in by[SUPERVISED]}
    assert len(by[IPB_ROBUST]) == 2 and all(
        r.info.status == "FINISHED" and r.data.tags["ipb.teacher_run"] in sup_ids
        for r in by[IPB_ROBUST])
    parent = next(r for r in runs if r.data.tags.get("ipb.role") == "sweep")
    assert any(k.startswith("ipb.not_run.") and v.startswith(MPL_BALANCED)
               for k, v in parent.data.tags.items())
    assert "study/study.md" in {a.path for a in c.list_artifacts(parent.info.run_id, "study")}
    # tracking.log_models=champion (the study profile's): only the champion's models are logged
    champion = c.get_run(parent.info.run_id).data.tags["ipb.champion.run_id"]
    trials = [r for r in runs if "ipb.trial_hash" in r.data.tags]
    assert all(r.data.tags.get("ipb.model.deferred") == "champion" for r in trials)
    logged = {r.info.run_id for r in trials if "ipb.model.colonies" in c.get_run(
        r.info.run_id).data.tags}
    assert logged == {champion}


def test_a_reused_trial_process_drops_the_last_trials_compiled_code():
    """sweep.reuse_actors runs trials one after another in one process: with train.compile a
    trial must compile its own code, as it did in a fresh process (torch.compile's cache
    lives as long as the process)."""
    import torch
    from torch._dynamo.utils import counters

    from ipb.sweep import fresh_trial_process
    f = torch.compile(lambda x: x * 2, backend="eager")
    f(torch.ones(3))
    f(torch.ones(3))
    graphs = counters["stats"]["unique_graphs"]
    fresh_trial_process(compiled=False)
    f(torch.ones(3))
    assert counters["stats"]["unique_graphs"] == graphs          # an eager sweep keeps it
    fresh_trial_process(compiled=True)
    f(torch.ones(3))
    assert counters["stats"]["unique_graphs"] == graphs + 1      # compiled again
