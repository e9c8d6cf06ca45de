"""Ray Data ingest: raw microscopy -> colony table (Parquet shards + manifest.json).

    ipb ingest SOURCE --out TABLE [--labels CSV|VOC_DIR|COCO.json] [--layout wells|folders] [key=value ...]
    ipb ingest SOURCE --out s3://BUCKET/tables/NAME ...     # TABLE in object storage (or gs://)

plan (ipb.data.sources: images, labels, all input errors, before Ray) -> shards of up to
`data.shard_size` images -> one Ray Data task per shard (map_batches on a pool of
`data.ingest_workers` tasks) reads, decodes, segments, cuts colonies (ipb.data.extract) and
writes its shard atomically -> the driver writes manifest.json. Shards are sticky: a re-run
keeps every shard of the previous plan whose images are unchanged (same file size and mtime,
same labels) and puts new or changed images into new shards, so a crash loses at most the
shards in flight and adding an image re-does only that image. Bad files are listed in the
manifest's `rejected`, never fatal; a TABLE made from other inputs or settings is refused,
not overwritten. Progress: a tqdm bar (images, colonies, rate) on a terminal, else one line
per shard. TABLE's files are written through `ipb.data.store.Store`, so TABLE may be a
directory or a bucket URI, each write all or nothing.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ipb.config import Config
from ipb.data.extract import extract_image, merge_info, new_info
from ipb.data.sources import SourcePlan, plan_sources, unreadable_reason
from ipb.data.store import Store
from ipb.data.table import SCHEMA, TABLE_FORMAT

PLAN_FILE = "ingest_plan.json"


class TableExistsError(RuntimeError):
    """TABLE already holds a table made from other inputs or settings."""


def _fingerprint(plan: SourcePlan, cfg: Config) -> dict[str, Any]:
    """What defines a table: format, inputs, label file, layout and the settings that change
    rows. The labels' contents are not here: they are part of each image's key, so editing
    one image's labels re-does that image instead of refusing the table."""
    return {"format": TABLE_FORMAT, "source": str(plan.root), "labels": plan.labels,
            "label_format": plan.label_format, "layout": plan.layout,
            "segmentation": asdict(cfg.segmentation), "min_colony_px": cfg.data.min_colony_px,
            "box_min_cover": cfg.data.box_min_cover,
            "pixel_size_from": cfg.data.pixel_size_from}


def _shard(entries: list[tuple[str, str]]) -> dict:
    import hashlib
    digest = hashlib.sha1("\n".join(f"{r}:{k}" for r, k in entries).encode()).hexdigest()[:16]
    return {"name": f"shard-{digest}", "images": [r for r, _ in entries],
            "keys": [k for _, k in entries]}


def _sticky_shards(plan: SourcePlan, shard_size: int, previous: list[dict]) -> list[dict]:
    """Shards of the previous plan whose images all keep their key, then new shards of up to
    `shard_size` of the remaining images (sorted)."""
    keys = {rel: plan.image_key(rel) for rel in plan.images}
    shards, covered = [], set()
    for s in previous:
        entries = list(zip(s.get("images", []), s.get("keys", [])))
        if entries and all(keys.get(r) == k and r not in covered for r, k in entries):
            shards.append(_shard(entries))
            covered.update(s["images"])
    rest = [(r, keys[r]) for r in plan.images if r not in covered]
    shards += [_shard(rest[k:k + shard_size]) for k in range(0, len(rest), shard_size)]
    return shards


def _previous_plan(out: Store, fingerprint: dict) -> list[dict]:
    """The shards of TABLE's earlier plan (empty for a new TABLE); refuses another table."""
    if out.exists(PLAN_FILE):
        old = out.read_json(PLAN_FILE)
        if old.get("fingerprint") != fingerprint:
            was = old.get("fingerprint") or {}
            diff = sorted(k for k in set(was) | set(fingerprint)
                          if was.get(k) != fingerprint.get(k))
            raise TableExistsError(
                f"{out} holds a colony table made from other inputs/settings (differs in: "
                f"{', '.join(diff)}); choose another --out or delete it yourself")
        return [s for s in old.get("shards", []) if isinstance(s, dict)]
    if out.list():
        raise TableExistsError(f"{out} exists, is not empty and is not an ipb colony table; "
                               "choose another --out")
    return []


