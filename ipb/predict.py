"""Classify every colony of new raw images with a trained student: the CLI and `ipb.predict`.

    ipb predict MODEL IMAGES... --out DIR [--test-patches K] [--tracking-uri URI] [k=v ...]
    python -c "import ipb; print(ipb.predict('student.pt', ['images/']).head())"

MODEL is a student.pt, a directory holding one (a Ray checkpoint), or an MLflow run id
(32 hex digits, or runs:/<id>) whose artifact model/student.pt is downloaded (ipb.student).
IMAGES are files or directories of images; a multi-page / OME T stack is a time series. Per
frame: decode -> segment with the segmentation settings saved with the model, at the image's
own pixel size when its metadata has one (else segmentation.pixel_size_um, which an override
such as segmentation.pixel_size_um=1.0 sets) -> cut each colony's crop and mask -> average the
softmax of K patches whose centres lie inside the colony mask, at the model's patch size.

K defaults to 5 here (DEFAULT_TEST_PATCHES), not to the training config's patch.test_patches
(1, the paper's centre patch): a patch covers a small part of a large colony, and new images
come without a validation set that would tell us the centre patch is enough. `--test-patches 1`
gives the paper's protocol; a `patch.test_patches=K` override is honoured as well.

`predict_images` (the CLI) writes DIR/colonies.csv, counts.csv, skipped.csv, README.txt,
counts-over-time plots for time series, DIR/labels/*.ome.tif and DIR/geojson/*.geojson
(ipb.predict_files, ipb.interchange); `predict` returns the same rows as a DataFrame and
writes nothing. A 16-bit image given to a model trained on 8-bit ones (or the reverse) is
warned about. Progress: a tqdm bar on a terminal, else one line per image. No Ray; MLflow
only to download a run's model.
"""
from __future__ import annotations

import json
import os
import sys
import time
import types
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipb import stop
from ipb.config import Config, expand_path
from ipb.predict_files import (COLONY_FIELDS, output_names, prepare_out, short_groups,
                               synthetic_line, write_interchange, write_outputs)
from ipb.student import config_for, load_student
from ipb.temporal import TEMPORAL_FIELDS, constrain_rows

DEFAULT_TEST_PATCHES = 5


def warm_up() -> None:
    """What a process's first `predict` would otherwise spend before its first image: the
    modules imported lazily below (they keep `import ipb` light) and segmentation's numba
    kernels (compiled, or read from numba's cache). A served model calls it at load (3.0 s of a
    first request's 3.3 s on 2 cores: benchmarks/pyfunc.py)."""
    import importlib
    for name in ("ipb.data.sources", "ipb.data.patches", "ipb.evaluation",
                 "ipb.data.microscopy", "ipb.data.segment"):
        importlib.import_module(name)
    from ipb.data.segment import warm_up as compile_kernels
    compile_kernels()


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
    from ipb.evaluation import Part, predict_proba
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


@dataclass
class Frame:
    """One classified frame: its time point (None for a single image), grey pixels, the
    segmentation and the (n_colonies, n_classes) probabilities."""
    t: int | None
    grey: np.ndarray
    seg: Any
    probs: np.ndarray


@dataclass
class ImageResult:
    name: str                      # as given (path or array_<i>)
    rel: str                       # relative to the inputs' common folder
    frames: list[Frame]
    pixel_size_um: float
    pixel_size_from: str           # OME-XML | ImageJ | TIFF resolution | config
    notes: list[str] = field(default_factory=list)

    @property
    def stack(self) -> bool:
        return bool(self.frames) and self.frames[0].t is not None


