"""Input side of ingest, without Ray: list images, read labels, say what each image gets.

    python -c "from ipb.data.sources import plan_sources; print(plan_sources('wells/', 'wells/labels.csv'))"

Layouts a user has (the issue's a-d):
  wells + box labels  CSV `image,x0,y0,x1,y1,label`, a Pascal VOC directory or a COCO JSON
                      (ipb.data.annotations): every labelled box is a colony; other colonies
                      found in the same image join the unlabeled pool;
  wells + image CSV   `image,label`: every colony found in the image inherits the label;
  folders             `<Class>/crop.png`, `multi_label/[A|B/]crop.png`, `unlabeled/crop.png`:
                      one colony per file, its mask segmented from the crop;
  wells, no labels    every colony is unlabeled (the pool U).
With a SOURCE/images/ folder (what `ipb synth` writes) only the images under it (and any file
the labels name) are wells: masks/ and other folders beside it are not inputs. Symlinked
folders are followed once; a link back to a folder already listed (`ln -s . src/self`) is
skipped and listed, never read twice or taken for a class folder. A label "A|B" marks a
multi-label colony. Class names come from the data.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipb.data.annotations import COLONY_COLUMNS, IMAGE_COLUMNS, IngestError, read_labels

IMAGE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
SPECIAL_FOLDERS = ("multi_label", "unlabeled")
_TIME_RE = re.compile(r"^(?P<group>.+?)[_-]t(?P<t>\d+)$")

__all__ = ["IngestError", "SourcePlan", "plan_sources", "list_images", "unreadable_reason",
           "colony_id", "group_and_time", "stem_of", "IMAGE_EXTS", "COLONY_COLUMNS",
           "IMAGE_COLUMNS"]


@dataclass
class SourcePlan:
    """What to ingest: image paths (relative to root), per-image labels, layout."""
    root: Path
    layout: str                                   # wells | folders
    images: list[str]
    label_mode: str = "none"                      # none | colony | image | folder
    boxes: dict[str, list[dict]] = field(default_factory=dict)    # labelled boxes per image
    image_labels: dict[str, str] = field(default_factory=dict)    # image CSV / folder labels
    synthetic: bool = False
    label_format: str = ""                        # csv | voc | coco | folders | ""
    labels: str | None = None                     # the label file / directory, resolved
    rejected: list[dict] = field(default_factory=list)   # found while planning, listed
    warnings: list[dict] = field(default_factory=list)   # label-file notes for the manifest

    def task(self, rel: str) -> dict[str, Any]:
        """The per-image instructions shipped with the image bytes to a worker."""
        return {"image": rel, "layout": self.layout, "label_mode": self.label_mode,
                "boxes": self.boxes.get(rel, []), "label": self.image_labels.get(rel),
                "synthetic": self.synthetic}

    def image_key(self, rel: str) -> str:
        """Identity of one image's work: its file (size, mtime) and its labels. A shard whose
        images all keep their key is still valid; any change re-does only that image's shard."""
        try:
            st = (self.root / rel).stat()
            stamp = [st.st_size, st.st_mtime_ns]
        except OSError:
            stamp = None
        blob = json.dumps([rel, stamp, self.boxes.get(rel), self.image_labels.get(rel)],
                          sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _walk(base: Path, root: Path, skipped: list[dict]) -> list[str]:
    """Image files below `base` as paths relative to `root`, following symlinked folders once."""
    out: list[str] = []
    seen = {os.path.realpath(base)}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if real in seen:
                skipped.append({"path": os.path.relpath(full, root),
                                "reason": f"symlink to a folder already listed ({real}); "
                                          "skipped so no image is read twice"})
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            full = os.path.join(dirpath, f)
            if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(full):
                out.append(os.path.relpath(full, root))
    return sorted(out)


def list_images(root: Path, under: Path | None = None,
                skipped: list[dict] | None = None) -> list[str]:
    """Image files below `under` (default root), as paths relative to `root`."""
    return _walk(Path(under or root), Path(root), [] if skipped is None else skipped)


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


def _subdirs(root: Path, skipped: list[dict]) -> list[Path]:
    """Folders directly in root; a symlink back to root or above it is skipped and listed."""
    real_root = os.path.realpath(root)
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        real = os.path.realpath(p)
        if real_root == real or real_root.startswith(real.rstrip(os.sep) + os.sep):
            skipped.append({"path": p.name, "reason": f"symlink to {real}, which contains "
                            "SOURCE itself; skipped (a loop, not a class folder)"})
            continue
        out.append(p)
    return out


def _auto_layout(root: Path, labels, skipped: list[dict]) -> str:
    """Class folders only when nothing says wells: no labels, no images/ folder, no image
    directly in SOURCE, and every folder holds images (or is multi_label/unlabeled)."""
    if labels is not None or (root / "images").is_dir():
        return "wells"
    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTS for p in root.iterdir()):
        return "wells"
    subdirs = _subdirs(root, skipped)
    if subdirs and all(d.name in SPECIAL_FOLDERS or list_images(d) for d in subdirs):
        return "folders"
    return "wells"


