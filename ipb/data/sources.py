"""Input side of ingest, without Ray: list images, read label CSVs, decode, cut colonies.

    python -c "from ipb.data.sources import plan_sources; print(plan_sources('wells/', 'wells/labels.csv'))"

Layouts a user has (the issue's a-d):
  wells + colony CSV  `image,x0,y0,x1,y1,label`: listed boxes get their label, other colonies
                      found in the same image join the unlabeled pool;
  wells + image CSV   `image,label`: every colony found in the image inherits the label;
  folders             `<Class>/crop.png`, `multi_label/[A|B/]crop.png`, `unlabeled/crop.png`:
                      one colony per file, its mask segmented from the crop;
  wells, no CSV       every colony is unlabeled (the pool U).
With a SOURCE/images/ folder (what `ipb synth` writes) only the images under it (and any file
the label CSV names) are wells: masks/ and other folders beside it are not inputs.
A label "A|B" marks a multi-label colony. Class names come from the data.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ipb.config import SegmentationConfig
from ipb.data.table import encode_png

IMAGE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
SPECIAL_FOLDERS = ("multi_label", "unlabeled")
COLONY_COLUMNS = ["image", "x0", "y0", "x1", "y1", "label"]
IMAGE_COLUMNS = ["image", "label"]
_TIME_RE = re.compile(r"^(?P<group>.+?)[_-]t(?P<t>\d+)$")


class IngestError(ValueError):
    """Bad ingest input found before any work starts; the message names the file and the fix."""


@dataclass
class SourcePlan:
    """What to ingest: image paths (relative to root), per-image labels, layout."""
    root: Path
    layout: str                                   # wells | folders
    images: list[str]
    label_mode: str = "none"                      # none | colony | image | folder
    boxes: dict[str, list[dict]] = field(default_factory=dict)    # colony CSV rows per image
    image_labels: dict[str, str] = field(default_factory=dict)    # image CSV / folder labels
    synthetic: bool = False

    def task(self, rel: str) -> dict[str, Any]:
        """The per-image instructions shipped with the image bytes to a worker."""
        return {"image": rel, "layout": self.layout, "label_mode": self.label_mode,
                "boxes": self.boxes.get(rel, []), "label": self.image_labels.get(rel),
                "synthetic": self.synthetic}


def list_images(root: Path, under: Path | None = None) -> list[str]:
    """Image files below `under` (default root), as paths relative to `root`."""
    return sorted(str(p.relative_to(root)) for p in (under or root).rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _normalise(rel: str, root: Path) -> str:
    """CSV image names as written by hand: './images/a.tif', absolute paths under root."""
    p = Path(rel)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(root)
        except ValueError:
            return rel          # reported as missing below, with the name the user wrote
    return str(Path(*[part for part in p.parts if part != "."])) if p.parts else rel


def unreadable_reason(path: Path) -> str | None:
    """Why `path` cannot be ingested before decoding (empty, no permission), else None. Checked
    on the driver so one bad file is a `rejected` entry, not a failed Ray read task."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        return f"unreadable ({e.strerror or type(e).__name__}); check its permissions"
    return None


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        raise IngestError(f"label file {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise IngestError(f"label file {path} cannot be read as a UTF-8 CSV ({e})") from None
    return header, rows


def read_label_csv(path: Path, root: Path, images: set[str]) -> tuple[str, dict, dict]:
    """Validate and read a colony-level or image-level CSV; errors name the file and row.
    Image names are relative to `root`; an existing file outside `images` is still labelled
    (the caller adds it to the inputs)."""
    header, rows = _read_csv(path)
    if header == COLONY_COLUMNS or set(header) == set(COLONY_COLUMNS):
        mode = "colony"
    elif set(header) == set(IMAGE_COLUMNS):
        mode = "image"
    else:
        unknown = sorted(set(header) - set(COLONY_COLUMNS))
        raise IngestError(
            f"{path}: columns {header} are neither {','.join(COLONY_COLUMNS)} (colony labels) "
            f"nor {','.join(IMAGE_COLUMNS)} (image labels)"
            + (f"; unknown column(s) {unknown}" if unknown else ""))
    boxes: dict[str, list[dict]] = {}
    image_labels: dict[str, str] = {}
    missing = []
    for n, r in enumerate(rows, start=2):
        rel = _normalise(r["image"], root)
        if rel not in images:
            if not (root / rel).is_file():
                missing.append(f"line {n}: {rel}")
                continue
        if not r["label"]:
            raise IngestError(f"{path} line {n}: empty label for {rel}; give a class name, "
                              "'A|B' for a multi-label colony, or drop the row")
        if mode == "colony":
            try:
                box = {k: int(float(r[k])) for k in ("x0", "y0", "x1", "y1")}
            except ValueError:
                raise IngestError(f"{path} line {n}: box {r} is not four integers") from None
            if box["x1"] <= box["x0"] or box["y1"] <= box["y0"]:
                raise IngestError(f"{path} line {n}: empty box {box} for {rel}")
            boxes.setdefault(rel, []).append({**box, "label": r["label"]})
        else:
            if image_labels.get(rel, r["label"]) != r["label"]:
                raise IngestError(f"{path} line {n}: {rel} is labelled twice "
                                  f"({image_labels[rel]!r} and {r['label']!r}); keep one row, "
                                  "or use 'A|B' for a multi-label image")
            image_labels[rel] = r["label"]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise IngestError(f"{path} names image files that do not exist under {root}: "
                          f"{'; '.join(missing[:5])}{more}")
    return mode, boxes, image_labels


def plan_sources(source: str | Path, labels: str | Path | None = None,
                 layout: str = "auto") -> SourcePlan:
    """Check the inputs up front (missing files, bad CSV) and say what each image gets."""
    root = Path(source).expanduser().resolve()
    if not root.is_dir():
        raise IngestError(f"source {source} is not a directory of images")
    if layout == "auto":
        subdirs = [p for p in root.iterdir() if p.is_dir()]
        layout = "folders" if labels is None and subdirs and not (root / "images").is_dir() \
            and all(list_images(d) or d.name in SPECIAL_FOLDERS for d in subdirs) else "wells"
    if layout not in ("wells", "folders"):
        raise IngestError(f"layout {layout!r}: allowed 'wells', 'folders' or 'auto'")
    synthetic = _is_synthetic(root)
    if layout == "folders":
        if labels is not None:
            raise IngestError("--labels is not used with --layout folders: the class is the "
                              "folder name")
        images, image_labels = [], {}
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            for rel in list_images(d):
                rel = str(Path(d.name) / rel)
                images.append(rel)
                if d.name == "multi_label":
                    sub = Path(rel).parts[1] if len(Path(rel).parts) > 2 else ""
                    image_labels[rel] = "multi_label:" + sub
                elif d.name != "unlabeled":
                    image_labels[rel] = d.name
        if not images:
            raise IngestError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) in class folders")
        return SourcePlan(root, "folders", images, "folder", {}, image_labels, synthetic)
    wells_dir = root / "images" if (root / "images").is_dir() else root
    images = list_images(root, wells_dir)
    if labels is None:
        if not images:
            raise IngestError(f"{wells_dir}: no images with extensions {', '.join(IMAGE_EXTS)}")
        return SourcePlan(root, "wells", images, "none", synthetic=synthetic)
    mode, boxes, image_labels = read_label_csv(Path(labels), root, set(images))
    images = sorted(set(images) | set(boxes) | set(image_labels))
    if not images:
        raise IngestError(f"{wells_dir}: no images with extensions {', '.join(IMAGE_EXTS)}")
    return SourcePlan(root, "wells", images, mode, boxes, image_labels, synthetic)


