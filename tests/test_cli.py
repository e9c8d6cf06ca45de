"""The `ipb` command: --help everywhere, overrides after options, errors that name the key."""
import sys

import pytest

from ipb.cli import build_parser, main

COMMANDS = ["run", "methods", "config", "synth", "segment", "ingest", "splits", "train", "report", "predict"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "usage: ipb " + cmd in capsys.readouterr().out


def test_parser_knows_every_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(COMMANDS) <= set(sub.choices)


def test_train_help_lists_every_registered_method_and_model():
    """The --method / --arch help is plain text (no torch import to build the parser): it must
    name every registered method and model."""
    from ipb.methods import list_methods
    from ipb.models import list_models
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    helps = {a.dest: a.help for a in train._actions}
    assert set(helps["method"].split(" (")[0].split(" | ")) == set(list_methods())
    assert set(helps["arch"].split(" | ")) == set(list_models())


def test_methods_settings_lists_every_section_its_keys_and_old_names(capsys):
    from dataclasses import fields

    from ipb.config import Config
    from ipb.config.settings import settings_classes
    assert main(["methods", "--settings"]) == 0
    out = capsys.readouterr().out
    assert all(f"method.{g} " in out for g in settings_classes())
    assert set(settings_classes()) < {f.name for f in fields(Config().method)}
    assert "threshold = 0.95  in [0, 1]  (was method.fixmatch_threshold)" in out
    assert "preset learn: " in out and "'finetune' | 'hungarian'" in out


def test_overrides_after_options(capsys):
    assert main(["config", "--profile", "paper", "train.epochs=3", "segmentation.well_mask=off"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "well_mask: 'off'" in out


def test_bad_key_is_a_clear_error(capsys, tmp_path):
    assert main(["splits", str(tmp_path), "--fold", "0", "train.epochz=1"]) == 2
    assert "train.epochz" in capsys.readouterr().err
    assert main(["splits", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_synth_cli_writes_synthetic_wells(tmp_path, capsys):
    out = tmp_path / "wells"
    assert main(["synth", "--out", str(out), "--wells", "1", "--size", "256",
                 "synth.colonies_per_well=3"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert (out / "labels.csv").is_file() and (out / "SYNTHETIC.md").is_file()


# ---------------------------------------------------------------- issue 13: bad input corpus

@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if a command starts Ray: these errors must come before it."""
    import ipb.runtime

    def boom(*a, **k):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr(ipb.runtime, "init_ray", boom)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_labels_fail_before_ray(tmp_path, capsys, no_ray):
    import time

    import cv2
    import numpy as np
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.zeros((64, 64), np.uint8))
    bad = tmp_path / "labels.csv"
    bad.write_text("image,x0,y0,x1,label\na.png,1,1,9,A\n")
    t0 = time.time()
    assert main(["ingest", str(src), "--labels", str(bad), "--out", str(tmp_path / "T")]) == 2
    err = _one_line_error(capsys)
    assert "labels.csv" in err and "missing column(s) ['y1']" in err and time.time() - t0 < 5
    assert not (tmp_path / "T").exists()
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "a.xml").write_text("<annotation><filename>a.png</filename><object>"
                                            "<name>A</name></object></annotation>")
    assert main(["ingest", str(src), "--labels", str(tmp_path / "voc"), "--out",
                 str(tmp_path / "T")]) == 2
    assert "a.xml object 1 (A): no <bndbox>" in _one_line_error(capsys)


def test_malformed_yaml_and_out_of_range_values(tmp_path, capsys):
    f = tmp_path / "mine.yaml"
    f.write_text("train:\n  epochs: 3\n  lr: [0.1\nmodel: {arch: vgg19\n")
    assert main(["config", "--profile", str(f)]) == 2
    err = _one_line_error(capsys)
    assert "mine.yaml" in err and "not valid YAML" in err and "line " in err
    for item, allowed in [("train.lr=-0.1", "(0, inf)"), ("train.epochs=0", "[1, inf)"),
                          ("patch.size=1", "[16, inf)"),
                          ("split.labeled_fraction=1.5", "(0, 1]")]:
        assert main(["config", item]) == 2
        err = _one_line_error(capsys)
        assert item.split("=")[0] in err and allowed in err
    f.write_text("data:\n  box_min_cover: 2\n")
    assert main(["config", "--profile", str(f)]) == 2
    assert "data.box_min_cover" in _one_line_error(capsys)


def test_splits_counts_are_not_doubled(tmp_path, capsys):
    import re

    from tiny import write_tiny_table
    table = write_tiny_table(tmp_path / "t")
    assert main(["splits", str(table), "--fold", "0", "split.folds=2"]) == 0
    out = capsys.readouterr().out
    parts = re.findall(r"(\w+) (\d+) (\{[^}]*\})", out)
    assert parts
    for name, n, counts in parts:
        assert int(n) == sum(eval(counts).values()), (name, n, counts)   # total, not 2x total
    assert sum(int(n) for _, n, _ in parts) == 70          # every colony once over the parts


def test_unreachable_tracking_server_fails_fast(tmp_path, capsys, no_ray):
    import time
    t0 = time.time()
    assert main(["train", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = _one_line_error(capsys)
    assert "http://127.0.0.1:9" in err and "does not answer" in err and time.time() - t0 < 15
    t0 = time.time()
    assert main(["predict", "0" * 32, str(tmp_path), "--out", str(tmp_path / "o"),
                 "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = _one_line_error(capsys)
    assert "does not answer" in err and "not found" not in err and time.time() - t0 < 15


def test_no_process_outlives_a_killed_ingest(tmp_path):
    """kill -9 of `ipb ingest` while Ray runs: every process it started is gone soon after
    (Ray's DashboardAgent/RuntimeEnvAgent used to stay, under init, ignoring SIGTERM)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import cv2
    import numpy as np

    from ipb.reaper import descendants
    src = tmp_path / "src"
    src.mkdir()
    img = (np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)
    for i in range(300):
        cv2.imwrite(str(src / f"img_{i:03d}.png"), img)
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "ipb.cli", "ingest", str(src), "--out",
                             str(tmp_path / "T"), "data.shard_size=1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[int, int] = {}
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            seen.update(descendants(proc.pid))
            names = [_name(p) for p in seen]
            if any("DashboardAgent" in n for n in names) and \
                    any("MapBatches" in n or "IDLE" in n for n in names):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "ingest ended before it could be killed"
        seen.update(descendants(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and _alive(seen):
            time.sleep(0.5)
        left = {p: _name(p) for p in _alive(seen)}
        assert not left, f"still alive after kill -9 of ingest: {left}"
    finally:
        for p in _alive(seen):              # never leave our own processes behind
            os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.timeout(120)
def test_a_local_ray_is_the_address_of_everything_its_process_starts(ray_local):
    """Issue 20: with a second local Ray on the machine (two sweeps; here the session cluster is
    the other one), Ray Train's PlacementGroupCleaner actor of one sweep, which asks the State
    API without an address, found both and printed "Found multiple active Ray instances"
    tracebacks. After init_ray starts a local Ray, RAY_ADDRESS names it in the driver and in
    every Ray worker (the job's setup hook), and a State API call from a worker finds its own
    Ray; the "Progress bars disabled" and token-authentication warnings are gone."""
    import os
    import subprocess
    import sys
    code = ("import os, ray; from ipb.runtime import init_ray; init_ray(num_cpus=1); "
            "print('ADDR', os.environ['RAY_ADDRESS'], ray.get_runtime_context().gcs_address); "
            "import ray._private.services as s; print('FOUND', s.canonicalize_bootstrap_address("
            "None))\n"
            "@ray.remote(num_cpus=0)\n"
            "def worker():\n"
            "    from ray.util.state import list_actors\n"
            "    list_actors()      # what the PlacementGroupCleaner's is_actor_alive does\n"
            "    return os.environ.get('RAY_ADDRESS')\n"
            "print('WORKER', ray.get(worker.remote()))")
    # empty, as `ipb` subprocesses of the tests get it: "not the session cluster" (it was kept
    # empty in the workers, and the cleaner's tracebacks came back)
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("ADDR")]
    _, addr, gcs = line.split()
    assert addr == gcs and ":" in addr
    assert f"FOUND {addr}" in out.stdout
    assert f"WORKER {addr}" in out.stdout, out.stdout + out.stderr[-2000:]
    for noise in ("Progress bars disabled", "Token authentication is enabled"):
        assert noise not in out.stdout + out.stderr, noise


@pytest.mark.timeout(120)
def test_the_raylet_worker_count_warning_is_not_printed():
    """Issue 20: `make run` printed "(raylet) WARNING: 8 PYTHON worker processes have been
    started ... 4x the maximum expected startup concurrency (2)": a 2-core sweep's trial
    actors, Train controllers and workers, as designed. 16 actors at once on 2 CPUs print it
    (twice) without ipb's filter."""
    import os
    import subprocess
    import sys
    code = ("import os; from ipb.runtime import init_ray\n"
            "ray = init_ray(num_cpus=2, quiet=False)\n"
            "@ray.remote(num_cpus=0)\n"
            "class A:\n"
            "    def ping(self): return os.getpid()\n"
            "actors = [A.remote() for _ in range(16)]\n"
            "print(len(set(ray.get([a.ping.remote() for a in actors]))), 'actors', flush=True)\n"
            "import time; time.sleep(3)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "RAY_ADDRESS": ""},
                         capture_output=True, text=True, timeout=100)
    assert out.returncode == 0 and "16 actors" in out.stdout, out.stderr[-2000:]
    assert "PYTHON worker processes" not in out.stdout + out.stderr


# a command that starts the reaper and a "raylet", which forks a "worker" and exits shortly
# after the command is gone, leaving the worker under init (as a raylet's IDLE workers were)
_COMMAND = """
import subprocess, sys, time
from ipb import reaper
reaper.start()
subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]])
time.sleep(120)
"""
_RAYLET = """
import os, subprocess, sys, time
parent = os.getppid()
time.sleep(2.5)                     # long enough for the reaper to have recorded the raylet
w = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1] + ".tmp", "w").write(str(w.pid))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
while os.getppid() == parent:       # until the command is gone
    time.sleep(0.01)
time.sleep(0.3)                     # Ray's own shutdown: the raylet goes, its worker stays
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper reads /proc")
def test_the_reaper_kills_a_worker_forked_in_the_commands_last_second(tmp_path):
    """A worker the raylet forks just before the command is killed is never seen as the
    command's descendant (the reaper looks every second), and the raylet exits before the grace
    period ends: the reaper must read the raylet's children from the moment the command is gone
    (CI: two ray::IDLE workers outlived a killed ingest when it looked only at the end)."""
    import os
    import signal
    import subprocess
    import time

    from ipb.reaper import GRACE_S, _stat
    pid_file = tmp_path / "worker.pid"
    env = {k: v for k, v in os.environ.items() if k != "IPB_NO_REAPER"}
    cmd = subprocess.Popen([sys.executable, "-c", _COMMAND, str(pid_file), _RAYLET], env=env)
    worker = None
    try:
        deadline = time.time() + 20
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.005)
        worker = int(pid_file.read_text())
        start = _stat(worker)[1]
        cmd.send_signal(signal.SIGKILL)      # within ms of the fork: after the reaper's look
        cmd.wait()
        deadline = time.time() + GRACE_S + 5
        while time.time() < deadline and (_stat(worker) or (0, None))[1] == start:
            time.sleep(0.1)
        assert (_stat(worker) or (0, None))[1] != start, "the worker outlived the command"
    finally:
        if cmd.poll() is None:
            cmd.kill()
        if worker is not None and _stat(worker) is not None:
            os.kill(worker, signal.SIGKILL)


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return ""


def _alive(seen: dict[int, int]) -> list[int]:
    from ipb.reaper import _stat
    return [p for p, start in seen.items() if (_stat(p) or (0, None))[1] == start]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("runner", ["inline", "train"])
def test_sigterm_stops_ipb_train_in_one_line(tmp_path, runner):
    """Issue 20: SIGTERM (`kill`, a scheduler, a container stop) of `ipb train` dumped Ray's C++
    stack ("*** SIGTERM received ... logging.cc"). Now it takes Ctrl-C's path: one line, exit
    143, the MLflow run KILLED (the same command resumes it), no traceback."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    from ipb.tracking import client
    from tiny import TINY, write_tiny_table
    table = write_tiny_table(tmp_path / "t")
    db = f"sqlite:///{tmp_path}/m.db"
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipb.cli", "train", "--table", str(table), "--method",
         "supervised", "--tracking-uri", db, *TINY, "train.epochs=500", "patch.size=32",
         f"train.runner={runner}", "train.num_workers=1", "split.folds=5",
         "split.labeled_fraction=0.3", f"train.storage={tmp_path}/ray"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and \
                not any("epoch 2/" in line for line in lines):
            time.sleep(0.2)
        assert proc.poll() is None, "".join(lines)[-3000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    out = "".join(lines)
    assert rc == 143, out[-3000:]
    assert "ipb train: stopped (SIGTERM)" in out, out[-3000:]
    # and none of the noise of issue 20 in a Ray Train run's whole output (stdout and stderr of
    # every process, as a terminal shows it), e.g. while another Ray runs on the machine
    for noise in ("SIGTERM received", "logging.cc", "Traceback", "multiple active Ray",
                  "PYTHON worker processes", "Progress bars disabled", "Token authentication",
                  "Downloading artifacts", "specialized", "TensorBoard"):
        assert noise not in out, out[-3000:]
    c = client(db)
    (run,) = c.search_runs([c.get_experiment_by_name("ipb-train").experiment_id])
    assert run.info.status == "KILLED"


# ---------------------------------------------------------------- issue 14: the terminal

def test_closing_lines_open_the_runs_in_model_training_mode():
    from ipb.console import ui_lines
    local = ui_lines("sqlite:////data/runs/mlflow.db", "7").splitlines()
    assert local == [
        "Look at it with:  mlflow ui --backend-store-uri sqlite:////data/runs/mlflow.db "
        "--artifacts-destination /data/runs/mlartifacts --host 127.0.0.1 --port 5000",
        "MLflow UI: http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"]
    # a tracking server is its own UI
    assert ui_lines("http://mlflow.lab:5000/", "2").splitlines()[-1] == \
        "MLflow UI: http://mlflow.lab:5000/#/experiments/2/runs?workflowType=machine_learning"


def test_progress_line_counts_and_eta():
    from ipb.console import progress_line
    assert progress_line(0, 1, 0, 8, 20) == \
        "0/8 trials done, 1 running, 7 pending, 0 failed; 20s elapsed, ETA ?"
    # 3 of 8 ended (one failed) and 2 half-way in 6 min: 4 trials' work, 4 more to do
    assert progress_line(2, 2, 1, 8, 360) == \
        "2/8 trials done, 2 running, 3 pending, 1 failed; 6m00s elapsed, ETA 6m00s"
    # 8 one-minute trials 2 at a time: at the first end (1 min; 3 min left in truth) the
    # estimate is 4m20s; counting ended trials only it was 7m00s
    assert progress_line(1, 1, 0, 8, 60).endswith("ETA 4m20s")


def test_progress_counts_a_trial_that_reported_failure_as_failed():
    """A trial whose run FAILED reports failed=1 and ends TERMINATED in Tune: it is failed in
    the progress line, not done (issue 20)."""
    from types import SimpleNamespace

    from ipb.console import progress_callback
    lines = []
    cb = progress_callback(3, lines.append)
    ok = SimpleNamespace(status="TERMINATED", last_result={"done": 1.0})
    bad = SimpleNamespace(status="RUNNING", last_result={"done": 1.0, "failed": 1.0})
    running = SimpleNamespace(status="RUNNING", last_result={})
    cb.on_trial_complete(0, [ok, bad, running], bad)
    assert lines[-1].startswith("1/3 trials done, 1 running, 0 pending, 1 failed"), lines


def test_ray_logs_plain_when_redirected(monkeypatch):
    import io

    from ipb.console import plain_logs_when_redirected
    monkeypatch.delenv("RAY_DEDUP_LOGS", raising=False)
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())          # not a terminal
    plain_logs_when_redirected()
    import os
    assert os.environ["RAY_DEDUP_LOGS"] == "0" and os.environ["RAY_COLOR_PREFIX"] == "0"


def test_sigterm_exit_of_a_finished_worker_is_not_reported(capsys):
    """What Ray's SIGTERM handler raises inside a weakref callback is not printed as
    "Exception ignored in ..."; any other unraisable exception still is."""
    import gc
    import sys
    import weakref

    from ipb.console import quiet_sigterm_exit
    before = sys.unraisablehook
    try:
        sys.unraisablehook = sys.__unraisablehook__
        quiet_sigterm_exit()

        class Thing:
            pass

        for exc in (SystemExit(1), RuntimeError("real")):
            t = Thing()
            weakref.finalize(t, lambda e=exc: (_ for _ in ()).throw(e))
            del t
            gc.collect()
    finally:
        sys.unraisablehook = before
    err = capsys.readouterr().err
    assert "SystemExit" not in err and "RuntimeError: real" in err


def test_bad_method_or_table_fails_before_ray(tmp_path, capsys, no_ray):
    """Issue 20: a bad --method or --table failed after Ray had started (46-54 s)."""
    assert main(["train", "--method", "nope"]) == 2
    assert "unknown method 'nope'" in _one_line_error(capsys)
    assert main(["train", "--table", str(tmp_path / "none")]) == 2
    assert "no colony table there" in _one_line_error(capsys)


@pytest.mark.parametrize("override, message", [
    ("method.lr=-1", "unknown config key 'method.lr'"),
    ("train.lr=-1", "config key 'train.lr': -1.0 is out of range")])
def test_a_bad_config_value_fails_before_torch_is_imported(override, message):
    """Issue 20: `ipb train method.lr=-1` took 22 s, `train.lr=-1` 45 s; the config is now
    checked before ipb imports torch (or Ray): a second, whatever the machine's load."""
    import subprocess
    import sys
    code = ("import sys; from ipb.cli import main; rc = main(['train', %r]); "
            "print('TORCH', 'torch' in sys.modules, 'RAY', 'ray' in sys.modules); "
            "sys.exit(rc)" % override)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert "TORCH False RAY False" in out.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("ipb ")


def test_every_option_of_every_command_has_help():
    """Issue 20: --wells, --bit-depth, segment's --out/--profile, ingest's --layout, report's
    --tracking-uri and the sweeps' overrides had none."""
    import argparse

    from ipb.cli import build_parser
    from ipb.sweep_cli import parser as sweep_parser
    ap = build_parser()
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = {f"ipb {name}": p for name, p in sub.choices.items()}
    parsers["sweeps/*.py"] = sweep_parser("a sweep", profile="smoke")
    bare = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in parsers.items()
            for a in p._actions if not isinstance(a, argparse._HelpAction)
            and not (a.help and a.help.strip())]
    assert not bare, f"options without help: {bare}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_stops_a_command_without_ray_in_one_line(tmp_path, sigint):
    """Issue 20: SIGTERM's one-line stop was installed only by commands that start Ray;
    `ipb synth` (and predict, segment, report, splits) died with no word and exit -15. And
    where SIGINT is ignored (`nohup ipb train ... &` from a script, some schedulers) SIGTERM,
    turned into a SIGINT, was lost: the process trained on after `kill`."""
    import signal
    import subprocess
    import sys
    import time
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint == "ignored" \
        else None
    proc = subprocess.Popen([sys.executable, "-m", "ipb.cli", "synth", "--out",
                             str(tmp_path / "s"), "--wells", "400", "--size", "1024"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ignore)
    deadline = time.time() + 60       # until it writes wells: past imports and config
    while time.time() < deadline and proc.poll() is None and not (
            (tmp_path / "s").is_dir() and any((tmp_path / "s").rglob("*.tif*"))):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, out[-2000:]
    assert out.strip().splitlines()[-1] == "ipb synth: stopped (SIGTERM)", out[-2000:]
    assert "Traceback" not in out


def test_a_sweep_starts_with_a_short_summary_of_what_its_trials_run():
    """Issue 20: `make run` printed the 150-line resolved base config, which says
    `preset: paper` while every MPL/IPB trial runs `robust`. Now: the keys set beside the
    defaults, one line per row with its own keys, and where the whole config is."""
    from ipb.config import load_config
    from ipb.pipeline import main_rows
    from ipb.sweep_cli import config_summary
    cfg = load_config("smoke", {"sweep.folds": [0, 1, 2]})
    text = config_summary("ipb main job", cfg, main_rows(cfg))
    lines = text.splitlines()
    assert len(lines) < 20 and max(map(len, lines)) <= 100, text
    assert lines[0] == "ipb main job: profile smoke; set beside the defaults:"
    assert "sweep.folds=[0,1,2]" in text and "model.arch=small_cnn" in text
    assert "  IPB (robust): method.name=ipb method.preset=robust" in lines
    assert "preset: paper" not in text and "ipb config --profile smoke" in lines[-1]
