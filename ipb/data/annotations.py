"""Label files -> boxes (and image labels) per image: CSV, Pascal VOC XML, COCO JSON. No Ray.

    python -c "from ipb.data.annotations import read_labels; print(read_labels('BCCD/Annotations', 'BCCD/JPEGImages').summary())"

  CSV        `image,x0,y0,x1,y1,label` (colony boxes, pixels, x1/y1 exclusive) or `image,label`;
  VOC        a directory of Pascal VOC XML files, one per image: `<filename>`, `<size>` and
             `<object><name>` + `<bndbox>` (1-based inclusive pixel indices, as the VOC devkit
             writes them: x0 = xmin - 1, x1 = xmax);
  COCO       one JSON file: `images` (id, file_name), `categories` (id, name), `annotations`
             (image_id, category_id, bbox [x, y, w, h] in pixels, optional `segmentation`:
             polygons [[x, y, ...], ...] or RLE, which become the colony's mask).
Class names come from the file, without surrounding spaces; spellings that differ only in case
(`RBC`, `rbc`) are one class, the most frequent spelling (ties: the first seen), and `warnings`
says which spellings were merged and how many objects each had. A malformed entry is an
`IngestError` naming the file and the line / object / annotation; a zero-size box is not an
error but a listed rejection (an annotator's stray click must not stop a run, and must not
vanish either).
Image names resolve as a path relative to the image root, else by file name when that is unique
under the root (VOC and COCO files usually name the bare file).
"""
from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COLONY_COLUMNS = ["image", "x0", "y0", "x1", "y1", "label"]
IMAGE_COLUMNS = ["image", "label"]


class IngestError(ValueError):
    """Bad ingest input found before any work starts; the message names the file and the fix."""


@dataclass
class Labels:
    """What a label file says: boxes per image (colony mode) or one label per image."""
    mode: str                                       # colony | image
    format: str                                     # csv | voc | coco
    boxes: dict[str, list[dict]] = field(default_factory=dict)
    image_labels: dict[str, str] = field(default_factory=dict)
    rejected: list[dict] = field(default_factory=list)   # zero-size boxes, listed not fatal
    warnings: list[dict] = field(default_factory=list)   # {"path", "warning"}, as the manifest

    def summary(self) -> dict[str, Any]:
        from collections import Counter
        classes = Counter(b["label"] for bs in self.boxes.values() for b in bs)
        return {"mode": self.mode, "format": self.format, "images": len(self.boxes)
                or len(self.image_labels), "boxes": sum(classes.values()),
                "classes": dict(sorted(classes.items())), "rejected": len(self.rejected),
                "warnings": len(self.warnings)}


class _Names:
    """Image names as users write them -> paths relative to the image root."""

    def __init__(self, root: Path, images: set[str]):
        self.root, self.images = root, images
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        for rel in sorted(images):
            self.by_name.setdefault(Path(rel).name, []).append(rel)
            self.by_stem.setdefault(Path(rel).stem, []).append(rel)

    def normalise(self, name: str) -> str:
        """'./images/a.tif' or an absolute path under root -> 'images/a.tif'."""
        p = Path(name)
        if p.is_absolute():
            try:
                p = p.resolve().relative_to(self.root)
            except ValueError:
                return name
        return str(Path(*[part for part in p.parts if part != "."])) if p.parts else name

    def resolve(self, name: str, by_file_name: bool) -> str | None:
        rel = self.normalise(name)
        if rel in self.images or (self.root / rel).is_file():
            return rel
        if by_file_name:
            hits = self.by_name.get(Path(name).name, [])
            if len(hits) == 1:
                return hits[0]
        return None


def _label_ok(label: str, where: str) -> str:
    label = (label or "").strip()
    if not label:
        raise IngestError(f"{where}: empty class name; give a class name, 'A|B' for a "
                          "multi-label colony, or remove the entry")
    return label


