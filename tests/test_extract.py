"""One file -> colony rows: labelled boxes never lost, box masks, stacks, pixel size. No Ray.

    .venv/bin/pytest tests/test_extract.py -q

The images are SYNTHETIC wells (ipb.data.synth_render), made in memory.
"""
from __future__ import annotations

import io
from collections import Counter

import cv2
import numpy as np
import pytest
import tifffile

from ipb.config import SynthConfig, load_config
from ipb.data.extract import extract_image
from ipb.data.table import decode_png

CFG = load_config("smoke")


@pytest.fixture(scope="module")
def well():
    """A SYNTHETIC 384 px well and its colonies' true boxes."""
    from ipb.data.synth_render import render_well
    img, inst, _ = render_well(SynthConfig(size=384, colonies_per_well=4, seed=5),
                               np.random.default_rng(5))[0]
    boxes = []
    for i in np.unique(inst)[1:]:
        ys, xs = np.nonzero(inst == i)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return img, boxes


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def _tiff(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, img, **kw)
    return buf.getvalue()


def _task(name="w.png", boxes=(), mode=None, label=None) -> dict:
    return {"image": name, "layout": "wells", "label_mode": mode or ("colony" if boxes else "none"),
            "boxes": list(boxes), "label": label, "synthetic": True}


def _box(x0, y0, x1, y1, label="A", where="l.csv line 2", **kw) -> dict:
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "label": label, "where": where, **kw}


def _flat_corner(img: np.ndarray, boxes: list[tuple]) -> tuple:
    """A 60 px square no colony box touches (background: segmentation finds nothing)."""
    for y in range(0, img.shape[0] - 60, 12):
        for x in range(0, img.shape[1] - 60, 12):
            if all(x + 60 <= b[0] or b[2] <= x or y + 60 <= b[1] or b[3] <= y for b in boxes):
                return (x, y, x + 60, y + 60)
    raise AssertionError("no empty corner in the test well")


def test_every_labelled_box_is_a_row(well):
    img, true = well
    b0, b1 = true[0], true[1]
    empty = _flat_corner(img, true)
    boxes = [_box(*b0, label="Dense", where="l line 2"),
             _box(*b0, label="Dense", where="l line 3"),                    # duplicate
             _box(*b1, label="Dense", where="l line 4"),
             _box(*b1, label="Spread", where="l line 5"),                   # same box, 2nd label
             _box(*empty, label="Debris", where="l line 6"),                # nothing segmented
             _box(empty[0], empty[1], empty[0] + 10, empty[1] + 12, label="Tiny",
                  where="l line 7"),                                        # < min_colony_px
             _box(350, 360, 420, 420, label="Edge", where="l line 8"),      # partly outside
             _box(500, 500, 600, 600, label="Gone", where="l line 9"),      # wholly outside
             _box(*b0, label="Other", where="v.xml object 1", ann_size=[640, 480])]
    rows, rejected, info = extract_image(_png(img), _task(boxes=boxes), CFG)
    labelled = [r for r in rows if r["labels"] is not None]
    by_box = {(r["x0"], r["y0"], r["x1"], r["y1"]): r for r in labelled}
    assert len(labelled) == 5 and len(by_box) == 5
    assert by_box[b0]["label"] == "Dense" and by_box[b0]["mask_source"] == "segmented"
    merged = by_box[b1]
    assert merged["multi_label"] and merged["labels"] == "Dense|Spread" and merged["label"] is None
    assert by_box[empty]["mask_source"] in ("box_local", "box") and by_box[empty]["area"] > 0
    tiny = by_box[(empty[0], empty[1], empty[0] + 10, empty[1] + 12)]
    assert (tiny["width"], tiny["height"]) == (10, 12) and tiny["label"] == "Tiny"
    edge = by_box[(350, 360, 384, 384)]
    assert edge["label"] == "Edge" and edge["border"]
    for r in labelled:
        crop, mask = decode_png(r["crop"]), decode_png(r["mask"])
        assert crop.shape == mask.shape == (r["height"], r["width"])
        assert int((mask > 0).sum()) == r["area"] > 0
        assert r["area_um2"] == pytest.approx(r["area"] * 0.8 ** 2)
        if r["mask_source"] == "box":
            assert (mask > 0).all()                       # patch sampling: all colony
    reasons = {r["where"]: r["reason"] for r in rejected if "where" in r}
    assert set(reasons) == {"l line 9", "v.xml object 1"}
    assert "outside the 384x384 image" in reasons["l line 9"]
    assert "drawn on a 640x480 image" in reasons["v.xml object 1"]
    assert [d["where"] for d in info["duplicates"]] == ["l line 3"]
    assert [m["labels"] for m in info["merged"]] == [["Dense", "Spread"]]
    assert [c["where"] for c in info["clipped"]] == ["l line 8"]
    # the books balance: every box listed is kept, a duplicate or a listed rejection
    assert info["labelled_boxes"] == 9 == info["labelled_kept"] + len(info["duplicates"]) + 2
    assert sum(info["labelled_mask_source"].values()) == 5
    # colonies nobody labelled still join the unlabeled pool
    unl = [r for r in rows if r["labels"] is None]
    assert len(unl) >= 1 and all(r["mask_source"] == "segmented" for r in unl)
    assert len({r["colony_id"] for r in rows}) == len(rows)


