"""Sweep command lines that cannot misreport what ran (issue 23): overrides anywhere on the
line, and a grid filter that matches nothing fails before MLflow, the data and Ray. No Ray.

    .venv/bin/pytest tests/test_inputs_guard.py -q
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from ipb.config import ConfigError, load_config
from ipb import sweep, sweep_cli

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"sweeps_{name}_guard", SWEEPS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def nothing_starts(monkeypatch):
    """start_command is the first thing that reaches out (MLflow, the reaper); it must not run."""
    def boom(cfg):
        raise AssertionError("the sweep got as far as start_command")
    monkeypatch.setattr(sweep_cli, "start_command", boom)


def test_overrides_are_taken_before_between_and_after_options():
    args = sweep_cli.parser("d").parse_args(["a.b=1", "--profile", "paper", "train.epochs=3",
                                         "--data", "T", "sweep.limit=1"])
    assert args.overrides == ["a.b=1", "train.epochs=3", "sweep.limit=1"]
    assert (args.profile, args.data) == ("paper", "T")
    with pytest.raises(SystemExit):
        sweep_cli.parser("d").parse_args(["--bogus", "k=v"])     # unknown options still refused


def test_study_script_takes_overrides_after_its_flags(monkeypatch):
    study = _script("study")
    seen = {}

    class Stop(Exception):
        pass

    def stop(args):
        seen.update(vars(args))
        raise Stop                     # stop before anything starts

    monkeypatch.setattr(study, "config_from_args", stop)
    with pytest.raises(Stop):
        study.main(["--ablation", "train.epochs=2", "--data", "T", "sweep.limit=1"])
    assert seen["overrides"] == ["train.epochs=2", "sweep.limit=1"] and seen["ablation"]


def test_ablation_arch_filter_that_matches_nothing_is_an_error():
    ablation = _script("ablation")
    with pytest.raises(ConfigError, match=r"\['small_cnn'\] not in the ablation grid.*"
                                          r"\['vgg19', 'hrnet_w18'\]"):
        ablation.configurations(load_config("smoke", ["sweep.archs=[small_cnn]"]))
    with pytest.raises(ConfigError, match=r"\['vgg-19'\]"):  # a typo beside a good arch too
        ablation.configurations(load_config("smoke", ["sweep.archs=[vgg-19,hrnet_w18]"]))
    kept = ablation.configurations(load_config("smoke", ["sweep.archs=[vgg19]"]))
    assert {c["model.arch"] for c in kept} == {"vgg19", "ms_vgg19"}


def test_ablation_main_fails_before_anything_starts(nothing_starts, capsys):
    ablation = _script("ablation")
    with pytest.raises(SystemExit) as e:
        sweep_cli.main("ablation", ablation.__doc__, ablation.configurations,
                   argv=["--profile", "smoke", "sweep.archs=[small_cnn]"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "small_cnn" in err and "'vgg19', 'hrnet_w18'" in err


def test_a_grid_of_zero_trials_is_refused(nothing_starts, capsys):
    with pytest.raises(SystemExit):
        sweep_cli.main("empty", "d", lambda cfg: [], argv=[])
    assert "'empty' has 0 trials" in capsys.readouterr().err
    with pytest.raises(ValueError, match="0 trials"):         # run_grid's own guard
        sweep.run_grid("empty", load_config("smoke"), [], table="no-such-table")


def test_two_commands_making_the_synthetic_set_at_once_make_it_once(tmp_path, monkeypatch,
                                                                     capsys):
    """`make run` beside a study on a new machine: both found no cached set and both made it
    into one directory (seen 2026-12-07: each ingested the wells the other had not finished).
    The second now waits for the first's claim and uses its table."""
    import threading
    import time

    import ipb.data.ingest
    import ipb.data.synth
    import ipb.runtime
    from ipb import inputs
    made = []

    def synthesize(wells, scfg, progress, workers):
        made.append(threading.get_ident())
        time.sleep(0.5)                           # the other command starts meanwhile
        Path(wells).mkdir(parents=True, exist_ok=True)

    def ingest(wells, table, cfg, labels, layout, progress):
        Path(table).mkdir(parents=True, exist_ok=True)
        (Path(table) / "manifest.json").write_text("{}")

    monkeypatch.setattr(ipb.data.synth, "synthesize", synthesize)
    monkeypatch.setattr(ipb.data.ingest, "ingest", ingest)
    monkeypatch.setattr(ipb.runtime, "init_ray", lambda **kw: None)
    cfg = load_config("smoke", {"data.cache_dir": str(tmp_path)})
    out = []
    threads = [threading.Thread(target=lambda: out.append(inputs.synthetic_table(cfg)))
               for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=30)
    assert len(made) == 1 and len(out) == 2 and out[0] == out[1]
    assert (out[0] / "manifest.json").is_file()
    assert "which is making the SYNTHETIC data set in" in capsys.readouterr().err
