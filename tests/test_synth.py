"""Synthetic wells: determinism, proportions, ground truth, time-lapse, markers, class texture.

    .venv/bin/pytest tests/test_synth.py -q
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import replace

import cv2
import numpy as np
import pytest
import tifffile

from ipb.config import SynthConfig
from ipb.data.synth import (allocate_labels, label_probs, render_well, synthesize,
                            write_class_folders)

SMALL = SynthConfig(wells=3, size=320, colonies_per_well=5, seed=3)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_render_is_deterministic_and_dtypes():
    a = render_well(SMALL, np.random.default_rng(5))[0]
    b = render_well(SMALL, np.random.default_rng(5))[0]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert a[0].dtype == np.uint8 and a[1].dtype == np.uint16 and a[0].shape == (320, 320)
    img16 = render_well(replace(SMALL, bit_depth=16), np.random.default_rng(5))[0][0]
    assert img16.dtype == np.uint16 and img16.max() > 255
    # same scene up to the quantisation step
    assert np.abs(img16 / 65535.0 - a[0] / 255.0).mean() < 0.01


def test_synthesize_same_bytes_in_one_or_two_processes(tmp_path):
    synthesize(tmp_path / "a", SMALL, progress=False)
    synthesize(tmp_path / "b", SMALL, progress=False, workers=2)
    for rel in ["labels.csv", "image_labels.csv", "images/well_001.tif", "masks/well_002.png"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_wells_carry_their_pixel_size(tmp_path):
    from ipb.data.microscopy import tiff_pixel_size
    synthesize(tmp_path, replace(SMALL, pixel_size_um=0.65), progress=False)
    with tifffile.TiffFile(tmp_path / "images" / "well_000.tif") as tif:
        um, source, _ = tiff_pixel_size(tif)
    assert um == pytest.approx(0.65) and source == "TIFF resolution"


def test_class_proportions_match_config():
    cfg = SynthConfig()
    probs = label_probs(cfg)
    assert abs(sum(probs.values()) - 1) < 1e-9
    assert abs(sum(p for k, p in probs.items() if "|" in k) - cfg.multi_label_frac) < 1e-9
    labels = allocate_labels(300, cfg, np.random.default_rng(0))
    counts = Counter(labels)
    for k, p in probs.items():
        assert abs(counts[k] / 300 - p) < 0.01, (k, counts[k])
    assert counts["Differentiated"] >= 2
    # small sets still hold every label
    assert set(allocate_labels(8, cfg, np.random.default_rng(0))) == set(probs)
    # rendered wells (multinomial draw) keep the proportions within sampling error
    rng = np.random.default_rng(1)
    drawn = Counter()
    for _ in range(25):
        drawn.update(c["label"] for c in render_well(
            replace(cfg, size=384, colonies_per_well=12), rng)[0][2])
    n = sum(drawn.values())
    assert n >= 280
    for k, p in probs.items():
        assert abs(drawn[k] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.01, (k, drawn[k], n)


def test_boxes_match_instance_mask_and_files(tmp_path):
    out = tmp_path / "s"
    summary = synthesize(out, SMALL, progress=False)
    rows = _rows(out / "labels.csv")
    assert list(rows[0]) == ["image", "x0", "y0", "x1", "y1", "label"]
    assert summary["n_images"] == 3 and summary["n_colonies"] == len(rows)
    by_image: dict[str, list] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r)
    for image, rs in by_image.items():
        img = tifffile.imread(out / image)
        inst = cv2.imread(str(out / image.replace("images/", "masks/").replace(".tif", ".png")),
                          cv2.IMREAD_UNCHANGED)
        assert inst.dtype == np.uint16 and inst.shape == img.shape
        assert inst.max() == len(rs)
        for k, r in enumerate(rs, start=1):
            x0, y0, x1, y1 = (int(r[c]) for c in ("x0", "y0", "x1", "y1"))
            assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 320
            ys, xs = np.nonzero(inst == k)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    img_rows = _rows(out / "image_labels.csv")
    assert len(img_rows) == 3 and all(r["label"] in summary["classes"] for r in img_rows)


def test_multi_label_rows_and_synthetic_markers(tmp_path):
    cfg = replace(SMALL, wells=4, colonies_per_well=6, multi_label_frac=0.3)
    out = tmp_path / "m"
    summary = synthesize(out, cfg, progress=False)
    labels = [r["label"] for r in _rows(out / "labels.csv")]
    multi = [lab for lab in labels if "|" in lab]
    assert multi and summary["multi_label"] == len(multi)
    assert all(lab.split("|") == sorted(lab.split("|")) and len(lab.split("|")) == 2
               for lab in multi)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["synthetic"] is True and meta["config"]["multi_label_frac"] == 0.3
    assert sum(meta["classes"].values()) + meta["multi_label"] == meta["n_colonies"]
    assert "synthetic" in (out / "SYNTHETIC.md").read_text().lower()
    with tifffile.TiffFile(out / "images/well_000.tif") as tf:
        assert json.loads(tf.pages[0].description)["synthetic"] is True


def test_cache_and_refuse_foreign_dir(tmp_path):
    out = tmp_path / "c"
    first = synthesize(out, SMALL, progress=False)
    stamp = (out / "labels.csv").stat().st_mtime_ns
    assert synthesize(out, SMALL, progress=False) == first
    assert (out / "labels.csv").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="another config"):
        synthesize(out, replace(SMALL, seed=4), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        synthesize(foreign, SMALL, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_time_lapse_names_and_growth(tmp_path):
    cfg = replace(SMALL, wells=2, time_points=3, colonies_per_well=4)
    out = tmp_path / "t"
    summary = synthesize(out, cfg, progress=False)
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"well_{w:03d}_t{t:02d}.tif" for w in range(2) for t in range(3)]
    assert summary["n_images"] == 6
    rows = _rows(out / "labels.csv")
    for w in range(2):
        areas = []
        for t in range(3):
            inst = cv2.imread(str(out / f"masks/well_{w:03d}_t{t:02d}.png"), cv2.IMREAD_UNCHANGED)
            areas.append(np.bincount(inst.ravel(), minlength=5)[1:])
        assert (areas[2] >= areas[0]).all() and areas[2].sum() > 1.05 * areas[0].sum()
        n_t = [sum(r["image"].endswith(f"well_{w:03d}_t{t:02d}.tif") for r in rows)
               for t in range(3)]
        assert n_t[0] == n_t[1] == n_t[2]
    # colonies do change class over time (Dense -> Spread / Differentiated)
    frames = render_well(replace(cfg, size=384, colonies_per_well=10), np.random.default_rng(2),
                         time_points=4, classes=["Dense"] * 10)
    first, last = [c["label"] for c in frames[0][2]], [c["label"] for c in frames[-1][2]]
    assert first == ["Dense"] * len(first) and set(last) - {"Dense"}


def _class_pixels(cls, n_wells=3):
    """(image float, instance mask, colony ids) of wells holding only `cls` colonies."""
    cfg = SynthConfig(size=384, colonies_per_well=4, difficulty=0.5)
    out = []
    for i in range(n_wells):
        img, inst, cols = render_well(cfg, np.random.default_rng(i), classes=[cls] * 4)[0]
        out.append((img.astype(np.float32), inst, [c["id"] for c in cols]))
    return out


def _local_std(img):
    m = cv2.blur(img, (7, 7))
    return np.sqrt(np.maximum(cv2.blur(img * img, (7, 7)) - m * m, 0))


def test_dense_and_spread_textures_differ():
    def texture(cls):
        vals = []
        for img, inst, ids in _class_pixels(cls):
            interior = cv2.erode((inst > 0).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
            vals.append(_local_std(img)[interior].mean())
        return np.mean(vals)
    dense, spread = texture("Dense"), texture("Spread")
    assert dense > 1.15 * spread, (dense, spread)


def test_debris_has_bright_rims():
    for img, inst, ids in _class_pixels("Debris"):
        for k in ids:
            m = (inst == k).astype(np.uint8)
            dist = cv2.distanceTransform(m, cv2.DIST_L2, 3)
            rim, core = img[(dist > 0) & (dist <= 4)], img[dist > 8]
            if core.size < 50:
                continue
            assert np.percentile(rim, 95) > np.percentile(core, 95), k


def test_entropy_segmenter_finds_colonies():
    from skimage.filters import threshold_otsu
    from skimage.filters.rank import entropy
    from skimage.morphology import disk
    img, inst, cols = render_well(replace(SMALL, size=384, colonies_per_well=6),
                                  np.random.default_rng(4))[0]
    ent = entropy(cv2.GaussianBlur(img, (3, 3), 0), disk(3))
    fg = ent > threshold_otsu(ent)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN,
                          cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))) > 0
    colony, background = inst > 0, cv2.dilate((inst > 0).astype(np.uint8),
                                               np.ones((15, 15), np.uint8)) == 0
    assert fg[colony].mean() > 0.8 and fg[background].mean() < 0.05
    for c in cols:   # every colony is found
        assert fg[inst == c["id"]].mean() > 0.5, c


def test_write_class_folders(tmp_path):
    cfg = replace(SMALL, colonies_per_well=6)
    summary = write_class_folders(tmp_path / "cf", cfg, n_per_class=3)
    for folder in ["Debris", "Dense", "Differentiated", "Spread", "multi_label", "unlabeled"]:
        files = sorted((tmp_path / "cf" / folder).glob("colony_*.png"))
        assert len(files) == 3, folder
        crop = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
        assert crop.dtype == np.uint8 and min(crop.shape) >= 30
    assert summary["synthetic"] and summary["unlabeled"] == 3 and summary["multi_label"] == 3
    assert (tmp_path / "cf" / "SYNTHETIC.md").is_file()