def _drop_stale(out: Store, shards: list[dict], log: Callable) -> None:
    """Shards of an earlier run whose images changed or went away (files added, edited or
    removed in SOURCE) would duplicate colonies next to their replacements: remove them."""
    keep = {s["name"] for s in shards}
    for part in out.list("colonies"):
        name = part.split(".parquet")[0]
        if ".parquet" in part and name not in keep:
            log(f"ingest: removing stale shard {part} (its images changed in SOURCE)")
            out.delete("colonies", part)
            out.delete("shards", f"{name}.json")


def _colonies_of(path: Path, task: dict, cfg: Config) -> tuple[list, list, dict]:
    """Rows, rejected entries and info for one file; a bad file is a rejected entry."""
    rel = task["image"]
    reason = task.get("unreadable") or unreadable_reason(path)
    try:
        if reason is not None:
            raise ValueError(reason)
        return extract_image(path.read_bytes(), task, cfg)
    except Exception as e:  # keep the run going, but say what happened
        why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        rejected = [{"path": rel, "reason": why}]
        # a user's labelled boxes on an unusable file are listed one by one, never lost quietly
        for b in task["boxes"] if task["label_mode"] == "colony" else []:
            rejected.append({"path": rel, "label": b["label"], "where": b["where"],
                             "reason": f"labelled box ({b['where']}) on an unusable image: {why}"})
        info = new_info()
        info["labelled_boxes"] = len(rejected) - 1
        return [], rejected, info


def _make_udf(cfg: Config, root: Path, out: Store, todo: list[dict]) -> Callable:
    """One task = one shard: read, decode, segment and cut its images, then write the shard
    itself. Only a few numbers travel back, so the driver does no per-image work and a
    second CPU goes to a second worker, not to unpickling crops and writing Parquet."""
    tasks = {s["name"]: s["tasks"] for s in todo}

    def process(batch: dict[str, np.ndarray]) -> dict[str, list]:
        import cv2
        cv2.setNumThreads(0)   # Ray already runs one task per CPU
        res: dict[str, list] = {"shard": [], "n_colonies": [], "n_rejected": []}
        for name in batch["shard"]:
            rows, rejected, info = [], [], new_info()
            for task in tasks[str(name)]:
                r, rej, inf = _colonies_of(root / task["image"], task, cfg)
                rows.extend(r)
                rejected.extend(rej)
                merge_info(info, inf)
            _write_shard(out, str(name), rows, rejected, info)
            res["shard"].append(str(name))
            res["n_colonies"].append(len(rows))
            res["n_rejected"].append(len(rejected))
        return res

    return process


def _write_shard(out: Store, name: str, rows: list[dict], rejected: list[dict],
                 info: dict) -> None:
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["colony_id"]), schema=SCHEMA)
    # sidecar first, then the shard itself, whose appearance marks the shard done
    out.write_json({"n_colonies": len(rows), "rejected": rejected, "info": info},
                   "shards", f"{name}.json")
    out.write_parquet(table, "colonies", f"{name}.parquet", compression="zstd")


def _count_labels(out: Store, shards: list[dict]) -> tuple[int, int, int, dict]:
    import pyarrow.compute as pc
    classes: dict[str, int] = {}
    n = n_multi = n_unlabeled = 0
    for s in shards:
        t = out.read_parquet("colonies", f"{s['name']}.parquet",
                             columns=["label", "multi_label"])
        n += t.num_rows
        n_multi += int(pc.sum(t["multi_label"]).as_py() or 0)
        for lab, multi in zip(t["label"].to_pylist(), t["multi_label"].to_pylist()):
            if lab is not None:
                classes[lab] = classes.get(lab, 0) + 1
            elif not multi:
                n_unlabeled += 1
    return n, n_multi, n_unlabeled, dict(sorted(classes.items()))