def _is_synthetic(root: Path) -> bool:
    import json
    for cand in (root / "synth.json", root.parent / "synth.json"):
        if cand.is_file():
            try:
                return bool(json.loads(cand.read_text()).get("synthetic"))
            except ValueError:
                return False
    return False


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Bytes -> 2-D or HxWxC array keeping 8/16-bit; ValueError with a reason otherwise."""
    if not data:
        raise ValueError("empty file (0 bytes)")
    if name.lower().endswith((".tif", ".tiff")):
        import tifffile
        try:
            img = tifffile.imread(io.BytesIO(data))
        except Exception as e:  # tifffile raises many types for corrupt files
            raise ValueError(f"corrupt or unreadable TIFF ({type(e).__name__}: {e})") from None
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError("corrupt or unreadable PNG/JPEG")
        if img.ndim == 3 and img.shape[2] >= 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    img = np.squeeze(img)
    if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[2] not in (3, 4):
        img = np.moveaxis(img, 0, -1)   # planar TIFF
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"unsupported image shape {img.shape}: expected grey HxW or RGB(A); "
                         "split stacks/time series into one file per frame")
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported pixel type {img.dtype}: convert to 8- or 16-bit")
    return img


def colony_id(source: str, box: tuple[int, int, int, int]) -> str:
    return hashlib.sha1(f"{source}:{box}".encode()).hexdigest()[:16]


def group_and_time(rel: str) -> tuple[str, int]:
    """`wells/well_003_t07.tif` -> ("wells/well_003", 7): frames of one well are one group."""
    stem = str(Path(rel).with_suffix(""))
    m = _TIME_RE.match(stem)
    return (m["group"], int(m["t"])) if m else (stem, -1)


def _label_fields(label: str | None) -> dict[str, Any]:
    if label is None:
        return {"label": None, "multi_label": False, "labels": None}
    if label.startswith("multi_label:"):
        sub = label.split(":", 1)[1]
        return {"label": None, "multi_label": True, "labels": sub or None}
    if "|" in label:
        return {"label": None, "multi_label": True, "labels": label}
    return {"label": label, "multi_label": False, "labels": label}


def _box_overlap(a: dict, b: dict) -> float:
    """Intersection over the smaller box (a found colony "is" a listed one if mostly inside)."""
    ix = max(0, min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]))
    iy = max(0, min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]))
    small = min((a["x1"] - a["x0"]) * (a["y1"] - a["y0"]), (b["x1"] - b["x0"]) * (b["y1"] - b["y0"]))
    return ix * iy / max(small, 1)


def extract_colonies(img: np.ndarray, task: dict, cfg: SegmentationConfig,
                     min_colony_px: int) -> tuple[list[dict], list[dict], dict]:
    """One decoded image -> (colony rows, rejected entries, info). Pure; runs on a worker."""
    from ipb.data.segment import segment, to_gray

    rel = task["image"]
    grey = to_gray(img)
    group, t = group_and_time(rel)
    bit_depth = 16 if grey.dtype == np.uint16 else 8
    rows, rejected = [], []
    info = {"full_crop_mask": 0}

    def row(box, mask_crop, label, border):
        x0, y0, x1, y1 = box
        crop = grey[y0:y1, x0:x1]
        return {"colony_id": colony_id(rel, box), "source": rel, "group": group, "time": t,
                "x0": x0, "y0": y0, "x1": x1, "y1": y1, **_label_fields(label),
                "height": y1 - y0, "width": x1 - x0, "area": int(mask_crop.sum()),
                "border": bool(border), "bit_depth": bit_depth, "crop": encode_png(crop),
                "mask": encode_png(mask_crop), "synthetic": bool(task["synthetic"])}

    if min(grey.shape) < min_colony_px:
        return [], [{"path": rel, "reason": f"image {grey.shape[1]}x{grey.shape[0]} px is "
                     f"smaller than data.min_colony_px={min_colony_px}"}], info

    if task["layout"] == "folders":
        seg = segment(grey, _replace(cfg, well_mask="off", split_touching=False))
        mask = seg.mask
        if mask.mean() < 0.05:
            # a colony crop whose texture fills the frame has no background for Otsu
            mask = np.ones_like(mask)
            info["full_crop_mask"] = 1
        h, w = grey.shape
        rows.append(row((0, 0, w, h), mask, task["label"], False))
        return rows, rejected, info

    seg = segment(grey, cfg)
    found = seg.colonies
    h, w = grey.shape
    if task["label_mode"] == "colony":
        listed = task["boxes"]
        for b in listed:
            box = (max(0, b["x0"]), max(0, b["y0"]), min(w, b["x1"]), min(h, b["y1"]))
            if box[2] - box[0] < min_colony_px or box[3] - box[1] < min_colony_px:
                rejected.append({"path": rel, "reason": f"labelled box {tuple(b[k] for k in ('x0', 'y0', 'x1', 'y1'))} "
                                 f"({b['label']}) is outside the image or smaller than "
                                 f"data.min_colony_px={min_colony_px}"})
                continue
            mask_crop = seg.mask[box[1]:box[3], box[0]:box[2]]
            if mask_crop.sum() == 0:
                rejected.append({"path": rel, "reason": f"labelled box {box} ({b['label']}) "
                                 "contains no segmented colony pixels; check the box or "
                                 "segmentation.* settings"})
                continue
            border = box[0] == 0 or box[1] == 0 or box[2] == w or box[3] == h
            rows.append(row(box, mask_crop, b["label"], border))
        listed_boxes = [dict(zip(("x0", "y0", "x1", "y1"), (r["x0"], r["y0"], r["x1"], r["y1"])))
                        for r in rows]
        for c in found:     # colonies nobody labelled join U
            if any(_box_overlap(c, lb) > 0.5 for lb in listed_boxes):
                continue
            rows.extend(_found_row(row, seg, c, None, min_colony_px, rejected, rel))
    else:
        label = task["label"] if task["label_mode"] == "image" else None
        for c in found:
            rows.extend(_found_row(row, seg, c, label, min_colony_px, rejected, rel))
        if not found and label is not None:
            rejected.append({"path": rel, "reason": f"labelled {label!r} but no colony was "
                             "segmented; check the image or segmentation.* settings"})
    return rows, rejected, info


def _found_row(row, seg, c, label, min_colony_px, rejected, rel):
    box = (c["x0"], c["y0"], c["x1"], c["y1"])
    if box[2] - box[0] < min_colony_px or box[3] - box[1] < min_colony_px:
        rejected.append({"path": rel, "reason": f"colony {box} smaller than "
                         f"data.min_colony_px={min_colony_px}"})
        return []
    inst = seg.labels[box[1]:box[3], box[0]:box[2]]
    mask_crop = inst == c["id"] if "id" in c else seg.mask[box[1]:box[3], box[0]:box[2]]
    return [row(box, mask_crop, label, c.get("border", False))]


def _replace(cfg, **kw):
    from dataclasses import replace
    return replace(cfg, **kw)
