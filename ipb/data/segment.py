"""Colony segmentation (PAPER.md section 2): colony mask, instances, boxes, well mask.

    ipb segment img.tif --out seg/            # or: segment(image, SegmentationConfig())

Paper order: Gaussian blur 3x3 -> local entropy (disk r) -> Otsu -> binary opening (disk r) ->
fill holes -> remove objects under the minimum area. `order='code'` (the reference code) instead
min-max normalises the entropy image and opens it as a grey image before Otsu. Radii and areas
are given in um in the config and converted with `pixel_size_um`.

`reference_segment` is the plain scikit-image pipeline (the benchmark's reference);
`segment` is ours: the same mask from an exact numba entropy (ipb.data.entropy), OpenCV
morphology/labelling and numba component bookkeeping (ipb.data.components), plus what real
images need: a well mask for whole-well images (black outside a circular well) and a watershed
cut of merged colonies (ipb.data.split).

Grey levels: rank entropy works on 8 bits. 8-bit input is used as is. 16-bit input is shifted
to 8 bits from its effective bit depth k (max < 2**k): right by k - 8 (linear, no clipping of
bright debris rims; an 8-bit image stored as 16-bit, v * 257, gives back exactly v), or, for a
16-bit file holding fewer than 8 bits of data, left by 8 - k, so 4-bit data in a 16-bit file
segment like the same levels spread over 8 bits (the 3x3 blur would otherwise round them
away). Float input in [0, 1] is scaled by 255; other floats are min-max stretched.
"""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from ipb import stop
from ipb.config import SegmentationConfig
from ipb.data import components, entropy
from ipb.data.entropy import local_entropy
from ipb.data.split import split_object

WELL_DARK_FRACTION = 0.05   # 'auto': a dark surround this large (of the image) means a whole well
WELL_RIM_UM = 8.0           # the well interior is eroded this far past the black/grey edge
SPLIT_SOLIDITY = 0.95       # objects less convex than this are checked for merged colonies


@dataclass
class Segmentation:
    mask: np.ndarray                  # bool HxW colony mask (labels > 0)
    labels: np.ndarray                # int32 HxW instances, 0 = background
    colonies: list[dict]              # id, x0, y0, x1 (exclusive), y1, area, border
    well: np.ndarray | None = None    # bool HxW well interior, None without a well mask
    info: dict[str, Any] = field(default_factory=dict)
    entropy: np.ndarray | None = None  # float32 HxW local entropy (before thresholding)


