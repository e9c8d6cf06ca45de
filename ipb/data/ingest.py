"""Ray Data ingest: raw microscopy -> colony table (Parquet shards + manifest.json).

    ipb ingest SOURCE --out TABLE [--labels CSV] [--layout wells|folders] [key=value ...]

list files -> shards of `data.shard_size` images -> one Ray Data task per shard (map_batches on
a pool of `data.ingest_workers` tasks) reads, decodes, segments, cuts colonies and writes its
shard atomically -> the driver writes manifest.json. Re-running skips shards already written
(resume after a crash loses at most the shards in flight); bad files are listed in the
manifest's `rejected`, never fatal; a TABLE made from other inputs or another config is
refused, not overwritten.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ipb.config import Config
from ipb.data.sources import (SourcePlan, decode_image, extract_colonies, plan_sources,
                              unreadable_reason)
from ipb.data.table import SCHEMA, write_json_atomic

PLAN_FILE = "ingest_plan.json"


class TableExistsError(RuntimeError):
    """TABLE already holds a table made from other inputs or settings."""


def _fingerprint(plan: SourcePlan, cfg: Config, labels: str | None) -> dict[str, Any]:
    """What defines a table: inputs, labels, layout and the settings that change rows."""
    label_digest = hashlib.sha1(Path(labels).read_bytes()).hexdigest() if labels else None
    return {"source": str(plan.root), "labels": str(Path(labels).resolve()) if labels else None,
            "labels_sha1": label_digest, "layout": plan.layout,
            "segmentation": asdict(cfg.segmentation),
            "min_colony_px": cfg.data.min_colony_px, "shard_size": cfg.data.shard_size}


def _shards(images: list[str], shard_size: int) -> list[dict]:
    out = []
    for k in range(0, len(images), shard_size):
        files = images[k:k + shard_size]
        digest = hashlib.sha1("\n".join(files).encode()).hexdigest()[:10]
        out.append({"name": f"shard-{k // shard_size:05d}-{digest}", "images": files})
    return out


def _check_out(out: Path, fingerprint: dict) -> None:
    plan_file = out / PLAN_FILE
    if plan_file.is_file():
        old = json.loads(plan_file.read_text()).get("fingerprint")
        if old != fingerprint:
            diff = sorted(k for k in set(old or {}) | set(fingerprint)
                          if (old or {}).get(k) != fingerprint.get(k))
            raise TableExistsError(
                f"{out} holds a colony table made from other inputs/settings (differs in: "
                f"{', '.join(diff)}); choose another --out or delete it yourself")
    elif out.exists() and any(out.iterdir()):
        raise TableExistsError(f"{out} exists, is not empty and is not an ipb colony table; "
                               "choose another --out")


def _drop_stale(out: Path, shards: list[dict], log: Callable) -> None:
    """Shards of an earlier run of this config whose image list changed (files added/removed
    in SOURCE) would duplicate colonies next to their replacements: remove them."""
    keep = {s["name"] for s in shards}
    for part in sorted((out / "colonies").glob("*.parquet*")):
        name = part.name.split(".parquet")[0]
        if name not in keep:
            log(f"ingest: removing stale shard {part.name} (SOURCE changed since it was written)")
            part.unlink()
            (out / "shards" / f"{name}.json").unlink(missing_ok=True)


def _colonies_of(path: Path, task: dict, cfg: Config) -> tuple[list, list, dict]:
    """Rows, rejected entries and info for one image; a bad file is a rejected entry."""
    rel = task["image"]
    reason = task.get("unreadable") or unreadable_reason(path)
    if reason is not None:
        return [], [{"path": rel, "reason": reason}], {}
    try:
        img = decode_image(path.read_bytes(), rel)
        return extract_colonies(img, task, cfg.segmentation, cfg.data.min_colony_px)
    except ValueError as e:
        return [], [{"path": rel, "reason": str(e)}], {}
    except Exception as e:  # keep the run going, but say what happened
        return [], [{"path": rel, "reason": f"{type(e).__name__}: {e}"}], {}


def _make_udf(cfg: Config, root: Path, out: Path, todo: list[dict]) -> Callable:
    """One task = one shard: read, decode, segment and cut its images, then write the shard
    itself. Only a few numbers travel back, so the driver does no per-image work and a
    second CPU goes to a second worker, not to unpickling crops and writing Parquet."""
    tasks = {s["name"]: s["tasks"] for s in todo}

    def process(batch: dict[str, np.ndarray]) -> dict[str, list]:
        import cv2
        cv2.setNumThreads(0)   # Ray already runs one task per CPU
        res: dict[str, list] = {"shard": [], "n_colonies": [], "n_rejected": []}
        for name in batch["shard"]:
            rows, rejected, info = [], [], {"full_crop_mask": 0}
            for task in tasks[str(name)]:
                r, rej, inf = _colonies_of(root / task["image"], task, cfg)
                rows.extend(r)
                rejected.extend(rej)
                info["full_crop_mask"] += inf.get("full_crop_mask", 0)
            _write_shard(out, str(name), rows, rejected, info)
            res["shard"].append(str(name))
            res["n_colonies"].append(len(rows))
            res["n_rejected"].append(len(rejected))
        return res

    return process


def _write_shard(out: Path, name: str, rows: list[dict], rejected: list[dict],
                 info: dict) -> None:
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["colony_id"]), schema=SCHEMA)
    part = out / "colonies" / f"{name}.parquet"
    tmp = part.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    # sidecar first, then the rename that marks the shard done
    write_json_atomic(out / "shards" / f"{name}.json",
                      {"n_colonies": len(rows), "rejected": rejected, "info": info})
    tmp.replace(part)


def _summarise(out: Path, plan: SourcePlan, fingerprint: dict, cfg: Config,
               shards: list[dict], elapsed: float) -> dict:
    import pyarrow.compute as pc
    classes: dict[str, int] = {}
    n = n_multi = n_unlabeled = 0
    rejected: list[dict] = []
    full_crop = 0
    for s in shards:
        side = json.loads((out / "shards" / f"{s['name']}.json").read_text())
        rejected.extend(side["rejected"])
        full_crop += side["info"].get("full_crop_mask", 0)
        t = pq.read_table(out / "colonies" / f"{s['name']}.parquet",
                          columns=["label", "multi_label"])
        n += t.num_rows
        n_multi += int(pc.sum(t["multi_label"]).as_py() or 0)
        labels = t["label"].to_pylist()
        for lab, multi in zip(labels, t["multi_label"].to_pylist()):
            if lab is not None:
                classes[lab] = classes.get(lab, 0) + 1
            elif not multi:
                n_unlabeled += 1
    manifest = {
        "format": "ipb-colony-table/1", "synthetic": plan.synthetic,
        "n_images": len(plan.images), "n_colonies": n,
        "classes": dict(sorted(classes.items())), "multi_label": n_multi,
        "unlabeled": n_unlabeled, "rejected": rejected,
        "full_crop_masks": full_crop,
        "source": str(plan.root), "layout": plan.layout, "label_mode": plan.label_mode,
        "config": {"segmentation": fingerprint["segmentation"], "data": asdict(cfg.data)},
        "shards": [s["name"] for s in shards], "ingest_seconds": round(elapsed, 1),
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def _pipeline(cfg: Config, root: Path, out: Path, todo: list[dict]):
    """Shards -> `data.ingest_workers` tasks at a time, one shard per task (a shard of 8
    wells is seconds of segmentation, so Ray's per-task cost is noise). SOURCE and TABLE must
    be visible to every node that runs a task: one machine, or a shared file system."""
    import ray

    items = [{"shard": s["name"]} for s in todo]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _make_udf(cfg, root, out, todo), batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=max(1, cfg.data.ingest_workers)), num_cpus=1)


def ingest(source: str | Path, out: str | Path, cfg: Config, labels: str | None = None,
           layout: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Ingest SOURCE into the colony table OUT; returns the manifest. Ray must be initialised
    by the caller (`ipb.runtime.init_ray`)."""
    t0 = time.time()
    plan = plan_sources(source, labels, layout)       # all input errors raise here, before work
    out = Path(out).expanduser().resolve()
    fingerprint = _fingerprint(plan, cfg, labels)
    _check_out(out, fingerprint)
    shards = _shards(plan.images, cfg.data.shard_size)
    (out / "colonies").mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    write_json_atomic(out / PLAN_FILE, {"fingerprint": fingerprint,
                                        "shards": [s["name"] for s in shards]})
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    _drop_stale(out, shards, log)
    done = {s["name"] for s in shards if (out / "colonies" / f"{s['name']}.parquet").is_file()}
    todo = [s for s in shards if s["name"] not in done]
    log(f"ingest: {len(plan.images)} images in {len(shards)} shards "
        f"({len(done)} already done) from {plan.root} [{plan.layout}, labels: {plan.label_mode}"
        f"{', SYNTHETIC' if plan.synthetic else ''}] -> {out}")
    if todo:
        # checked here too: a file the driver cannot read is rejected whatever the workers see
        work = [{"name": s["name"], "tasks": [
            {**plan.task(rel), "unreadable": unreadable_reason(plan.root / rel)}
            for rel in s["images"]]} for s in todo]
        n_images, n_done = sum(len(s["images"]) for s in todo), 0
        size = {s["name"]: len(s["images"]) for s in todo}
        for r in _pipeline(cfg, plan.root, out, work).iter_rows():
            n_done += size[r["shard"]]
            log(f"ingest: {n_done}/{n_images} images, shard {r['shard']} written "
                f"({r['n_colonies']} colonies, {r['n_rejected']} rejected)")
    manifest = _summarise(out, plan, fingerprint, cfg, shards, time.time() - t0)
    log(f"ingest: done, {manifest['n_colonies']} colonies, classes {manifest['classes']}, "
        f"{manifest['multi_label']} multi-label, {manifest['unlabeled']} unlabeled, "
        f"{len(manifest['rejected'])} rejected, {time.time() - t0:.1f}s")
    return manifest
