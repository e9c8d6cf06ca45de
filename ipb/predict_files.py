"""What `ipb predict` writes: CSVs, counts over time, README, label images and GeoJSON.

    ipb predict MODEL images/ --out pred/     # pred/colonies.csv, counts.csv, labels/, geojson/

colonies.csv: one row per colony, `id` 1..N over the run (the value of the colony's pixels in
labels/<image>.ome.tif and the `ipb_id` of its GeoJSON feature), image, time, the segmentation
instance, box, area (px and um^2), pixel size, border, class, for time series its track and its
class constrained in time (ipb/temporal.py), and p_<class>. counts.csv: one row per image
(per frame of a time series), raw (n_<class>) and constrained (nc_<class>) counts. skipped.csv:
unreadable files and why. No Ray.
"""
from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ipb.config import Config
from ipb.data.sources import stem_of
from ipb.temporal import TEMPORAL_FIELDS

COLONY_FIELDS = ["id", "image", "time", "colony", "x0", "y0", "x1", "y1", "area", "area_um2",
                 "pixel_size_um", "border", "class"]
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


# what one prediction writes under --out: a folder holding any of these holds a prediction
OWN_FILES = ("colonies.csv", "counts.csv", "skipped.csv", "README.txt", "counts_over_time*.png")
OWN_DIRS = {"labels": "*.ome.tif", "geojson": "*.geojson"}


def own_outputs(out: Path) -> list[Path]:
    """The files an earlier `ipb predict` wrote under `out` (nothing else there is ours)."""
    found = [f for pat in OWN_FILES for f in out.glob(pat)]
    return found + [f for d, pat in OWN_DIRS.items() for f in (out / d).glob(pat)]


