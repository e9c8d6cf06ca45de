"""One image file -> colony rows: frames, pixel size, segmentation, labelled boxes. No Ray.

    python -c "from ipb.data.extract import extract_image; help(extract_image)"   # used by ingest

Every labelled box inside the image is a row. Its mask, in this order (`mask_source`):
  polygon / rle  the annotation's own mask (COCO segmentation);
  segmented      the colony segmentation inside the box, when it covers at least
                 `data.box_min_cover` of the box;
  box_local      Otsu of the same entropy image inside the box (`box_mask`);
  box            the whole box (patch sampling then treats all of it as colony).
Boxes are clipped to the image (each clip of more than CLIP_LISTED_PX is listed); identical
boxes are kept once and listed; one box with two different labels becomes one multi-label
colony "A|B" (listed). Rejected, each with its reason: boxes entirely outside the image,
boxes made on an image of another size, boxes on a multi-frame file (they carry no time).
Colonies the segmentation finds outside every labelled box join the unlabeled pool.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from ipb.config import Config
from ipb.data.microscopy import ImageData, grey_level_note, read_image
from ipb.data.sources import colony_id, group_and_time, stem_of
from ipb.data.table import encode_png

CLIP_LISTED_PX = 2          # VOC boxes overrun the border by a pixel all the time: not news
FOUND_OVERLAP = 0.5         # a found colony mostly inside a labelled box is that box


def new_info() -> dict[str, Any]:
    """Per-shard counters the manifest sums (see ipb.data.ingest)."""
    return {"mask_source": {}, "labelled_mask_source": {}, "pixel_size": {},
            "pixel_size_fallback": [], "duplicates": [], "clipped": [], "merged": [],
            "warnings": [], "bit_depths": {}, "frames": 0, "labelled_boxes": 0,
            "labelled_kept": 0}


def merge_info(total: dict, part: dict) -> dict:
    for k, v in part.items():
        if isinstance(v, dict):
            for kk, n in v.items():
                total[k][kk] = total[k].get(kk, 0) + n
        elif isinstance(v, list):
            total[k].extend(v)
        else:
            total[k] += v
    return total


def _count(info: dict, key: str, value: Any) -> None:
    info[key][str(value)] = info[key].get(str(value), 0) + 1


def _label_fields(label: str | None) -> dict[str, Any]:
    if label is None:
        return {"label": None, "multi_label": False, "labels": None}
    if label.startswith("multi_label:"):
        sub = label.split(":", 1)[1]
        return {"label": None, "multi_label": True, "labels": sub or None}
    if "|" in label:
        return {"label": None, "multi_label": True, "labels": label}
    return {"label": label, "multi_label": False, "labels": label}


def _overlap(a: dict, b: tuple) -> float:
    """Intersection over the smaller box (a found colony "is" a listed one if mostly inside)."""
    ix = max(0, min(a["x1"], b[2]) - max(a["x0"], b[0]))
    iy = max(0, min(a["y1"], b[3]) - max(a["y0"], b[1]))
    small = min((a["x1"] - a["x0"]) * (a["y1"] - a["y0"]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / max(small, 1)


class _Frame:
    """One grey frame of a file and how its rows are written."""

    def __init__(self, grey: np.ndarray, task: dict, t: int | None, px: float):
        self.grey, self.task, self.t, self.px = grey, task, t, px
        rel = task["image"]
        # a stack is its own group, its frames the time points
        self.group, self.time = (stem_of(rel), t) if t is not None else group_and_time(rel)

    def row(self, box: tuple, mask: np.ndarray, label: str | None, border: bool,
            source: str) -> dict[str, Any]:
        x0, y0, x1, y1 = box
        area = int(np.count_nonzero(mask))
        return {"colony_id": colony_id(self.task["image"], box, self.t),
                "source": self.task["image"], "group": self.group, "time": self.time,
                "x0": x0, "y0": y0, "x1": x1, "y1": y1, **_label_fields(label),
                "height": y1 - y0, "width": x1 - x0, "area": area, "border": bool(border),
                "bit_depth": 16 if self.grey.dtype == np.uint16 else 8,
                "crop": encode_png(self.grey[y0:y1, x0:x1]), "mask": encode_png(mask),
                "synthetic": bool(self.task["synthetic"]), "mask_source": source,
                "pixel_size_um": float(self.px), "area_um2": float(area * self.px ** 2)}


def _annotation_mask(b: dict, box: tuple) -> tuple[np.ndarray | None, str]:
    """The COCO polygon / RLE of a box, cut to the (clipped) box; None when absent or empty."""
    x0, y0, x1, y1 = box
    if "polygon" in b:
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        pts = [np.round(np.asarray(p, np.float64).reshape(-1, 2) - (x0, y0)).astype(np.int32)
               for p in b["polygon"]]
        cv2.fillPoly(m, pts, 1)
        return (m > 0, "polygon") if m.any() else (None, "")
    if "rle" in b:
        from ipb.data.annotations import rle_decode
        full = rle_decode(b["rle"], b["where"])
        m = full[y0:y1, x0:x1]
        return (m, "rle") if m.shape == (y1 - y0, x1 - x0) and m.any() else (None, "")
    return None, ""


def box_mask(entropy: np.ndarray, min_cover: float) -> tuple[np.ndarray, str]:
    """(bool mask, how) of a labelled box the segmentation missed, from the box's crop of the
    entropy image: Otsu inside the box, holes filled, the component under the box centre
    (else the largest) -> 'box_local'; when that covers less than `min_cover` of the box or
    nearly all of it (no background to separate it from), the whole box -> 'box'."""
    from scipy import ndimage as ndi

    from ipb.data.segment import otsu_threshold
    h, w = entropy.shape
    full = np.ones((h, w), bool)
    if h < 3 or w < 3 or float(entropy.max()) <= float(entropy.min()):
        return full, "box"
    m = ndi.binary_fill_holes(entropy > otsu_threshold(entropy)).astype(np.uint8)
    n, lab = cv2.connectedComponents(m, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return full, "box"
    centre = lab[h // 2, w // 2]
    keep = centre if centre else 1 + int(np.argmax(np.bincount(lab.ravel(), minlength=n)[1:]))
    obj = lab == keep
    if not min_cover <= obj.mean() <= 0.98:
        return full, "box"
    return obj, "box_local"


def _box_mask_of(seg, b: dict, box: tuple, min_cover: float) -> tuple[np.ndarray, str]:
    m, how = _annotation_mask(b, box)
    if m is not None:
        return m, how
    x0, y0, x1, y1 = box
    m = seg.mask[y0:y1, x0:x1]
    if m.mean() >= min_cover:
        return m, "segmented"
    return box_mask(seg.entropy[y0:y1, x0:x1], min_cover)


def _clip_boxes(boxes: list[dict], rel: str, h: int, w: int, info: dict,
                rejected: list[dict]) -> dict[tuple, dict]:
    """Clipped, de-duplicated boxes -> {box: {labels, entries}}; rejections and lists in info."""
    out: dict[tuple, dict] = {}
    for b in boxes:
        raw = (b["x0"], b["y0"], b["x1"], b["y1"])
        box = (max(0, raw[0]), max(0, raw[1]), min(w, raw[2]), min(h, raw[3]))
        if b.get("ann_size") and list(b["ann_size"]) != [w, h]:
            rejected.append({"path": rel, "label": b["label"], "where": b["where"],
                             "reason": f"labelled box {list(raw)} ({b['label']}, {b['where']}) "
                             f"was drawn on a {b['ann_size'][0]}x{b['ann_size'][1]} image, this "
                             f"one is {w}x{h}; re-annotate or rescale the boxes"})
            continue
        if box[2] <= box[0] or box[3] <= box[1]:
            rejected.append({"path": rel, "label": b["label"], "where": b["where"],
                             "reason": f"labelled box {list(raw)} ({b['label']}, {b['where']}) "
                             f"lies outside the {w}x{h} image; fix its coordinates"})
            continue
        cut = max(abs(a - c) for a, c in zip(raw, box))
        if cut > CLIP_LISTED_PX:
            info["clipped"].append({"path": rel, "where": b["where"], "label": b["label"],
                                    "box": list(raw), "clipped_to": list(box)})
        entry = out.setdefault(box, {"labels": [], "entry": b})
        if b["label"] in entry["labels"]:
            info["duplicates"].append({"path": rel, "where": b["where"], "label": b["label"],
                                       "box": list(box), "same_as": entry["entry"]["where"]})
            continue
        if entry["labels"]:
            info["merged"].append({"path": rel, "where": b["where"], "box": list(box),
                                   "labels": entry["labels"] + [b["label"]]})
        entry["labels"].append(b["label"])
    return out


def _labelled_rows(frame: _Frame, seg, boxes: list[dict], cfg: Config, info: dict,
                   rejected: list[dict]) -> tuple[list[dict], list[tuple]]:
    h, w = frame.grey.shape
    rows, kept = [], []
    for box, e in _clip_boxes(boxes, frame.task["image"], h, w, info, rejected).items():
        parts = sorted({p for lab in e["labels"] for p in lab.split("|")})
        label = "|".join(parts)
        mask, how = _box_mask_of(seg, e["entry"], box, cfg.data.box_min_cover)
        border = box[0] == 0 or box[1] == 0 or box[2] == w or box[3] == h
        rows.append(frame.row(box, mask, label, border, how))
        kept.append(box)
        _count(info, "mask_source", how)
        _count(info, "labelled_mask_source", how)
        info["labelled_kept"] += len(e["labels"])
    return rows, kept


def _found_rows(frame: _Frame, seg, label: str | None, skip: list[tuple], min_px: int,
                info: dict, rejected: list[dict]) -> list[dict]:
    rows = []
    for c in seg.colonies:
        box = (c["x0"], c["y0"], c["x1"], c["y1"])
        if any(_overlap(c, s) > FOUND_OVERLAP for s in skip):
            continue
        if box[2] - box[0] < min_px or box[3] - box[1] < min_px:
            rejected.append({"path": frame.task["image"], "reason": f"colony {box} smaller "
                             f"than data.min_colony_px={min_px}"})
            continue
        inst = seg.labels[box[1]:box[3], box[0]:box[2]] == c["id"]
        rows.append(frame.row(box, inst, label, c.get("border", False), "segmented"))
        _count(info, "mask_source", "segmented")
    return rows


def _crop_row(frame: _Frame, cfg: Config, info: dict) -> dict:
    """Folder layout: the file is one colony crop; its mask is segmented, else the whole crop."""
    from ipb.data.segment import segment
    seg = segment(frame.grey, replace(cfg.segmentation, pixel_size_um=frame.px,
                                      well_mask="off", split_touching=False))
    mask, how = seg.mask, "segmented"
    if mask.mean() < 0.05:
        # a colony crop whose texture fills the frame has no background for Otsu
        mask, how = np.ones_like(mask), "box"
    _count(info, "mask_source", how)
    h, w = frame.grey.shape
    return frame.row((0, 0, w, h), mask, frame.task["label"], False, how)


def _frame_rows(frame: _Frame, cfg: Config, info: dict, rejected: list[dict]) -> list[dict]:
    from ipb.data.segment import segment
    task, rel = frame.task, frame.task["image"]
    if task["layout"] == "folders":
        return [_crop_row(frame, cfg, info)]
    boxes = task["boxes"] if task["label_mode"] == "colony" else []
    if min(frame.grey.shape) < cfg.data.min_colony_px and not boxes:
        h, w = frame.grey.shape
        rejected.append({"path": rel, "reason": f"image {w}x{h} px is smaller than "
                         f"data.min_colony_px={cfg.data.min_colony_px} and has no labelled box"})
        return []
    seg = segment(frame.grey, replace(cfg.segmentation, pixel_size_um=frame.px))
    rows, kept = _labelled_rows(frame, seg, boxes, cfg, info, rejected) if boxes else ([], [])
    label = task["label"] if task["label_mode"] == "image" else None
    found = _found_rows(frame, seg, label, kept, cfg.data.min_colony_px, info, rejected)
    if label is not None and not found:
        rejected.append({"path": rel, "reason": f"labelled {label!r} but no colony was "
                         "segmented; check the image or segmentation.* settings"})
    return rows + found


def _pixel_size(img: ImageData, cfg: Config, rel: str, info: dict) -> float:
    """The file's own pixel size unless data.pixel_size_from=config; else the config's."""
    info["warnings"] += [{"path": rel, "warning": n} for n in img.notes]
    if img.pixel_size_um and cfg.data.pixel_size_from == "metadata":
        _count(info, "pixel_size", img.pixel_size_from)
        return img.pixel_size_um
    _count(info, "pixel_size", "config")
    if cfg.data.pixel_size_from == "metadata":
        info["pixel_size_fallback"].append(rel)
    return cfg.segmentation.pixel_size_um


def extract_image(data: bytes, task: dict, cfg: Config) -> tuple[list[dict], list[dict], dict]:
    """Bytes of one file -> (colony rows, rejected entries, info). Pure; runs on a worker.
    A file that cannot be used raises ValueError (the caller lists it as rejected)."""
    from ipb.data.segment import to_gray
    rel = task["image"]
    info, rejected = new_info(), []
    img = read_image(data, rel)
    info["labelled_boxes"] = len(task["boxes"]) if task["label_mode"] == "colony" else 0
    if img.stack and task["label_mode"] == "colony" and task["boxes"]:
        for b in task["boxes"]:
            rejected.append({"path": rel, "label": b["label"], "where": b["where"],
                             "reason": f"labelled box ({b['where']}) on a {len(img.frames)}-"
                             "frame time series: a box carries no time point; label "
                             "single-frame files, or give image labels"})
        task = {**task, "boxes": []}
    px = _pixel_size(img, cfg, rel, info)
    rows: list[dict] = []
    for t, frame in enumerate(img.frames):
        grey = to_gray(frame)
        note = grey_level_note(grey)
        if note and t == 0:
            info["warnings"].append({"path": rel, "warning": note})
        _count(info, "bit_depths", 16 if grey.dtype == np.uint16 else 8)
        info["frames"] += 1
        rows += _frame_rows(_Frame(grey, task, t if img.stack else None, px), cfg, info,
                            rejected)
    return rows, rejected, info


__all__ = ["extract_image", "box_mask", "new_info", "merge_info", "CLIP_LISTED_PX"]
