"""Classify every colony of new raw images with a trained student.

    ipb predict MODEL IMAGES... --out DIR [--test-patches K] [--tracking-uri URI] [k=v ...]

MODEL is a student.pt, a directory holding one (a Ray checkpoint), or an MLflow run id
(32 hex digits, or runs:/<id>) whose artifact model/student.pt is downloaded. IMAGES are files
or directories of images. Per image: decode -> segment with the segmentation settings saved
with the model (override with e.g. segmentation.pixel_size_um=1.0 for 1 um/px microscopes) ->
cut each colony's crop and mask -> average the softmax of K patches whose centres lie inside the
colony mask, at the model's own patch size.

K defaults to 5 here (DEFAULT_TEST_PATCHES), not to the training config's patch.test_patches
(1, the paper's centre patch): a patch covers a small part of a large colony, and new images
come without a validation set that would tell us the centre patch is enough. `--test-patches 1`
gives the paper's protocol; a `patch.test_patches=K` override is honoured as well.

Writes DIR/colonies.csv (one row per colony), DIR/counts.csv (one row per image),
DIR/skipped.csv (unreadable files and why), DIR/README.txt, and for time-lapse series
(`<group>_t<NN>.<ext>`, ipb.data.sources.group_and_time) DIR/counts_over_time_<group>.png plus
DIR/counts_over_time.png over all series. No Ray; MLflow only to download a run's model.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipb.config import Config, ConfigError, apply, expand_path, flatten, from_dict, load_config

MODEL_FILE = "student.pt"            # = ipb.train.MODEL_FILE (not imported: train imports Ray)
ARTIFACT = "model/" + MODEL_FILE     # where ipb.tracking.log_trial_result puts it
DEFAULT_TEST_PATCHES = 5
_RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-fA-F]{32})(?:/.*)?$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


# ---------------------------------------------------------------- the model

def load_student(model: str | os.PathLike, tracking_uri: str | None = None
                 ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(student in eval mode, meta) from a student.pt, a directory with one, or an MLflow run.

    meta: arch, width, classes, patch_size, config (dict), source, synthetic (True / False /
    None = unknown) and synthetic_why.
    """
    path = Path(str(model)).expanduser()
    if path.is_dir():
        found = path / MODEL_FILE if (path / MODEL_FILE).is_file() else next(
            iter(sorted(path.rglob(MODEL_FILE))), None)
        if found is None:
            raise FileNotFoundError(f"model directory {path} holds no {MODEL_FILE}; give the "
                                    "file, a checkpoint directory, or an MLflow run id")
        return _read_student(found, str(found))
    if path.is_file():
        return _read_student(path, str(path))
    m = _RUN_ID.match(str(model))
    if m is None:
        raise FileNotFoundError(f"model {model!r} is neither a file, a directory holding "
                                f"{MODEL_FILE}, nor an MLflow run id (32 hex digits or runs:/<id>)")
    return _load_run(m.group(1).lower(), tracking_uri)


def _load_run(run_id: str, uri: str | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    from ipb.tracking import tracking_uri
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():     # MLflow would silently create an empty store here
            raise FileNotFoundError(f"MLflow run {run_id}: no MLflow store {db} (tracking URI "
                                    f"{uri}); give --tracking-uri or set MLFLOW_TRACKING_URI")
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient
    try:
        tags = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    except Exception as e:
        raise FileNotFoundError(f"MLflow run {run_id} not found at {uri} "
                                f"({type(e).__name__}: {str(e)[:200]})") from None
    with tempfile.TemporaryDirectory() as d:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"runs:/{run_id}/{ARTIFACT}", dst_path=d, tracking_uri=uri)
        except Exception as e:
            raise FileNotFoundError(
                f"MLflow run {run_id} at {uri} has no artifact {ARTIFACT} (did the trial finish? "
                f"status tag ipb.error: {tags.get('ipb.error', '-')[:200]}); "
                f"{type(e).__name__}: {str(e)[:200]}") from None
        return _read_student(Path(local), f"runs:/{run_id}", tags)