class _Predictor:
    """The model, its classes and settings; turns one image into an ImageResult."""

    def __init__(self, model, meta: dict, cfg: Config, k: int, device):
        if k < 1:
            raise ValueError(f"test_patches must be >= 1, got {k}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.meta, self.cfg, self.k = meta, cfg, k
        self.classes, self.size = meta["classes"], int(meta["patch_size"])
        self.trained_bits = _trained_bit_depths(meta, cfg)

    def image(self, img, name: str, rel: str) -> ImageResult:
        """`img`: file bytes or a numpy array (HxW, HxWx3/4, or TxHxW with name ending
        '.stack'). Raises ValueError/TypeError/OSError for an unusable image."""
        from ipb.data.microscopy import ImageData, grey_level_note, read_image
        from ipb.data.segment import segment, to_gray
        data = read_image(img, name) if isinstance(img, bytes) else ImageData([np.asarray(img)])
        px, px_from = self.cfg.segmentation.pixel_size_um, "config"
        if data.pixel_size_um and self.cfg.data.pixel_size_from == "metadata":
            px, px_from = data.pixel_size_um, data.pixel_size_from
        seg_cfg = replace(self.cfg.segmentation, pixel_size_um=px)
        out = ImageResult(name, rel, [], px, px_from, list(data.notes))
        for t, frame in enumerate(data.frames):
            grey = to_gray(frame)
            note = grey_level_note(grey) if t == 0 else None
            out.notes += [note] if note else []
            bits = 16 if grey.dtype == np.uint16 else 8
            if t == 0 and self.trained_bits and bits not in self.trained_bits:
                out.notes.append(
                    f"{bits}-bit image, but the model was trained on "
                    f"{'/'.join(map(str, sorted(self.trained_bits)))}-bit images: pixels are "
                    f"scaled by their type's range (x / {2 ** bits - 1}), so the model sees this "
                    "image at another brightness than its training data; convert the images "
                    "as the training set was, or train on images like these")
            seg = segment(grey, seg_cfg)
            probs = classify_colonies(self.model, grey, seg, self.size, self.cfg, self.k,
                                      self.device, np.random.default_rng(self.cfg.train.seed))
            out.frames.append(Frame(t if data.stack else None, grey, seg, probs))
        return out


def _trained_bit_depths(meta: dict, cfg: Config) -> set[int] | None:
    """Bit depths of the training images: saved with the model, from the training table's
    manifest, or the synthetic set's; None when unknown."""
    if meta.get("bit_depths"):
        return {int(b) for b in meta["bit_depths"]}
    table = meta["config"].get("data", {}).get("table", "")
    if not table:
        return {int(cfg.synth.bit_depth)}
    manifest = expand_path(table) / "manifest.json"
    if manifest.is_file():
        depths = json.loads(manifest.read_text()).get("bit_depths")
        return {int(b) for b in depths} if depths else None
    return None


def _inputs(images) -> list[tuple[Any, str, str]]:
    """(bytes-or-array loader, name, rel) for files, directories and numpy arrays."""
    arrays = [(a, f"array_{i}") for i, a in enumerate(images) if isinstance(a, np.ndarray)]
    files = expand_inputs([p for p in images if not isinstance(p, np.ndarray)])
    root = Path(os.path.commonpath([str(f.resolve().parent) for f in files])) if files else None
    out: list[tuple[Any, str, str]] = [(a, n, n) for a, n in arrays]
    for f in files:
        out.append((f, str(f), str(f.resolve().relative_to(root))))
    return out


def _results(pred: _Predictor, inputs, progress: bool):
    """Yield (name, rel, ImageResult | None, error | None) per input, with progress."""
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=len(inputs), unit="img", desc="predict", file=sys.stderr,
                   dynamic_ncols=True)
    try:
        for n, (src, name, rel) in enumerate(inputs, start=1):
            stop.check()        # a stop lost inside an image codec (ipb/stop.py)
            t0 = time.time()
            try:
                if isinstance(src, Path) and not src.is_file():
                    raise ValueError("file not found")
                res = pred.image(src.read_bytes() if isinstance(src, Path) else src, name, rel)
                err = None
            except (ValueError, TypeError, OSError) as e:
                res, err = None, str(e)
            if bar is not None:
                bar.update(1)
            elif progress:
                print(f"[{n}/{len(inputs)}] {name}: " + (f"SKIPPED ({err})" if res is None else
                      _frame_line(res, pred.classes, time.time() - t0)),
                      file=sys.stderr, flush=True)
            yield name, rel, res, err
    finally:
        if bar is not None:
            bar.close()