def prepare_out(out: str | Path, overwrite: bool = False) -> Path:
    """Check `--out` before any model is loaded or image read: a folder that holds an earlier
    prediction is refused (its labels/ and geojson/ would mix with this run's colonies.csv)
    unless `overwrite`, which removes that prediction's own files only; a folder that cannot
    be written is a clear error, not an OSError after the first image."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; give a folder")
    old = own_outputs(out) if out.is_dir() else []
    if old and not overwrite:
        raise ValueError(f"--out {out} holds an earlier prediction ({len(old)} files, e.g. "
                         f"{old[0].name}); give a new folder or --overwrite (which removes "
                         "that prediction's files only)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f in old:
            f.unlink()
        for d in OWN_DIRS:
            (out / d).mkdir(exist_ok=True)
        probe = out / ".ipb-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out} cannot be written ({e.strerror or e}); give a folder "
                         "you can write to") from None
    return out


def output_names(rels: list[str]) -> dict[str, str]:
    """A file-system-safe, unique output stem per input (sub/a.tif -> sub_a)."""
    used: set[str] = set()
    out = {}
    for rel in rels:
        name = _SAFE.sub("_", stem_of(rel)).strip("_") or "image"
        while name in used:
            name += "_"
        used.add(name)
        out[rel] = name
    return out


def write_interchange(out: Path, stem: str, res, rows: list[dict],
                       ids: list[dict[int, int]], classes: list[str]) -> None:
    """labels/<stem>.ome.tif and geojson/<stem>.geojson of one input file."""
    from ipb.interchange import colony_feature, label_image, write_geojson, write_label_tiff
    top = max((r["id"] for r in rows), default=0)
    dtype = np.uint16 if top < 2 ** 16 else np.uint32
    frames = [label_image(fr.seg.labels, frame_ids, dtype)
              for fr, frame_ids in zip(res.frames, ids)]
    write_label_tiff(out / "labels" / f"{stem}.ome.tif", frames, res.pixel_size_um, res.stack)
    by_id = {r["id"]: r for r in rows}
    features = []
    for fr, frame_ids in zip(res.frames, ids):
        for inst, row_id in frame_ids.items():
            r = by_id[row_id]
            mask = fr.seg.labels[r["y0"]:r["y1"], r["x0"]:r["x1"]] == inst
            feat = colony_feature(r, mask, classes, fr.t)
            if feat is not None:
                features.append(feat)
    write_geojson(out / "geojson" / f"{stem}.geojson", features, res.name, res.pixel_size_um)


def short_groups(count_rows: list[dict]) -> None:
    """A group is named by its file stem (`well_003`) unless two folders share that stem."""
    owners: dict[str, set[str]] = defaultdict(set)
    for r in count_rows:
        owners[Path(r["group"]).name].add(r["group"])
    for r in count_rows:
        short = Path(r["group"]).name
        if len(owners[short]) == 1:
            r["group"] = short


def synthetic_line(meta: dict) -> str:
    if meta.get("synthetic"):
        return (f"NOTE: this model was trained on SYNTHETIC data ({meta['synthetic_why']}); "
                "its classes on real images are not validated.")
    if meta.get("synthetic") is None:
        return f"NOTE: whether this model was trained on synthetic data is {meta['synthetic_why']}."
    return ""


# ---------------------------------------------------------------- outputs

def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def write_outputs(out: Path, classes: list[str], colony_rows, count_rows, skipped, meta,
                  cfg: Config, k: int, warn: str, warnings: list[dict]) -> dict[str, str]:
    """colonies.csv, counts.csv, skipped.csv, the counts-over-time plots and README.txt."""
    files = {
        "colonies": _write_csv(out / "colonies.csv", COLONY_FIELDS + TEMPORAL_FIELDS
                               + [f"p_{c}" for c in classes], colony_rows),
        "counts": _write_csv(out / "counts.csv", ["image", "group", "time", "n_colonies"]
                             + [f"n_{c}" for c in classes] + [f"nc_{c}" for c in classes],
                             count_rows),
        "skipped": _write_csv(out / "skipped.csv", ["image", "reason"], skipped),
    }
    series: dict[str, list[dict]] = defaultdict(list)
    for r in count_rows:
        if r["time"] >= 0:
            series[r["group"]].append(r)
    title = "SYNTHETIC-trained model: " if meta.get("synthetic") else ""
    used: set[str] = set()
    for group, rows in sorted(series.items()):
        name = _SAFE.sub("_", group).strip("_") or "series"
        while name in used:
            name += "_"
        used.add(name)
        rows = sorted(rows, key=lambda r: r["time"])
        path = out / f"counts_over_time_{name}.png"
        _plot_counts([r["time"] for r in rows],
                     {c: [r[f"n_{c}"] for r in rows] for c in classes}, path, title + group)
        files[f"series:{group}"] = path
    if series:
        times = sorted({r["time"] for rows in series.values() for r in rows})
        total = {c: [sum(r[f"n_{c}"] for rows in series.values() for r in rows if r["time"] == t)
                     for t in times] for c in classes}
        files["counts_over_time"] = _plot_counts(
            times, total, out / "counts_over_time.png",
            f"{title}all {len(series)} series (sum)", fractions=True)
    lines = [f"ipb predict: model {meta['source']} ({meta['arch']}, width {meta['width']}, "
             f"patch {meta['patch_size']} px, classes {', '.join(classes)})",
             f"{len(count_rows)} images/frames, {len(colony_rows)} colonies, {len(skipped)} "
             "skipped (skipped.csv)",
             f"class = argmax of the softmax averaged over {k} patch(es) inside each colony mask",
             "time series: colonies tracked across frames by box overlap (track = series.track); "
             "class_constrained = the Viterbi path along the track with the allowed changes "
             f"{', '.join(cfg.method.temporal_transitions)} (p = {cfg.method.temporal_change} "
             "per frame); nc_<class> in counts.csv count those",
             f"segmentation: {json.dumps(asdict(cfg.segmentation))} (pixel_size_um: the "
             f"image's own when it has one, data.pixel_size_from={cfg.data.pixel_size_from}; "
             "per colony in colonies.csv)",
             "labels/<image>.ome.tif: instance labels, pixel value = colonies.csv id (napari, "
             "Fiji); geojson/<image>.geojson: outlines with class and probabilities (QuPath: "
             "File > Import objects)"]
    if warn:
        lines.insert(0, warn)
    lines += [f"WARNING {w['image']}: {w['warning']}" for w in warnings]
    (out / "README.txt").write_text("\n".join(lines) + "\n")
    files["readme"] = out / "README.txt"
    return {k_: str(v) for k_, v in files.items()}


def _plot_counts(times: list[int], counts: dict[str, list[int]], path: Path, title: str,
                 fractions: bool = False) -> Path:
    """Class counts vs time, one line per class (and their proportions beside, if asked)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2 if fractions else 1, figsize=(10 if fractions else 6, 3.6),
                             squeeze=False)
    total = np.maximum(np.sum([v for v in counts.values()], axis=0), 1)
    for i, (c, v) in enumerate(counts.items()):
        axes[0, 0].plot(times, v, marker="o", color=f"C{i}", label=c)
        if fractions:
            axes[0, 1].plot(times, np.asarray(v) / total, marker="o", color=f"C{i}", label=c)
    axes[0, 0].set_ylabel("colonies")
    if fractions:
        axes[0, 1].set_ylabel("fraction of colonies")
        axes[0, 1].set_ylim(0, 1)
    for ax in axes[0]:
        ax.set_xlabel("time point")
        ax.set_xticks(times)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["COLONY_FIELDS", "prepare_out", "own_outputs", "output_names", "write_interchange", "short_groups",
           "synthetic_line", "write_outputs"]