def _read_student(path: Path, source: str, run_tags: dict | None = None
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    from ipb.models import create_model
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"model file {path} is not a readable student checkpoint "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    missing = {"state_dict", "arch", "width", "classes", "patch_size", "config"} - set(blob)
    if not isinstance(blob, dict) or missing:
        raise ValueError(f"model file {path} lacks key(s) {sorted(missing)}; expected the "
                         f"{MODEL_FILE} that `ipb train` saves")
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    meta["classes"] = list(meta["classes"])
    meta["source"] = source
    meta["synthetic"], meta["synthetic_why"] = _synthetic(meta, run_tags)
    dropout = meta["config"].get("model", {}).get("dropout", 0.5)
    net = create_model(meta["arch"], len(meta["classes"]), width=meta["width"], dropout=dropout)
    state = {k.removeprefix("module."): v for k, v in blob["state_dict"].items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"model file {path}: weights do not fit {meta['arch']} width "
                         f"{meta['width']} with {len(meta['classes'])} classes: {str(e)[:300]}"
                         ) from None
    return net.eval(), meta


def _synthetic(meta: dict, run_tags: dict | None) -> tuple[bool | None, str]:
    """Was the student trained on synthetic data? The most direct evidence available."""
    if "synthetic" in meta:
        return bool(meta["synthetic"]), "saved with the model"
    if run_tags and "ipb.synthetic" in run_tags:
        return run_tags["ipb.synthetic"] == "true", "MLflow run tag ipb.synthetic"
    table = meta["config"].get("data", {}).get("table", "")
    if not table:
        return True, "trained with data.table empty: the cached synthetic data set"
    manifest = expand_path(table) / "manifest.json"
    if manifest.is_file():
        return bool(json.loads(manifest.read_text()).get("synthetic")), f"manifest of {table}"
    return None, f"unknown: training table {table} is not found here"


def config_for(meta: dict, profile: str | None = None,
               overrides: dict[str, Any] | None = None) -> Config:
    """The config saved with the model (or `profile` instead), then key=value overrides."""
    if profile:
        return load_config(profile, overrides or None)
    try:
        cfg = from_dict(meta["config"])
    except ConfigError:
        # a model saved by another ipb version: keep the keys this one knows
        cfg = Config()
        for k, v in flatten(meta["config"]).items():
            try:
                cfg = apply(cfg, {k: v})
            except ConfigError:
                print(f"predict: ignoring saved config key {k!r} (unknown here)", file=sys.stderr)
    return apply(cfg, overrides) if overrides else cfg


# ---------------------------------------------------------------- classification

def expand_inputs(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given; directories expand to their images (recursive, sorted)."""
    from ipb.data.sources import list_images
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [p / rel for rel in list_images(p)]
        else:
            out.append(p)
    return out


def classify_colonies(model: torch.nn.Module, grey: np.ndarray, seg, patch_size: int, cfg: Config,
                      k: int, device: torch.device, rng: np.random.Generator) -> np.ndarray:
    """(n_colonies, n_classes) mean softmax over k patches inside each colony's mask."""
    from ipb.data.patches import ColonyBank
    from ipb.engine import Part, predict_proba
    if not seg.colonies:
        return np.zeros((0, model.num_classes), np.float32)
    crops, masks = [], []
    for c in seg.colonies:
        box = (slice(c["y0"], c["y1"]), slice(c["x0"], c["x1"]))
        crops.append(grey[box])
        masks.append(seg.labels[box] == c["id"])
    part = Part(ColonyBank(crops, masks, patch_size), np.full(len(crops), -1, np.int64),
                [str(c["id"]) for c in seg.colonies])
    cfg_k = replace(cfg, patch=replace(cfg.patch, test_patches=int(k)))
    return predict_proba(model, part, cfg_k, device, rng)


def predict_images(model: torch.nn.Module, meta: dict, paths: list[str | os.PathLike],
                   out_dir: str | os.PathLike, cfg: Config | None = None,
                   test_patches: int | None = DEFAULT_TEST_PATCHES,
                   device: str | torch.device | None = None, progress: bool = True
                   ) -> dict[str, Any]:
    """Segment and classify every colony of `paths`; write the CSVs/plots under `out_dir`.

    test_patches=None uses cfg.patch.test_patches. Returns a summary with the output files.
    """
    from ipb.data.segment import segment, to_gray
    from ipb.data.sources import decode_image, group_and_time
    cfg = cfg or config_for(meta)
    k = int(cfg.patch.test_patches if test_patches is None else test_patches)
    if k < 1:
        raise ValueError(f"test_patches must be >= 1, got {k}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    classes, size = meta["classes"], int(meta["patch_size"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = expand_inputs(paths)
    if not files:
        raise FileNotFoundError(f"no images among {[str(p) for p in paths]}")
    root = Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
    warn = _synthetic_line(meta)
    if warn and progress:
        print(warn, file=sys.stderr, flush=True)
    colony_rows, count_rows, skipped = [], [], []
    t_start = time.time()
    for n, f in enumerate(files, start=1):
        t0 = time.time()
        rel = str(f.resolve().relative_to(root))
        try:
            if not f.is_file():
                raise ValueError("file not found")
            grey = to_gray(decode_image(f.read_bytes(), f.name))
            seg = segment(grey, cfg.segmentation)
            probs = classify_colonies(model, grey, seg, size, cfg, k, device,
                                      np.random.default_rng(cfg.train.seed))
        except (ValueError, TypeError, OSError) as e:
            skipped.append({"image": str(f), "reason": str(e)})
            if progress:
                print(f"[{n}/{len(files)}] {f}: SKIPPED ({e})", file=sys.stderr, flush=True)
            continue
        group, t = group_and_time(rel)
        pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        for c, p, j in zip(seg.colonies, probs, pred):
            colony_rows.append({"image": str(f), "colony": c["id"], "x0": c["x0"], "y0": c["y0"],
                                "x1": c["x1"], "y1": c["y1"], "area": c["area"],
                                "border": c["border"], "class": classes[j],
                                **{f"p_{name}": f"{q:.6f}" for name, q in zip(classes, p)}})
        per = np.bincount(pred, minlength=len(classes))
        count_rows.append({"image": str(f), "group": group, "time": t,
                           "n_colonies": len(seg.colonies),
                           **{f"n_{name}": int(v) for name, v in zip(classes, per)}})
        if progress:
            print(f"[{n}/{len(files)}] {f}: {len(seg.colonies)} colonies ("
                  + ", ".join(f"{name} {v}" for name, v in zip(classes, per) if v)
                  + f") in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    _short_groups(count_rows)
    written = _write_outputs(out, classes, colony_rows, count_rows, skipped, meta, cfg, k, warn)
    return {"n_images": len(count_rows), "n_colonies": len(colony_rows),
            "n_skipped": len(skipped), "skipped": skipped, "classes": classes,
            "counts": {name: sum(r[f"n_{name}"] for r in count_rows) for name in classes},
            "test_patches": k, "synthetic": meta.get("synthetic"), "files": written,
            "seconds": time.time() - t_start}


def _short_groups(count_rows: list[dict]) -> None:
    """A group is named by its file stem (`well_003`) unless two folders share that stem."""
    owners: dict[str, set[str]] = defaultdict(set)
    for r in count_rows:
        owners[Path(r["group"]).name].add(r["group"])
    for r in count_rows:
        short = Path(r["group"]).name
        if len(owners[short]) == 1:
            r["group"] = short


def _synthetic_line(meta: dict) -> str:
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


def _write_outputs(out: Path, classes: list[str], colony_rows, count_rows, skipped, meta,
                   cfg: Config, k: int, warn: str) -> dict[str, str]:
    files = {
        "colonies": _write_csv(out / "colonies.csv", ["image", "colony", "x0", "y0", "x1", "y1",
                                                      "area", "border", "class"]
                               + [f"p_{c}" for c in classes], colony_rows),
        "counts": _write_csv(out / "counts.csv", ["image", "group", "time", "n_colonies"]
                             + [f"n_{c}" for c in classes], count_rows),
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
             f"{len(count_rows)} images, {len(colony_rows)} colonies, {len(skipped)} skipped "
             "(skipped.csv)",
             f"class = argmax of the softmax averaged over {k} patch(es) inside each colony mask",
             f"segmentation: {json.dumps(asdict(cfg.segmentation))}"]
    if warn:
        lines.insert(0, warn)
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


__all__ = ["DEFAULT_TEST_PATCHES", "load_student", "config_for", "expand_inputs",
           "classify_colonies", "predict_images"]