def _zero_size(rel: str, box: dict, where: str, written: str) -> dict:
    """A listed rejection; `written` is the box as the file has it (VOC's are 1-based)."""
    return {"path": rel, "label": box["label"], "where": where, "box": written,
            "reason": f"labelled box {written} ({box['label']}, {where}) has zero width or "
                      "height; fix or remove it"}


def _missing_error(path: Path, missing: list[str], root: Path) -> IngestError:
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return IngestError(f"{path} names image files that do not exist under {root}: "
                       f"{'; '.join(missing[:5])}{more}; fix the names or add the images")


# ---------------------------------------------------------------- CSV

def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line, row)]); a row with too many or too few fields is an error."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = []
            for fields in reader:
                if not any(v.strip() for v in fields):
                    continue                      # blank lines are no entries
                if len(fields) != len(header):
                    raise IngestError(f"{path} line {reader.line_num}: {len(fields)} fields, "
                                      f"the header has {len(header)} ({','.join(header)})")
                rows.append((reader.line_num, dict(zip(header, (v.strip() for v in fields)))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise IngestError(f"label file {path} cannot be read as a UTF-8 CSV ({e})") from None
    return header, rows


def read_csv_labels(path: Path, names: _Names) -> Labels:
    """Colony-level or image-level CSV; errors name the file and line."""
    header, rows = _read_csv(path)
    if set(header) == set(COLONY_COLUMNS) and len(header) == len(COLONY_COLUMNS):
        mode = "colony"
    elif set(header) == set(IMAGE_COLUMNS) and len(header) == len(IMAGE_COLUMNS):
        mode = "image"
    else:
        unknown = sorted(set(header) - set(COLONY_COLUMNS))
        meant = COLONY_COLUMNS if set(header) & {"x0", "y0", "x1", "y1"} else IMAGE_COLUMNS
        lacking = [c for c in meant if c not in header]
        raise IngestError(
            f"{path}: columns {header} are neither {','.join(COLONY_COLUMNS)} (colony labels) "
            f"nor {','.join(IMAGE_COLUMNS)} (image labels)"
            + (f"; unknown column(s) {unknown}" if unknown else "")
            + (f"; missing column(s) {lacking}" if lacking else ""))
    out = Labels(mode, "csv")
    missing = []
    for n, r in rows:
        rel = names.resolve(r["image"], by_file_name=False)
        if rel is None:
            missing.append(f"line {n}: {r['image']}")
            continue
        label = _label_ok(r["label"], f"{path} line {n}")
        if mode == "colony":
            try:
                box = {k: int(math.floor(float(r[k]))) for k in ("x0", "y0", "x1", "y1")}
            except ValueError:
                raise IngestError(f"{path} line {n}: box {[r[k] for k in ('x0', 'y0', 'x1', 'y1')]}"
                                  " is not four numbers") from None
            box.update(label=label, where=f"{path.name} line {n}")
            if box["x1"] <= box["x0"] or box["y1"] <= box["y0"]:
                written = ",".join(r[k] for k in ("x0", "y0", "x1", "y1"))
                out.rejected.append(_zero_size(rel, box, box["where"], f"x0,y0,x1,y1={written}"))
                continue
            out.boxes.setdefault(rel, []).append(box)
        else:
            if out.image_labels.get(rel, label) != label:
                raise IngestError(f"{path} line {n}: {rel} is labelled twice "
                                  f"({out.image_labels[rel]!r} and {label!r}); keep one row, "
                                  "or use 'A|B' for a multi-label image")
            out.image_labels[rel] = label
    if missing:
        raise _missing_error(path, missing, names.root)
    return out


# ---------------------------------------------------------------- Pascal VOC

def _voc_number(obj: ET.Element, key: str, where: str) -> float:
    text = obj.findtext(f"bndbox/{key}")
    if text is None:
        raise IngestError(f"{where}: <bndbox> lacks <{key}>; each object needs xmin, ymin, "
                          "xmax, ymax")
    try:
        return float(text)
    except ValueError:
        raise IngestError(f"{where}: <{key}>{text}</{key}> is not a number") from None


def read_voc_labels(folder: Path, names: _Names) -> Labels:
    """One Pascal VOC XML per image in `folder`; errors name the file and object."""
    files = sorted(p for p in folder.rglob("*.xml") if p.is_file())
    if not files:
        raise IngestError(f"label directory {folder} holds no Pascal VOC .xml files; give a "
                          "directory of VOC XML, a COCO .json or a .csv")
    out = Labels("colony", "voc")
    missing = []
    for xml in files:
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as e:
            raise IngestError(f"{xml}: not well-formed XML ({e}); fix or remove the file") from None
        if root.tag != "annotation":
            raise IngestError(f"{xml}: root element <{root.tag}> is not a Pascal VOC "
                              "<annotation>")
        fname = (root.findtext("filename") or "").strip()
        rel = names.resolve(fname, by_file_name=True) if fname else None
        if rel is None and len(names.by_stem.get(xml.stem, [])) == 1:
            rel = names.by_stem[xml.stem][0]    # a stale <filename>: the XML's own stem is next
        if rel is None:
            missing.append(f"{xml.name}: {fname or xml.stem}")
            continue
        size = None
        if root.find("size") is not None:
            try:
                size = [int(float(root.findtext(f"size/{k}") or 0)) for k in ("width", "height")]
            except ValueError:
                raise IngestError(f"{xml}: <size> is not numeric") from None
        for k, obj in enumerate(root.findall("object"), start=1):
            where = f"{xml.name} object {k}"
            label = _label_ok(obj.findtext("name") or "", f"{xml} object {k}")
            if obj.find("bndbox") is None:
                raise IngestError(f"{xml} object {k} ({label}): no <bndbox>")
            xmin, ymin, xmax, ymax = (_voc_number(obj, key, f"{xml} object {k}")
                                      for key in ("xmin", "ymin", "xmax", "ymax"))
            box = {"x0": int(math.floor(xmin)) - 1, "y0": int(math.floor(ymin)) - 1,
                   "x1": int(math.ceil(xmax)), "y1": int(math.ceil(ymax)),
                   "label": label, "where": where}
            if size and all(size):
                box["ann_size"] = size
            if xmax <= xmin or ymax <= ymin:
                out.rejected.append(_zero_size(rel, box, where, f"xmin={xmin:g} ymin={ymin:g} "
                                               f"xmax={xmax:g} ymax={ymax:g}"))
                continue
            out.boxes.setdefault(rel, []).append(box)
    if missing:
        raise _missing_error(folder, missing, names.root)
    return out


# ---------------------------------------------------------------- COCO

def rle_decode(rle: dict, where: str) -> "Any":
    """COCO RLE (uncompressed `counts` list or compressed string) -> bool HxW mask."""
    import numpy as np
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise IngestError(f"{where}: RLE segmentation needs 'size' [h, w] and 'counts'") from None
    if isinstance(counts, str):
        counts = _rle_string(counts)
    flat = np.zeros(h * w, bool)
    pos, val = 0, False
    for c in counts:
        if c < 0 or pos + c > h * w:
            raise IngestError(f"{where}: RLE counts run past the {w}x{h} image")
        flat[pos:pos + c] = val
        pos, val = pos + c, not val
    return flat.reshape((w, h)).T          # COCO RLE runs down columns


def _rle_string(s: str) -> list[int]:
    """pycocotools' compressed RLE string (6-bit groups, delta-coded after the third count)."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _coco_mask(seg: Any, where: str) -> dict:
    """Polygons (absolute pixel coordinates) or RLE of one COCO annotation, checked."""
    if isinstance(seg, list):
        polys = []
        for i, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(
                    isinstance(v, (int, float)) for v in poly):
                raise IngestError(f"{where}: segmentation polygon {i} must be a flat list of "
                                  ">= 3 x, y pairs")
            polys.append([float(v) for v in poly])
        return {"polygon": polys} if polys else {}
    if isinstance(seg, dict):
        rle_decode(seg, where)                 # fail now, before Ray, not in a worker
        return {"rle": seg}
    raise IngestError(f"{where}: segmentation must be a list of polygons or an RLE dict")


def read_coco_labels(path: Path, names: _Names) -> Labels:
    """A COCO detection/instances JSON; errors name the file and annotation."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise IngestError(f"{path} line {e.lineno} column {e.colno}: not valid JSON "
                          f"({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IngestError(f"{path} cannot be read ({e})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations",
                                                                   "categories")):
        raise IngestError(f"{path}: a COCO file needs the keys 'images', 'annotations' and "
                          "'categories'")
    cats, images = {}, {}
    for i, c in enumerate(data["categories"]):
        try:
            cats[c["id"]] = _label_ok(str(c["name"]), f"{path} categories[{i}]")
        except (KeyError, TypeError):
            raise IngestError(f"{path} categories[{i}]: needs 'id' and 'name'") from None
    missing = []
    for i, im in enumerate(data["images"]):
        try:
            iid, fname = im["id"], str(im["file_name"])
        except (KeyError, TypeError):
            raise IngestError(f"{path} images[{i}]: needs 'id' and 'file_name'") from None
        rel = names.resolve(fname, by_file_name=True)
        if rel is None:
            missing.append(f"images[{i}]: {fname}")
        images[iid] = (rel, [im.get("width"), im.get("height")])
    if missing:
        raise _missing_error(path, missing, names.root)
    out = Labels("colony", "coco")
    for i, a in enumerate(data["annotations"]):
        _coco_annotation(path, i, a, images, cats, out)
    return out