def _plan_folders(root: Path, skipped: list[dict], synthetic: bool) -> SourcePlan:
    images, image_labels = [], {}
    for d in _subdirs(root, skipped):
        for rel in list_images(root, d, skipped):
            images.append(rel)
            parts = Path(rel).parts
            if d.name == "multi_label":
                image_labels[rel] = "multi_label:" + (parts[1] if len(parts) > 2 else "")
            elif d.name != "unlabeled":
                image_labels[rel] = d.name
    if not images:
        raise IngestError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) in class folders")
    return SourcePlan(root, "folders", images, "folder", {}, image_labels, synthetic,
                      label_format="folders", rejected=skipped)


def plan_sources(source: str | Path, labels: str | Path | None = None,
                 layout: str = "auto", label_map=()) -> SourcePlan:
    """Check the inputs up front (missing files, bad labels) and say what each image gets."""
    root = Path(source).expanduser().resolve()
    if not root.is_dir():
        raise IngestError(f"source {source} is not a directory of images")
    skipped: list[dict] = []
    if layout == "auto":
        layout = _auto_layout(root, labels, skipped)
    if layout not in ("wells", "folders"):
        raise IngestError(f"layout {layout!r}: allowed 'wells', 'folders' or 'auto'")
    synthetic = _is_synthetic(root)
    if layout == "folders":
        if labels is not None:
            raise IngestError("--labels is not used with --layout folders: the class is the "
                              "folder name")
        return _plan_folders(root, skipped, synthetic)
    wells_dir = root / "images" if (root / "images").is_dir() else root
    images = list_images(root, wells_dir, skipped)
    if labels is None:
        if not images:
            raise IngestError(f"{wells_dir}: no images with extensions {', '.join(IMAGE_EXTS)}")
        return SourcePlan(root, "wells", images, "none", synthetic=synthetic, rejected=skipped)
    lab = read_labels(labels, root, set(images), label_map)
    images = sorted(set(images) | set(lab.boxes) | set(lab.image_labels)
                    | {r["path"] for r in lab.rejected})
    if not images:
        raise IngestError(f"{wells_dir}: no images with extensions {', '.join(IMAGE_EXTS)}")
    return SourcePlan(root, "wells", images, lab.mode, lab.boxes, lab.image_labels, synthetic,
                      label_format=lab.format, labels=str(Path(labels).expanduser().resolve()),
                      rejected=skipped + lab.rejected, warnings=lab.warnings)


def _is_synthetic(root: Path) -> bool:
    for cand in (root / "synth.json", root.parent / "synth.json"):
        if cand.is_file():
            try:
                return bool(json.loads(cand.read_text()).get("synthetic"))
            except ValueError:
                return False
    return False


def colony_id(source: str, box: tuple[int, int, int, int], time: int | None = None) -> str:
    """Stable id: source + box, + the frame of a multi-frame file (single images keep the
    ids they always had)."""
    key = f"{source}:{tuple(box)}" + ("" if time is None else f":t{time}")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def stem_of(rel: str) -> str:
    """`wells/a.ome.tif` -> `wells/a`: the path without its image suffix (and OME's `.ome`)."""
    stem = str(Path(rel).with_suffix(""))
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def group_and_time(rel: str) -> tuple[str, int]:
    """`wells/well_003_t07.tif` -> ("wells/well_003", 7): frames of one well are one group."""
    stem = stem_of(rel)
    m = _TIME_RE.match(stem)
    return (m["group"], int(m["t"])) if m else (stem, -1)