def to_gray(image: np.ndarray) -> np.ndarray:
    """2-D grey image from grey, RGB or RGBA (uint8, uint16 or float); keeps the dtype."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer)
                                   or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"image dtype {image.dtype} is not supported; give uint8, uint16 or float")
    if image.dtype not in (np.uint8, np.uint16) and np.issubdtype(image.dtype, np.integer):
        raise TypeError(f"image dtype {image.dtype} is not supported; convert to uint8 or uint16")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        if image.shape[2] == 1:
            return image[:, :, 0]
        rgb = image[:, :, :3]
        if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 0] == rgb[:, :, 2]).all():
            return np.ascontiguousarray(rgb[:, :, 0])
        if image.dtype == np.float64:
            return rgb @ np.array([0.299, 0.587, 0.114])
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"image shape {image.shape} is not HxW, HxWx3 or HxWx4")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Grey uint8 for rank entropy (see the module docstring for the 16-bit and float rules)."""
    g = to_gray(image)
    if g.dtype == np.uint8:
        return g
    if g.dtype == np.uint16:
        bits = max(1, int(g.max()).bit_length())
        if bits < 8:
            return (g << (8 - bits)).astype(np.uint8)
        return (g >> (bits - 8)).astype(np.uint8)
    g = g.astype(np.float64)
    if not np.isfinite(g).all():
        raise ValueError("image contains NaN or inf values")
    lo, hi = float(g.min()), float(g.max())
    if lo >= 0 and hi <= 1:
        return np.round(g * 255).astype(np.uint8)
    return np.round((g - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8)


def pixel_params(cfg: SegmentationConfig) -> dict[str, int]:
    """Radii (px) and areas (px) from the config's um values."""
    if cfg.pixel_size_um <= 0:
        raise ValueError(f"segmentation.pixel_size_um must be > 0, got {cfg.pixel_size_um}")
    px = cfg.pixel_size_um
    return {"entropy_r": max(1, int(round(cfg.entropy_radius_um / px))),
            "open_r": max(0, int(round(cfg.opening_radius_um / px))),
            "min_area": max(1, int(round(cfg.min_area_um2 / px ** 2))),
            "max_merge": max(1, int(round(cfg.max_merge_area_um2 / px ** 2))),
            "rim": max(1, int(round(WELL_RIM_UM / px))),
            "blur": int(cfg.blur_px) | 1}


def _disk(r: int) -> np.ndarray:
    from skimage.morphology import disk
    return disk(r).astype(np.uint8)


def _blur(g8: np.ndarray, k: int) -> np.ndarray:
    return cv2.GaussianBlur(g8, (k, k), 0) if k > 1 else g8


# ---------------------------------------------------------------- reference (scikit-image)

def reference_segment(image: np.ndarray, cfg: SegmentationConfig,
                      well: np.ndarray | None = None) -> np.ndarray:
    """The straightforward scikit-image pipeline; `well` (bool) restricts Otsu and the mask."""
    from skimage.filters import rank, threshold_otsu
    from skimage.morphology import disk, opening, remove_small_objects
    p = pixel_params(cfg)
    b = _blur(to_uint8(image), p["blur"])
    ent = rank.entropy(b, disk(p["entropy_r"]))
    inside = np.ones(b.shape, bool) if well is None else well
    if cfg.order == "code":
        lo, hi = ent[inside].min(), ent[inside].max()
        ent = np.where(inside, (ent - lo) / max(hi - lo, 1e-12), 0.0)
        if p["open_r"]:
            ent = opening(ent, disk(p["open_r"]))
        m = (ent > threshold_otsu(ent[inside])) & inside
    else:
        m = (ent > threshold_otsu(ent[inside])) & inside
        if p["open_r"]:
            m = opening(m, disk(p["open_r"]))
    m = ndi.binary_fill_holes(m)
    return remove_small_objects(m, max_size=p["min_area"] - 1, connectivity=2)


# ---------------------------------------------------------------- ours

def otsu_threshold(values: np.ndarray, mask: np.ndarray | None = None) -> float:
    """skimage.filters.threshold_otsu (256 bins over [min, max]) from an OpenCV histogram."""
    v = np.ascontiguousarray(values, np.float32)
    m = None if mask is None else np.asarray(mask, np.uint8)
    lo, hi, _, _ = cv2.minMaxLoc(v, m)
    if hi <= lo:
        return float(lo)
    top = np.nextafter(np.float32(hi), np.float32(np.inf))
    hist = cv2.calcHist([v], [0], m, [256], [lo, float(top)]).ravel().astype(np.float64)
    centers = lo + (np.arange(256) + 0.5) * (hi - lo) / 256
    w1, w2 = np.cumsum(hist), np.cumsum(hist[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = np.cumsum(hist * centers) / w1
        m2 = (np.cumsum((hist * centers)[::-1]) / w2[::-1])[::-1]
        var = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[int(np.nanargmax(var))])


def _fill_holes(m8: np.ndarray) -> np.ndarray:
    """Background not 4-connected to the image border becomes foreground (= ndi.binary_fill_holes)."""
    H, W = m8.shape
    pad = np.zeros((H + 2, W + 2), np.uint8)
    pad[1:-1, 1:-1] = m8
    ff = np.zeros((H + 4, W + 4), np.uint8)
    cv2.floodFill(pad, ff, (0, 0), 2, flags=4)
    return np.not_equal(pad[1:-1, 1:-1], 2).view(np.uint8)


def detect_well(g8: np.ndarray, cfg: SegmentationConfig) -> np.ndarray | None:
    """Well interior (bool) for whole-well images: a large near-black region connected to the
    image corners is the outside; the rest is eroded past the edge. None when there is no well
    ('auto' and no dark surround, or 'off')."""
    if cfg.well_mask == "off":
        return None
    H, W = g8.shape
    cum = np.cumsum(cv2.calcHist([g8], [0], None, [256], [0, 256]).ravel())
    dark_level = max(4, int(0.15 * int(np.searchsorted(cum, 0.99 * cum[-1]))))
    corners = g8[[0, 0, H - 1, H - 1], [0, W - 1, 0, W - 1]]
    if cfg.well_mask == "auto" and (corners > dark_level).all():
        return None                          # no dark corner: a tile, not a whole well
    dark = cv2.threshold(g8, dark_level, 1, cv2.THRESH_BINARY_INV)[1]     # 1 where <= level
    # the dark regions 8-connected to a dark corner (a flood fill is ~5x cheaper than labelling)
    for y, x in ((0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)):
        if dark[y, x] == 1:
            cv2.floodFill(dark, None, (x, y), 2, flags=8)
    outside = dark == 2
    if np.count_nonzero(outside) / outside.size < WELL_DARK_FRACTION:
        if cfg.well_mask == "auto":
            return None
        # 'on' without a dark surround: the inscribed circle of the image
        yy, xx = np.ogrid[:H, :W]
        outside = (yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2 > (min(H, W) / 2) ** 2
    inside = _fill_holes(np.logical_not(outside).view(np.uint8))
    # labels + areas: OpenCV's per-pixel stats cost ~3x the labelling itself
    n, lab = cv2.connectedComponents(inside, connectivity=4, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros((H, W), bool)
    keep = 1 + int(np.argmax(components.areas(lab, n)[1:]))
    inside = np.equal(lab, keep).view(np.uint8)
    rim = pixel_params(cfg)["rim"]
    inside = cv2.erode(inside, _disk(rim), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return inside.view(bool)


def entropy_image(g8: np.ndarray, cfg: SegmentationConfig) -> np.ndarray:
    """Local entropy of the blurred 8-bit image (float32), the texture every mask starts from."""
    p = pixel_params(cfg)
    return local_entropy(_blur(g8, p["blur"]), p["entropy_r"])


def colony_mask(g8: np.ndarray, cfg: SegmentationConfig, well: np.ndarray | None,
                info: dict, ent: np.ndarray | None = None) -> np.ndarray:
    """uint8 0/1 mask after threshold, opening and hole filling (small objects still in)."""
    p = pixel_params(cfg)
    ent = entropy_image(g8, cfg) if ent is None else ent
    inside = None if well is None else np.asarray(well, bool).view(np.uint8)
    kern = _disk(p["open_r"]) if p["open_r"] else None
    if cfg.order == "code":
        lo, hi, _, _ = cv2.minMaxLoc(ent, inside)
        ent = (ent - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1e-12))
        if inside is not None:
            ent[inside == 0] = 0
        if kern is not None:
            ent = cv2.morphologyEx(ent, cv2.MORPH_OPEN, kern, borderType=cv2.BORDER_REFLECT)
        t = otsu_threshold(ent, inside)
        m = np.greater(ent, t).view(np.uint8)
        if inside is not None:
            m &= inside
    else:
        t = otsu_threshold(ent, inside)
        m = np.greater(ent, t).view(np.uint8)
        if inside is not None:
            m &= inside
        if kern is not None:
            m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kern, borderType=cv2.BORDER_REFLECT)
    info["threshold"] = t
    return _fill_holes(m)


def segment(image: np.ndarray, cfg: SegmentationConfig | None = None) -> Segmentation:
    """Colony mask, instances and padded boxes of one grey/RGB image (8/16-bit or float)."""
    cfg = cfg or SegmentationConfig()
    p = pixel_params(cfg)
    g8 = to_uint8(image)
    H, W = g8.shape
    info: dict[str, Any] = {"order": cfg.order, "entropy_radius_px": p["entropy_r"],
                            "opening_radius_px": p["open_r"], "min_area_px": p["min_area"]}
    well = detect_well(g8, cfg)
    info["well"] = well is not None
    ent = entropy_image(g8, cfg)
    m = colony_mask(g8, cfg, well, info, ent)
    # labels, then areas and boxes of the kept objects only: OpenCV's stats of all (mostly
    # tiny) components cost ~3x the labelling
    n, lab = cv2.connectedComponents(m, connectivity=8, ltype=cv2.CV_32S)
    area_of = components.areas(lab, n)
    keep = np.flatnonzero(area_of >= p["min_area"])
    keep = keep[keep > 0]
    lut = np.zeros(n, np.int32)
    lut[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    labels, box = components.relabel(lab, lut)
    next_id, n_split, n_pieces = keep.size + 1, 0, 0
    boxes = {i: (int(x0), int(y0), int(x1 - x0), int(y1 - y0), int(area_of[old]))
             for i, (old, (y0, x0, y1, x1)) in enumerate(zip(keep, box[1:]), start=1)}
    if cfg.split_touching:
        for new_id in range(1, keep.size + 1):
            x, y, w, h, area = boxes[new_id]
            obj = np.equal(labels[y:y + h, x:x + w], new_id).view(np.uint8)
            if area <= p["max_merge"]:
                cnts, _ = cv2.findContours(obj, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                hull = cv2.contourArea(cv2.convexHull(np.concatenate(cnts)))
                if hull <= 0 or area / hull >= SPLIT_SOLIDITY:
                    continue
            pieces = split_object(obj, p["min_area"])
            if pieces is None:
                continue
            n_split += 1
            k = int(pieces.max())
            n_pieces += k
            crop = labels[y:y + h, x:x + w]
            areas = np.bincount(pieces.ravel(), minlength=k + 1)
            for piece, sl in enumerate(ndi.find_objects(pieces), start=1):
                pid = new_id if piece == 1 else next_id     # piece 1 keeps the object's id
                if piece > 1:
                    crop[pieces == piece] = pid
                    next_id += 1
                boxes[pid] = (x + sl[1].start, y + sl[0].start, sl[1].stop - sl[1].start,
                              sl[0].stop - sl[0].start, int(areas[piece]))
    info.update(n_objects=next_id - 1, n_merged_split=n_split, n_split_pieces=n_pieces)
    colonies = _colonies(labels, boxes, well, cfg.pad_px)
    return Segmentation(mask=labels > 0, labels=labels, colonies=colonies, well=well, info=info,
                        entropy=ent)


def _colonies(labels: np.ndarray, boxes: dict[int, tuple], well: np.ndarray | None,
              pad: int) -> list[dict]:
    """One dict per object from its (x, y, w, h, area): labelling stats, or the watershed's."""
    H, W = labels.shape
    rim_ids: set[int] = set()
    if well is not None and boxes:
        w8 = np.asarray(well, bool).view(np.uint8)
        ring = (w8 - cv2.erode(w8, np.ones((3, 3), np.uint8), borderValue=0)).astype(bool)
        rim_ids = set(int(v) for v in np.unique(labels[ring]) if v)
    out = []
    for i in sorted(boxes):
        x, y, w, h, area = boxes[i]
        x1, y1 = x + w, y + h
        edge = y == 0 or x == 0 or y1 == H or x1 == W
        out.append({"id": i, "x0": max(x - pad, 0), "y0": max(y - pad, 0),
                    "x1": min(x1 + pad, W), "y1": min(y1 + pad, H), "area": area,
                    "border": bool(edge or i in rim_ids)})
    return out


def warm_up() -> float:
    """Compile segmentation's numba kernels (entropy, components) or load them from numba's
    cache; seconds taken (~0 once done in this process)."""
    return entropy.warm_up() + components.warm_up()


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def segment_files(images: list[str], out: str | Path, cfg: SegmentationConfig) -> int:
    """`ipb segment`: one mask PNG (0/255) per image (per frame of a time series,
    `<stem>_t<T>_mask.png`) and colonies.csv; returns the colony count. Each image is segmented
    at its own pixel size when its metadata has one (ipb.data.microscopy)."""
    from ipb.data.microscopy import read_image
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in images:
        stop.check()        # a stop lost inside an image codec (ipb/stop.py)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        try:
            data = read_image(path.read_bytes(), path.name)
        except ValueError as e:
            raise ValueError(f"image {path}: {e}") from None
        px = data.pixel_size_um or cfg.pixel_size_um
        for t, frame in enumerate(data.frames):
            seg = segment(frame, dataclasses.replace(cfg, pixel_size_um=px))
            name = f"{path.stem}_t{t}_mask.png" if data.stack else f"{path.stem}_mask.png"
            cv2.imwrite(str(out / name), seg.mask.astype(np.uint8) * 255)
            rows += [{"image": str(path), "time": t if data.stack else -1,
                      "pixel_size_um": px, **c} for c in seg.colonies]
    with open(out / "colonies.csv", "w", newline="") as f:
        fields = ["image", "time", "id", "x0", "y0", "x1", "y1", "area", "border",
                  "pixel_size_um"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


__all__ = ["Segmentation", "to_gray", "to_uint8", "pixel_params", "reference_segment",
           "segment", "detect_well", "colony_mask", "entropy_image", "otsu_threshold",
           "mask_iou", "segment_files", "warm_up"]
