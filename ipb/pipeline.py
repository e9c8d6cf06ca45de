"""The data half end to end, and the cached synthetic data set every default run uses.

    ipb run            # synthesize (once) -> ingest (once) -> folds -> summary

`synthetic_table(cfg)` makes the SYNTHETIC wells and their colony table under
`data.cache_dir`, keyed by the settings that shape them, so re-runs reuse both.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from ipb.config import Config, config_hash, expand_path


def synthetic_table(cfg: Config, progress: bool = True) -> Path:
    """Path of the cached SYNTHETIC colony table for `cfg.synth` (made on first use)."""
    from ipb.data.ingest import ingest
    from ipb.data.synth import synthesize
    from ipb.data.table import TABLE_FORMAT
    from ipb.runtime import init_ray

    key = config_hash({"synth": asdict(cfg.synth), "segmentation": asdict(cfg.segmentation),
                       "min_colony_px": cfg.data.min_colony_px, "format": TABLE_FORMAT,
                       "box_min_cover": cfg.data.box_min_cover,
                       "pixel_size_from": cfg.data.pixel_size_from})
    root = expand_path(cfg.data.cache_dir) / f"synthetic-{key}"
    wells, table = root / "wells", root / "table"
    if (table / "manifest.json").is_file():
        return table
    t0 = time.time()
    if progress:
        print(f"making the SYNTHETIC data set once, cached in {root}", file=sys.stderr)
    synthesize(wells, cfg.synth, progress=progress, workers=max(1, cfg.data.ingest_workers))
    init_ray(quiet=not progress)
    ingest(wells, table, cfg, labels=str(wells / "labels.csv"), layout="wells", progress=progress)
    if progress:
        print(f"synthetic data set ready in {time.time() - t0:.0f}s", file=sys.stderr)
    return table


def resolve_table(cfg: Config) -> Path | str:
    """`data.table` when given (a directory or an s3:// / gs:// / file:// URI, returned as
    is), else the cached synthetic table."""
    from ipb.data.table import is_uri, read_manifest
    if is_uri(cfg.data.table):
        read_manifest(cfg.data.table)          # fails here, naming the URI, if it is no table
        return cfg.data.table
    if cfg.data.table:
        table = expand_path(cfg.data.table)
        if not (table / "manifest.json").is_file():
            raise FileNotFoundError(f"data.table={cfg.data.table}: no colony table there "
                                    "(run `ipb ingest SOURCE --out TABLE` first)")
        return table
    return synthetic_table(cfg)


def main_rows(cfg: Config) -> list[dict]:
    """The main job's rows. The supervised CNN trains as long as the MPL-family teacher is
    pre-trained, so it is their teacher (reused, not trained again); MPL and IPB run with the
    switches the study found to work (method.preset=robust; the paper's own MPL/IPB students
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
    from ipb.config import to_yaml
    from ipb.data.table import read_manifest
    from ipb.sweep import mlflow_ui_command, run_grid

    from ipb.runtime import init_ray

    t0 = time.time()
    print("ipb main job; resolved config:\n" + to_yaml(cfg), flush=True)
    init_ray(quiet=False)        # trial progress (one line per epoch) reaches this terminal
    table = resolve_table(cfg)
    manifest = read_manifest(table)
    tag = "SYNTHETIC " if manifest.get("synthetic") else ""
    print(f"{tag}colony table {table}: {manifest['n_colonies']} colonies from "
          f"{manifest['n_images']} images; classes {manifest['classes']}; "
          f"{manifest['multi_label']} multi-label; {len(manifest['rejected'])} rejected",
          flush=True)
    out = run_grid("main", cfg, main_rows(cfg), table=table)
    print("\n" + out["report"]["markdown"])
    print(f"\nmain job done in {time.time() - t0:.0f}s. MLflow experiment "
          f"{out['experiment']!r}, parent run {out['parent_run_id']}; look at it with:\n"
          f"  {mlflow_ui_command(out['tracking_uri'])}")
    return 0