def _coco_annotation(path: Path, i: int, a: Any, images: dict, cats: dict, out: Labels) -> None:
    """One entry of `annotations` -> a box (with its polygon / RLE) in `out`, or an error."""
    aid = a.get("id", i) if isinstance(a, dict) else i
    where = f"{path.name} annotation id {aid}"
    full = f"{path} annotations[{i}] (id {aid})"
    if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
        raise IngestError(f"{full}: needs 'image_id', 'category_id' and 'bbox'")
    if a["image_id"] not in images:
        raise IngestError(f"{full}: image_id {a['image_id']!r} is not in 'images'")
    if a["category_id"] not in cats:
        raise IngestError(f"{full}: category_id {a['category_id']!r} is not in 'categories'")
    rel, size = images[a["image_id"]]
    mask = _coco_mask(a["segmentation"], full) if a.get("segmentation") else {}
    bbox = a.get("bbox")
    if bbox is None and "polygon" in mask:
        xs = [v for p in mask["polygon"] for v in p[0::2]]
        ys = [v for p in mask["polygon"] for v in p[1::2]]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) for v in bbox):
        raise IngestError(f"{full}: bbox must be [x, y, width, height] in pixels, got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    box = {"x0": int(math.floor(x)), "y0": int(math.floor(y)),
           "x1": int(math.ceil(x + w)), "y1": int(math.ceil(y + h)),
           "label": cats[a["category_id"]], "where": where, **mask}
    if all(isinstance(v, int) and v > 0 for v in size):
        box["ann_size"] = size
    if w <= 0 or h <= 0:
        out.rejected.append(_zero_size(rel, box, where, f"bbox={bbox}"))
    else:
        out.boxes.setdefault(rel, []).append(box)