def test_coco_polygon_is_the_mask(well):
    img, true = well
    x0, y0, x1, y1 = true[2]
    poly = [x0, y0, x1, y0, x1, (y0 + y1) / 2, x0, y1]          # a quadrilateral
    rows, rejected, _ = extract_image(
        _png(img), _task(boxes=[_box(x0, y0, x1, y1, polygon=[poly])]), CFG)
    r = next(r for r in rows if r["label"] == "A")
    assert r["mask_source"] == "polygon" and not rejected
    mask = decode_png(r["mask"]) > 0
    assert mask[1, 1] and not mask[-2, -2] and 0.5 < mask.mean() < 0.9


def test_stack_is_a_time_series_and_boxes_on_it_are_listed(well):
    img, true = well
    stack = np.stack([img, np.roll(img, 5, axis=1), np.roll(img, 10, axis=1)])
    data = _tiff(stack, photometric="minisblack")
    rows, rejected, info = extract_image(data, _task("plate/w1.tif"), CFG)
    assert info["frames"] == 3 and not rejected
    assert sorted(Counter(r["time"] for r in rows)) == [0, 1, 2]
    assert {r["group"] for r in rows} == {"plate/w1"} and {r["source"] for r in rows} == \
        {"plate/w1.tif"}
    assert len({r["colony_id"] for r in rows}) == len(rows)          # time is in the id
    rows, rejected, _ = extract_image(data, _task("w1.tif", boxes=[_box(*true[0])]), CFG)
    assert rows and all(r["labels"] is None for r in rows)
    assert len(rejected) == 1 and "3-frame time series" in rejected[0]["reason"]
    assert rejected[0]["label"] == "A"                                # listed with its label


def test_pixel_size_from_metadata_scales_segmentation(well):
    img, _ = well
    half = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    at_08 = extract_image(_png(img), _task(), CFG)[0]
    # the same well imaged at 1.6 um/px, said so by its TIFF tags: same colonies
    tagged = _tiff(half, resolution=(1e4 / 1.6, 1e4 / 1.6), resolutionunit="CENTIMETER")
    rows, _, info = extract_image(tagged, _task("w.tif"), CFG)
    assert info["pixel_size"] == {"TIFF resolution": 1} and not info["pixel_size_fallback"]
    assert all(r["pixel_size_um"] == pytest.approx(1.6) for r in rows)
    assert abs(len(rows) - len(at_08)) <= 1
    um2 = sorted(r["area_um2"] for r in rows)
    ref = sorted(r["area_um2"] for r in at_08)
    assert np.median(um2) == pytest.approx(np.median(ref), rel=0.15)
    # the config's value when told to ignore metadata: radii and min area are off by 2x
    cfg = load_config("smoke", ["data.pixel_size_from=config"])
    rows_cfg, _, info_cfg = extract_image(tagged, _task("w.tif"), cfg)
    assert all(r["pixel_size_um"] == pytest.approx(0.8) for r in rows_cfg)
    assert info_cfg["pixel_size"] == {"config": 1} and not info_cfg["pixel_size_fallback"]
    _, _, plain = extract_image(_png(img), _task(), CFG)
    assert plain["pixel_size_fallback"] == ["w.png"]


def test_16bit_holding_4bit_data_segments_like_8bit_and_warns(well):
    img, _ = well
    low16 = (img >> 4).astype(np.uint16)                   # 0..15 in a 16-bit file
    full8 = ((img >> 4) << 4).astype(np.uint8)             # the same levels over 8 bits
    r16, _, info = extract_image(_tiff(low16), _task("w16.tif"), CFG)
    r8, _, info8 = extract_image(_png(full8), _task(), CFG)
    assert len(r16) == len(r8) and [r["area"] for r in r16] == [r["area"] for r in r8]
    assert "16-bit image with values only up to" in info["warnings"][0]["warning"]
    assert "grey levels" in info8["warnings"][0]["warning"]      # few levels either way
    assert {r["bit_depth"] for r in r16} == {16}
