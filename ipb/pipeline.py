"""The main job: the README's first command, end to end on embedded defaults.

    ipb run            # synthesize (once) -> ingest (once) -> folds -> summary

The table comes from `ipb.inputs.resolve_table` (the SYNTHETIC data set cached under
`data.cache_dir` unless data.table names one); the rows are one resumable grid sweep.
"""
from __future__ import annotations

import time

from ipb.config import Config


def main_rows(cfg: Config) -> list[dict]:
    """The main job's rows. The supervised CNN trains as long as the MPL-family teacher is
    pre-trained, so it is their teacher (reused, not trained again); MPL and IPB run with the
    switches that keep their students from collapsing (method.preset=robust; the paper's own MPL/IPB students
    collapse at this budget: see sweeps/study.py); SimCLR fine-tunes as long."""
    pre = cfg.method.teacher_pretrain_epochs or cfg.train.epochs
    return [{"_label": "supervised", "method.name": "supervised", "train.epochs": pre},
            {"_label": "MPL (robust)", "method.name": "mpl", "method.preset": "robust"},
            {"_label": "IPB (robust)", "method.name": "ipb", "method.preset": "robust"},
            {"_label": "SimCLR", "method.name": "simclr", "train.epochs": pre}]


def main_job(cfg: Config) -> int:
    """The README's first command: the SYNTHETIC data set (cached), then supervised, MPL, IPB
    and SimCLR (`main_rows`) over `sweep.folds` as one resumable sweep, a comparison table,
    the MLflow UI."""
    from ipb.data.table import read_manifest
    from ipb.inputs import resolve_table
    from ipb.runtime import init_ray
    from ipb.sweep import run_grid
    from ipb.sweep_cli import champion_line, config_summary, mlflow_ui

    t0 = time.time()
    print(config_summary("ipb main job", cfg, main_rows(cfg)), flush=True)
    init_ray(quiet=False)        # trial progress (one line per epoch) reaches this terminal
    table = resolve_table(cfg)
    manifest = read_manifest(table)
    tag = "SYNTHETIC " if manifest.get("synthetic") else ""
    print(f"{tag}colony table {table}: {manifest['n_colonies']} colonies from "
          f"{manifest['n_images']} images; classes {manifest['classes']}; "
          f"{manifest['multi_label']} multi-label; {len(manifest['rejected'])} rejected",
          flush=True)
    out = run_grid("main", cfg, main_rows(cfg), table)
    print("\n" + out["report"]["markdown"])
    print(f"\nmain job done in {time.time() - t0:.0f}s. MLflow experiment "
          f"{out['experiment']!r}, parent run {out['parent_run_id']}." + champion_line(out)
          + "\n" + mlflow_ui(out), flush=True)
    return 0