# ---------------------------------------------------------------- class names

def _parts(label: str) -> list[str]:
    """'A | b' -> ['A', 'b']: the class names of one entry (a multi-label entry has several)."""
    return [p.strip() for p in label.split("|")]


def _spellings(out: Labels) -> dict[str, int]:
    """Objects per class spelling, in the order the entries were read (kept, then rejected)."""
    counts: dict[str, int] = {}
    entries = [b["label"] for bs in out.boxes.values() for b in bs]
    entries += list(out.image_labels.values()) + [r["label"] for r in out.rejected]
    for label in entries:
        for part in filter(None, _parts(label)):
            counts[part] = counts.get(part, 0) + 1
    return counts


def _case_renames(out: Labels, path: Path) -> dict[str, str]:
    """{spelling: the kept spelling} for classes spelt several ways; one warning per class."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for name, n in _spellings(out).items():
        groups.setdefault(name.casefold(), []).append((name, n))
    rename = {}
    for group in (g for g in groups.values() if len(g) > 1):
        keep = max(group, key=lambda s: s[1])[0]      # max keeps the first of equal counts
        rename.update({name: keep for name, _ in group})
        said = ", ".join(f"{name!r} ({n} object{'s' * (n != 1)})" for name, n in group)
        out.warnings.append({"path": str(path), "warning": (
            f"class names that differ only in case were merged into {keep!r}: {said}; "
            "use one spelling in the label file to silence this")})
    return rename


def parse_label_map(entries) -> dict[str, str]:
    """data.label_map's "FROM=TO" entries -> {FROM: TO} (names without surrounding spaces)."""
    out = {}
    for e in entries or ():
        src, sep, dst = str(e).partition("=")
        if not sep or not src.strip() or not dst.strip() or "|" in dst:
            raise IngestError(f"data.label_map entry {e!r}: write FROM=TO with two class "
                              "names, e.g. 'red blood cell=RBC'")
        out[src.strip()] = dst.strip()
    return out