def _frame_line(res: ImageResult, classes: list[str], seconds: float) -> str:
    n = sum(len(f.seg.colonies) for f in res.frames)
    per = np.zeros(len(classes), np.int64)
    for f in res.frames:
        if len(f.probs):
            per += np.bincount(f.probs.argmax(axis=1), minlength=len(classes))
    frames = f"{len(res.frames)} frames, " if res.stack else ""
    return (f"{frames}{n} colonies (" + ", ".join(f"{c} {v}" for c, v in zip(classes, per) if v)
            + f") in {seconds:.1f}s")


def _rows(res: ImageResult, classes: list[str], first_id: int
          ) -> tuple[list[dict], list[dict], list[dict[int, int]]]:
    """colonies.csv rows (ids from `first_id`), counts.csv rows, and per frame the map
    segmentation instance -> row id (what the label image holds)."""
    from ipb.data.sources import group_and_time, stem_of
    colony_rows, count_rows, ids = [], [], []
    next_id = first_id
    for fr in res.frames:
        group, t = (stem_of(res.rel), fr.t) if fr.t is not None else group_and_time(res.rel)
        pred = fr.probs.argmax(axis=1) if len(fr.probs) else np.zeros(0, np.int64)
        frame_ids = {}
        for c, p, j in zip(fr.seg.colonies, fr.probs, pred):
            frame_ids[c["id"]] = next_id
            colony_rows.append({
                "id": next_id, "image": res.name, "time": t, "colony": c["id"],
                "x0": c["x0"], "y0": c["y0"], "x1": c["x1"], "y1": c["y1"], "area": c["area"],
                "area_um2": round(c["area"] * res.pixel_size_um ** 2, 3),
                "pixel_size_um": res.pixel_size_um, "border": c["border"],
                "class": classes[j], **{f"p_{name}": f"{q:.6f}" for name, q in zip(classes, p)}})
            next_id += 1
        ids.append(frame_ids)
        per = np.bincount(pred, minlength=len(classes))
        count_rows.append({"image": res.name, "group": group, "time": t,
                           "n_colonies": len(fr.seg.colonies),
                           **{f"n_{name}": int(v) for name, v in zip(classes, per)}})
    return colony_rows, count_rows, ids


def predict(model, images, cfg: Config | None = None,
            test_patches: int | None = DEFAULT_TEST_PATCHES, device: str | None = None,
            tracking_uri: str | None = None, progress: bool = False):
    """Classify every colony of `images` with a trained student; one DataFrame row per colony.

        import ipb
        df = ipb.predict("runs/student.pt", ["plate1/", "extra.tif"])
        df.groupby(["image", "class"]).size()

    model: a student.pt, a directory holding one, an MLflow run id, or `load_student`'s
    (module, meta). images: files, directories and/or numpy arrays (grey or RGB, 8/16-bit).
    Columns: id, image, time, colony, x0, y0, x1, y1, area, area_um2, pixel_size_um, border,
    class, p_<class>... Images that cannot be read are in `df.attrs["skipped"]`, notes (bit
    depth, metadata) in `df.attrs["warnings"]`. Writes nothing; `ipb predict` writes files.
    """
    import pandas as pd
    net, meta = model if isinstance(model, tuple) else load_student(model, tracking_uri)
    cfg = cfg or config_for(meta)
    k = int(cfg.patch.test_patches if test_patches is None else test_patches)
    pred = _Predictor(net, meta, cfg, k, device)
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        images = [images]
    rows, counts, skipped, warnings = [], [], [], []
    for name, _rel, res, err in _results(pred, _inputs(list(images)), progress):
        if res is None:
            skipped.append({"image": name, "reason": err})
            continue
        warnings += [{"image": name, "warning": w} for w in res.notes]
        colonies, frame_counts, _ = _rows(res, pred.classes, len(rows) + 1)
        rows, counts = rows + colonies, counts + frame_counts
    constrain_rows(rows, counts, pred.classes, cfg.method.temporal_transitions,
                   cfg.method.temporal_change)
    cols = COLONY_FIELDS + TEMPORAL_FIELDS + [f"p_{c}" for c in pred.classes]
    df = pd.DataFrame(rows, columns=cols)
    for c in pred.classes:
        df[f"p_{c}"] = df[f"p_{c}"].astype(float)
    df.attrs.update(skipped=skipped, warnings=warnings, classes=list(pred.classes),
                    synthetic=meta.get("synthetic"))
    return df


