"""Files other tools open: instance label images (napari, Fiji) and GeoJSON (QuPath).

    ipb predict MODEL images/ --out pred/    # writes pred/labels/*.ome.tif and pred/geojson/*.geojson

Label image: one OME-TIFF per input file, uint16 (uint32 past 65535 colonies), 0 = background,
pixel value = the colony's `id` in colonies.csv; YX, or TYX for a time series. The pixel size
travels as OME PhysicalSizeX/Y (um) and as TIFF resolution tags (px/cm), so napari, Fiji,
QuPath and `ipb.data.microscopy` read it back. GeoJSON: one FeatureCollection per input file
in QuPath's layout (pixel coordinates, origin top left): a feature per colony, its outline as a
Polygon (MultiPolygon when the mask has pieces), `properties.objectType` "detection",
`classification` {name, color}, `measurements` (id, probabilities, area) and, for a frame of a
time series, QuPath's `plane` {c, z, t} on the geometry. No Ray, no MLflow.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# QuPath draws classes in these colours (tab10), in class order
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def label_image(labels: np.ndarray, ids: dict[int, int], dtype) -> np.ndarray:
    """Segmentation instance labels -> the same image with colonies.csv ids (others 0)."""
    lut = np.zeros(int(labels.max()) + 1, dtype)
    for inst, row_id in ids.items():
        lut[inst] = row_id
    return lut[labels]


def write_label_tiff(path: Path, frames: list[np.ndarray], pixel_size_um: float | None,
                     time_series: bool) -> Path:
    """OME-TIFF of one file's label frames (YX, or TYX for a time series)."""
    import tifffile
    data = np.stack(frames) if time_series else frames[0]
    meta: dict[str, Any] = {"axes": "TYX" if time_series else "YX"}
    kw: dict[str, Any] = {}
    if pixel_size_um:
        meta.update(PhysicalSizeX=pixel_size_um, PhysicalSizeXUnit="µm",
                    PhysicalSizeY=pixel_size_um, PhysicalSizeYUnit="µm")
        kw.update(resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um),
                  resolutionunit="CENTIMETER")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tifffile.imwrite(tmp, data, ome=True, metadata=meta, compression="zlib",
                     photometric="minisblack", **kw)
    tmp.replace(path)
    return path


def outline(mask: np.ndarray, x0: int, y0: int) -> dict | None:
    """GeoJSON Polygon / MultiPolygon of a bool mask cut at (x0, y0); None when empty. Vertices
    sit on pixel centres (i + 0.5), QuPath's continuous pixel coordinates."""
    cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                               cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    # the largest piece first: viewers that show one ring of a MultiPolygon show the colony
    for c in sorted(cnts, key=cv2.contourArea, reverse=True):
        pts = c.reshape(-1, 2).astype(np.float64) + (x0 + 0.5, y0 + 0.5)
        if len(pts) < 3:
            continue
        ring = [[round(x, 2), round(y, 2)] for x, y in pts]
        rings.append(ring + [ring[0]])
    if not rings:
        ys, xs = np.nonzero(mask)
        if not xs.size:
            return None
        a, b = x0 + float(xs.min()), x0 + float(xs.max()) + 1
        c_, d = y0 + float(ys.min()), y0 + float(ys.max()) + 1
        rings = [[[a, c_], [b, c_], [b, d], [a, d], [a, c_]]]
    if len(rings) == 1:
        return {"type": "Polygon", "coordinates": rings}
    return {"type": "MultiPolygon", "coordinates": [[r] for r in rings]}


def colony_feature(row: dict, mask: np.ndarray, classes: list[str],
                   time_point: int | None) -> dict | None:
    """One QuPath detection from a colonies.csv row and its instance mask (box crop)."""
    geom = outline(mask, int(row["x0"]), int(row["y0"]))
    if geom is None:
        return None
    if time_point is not None:
        geom["plane"] = {"c": -1, "z": 0, "t": int(time_point)}
    name = row["class"]
    colour = list(_COLOURS[classes.index(name) % len(_COLOURS)]) if name in classes else None
    probs = {c: float(row[f"p_{c}"]) for c in classes}
    measurements = {"ipb id": int(row["id"]), "area px": float(row["area"]),
                    **{f"p {c}": p for c, p in probs.items()}}
    if row.get("area_um2") not in (None, ""):
        measurements["area um^2"] = float(row["area_um2"])
    return {"type": "Feature", "id": f"ipb-{int(row['id'])}", "geometry": geom,
            "properties": {"objectType": "detection", "name": f"{name} {int(row['id'])}",
                           "classification": {"name": name, "color": colour},
                           "measurements": measurements, "ipb_id": int(row["id"]),
                           "probabilities": probs, "isLocked": False}}


def write_geojson(path: Path, features: list[dict], image: str,
                  pixel_size_um: float | None) -> Path:
    """A FeatureCollection; the image and its pixel size ride along as a foreign member."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"type": "FeatureCollection", "features": features,
           "ipb": {"image": image, "pixel_size_um": pixel_size_um, "units": "pixels"}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)
    return path


__all__ = ["label_image", "write_label_tiff", "outline", "colony_feature", "write_geojson"]
