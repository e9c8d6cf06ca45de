"""Where a command's colony table comes from: the one place that resolves it.

    python -c "from ipb.config import load_config; from ipb.inputs import resolve_table; print(resolve_table(load_config('smoke')))"

`resolve_table(cfg, data, labels)` is called by the entry points only (the `ipb` commands, the
sweep scripts, the main job); `ipb.train.fit`, `run_grid` and `run_search` take the table it
returns, so a trial never reaches back upstream to make or ingest data. A table is, in order:
`data` (--data: a colony table, a table URI, or a directory of raw images ingested once into
a cached table), `data.table` (a directory or an s3:// / gs:// / file:// URI, read in place),
else the SYNTHETIC data set cached under `data.cache_dir` (made on first use).
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from ipb.claims import claim
from ipb.config import Config, config_hash, expand_path, to_dict


def resolve_table(cfg: Config, data: str | None = None, labels: str | None = None) -> Path | str:
    """The colony table this command runs on (a local directory or a URI, returned as is)."""
    from ipb.config import is_uri
    from ipb.data.table import read_manifest
    if data:
        return _given(cfg, data, labels)
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


def _given(cfg: Config, data: str, labels: str | None) -> Path | str:
    """--data: a colony table as is (a directory, or a URI such as s3://bucket/table), or a
    directory of raw images ingested (once) into a cached table."""
    from ipb.config import is_uri
    from ipb.data.table import read_manifest
    if is_uri(data):
        read_manifest(data)     # raw images are ingested from a local or shared directory
        return data
    path = Path(data).expanduser()
    if (path / "manifest.json").is_file():
        return path.resolve()
    from ipb.data.ingest import ingest
    from ipb.runtime import init_ray
    if labels is None and (path / "labels.csv").is_file():
        labels = str(path / "labels.csv")
    out = expand_path(cfg.data.cache_dir) / "tables" / config_hash(
        {"data": str(path.resolve()), "labels": labels, "seg": to_dict(cfg.segmentation)})
    if not (out / "manifest.json").is_file():
        with _making(cfg, f"table-{out.name}", f"is ingesting {path} into {out}"):
            if not (out / "manifest.json").is_file():
                init_ray()
                ingest(path, out, cfg, labels=labels)
    return out


def _making(cfg: Config, key: str, doing: str):
    """One process at a time makes a cached table: two commands started at once on a new
    machine (`make run` beside a study) both made it into one directory, each ingesting what
    the other had not finished; the second now waits for the first, then uses its table."""
    return claim(str(expand_path(cfg.data.cache_dir)), key, wait=True,
                 log=lambda s: print(s, file=sys.stderr), doing=doing)


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
    with _making(cfg, root.name, f"is making the SYNTHETIC data set in {root}"):
        if (table / "manifest.json").is_file():
            return table
        t0 = time.time()
        if progress:
            print(f"making the SYNTHETIC data set once, cached in {root}", file=sys.stderr)
        synthesize(wells, cfg.synth, progress=progress, workers=max(1, cfg.data.ingest_workers))
        init_ray(quiet=not progress)
        ingest(wells, table, cfg, labels=str(wells / "labels.csv"), layout="wells",
               progress=progress)
        if progress:
            print(f"synthetic data set ready in {time.time() - t0:.0f}s", file=sys.stderr)
    return table
