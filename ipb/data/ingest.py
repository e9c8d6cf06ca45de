"""Ray Data ingest: raw microscopy -> colony table (Parquet shards + manifest.json).

    ipb ingest SOURCE --out TABLE [--labels CSV] [--layout wells|folders] [key=value ...]

list files -> read_binary_files -> decode + segment + cut colonies (map_batches on a pool of
`data.ingest_workers` tasks) -> the driver collects rows per shard and writes each finished
shard atomically. Re-running skips shards already written (resume after a crash loses at most
the shards in flight); bad files are listed in the manifest's `rejected`, never fatal; a TABLE
made from other inputs or another config is refused, not overwritten.
"""
from __future__ import annotations

import hashlib
import json
import math
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


def _make_udf(cfg: Config, tasks: dict[str, dict]) -> Callable:
    seg_cfg, min_px = cfg.segmentation, cfg.data.min_colony_px

    def process(batch: dict[str, np.ndarray]) -> dict[str, list]:
        import cv2
        cv2.setNumThreads(0)   # Ray already runs one task per CPU
        out: dict[str, list] = {"image": [], "payload": []}
        for path, data in zip(batch["path"], batch["bytes"]):
            task = tasks[str(path)]
            rel = task["image"]
            try:
                img = decode_image(bytes(data), rel)
                rows, rejected, info = extract_colonies(img, task, seg_cfg, min_px)
            except ValueError as e:
                rows, rejected, info = [], [{"path": rel, "reason": str(e)}], {}
            except Exception as e:  # keep the run going, but say what happened
                rows, rejected, info = [], [{"path": rel, "reason": f"{type(e).__name__}: {e}"}], {}
            out["image"].append(rel)
            out["payload"].append(_pack(rows, rejected, info))
        return out

    return process


def _pack(rows: list[dict], rejected: list[dict], info: dict) -> bytes:
    import pickle
    return pickle.dumps((rows, rejected, info), protocol=pickle.HIGHEST_PROTOCOL)


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


def _pipeline(cfg: Config, tasks: dict[str, dict]):
    """read_binary_files -> decode + segment + cut, `data.ingest_workers` tasks at a time.

    A few images per task: one 512 px well segments in ~20 ms, less than Ray Data's cost of a
    read task + a map task + the driver's hand-off per block (~80 ms measured), so one image
    per task spent most of the time in scheduling. At least ~8 tasks per worker keep the pool
    balanced; at most 8 images per task keep blocks small."""
    import ray

    paths = list(tasks)
    workers = max(1, cfg.data.ingest_workers)
    per_task = min(8, max(1, math.ceil(len(paths) / (8 * workers))))
    ds = ray.data.read_binary_files(paths, include_paths=True,
                                    override_num_blocks=math.ceil(len(paths) / per_task))
    return ds.map_batches(_make_udf(cfg, tasks), batch_size=per_task,
                          compute=ray.data.TaskPoolStrategy(size=workers), num_cpus=1)


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
        # keyed by the absolute path, which is what read_binary_files reports back
        tasks = {str(plan.root / rel): plan.task(rel) for s in todo for rel in s["images"]}
        shard_of = {rel: s["name"] for s in todo for rel in s["images"]}
        pending = {s["name"]: {"left": len(s["images"]), "rows": [], "rejected": [],
                               "info": {"full_crop_mask": 0}} for s in todo}
        n_total, n_done = len(tasks), 0

        def finish(rel: str, rows: list, rejected: list, info: dict) -> None:
            nonlocal n_done
            name = shard_of[rel]
            st = pending[name]
            st["rows"].extend(rows)
            st["rejected"].extend(rejected)
            st["info"]["full_crop_mask"] += info.get("full_crop_mask", 0)
            st["left"] -= 1
            n_done += 1
            if st["left"] == 0:
                _write_shard(out, name, st["rows"], st["rejected"], st["info"])
                del pending[name]
                log(f"ingest: {n_done}/{n_total} images, shard {name} written "
                    f"({len(st['rows'])} colonies, {len(st['rejected'])} rejected)")

        # an empty or unreadable file would fail its Ray read task, and with it the whole run
        for path in list(tasks):
            reason = unreadable_reason(Path(path))
            if reason is not None:
                rel = tasks.pop(path)["image"]
                finish(rel, [], [{"path": rel, "reason": reason}], {})
        if tasks:
            import pickle
            for batch in _pipeline(cfg, tasks).iter_batches(batch_size=None,
                                                            batch_format="numpy"):
                for rel, payload in zip(batch["image"], batch["payload"]):
                    finish(str(rel), *pickle.loads(payload))
    manifest = _summarise(out, plan, fingerprint, cfg, shards, time.time() - t0)
    log(f"ingest: done, {manifest['n_colonies']} colonies, classes {manifest['classes']}, "
        f"{manifest['multi_label']} multi-label, {manifest['unlabeled']} unlabeled, "
        f"{len(manifest['rejected'])} rejected, {time.time() - t0:.1f}s")
    return manifest