def _summarise(out: Store, plan: SourcePlan, fingerprint: dict, cfg: Config,
               shards: list[dict], this_run: dict) -> dict:
    info, rejected = new_info(), list(plan.rejected)
    for s in shards:
        side = out.read_json("shards", f"{s['name']}.json")
        rejected.extend(side["rejected"])
        merge_info(info, side["info"])
    n, n_multi, n_unlabeled, classes = _count_labels(out, shards)
    at_plan = sum(1 for r in plan.rejected if "label" in r)
    fallback = info["pixel_size_fallback"]
    manifest = {
        "format": TABLE_FORMAT, "synthetic": plan.synthetic,
        "n_images": len(plan.images), "n_frames": info["frames"], "n_colonies": n,
        "classes": classes, "multi_label": n_multi, "unlabeled": n_unlabeled,
        "labelled_boxes": {"listed": info["labelled_boxes"] + at_plan,
                           "kept": info["labelled_kept"], "duplicates": len(info["duplicates"]),
                           "rejected": sum(1 for r in rejected if "label" in r),
                           "mask_source": dict(sorted(info["labelled_mask_source"].items()))},
        "mask_source": dict(sorted(info["mask_source"].items())),
        "pixel_size": {"from": dict(sorted(info["pixel_size"].items())),
                       "fallback_images": len(fallback),
                       "fallback_um": cfg.segmentation.pixel_size_um},
        "bit_depths": dict(sorted(info["bit_depths"].items())),
        "rejected": rejected, "duplicates": info["duplicates"], "clipped": info["clipped"],
        "merged_labels": info["merged"], "warnings": plan.warnings + info["warnings"],
        "source": str(plan.root), "layout": plan.layout, "label_mode": plan.label_mode,
        "label_format": plan.label_format, "labels": plan.labels,
        "config": {"segmentation": fingerprint["segmentation"], "data": asdict(cfg.data)},
        # this run only: a resumed run re-does a few shards, and says so
        "shards": [s["name"] for s in shards], "ingest_seconds": this_run["seconds"],
        "this_run": this_run,
    }
    out.write_json(manifest, "manifest.json")
    return manifest


def _pipeline(cfg: Config, root: Path, out: Store, todo: list[dict]):
    """Shards -> `data.ingest_workers` tasks at a time, one shard per task (a shard of 8
    wells is seconds of segmentation, so Ray's per-task cost is noise). SOURCE must be visible
    to every node that runs a task (one machine, or a shared file system); TABLE too, unless it
    is in object storage."""
    import ray

    items = [{"shard": s["name"]} for s in todo]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _make_udf(cfg, root, out, todo), batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=max(1, cfg.data.ingest_workers)), num_cpus=1)


class _Progress:
    """A tqdm bar on a terminal; one line per shard otherwise (logs, CI, `| tee`)."""

    def __init__(self, total: int, log: Callable, enabled: bool):
        self.log, self.total, self.done, self.colonies = log, total, 0, 0
        self.t0 = time.time()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="img", desc="ingest", file=sys.stderr,
                            dynamic_ncols=True)

    def shard(self, name: str, n_images: int, n_colonies: int, n_rejected: int) -> None:
        self.done += n_images
        self.colonies += n_colonies
        if self.bar is not None:
            self.bar.update(n_images)
            self.bar.set_postfix(colonies=self.colonies, refresh=False)
            return
        rate = self.done / max(time.time() - self.t0, 1e-9)
        self.log(f"ingest: {self.done}/{self.total} images ({rate:.1f}/s), shard {name} "
                 f"written ({n_colonies} colonies, {n_rejected} rejected)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run(cfg: Config, plan: SourcePlan, out: Store, todo: list[dict], log: Callable,
         progress: bool) -> tuple[int, int]:
    """Run the shards in `todo`; (images, colony rows) this run wrote."""
    # readability is checked here too: a file the driver cannot read is rejected whatever
    # the workers see
    work = [{"name": s["name"], "tasks": [
        {**plan.task(rel), "unreadable": unreadable_reason(plan.root / rel)}
        for rel in s["images"]]} for s in todo]
    size = {s["name"]: len(s["images"]) for s in todo}
    bar = _Progress(sum(size.values()), log, progress)
    # Ray Data's INFO lines ("execution finished in ...") would interleave with ours
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        for r in _pipeline(cfg, plan.root, out, work).iter_rows():
            bar.shard(r["shard"], size[r["shard"]], r["n_colonies"], r["n_rejected"])
    finally:
        bar.close()
    return bar.done, bar.colonies