def predict_images(model: torch.nn.Module, meta: dict, paths: list[str | os.PathLike],
                   out_dir: str | os.PathLike, cfg: Config | None = None,
                   test_patches: int | None = DEFAULT_TEST_PATCHES,
                   device: str | torch.device | None = None, progress: bool = True,
                   overwrite: bool = False) -> dict[str, Any]:
    """Segment and classify every colony of `paths`; write CSVs, plots, label images and
    GeoJSON under `out_dir` (refused if it holds an earlier prediction, unless `overwrite`:
    `predict_files.prepare_out`). test_patches=None uses cfg.patch.test_patches. Returns a
    summary with the output files."""
    cfg = cfg or config_for(meta)
    k = int(cfg.patch.test_patches if test_patches is None else test_patches)
    pred = _Predictor(model, meta, cfg, k, device)
    classes = pred.classes
    out = Path(out_dir)
    inputs = _inputs(list(paths))
    if not inputs:
        raise FileNotFoundError(f"no images among {[str(p) for p in paths]}")
    prepare_out(out, overwrite)
    warn = synthetic_line(meta)
    if warn and progress:
        print(warn, file=sys.stderr, flush=True)
    colony_rows, count_rows, skipped, warnings = [], [], [], []
    names = output_names([rel for _, _, rel in inputs])
    t_start = time.time()
    for name, rel, res, err in _results(pred, inputs, progress):
        if res is None:
            skipped.append({"image": name, "reason": err})
            continue
        warnings += [{"image": name, "warning": w} for w in res.notes]
        rows, counts, ids = _rows(res, classes, len(colony_rows) + 1)
        write_interchange(out, names[rel], res, rows, ids, classes)
        colony_rows += rows
        count_rows += counts
    if warnings and progress:
        print(f"predict: {len(warnings)} warning(s), e.g. {warnings[0]['image']}: "
              f"{warnings[0]['warning']} (all in README.txt)", file=sys.stderr, flush=True)
    # tracks across frames, classes constrained in time (ipb/temporal.py)
    constrain_rows(colony_rows, count_rows, classes, cfg.method.temporal_transitions,
                   cfg.method.temporal_change)
    short_groups(count_rows)
    written = write_outputs(out, classes, colony_rows, count_rows, skipped, meta, cfg, k, warn,
                             warnings)
    return {"n_images": len({r["image"] for r in count_rows}), "n_frames": len(count_rows),
            "n_colonies": len(colony_rows), "n_skipped": len(skipped), "skipped": skipped,
            "warnings": warnings, "classes": classes,
            "counts": {name: sum(r[f"n_{name}"] for r in count_rows) for name in classes},
            "counts_constrained": {name: sum(r[f"nc_{name}"] for r in count_rows)
                                   for name in classes},
            "test_patches": k, "synthetic": meta.get("synthetic"), "files": written,
            "seconds": time.time() - t_start}


class _CallableModule(types.ModuleType):
    """`ipb.predict` is this module (the layout fixes its name) and the documented function:
    `import ipb; ipb.predict(model, images)` calls `predict`."""

    def __call__(self, model, images, **kw):
        return predict(model, images, **kw)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["DEFAULT_TEST_PATCHES", "predict", "load_student", "config_for", "expand_inputs",
           "classify_colonies", "predict_images", "Frame", "ImageResult"]