def apply_label_map(out: Labels, path: Path, mapping: dict[str, str]) -> Labels:
    """Rename classes by the user's map (data.label_map); one warning per rename with its
    count, and one for each FROM that no label uses (a typo in the map would else pass)."""
    if not mapping:
        return out
    counts = _spellings(out)

    def fix(label: str) -> str:
        return "|".join(mapping.get(p, p) for p in _parts(label))

    for entry in [b for bs in out.boxes.values() for b in bs] + out.rejected:
        entry["label"] = fix(entry["label"])
    out.image_labels = {rel: fix(label) for rel, label in out.image_labels.items()}
    for src, dst in mapping.items():
        n = counts.get(src, 0)
        out.warnings.append({"path": str(path), "warning": (
            f"data.label_map renamed {src!r} to {dst!r} ({n} object{'s' * (n != 1)})" if n else
            f"data.label_map names {src!r}, which no label in this file uses")})
    return out


def merge_case(out: Labels, path: Path) -> Labels:
    """Spellings that differ only in case are one class: an annotator's `rbc` next to `RBC`
    would otherwise be a class of its own with a handful of colonies, and skew every
    per-class score. The most frequent spelling wins (ties: the first seen); the warning
    names every spelling, so no user label is renamed silently."""
    rename = _case_renames(out, path)

    def fix(label: str) -> str:
        return "|".join(rename.get(p, p) for p in _parts(label))

    for entry in [b for bs in out.boxes.values() for b in bs] + out.rejected:
        entry["label"] = fix(entry["label"])
    out.image_labels = {rel: fix(label) for rel, label in out.image_labels.items()}
    return out


def read_labels(labels: str | Path, root: Path, images: set[str],
                label_map=()) -> Labels:
    """CSV file, VOC directory or COCO JSON (by what `labels` is); errors name the file.
    Class names: renamed by `label_map` ("FROM=TO" entries), then spellings that differ
    only in case merged; each change is a warning (the manifest's `warnings`)."""
    path = Path(labels).expanduser()
    mapping = parse_label_map(label_map)
    return merge_case(apply_label_map(_read_any(path, _Names(root, images)), path, mapping),
                      path)


def _read_any(path: Path, names: _Names) -> Labels:
    if path.is_dir():
        return read_voc_labels(path, names)
    if not path.is_file():
        raise IngestError(f"label file {path} does not exist")
    if path.suffix.lower() == ".json":
        return read_coco_labels(path, names)
    if path.suffix.lower() == ".xml":
        raise IngestError(f"{path} is one Pascal VOC file: give the directory that holds the "
                          "VOC XML files (one per image)")
    return read_csv_labels(path, names)


__all__ = ["IngestError", "Labels", "read_labels", "read_csv_labels", "read_voc_labels",
           "read_coco_labels", "merge_case", "apply_label_map", "parse_label_map", "rle_decode", "COLONY_COLUMNS", "IMAGE_COLUMNS"]
