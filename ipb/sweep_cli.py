"""The command line every sweeps/*.py script shares: options, overrides, a one-line stop.

    python sweeps/baselines.py --profile smoke sweep.folds=[0]      # parser + main below

`main` is a grid script's whole life: the grid checked before anything starts (a bad value or
an empty filter is a usage error in a second), the start-up checks, a short config summary,
`ipb.sweep.run_grid`, the report and the MLflow link. Ctrl-C / SIGTERM: one line, exit 130/143.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable

from ipb.config import Config, apply, load_config, parse_overrides
from ipb.sweep import configuration_label, expand, run_grid


class _Parser(argparse.ArgumentParser):
    """`key=value` overrides anywhere on the line, as `ipb train` takes them: plain
    parse_args fills the positional `overrides` only before the first option, and calls
    `--data T k=v` an unrecognized argument."""

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)


def parser(description: str, profile: str = "smoke") -> argparse.ArgumentParser:
    ap = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=profile,
                    help=f"smoke | paper | study | FILE.yaml (default: {profile})")
    ap.add_argument("--data", help="a colony table, or a directory of raw images (+ labels.csv) "
                                   "that is ingested first; default: the cached SYNTHETIC set")
    ap.add_argument("--labels", help="label CSV for raw images given with --data")
    ap.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI or "
                                           "sqlite:///mlflow.db)")
    ap.add_argument("--max-concurrent", type=int, help="trials at a time")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value",
                    help="config overrides, e.g. sweep.folds=[0,1] train.epochs=3")
    return ap


def config_from_args(args) -> Config:
    """The config of a sweep script's arguments; --data (a table, a URI, or raw images ingested
    once) becomes data.table."""
    from ipb.inputs import resolve_table
    extra: dict[str, Any] = {}
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        extra["tracking.uri"] = uri
    if args.max_concurrent:
        extra["sweep.max_concurrent"] = args.max_concurrent
    cfg = load_config(args.profile, {**extra, **parse_overrides(args.overrides)})
    if args.data:
        cfg = apply(cfg, {"data.table": str(resolve_table(cfg, args.data, args.labels))})
    return cfg


def stoppable(fn: Callable[..., int]) -> Callable[..., int]:
    """A sweep script's main: SIGTERM stops it as Ctrl-C does (ipb/stop.py); a stop is one
    line and exit code 130 / 143, not a traceback, and never exit 0."""
    @functools.wraps(fn)
    def wrapper(*a, **kw) -> int:
        from ipb import stop
        with stop.command():
            try:
                code = fn(*a, **kw)
                if not stop.swallowed():
                    return code
                e = "stopped"          # after the last check: lost inside an extension
            except KeyboardInterrupt as stopped:
                e = stopped
            print(f"ipb: {e or 'interrupted'}", file=sys.stderr, flush=True)
            return stop.exit_code()
    return wrapper


def start_command(cfg: Config) -> None:
    """What every sweep script does first (inside `stoppable`): an unreachable MLflow server
    fails here in seconds (not after Ray and minutes of retries), a watcher kills what the
    script starts if it is killed itself (ipb/reaper.py), logs stay plain when redirected."""
    from ipb.console import plain_logs_when_redirected
    from ipb.preflight import check_tracking_uri
    from ipb.reaper import start
    from ipb.tracking import tracking_uri
    plain_logs_when_redirected()
    check_tracking_uri(tracking_uri(cfg))
    start()


def config_summary(what: str, cfg: Config, rows: list[dict] | None = None,
                   width: int = 96) -> str:
    """A few lines instead of the resolved config's 150: the keys the profile and
    the command line set beside the defaults, the rows' own keys (a row's preset is what its
    trials run, not the base's `preset: paper`), and where the whole config is."""
    import textwrap

    from ipb.config import flatten, to_dict
    default = flatten(to_dict(Config()))
    ours = flatten(to_dict(cfg))
    def value(v):       # as a key=value override takes it: sweep.folds=[0,1,2]
        return "[" + ",".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else v
    changed = [f"{k}={value(v)}" for k, v in ours.items()
               if default.get(k) != v and k != "profile"]
    lines = [f"{what}: profile {cfg.profile}; set beside the defaults:"]
    lines += textwrap.wrap(" ".join(changed) or "(nothing)", width, initial_indent="  ",
                           subsequent_indent="  ", break_on_hyphens=False)
    if rows:
        lines.append(f"{len(rows)} rows, each on top of that:")
        for r in rows:
            keys = {k: v for k, v in r.items() if not k.startswith("_")}
            label = r.get("_label") or configuration_label(apply(cfg, keys))
            lines.append(f"  {label}: " + " ".join(f"{k}={value(v)}" for k, v in keys.items()))
    lines.append(f"the whole config: `ipb config --profile {cfg.profile} [key=value ...]`, and "
                 "each run's config.yaml in MLflow")
    return "\n".join(lines)


def checked_grid(ap: argparse.ArgumentParser, kind: str, cfg: Config,
                 configurations: Callable[[Config], list[dict]]) -> list[dict]:
    """The sweep's configurations, made before MLflow, the data and Ray: a filter that
    matches nothing (or a bad value in the grid) is a usage error in a second, not a FINISHED
    parent run of 0 trials."""
    try:
        grid = configurations(cfg)
        n = len(expand(cfg, grid))
    except ValueError as e:           # ConfigError included: it names the key
        ap.error(str(e))
    if n == 0:
        ap.error(f"sweep {kind!r} has 0 trials ({len(grid)} configurations); check "
                 "sweep.limit, sweep.folds and sweep.seeds")
    return grid


@stoppable
def main(kind: str, description: str, configurations: Callable[[Config], list[dict]],
         argv: list[str] | None = None) -> int:
    from ipb.inputs import resolve_table
    ap = parser(description)
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    grid = checked_grid(ap, kind, cfg, configurations)
    start_command(cfg)
    print(config_summary(f"ipb sweep {kind}", cfg, grid), flush=True)
    out = run_grid(kind, cfg, grid, resolve_table(cfg))
    print("\n" + out["report"]["markdown"])
    print(f"\nMLflow: experiment {out['experiment']!r}, parent run {out['parent_run_id']}."
          + champion_line(out) + "\n" + mlflow_ui(out), flush=True)
    return 0


def champion_line(out: dict[str, Any]) -> str:
    c = out.get("champion")
    return (f"\nRegistered {c['uri']} (version {c['version']}): run {c['run_id']}, "
            f"{c['label']}, validation mean TPR {c['val']:.4f}" if c else "")


def mlflow_ui(out: dict[str, Any]) -> str:
    """The closing lines: the `mlflow ui` command and the link to the experiment's runs."""
    from ipb.console import ui_lines
    return ui_lines(out["tracking_uri"], out["experiment_id"])
