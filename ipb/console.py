"""What sweeps and `ipb train` print: progress, where to look (MLflow UI, Ray dashboard), plain logs.

    python sweeps/baselines.py > sweep.log 2>&1     # redirected: no colour codes, no dedup tags

A sweep prints one progress line per finished trial and every ~30 s (done / running / pending /
failed, elapsed, ETA) and ends with the `mlflow ui` command and the link that opens the
experiment's runs in MLflow 3's model-training view (`?workflowType=machine_learning`; without
it the UI may open on the GenAI traces page, which an ipb experiment never has).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

UI_PORT = 5000


def plain_logs_when_redirected() -> None:
    """Before Ray starts: lines from Ray workers without ANSI colours and without Ray's
    "[repeated 6x across cluster]" merging when stdout is a file or a pipe (a log to read
    later, where every line matters)."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def quiet_sigterm_exit() -> None:
    """In a Ray worker: when Ray ends the process (SIGTERM, after its trial succeeded) while
    Python is inside a weakref callback, Ray's SIGTERM handler raises SystemExit there and
    Python prints "Exception ignored in: ... SystemExit: 1" with a traceback, which reads like
    a crash. Such a SystemExit is not reported; every other unraisable exception still is."""
    previous = sys.unraisablehook
    if getattr(previous, "_ipb_quiet", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, SystemExit):
            return
        previous(unraisable)

    hook._ipb_quiet = True
    sys.unraisablehook = hook


def ui_command(uri: str, port: int = UI_PORT) -> str:
    """The command that serves the MLflow UI for `uri` (nothing to start for a server)."""
    if uri.startswith("http"):
        return f"open {uri}"
    arts = ""
    if uri.startswith("sqlite:///"):
        # runs made through a sweep's local server keep artifacts beside the database
        arts = f" --artifacts-destination {Path(uri[len('sqlite:///'):]).parent / 'mlartifacts'}"
    return f"mlflow ui --backend-store-uri {uri}{arts} --host 127.0.0.1 --port {port}"


def ui_link(uri: str, experiment_id: str, port: int = UI_PORT) -> str:
    base = uri.rstrip("/") if uri.startswith("http") else f"http://127.0.0.1:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_lines(uri: str, experiment_id: str) -> str:
    """The two closing lines of every sweep and `ipb train`."""
    return (f"Look at it with:  {ui_command(uri)}\n"
            f"MLflow UI: {ui_link(uri, experiment_id)}")


def ray_dashboard() -> str | None:
    """The Ray dashboard's URL when this Ray has one."""
    try:
        from ray._private.worker import get_dashboard_url
        url = get_dashboard_url()
    except Exception:
        return None
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def _minutes(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(done: int, running: int, failed: int, total: int, elapsed: float) -> str:
    pending = max(0, total - done - running - failed)
    finished = done + failed
    # a running trial counts as half done: with k trials at a time the first ETA was ~k times
    # too high, as if the elapsed time had bought one trial, not one plus k-1 halves
    work = finished + running / 2
    eta = _minutes(elapsed * (total - work) / work) if finished else "?"
    return (f"{done}/{total} trials done, {running} running, {pending} pending, {failed} failed; "
            f"{_minutes(elapsed)} elapsed, ETA {eta}")


def progress_callback(total: int, log, every: float = 30.0):
    """A Ray Tune callback that logs `progress_line` at every trial end and every `every` s."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.t0 = self.last = time.time()

        def _log(self, trials, ended=None, state: str = "") -> None:
            # Tune calls on_trial_complete/error before it sets the trial's status; a trial
            # that failed inside (its run FAILED) reports failed=1 and ends TERMINATED
            status = [state if t is ended else t.status for t in trials]
            failed = [s == "ERROR" or (s == "TERMINATED" and bool(
                (getattr(t, "last_result", None) or {}).get("failed"))) for t, s in
                zip(trials, status)]
            done = sum(s == "TERMINATED" and not f for s, f in zip(status, failed))
            log(progress_line(done, status.count("RUNNING"), sum(failed), total,
                              time.time() - self.t0))
            self.last = time.time()

        def on_step(self, iteration, trials, **info):
            if time.time() - self.last >= every:
                self._log(trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._log(trials, trial, "TERMINATED")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._log(trials, trial, "ERROR")

    return Progress()


def quiet_worker_count_warning() -> None:
    """Drop the raylet's "WARNING: N PYTHON worker processes have been started ... Nx the
    maximum expected startup concurrency" in this driver: on a 2-core machine every sweep of
    2 trials at a time starts 8+ (trial actors, Train controllers, their workers, Ray Train's
    helper actors), as designed, and the line asks nothing of the user. Ray pushes
    it to the driver with no logger or setting to filter it, so the printer is wrapped
    (ray._private.worker.print_to_stdstream: the one private API here, and why)."""
    import ray._private.worker as worker
    if getattr(worker.print_to_stdstream, "_ipb_quiet", False):
        return
    original = worker.print_to_stdstream

    def printer(data, ignore_prefix: bool):
        if data.get("pid") == "raylet" and any(
                "PYTHON worker processes have been started" in line
                for line in data.get("lines", ())):
            return
        return original(data, ignore_prefix)
    printer._ipb_quiet = True
    worker.print_to_stdstream = printer