def ingest(source: str | Path, out: str | Path, cfg: Config, labels: str | None = None,
           layout: str = "auto", progress: bool = True,
           plan: SourcePlan | None = None) -> dict[str, Any]:
    """Ingest SOURCE into the colony table OUT; returns the manifest. Ray must be initialised
    by the caller (`ipb.runtime.init_ray`); `plan` (from `plan_sources`) skips re-planning
    when the caller checked the inputs before starting Ray."""
    t0 = time.time()
    # input errors raise here, before work
    plan = plan or plan_sources(source, labels, layout, cfg.data.label_map)
    out = Store(out)         # a directory, or s3:// / gs:// (every write all or nothing)
    fingerprint = _fingerprint(plan, cfg)
    shards = _sticky_shards(plan, cfg.data.shard_size, _previous_plan(out, fingerprint))
    out.makedirs("colonies")
    out.makedirs("shards")
    out.write_json({"fingerprint": fingerprint, "shards": shards}, PLAN_FILE)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    _drop_stale(out, shards, log)
    written = set(out.list("colonies"))
    done = {s["name"] for s in shards if f"{s['name']}.parquet" in written}
    todo = [s for s in shards if s["name"] not in done]
    log(f"ingest: {len(plan.images)} images in {len(shards)} shards "
        f"({len(done)} already done) from {plan.root} [{plan.layout}, labels: {plan.label_mode}"
        f"{' ' + plan.label_format if plan.label_format else ''}"
        f"{', SYNTHETIC' if plan.synthetic else ''}] -> {out}")
    for w in plan.warnings:       # few, and they change the classes: each one is said
        log(f"ingest: WARNING {w['path']}: {w['warning']}")
    n_images, n_rows = _run(cfg, plan, out, todo, log, progress) if todo else (0, 0)
    this_run = {"images": n_images, "rows": n_rows, "seconds": round(time.time() - t0, 1)}
    manifest = _summarise(out, plan, fingerprint, cfg, shards, this_run)
    _report(manifest, log)
    return manifest


def _report(m: dict, log: Callable) -> None:
    px = m["pixel_size"]
    if px["fallback_images"]:
        log(f"ingest: WARNING {px['fallback_images']} of {m['n_images']} images carry no pixel "
            f"size (OME/ImageJ/TIFF tags): used segmentation.pixel_size_um="
            f"{px['fallback_um']} for them; set it to your microscope's value if that is wrong")
    boxes = m["labelled_boxes"]
    if boxes["listed"]:
        log(f"ingest: labelled boxes: {boxes['kept']} kept (masks {boxes['mask_source']}), "
            f"{boxes['duplicates']} duplicates kept once, {len(m['clipped'])} clipped by more "
            f"than a pixel or two, {boxes['rejected']} rejected (manifest.json lists each)")
    if m["warnings"]:
        log(f"ingest: {len(m['warnings'])} warnings in manifest.json, e.g. "
            f"{m['warnings'][0]['path']}: {m['warnings'][0]['warning']}")
    run = m["this_run"]
    rate = run["rows"] / max(run["seconds"], 1e-9)
    log(f"ingest: done, {m['n_colonies']} colonies, classes {m['classes']}, "
        f"{m['multi_label']} multi-label, {m['unlabeled']} unlabeled, "
        f"{len(m['rejected'])} rejected; this run {run['images']} images, {run['rows']} rows in "
        f"{run['seconds']:.1f}s ({rate:.0f} rows/s)")
