"""pytest tests/test_segment.py -q

Colony segmentation: exact numba entropy (borders, odd shapes), agreement with the scikit-image
reference, synthetic ground truth, bit depths, the whole-well case, merged colonies, both orders,
bad input.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import rank, threshold_otsu
from skimage.morphology import disk

from ipb.config import SegmentationConfig, SynthConfig
from ipb.data import components
from ipb.data.entropy import local_entropy
from ipb.data.segment import (_fill_holes, mask_iou, otsu_threshold, reference_segment, segment,
                              to_gray, to_uint8)
from ipb.data.split import _nearest_piece

CFG = SegmentationConfig()


def _real_root() -> Path | None:
    for p in (Path(__file__).resolve().parents[2] / "shared" / "data" / "real",
              Path("/work/shared/data/real")):
        if (p / "allen-hipsc").is_dir():
            return p / "allen-hipsc"
    return None


REAL = _real_root()
needs_real = pytest.mark.skipif(REAL is None, reason="real images (shared/data/real/allen-hipsc) "
                                "not found next to the repository or at /work/shared")


def _read(sub: str, i: int = 0) -> np.ndarray:
    import tifffile
    return tifffile.imread(str(sorted((REAL / sub).glob("*.tif*"))[i]))


def _well(size=512, colonies=5, seed=0):
    from ipb.data.synth import render_well
    img, inst, _ = render_well(SynthConfig(size=size, colonies_per_well=colonies, seed=seed),
                               np.random.default_rng(seed))[0]
    return img, inst.astype(np.int32)


def _blobs(size, centres, radius, seed=0):
    """Flat grey background with textured discs (a colony has a high local entropy)."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 120.0) + rng.normal(0, 0.6, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for cy, cx in centres:
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
        img[m] += rng.normal(0, 12, m.sum())
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_local_entropy_equals_skimage(radius):
    rng = np.random.default_rng(radius)
    for shape in ((7, 5), (70, 91)):
        img = (100 + rng.integers(0, 9, shape)).astype(np.uint8)
        ref = rank.entropy(img, disk(radius))
        assert np.abs(local_entropy(img, radius) - ref).max() < 1e-5


def test_numba_entropy_equals_skimage_at_borders_and_odd_shapes():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (53, 67)).astype(np.uint8)
    img[:, 30:] //= 16                                   # repeated grey levels too
    ref = rank.entropy(img, disk(3))
    ours = local_entropy(img, 3)
    assert ours.dtype == np.float32 and ours.shape == img.shape
    for band in (np.s_[:3], np.s_[-3:], np.s_[:, :3], np.s_[:, -3:], np.s_[3:-3, 3:-3]):
        assert np.abs(ours[band] - ref[band]).max() < 1e-5
    view = img[::2, 1::3]                                # non-contiguous input
    assert np.abs(local_entropy(view, 3) - rank.entropy(view, disk(3))).max() < 1e-5
    for shape in ((1, 1), (2, 9), (9, 2), (4, 5)):      # images smaller than the disk
        small = rng.integers(0, 6, shape).astype(np.uint8)
        assert np.abs(local_entropy(small, 3) - rank.entropy(small, disk(3))).max() < 1e-5
    big = np.full((30, 31), 9, np.uint8)                 # one bin holds > 255 pixels (r=10)
    big[::4, ::3] = 200
    assert np.abs(local_entropy(big, 10) - rank.entropy(big, disk(10))).max() < 1e-5
    with pytest.raises(TypeError, match="uint8"):
        local_entropy(img.astype(np.uint16), 3)
    with pytest.raises(ValueError, match="radius"):
        local_entropy(img, 0)


def test_local_entropy_on_flat_stretches_equals_skimage():
    """The kernel skips the updates of windows on one grey level (a well's black outside):
    flat blocks of every size and place, against skimage, borders included."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 140, 2))
        img = (rng.integers(0, 4, (h, w)) * int(rng.integers(1, 60))).astype(np.uint8)
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        img[y:y + int(rng.integers(0, 120)), x:x + int(rng.integers(0, 120))] = rng.integers(256)
        img[:, :int(rng.integers(0, w))] = 0                # a black stretch from the left
        r = int(rng.integers(1, 6))
        assert np.abs(local_entropy(img, r) - rank.entropy(img, disk(r))).max() < 1e-5
    flat = np.zeros((50, 300), np.uint8)                 # all flat, then one pixel off
    assert np.abs(local_entropy(flat, 3)).max() < 1e-6      # fixed point: ~5e-12, as before
    flat[25, 150] = 1
    assert np.abs(local_entropy(flat, 3) - rank.entropy(flat, disk(3))).max() < 1e-5


def test_component_areas_and_relabel_equal_numpy_and_scipy():
    rng = np.random.default_rng(5)
    m = (rng.random((97, 131)) > 0.6).astype(np.uint8)
    n, lab = cv2.connectedComponents(m, connectivity=8, ltype=cv2.CV_32S)
    area = components.areas(lab, n)
    assert (area == np.bincount(lab.ravel(), minlength=n)).all()
    keep = np.flatnonzero(area >= 3)
    keep = keep[keep > 0]
    lut = np.zeros(n, np.int32)
    lut[keep] = np.arange(1, keep.size + 1)
    labels, box = components.relabel(lab, lut)
    assert labels.dtype == np.int32 and (labels == lut[lab]).all()
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        assert tuple(box[i]) == (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    with pytest.raises(TypeError, match="int32"):
        components.areas(lab.astype(np.int64), n)
    with pytest.raises(ValueError, match="outside"):     # numba checks no bounds itself
        components.areas(lab, n - 1)
    with pytest.raises(ValueError, match="outside"):
        components.relabel(lab, lut[:-1])


def test_nearest_piece_in_windows_equals_the_whole_box_transform():
    """Gap pixels get the piece ndi's feature transform of the whole box gives them, also when
    the nearest piece is far outside the first window (the window must grow) or ties."""
    pieces = np.zeros((40, 60), np.int32)       # (10, 20) is 9 px from both pieces: a tie
    pieces[1, 20], pieces[10, 29] = 1, 2
    gap = np.zeros_like(pieces, bool)
    gap[10, 20] = gap[10, 26] = True
    assert list(_nearest_piece(pieces, gap)) == [1, 2]
    pieces = np.zeros((50, 80), np.int32)       # (20, 20): 9 px from both, one just outside
    pieces[11, 20], pieces[20, 29] = 1, 2       # its first window (9 px of room above)
    gap = np.zeros_like(pieces, bool)
    gap[20, 20] = gap[20, 21] = True
    assert list(_nearest_piece(pieces, gap)) == [1, 2]
    rng = np.random.default_rng(11)
    for t in range(300):
        h, w = (int(v) for v in rng.integers(20, 90, 2))
        pieces = np.zeros((h, w), np.int32)
        for k in range(1, int(rng.integers(2, 7))):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            if t % 2:                                # single pixels: many ties
                pieces[y, x] = k
            else:
                pieces[y:y + int(rng.integers(1, 30)), x:x + int(rng.integers(1, 30))] = k
        gap = (pieces == 0) & (rng.random((h, w)) < (0.002 if t % 3 else 0.05))
        if t % 5 == 0:                               # a thick band: far from every piece
            gap[h // 2:h // 2 + 3, :] = pieces[h // 2:h // 2 + 3, :] == 0
        if not gap.any():
            continue
        _, (iy, ix) = ndi.distance_transform_edt(pieces == 0, return_indices=True)
        assert (_nearest_piece(pieces, gap) == pieces[iy[gap], ix[gap]]).all(), t


def test_local_entropy_all_grey_levels_used():
    img = np.random.default_rng(0).integers(0, 256, (60, 64)).astype(np.uint8)
    img[0, :2] = (0, 255)
    assert np.abs(local_entropy(img, 3) - rank.entropy(img, disk(3))).max() < 1e-5


def test_otsu_and_fill_holes_match_reference():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(1, 0.3, 5000), rng.normal(3, 0.5, 3000)]).astype(np.float32)
    v = v.reshape(80, 100)
    assert otsu_threshold(v) == pytest.approx(threshold_otsu(v), abs=1e-4)
    m = rng.random((120, 130)) > 0.55
    assert (_fill_holes(m.astype(np.uint8)).astype(bool) == ndi.binary_fill_holes(m)).all()


def test_synthetic_recall_and_iou():
    found = total = 0
    for seed in (0, 1):
        img, inst = _well(seed=seed)
        seg = segment(img, CFG)
        ids = np.unique(inst)[1:]
        for i in ids:
            cover = np.bincount(seg.labels[inst == i]).astype(float)
            cover[0] = 0
            found += cover.max() >= 0.5 * (inst == i).sum()
        total += ids.size
        assert mask_iou(seg.mask, inst > 0) > 0.8
        assert mask_iou(seg.mask, reference_segment(img, CFG)) >= 0.97
    assert found / total >= 0.9


def test_colony_boxes_areas_and_border():
    img = _blobs(300, [(150, 150), (40, 260)], 45)
    seg = segment(img, CFG)
    assert len(seg.colonies) == 2 and seg.labels.dtype == np.int32
    assert (seg.mask == (seg.labels > 0)).all()
    for c in seg.colonies:
        m = seg.labels == c["id"]
        ys, xs = np.nonzero(m)
        assert c["area"] == m.sum()
        assert c["x0"] == max(xs.min() - CFG.pad_px, 0) and c["y1"] == min(ys.max() + 1 + CFG.pad_px, 300)
    centre = next(c for c in seg.colonies if c["x0"] < 150 < c["x1"] and c["y0"] < 150 < c["y1"])
    edge = next(c for c in seg.colonies if c is not centre)
    assert not centre["border"] and edge["border"]      # the second blob is cut by the top edge


def test_bit_depths_and_rgb_give_the_same_mask():
    img, _ = _well(size=384, colonies=4)
    m8 = segment(img, CFG).mask
    assert m8.any()
    assert (segment(img.astype(np.uint16) * 257, CFG).mask == m8).all()
    assert (segment(np.dstack([img] * 3), CFG).mask == m8).all()
    assert (segment(np.dstack([img] * 3 + [np.full_like(img, 255)]), CFG).mask == m8).all()
    assert (segment(img / 255.0, CFG).mask == m8).all()
    # a 12-bit camera image in uint16 keeps 256 levels
    twelve = img.astype(np.uint16) * 16
    assert (to_uint8(twelve) == img).all()


def test_touching_colonies_are_split():
    img = _blobs(320, [(160, 100), (160, 215)], 62)      # two discs overlapping in a neck
    seg = segment(img, CFG)
    assert seg.info["n_merged_split"] == 1 and len(seg.colonies) == 2
    for c in seg.colonies:                               # pieces get their own box and area
        ys, xs = np.nonzero(seg.labels == c["id"])
        assert c["area"] == xs.size > CFG.min_area_um2 / CFG.pixel_size_um ** 2
        assert (c["x0"], c["x1"]) == (xs.min() - CFG.pad_px, xs.max() + 1 + CFG.pad_px)
    whole = segment(img, replace(CFG, split_touching=False))
    assert len(whole.colonies) == 1
    assert (whole.mask == seg.mask).all()                # a cut changes instances, not the mask
    assert segment(_blobs(320, [(160, 160)], 80), CFG).info["n_merged_split"] == 0


def test_code_order_differs_but_runs():
    img, inst = _well(size=384, colonies=4, seed=2)
    paper = segment(img, CFG)
    code = segment(img, replace(CFG, order="code"))
    assert paper.mask.any() and code.mask.any()
    assert not (paper.mask == code.mask).all()
    assert mask_iou(code.mask, reference_segment(img, replace(CFG, order="code"))) >= 0.97


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="dtype bool"):
        segment(np.zeros((32, 32), bool), CFG)
    with pytest.raises(ValueError, match="shape"):
        segment(np.zeros(32, np.uint8), CFG)
    with pytest.raises(ValueError, match="empty"):
        segment(np.zeros((0, 5), np.uint8), CFG)
    with pytest.raises(ValueError, match="shape"):
        to_gray(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(TypeError, match="int32"):
        to_gray(np.zeros((8, 8), np.int32))
    with pytest.raises(TypeError, match="numpy array"):
        to_gray([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="pixel_size_um"):
        segment(np.zeros((32, 32), np.uint8), replace(CFG, pixel_size_um=0.0))


@needs_real
def test_real_tile_crop_matches_reference():
    tile = _read("six-well-tiles", 0)[700:1212, 700:1212]
    seg = segment(tile, CFG)
    assert seg.well is None and seg.mask.any()
    assert mask_iou(seg.mask, reference_segment(tile, CFG)) >= 0.95


@needs_real
def test_whole_well_gives_many_colonies_not_one():
    img = _read("96-well-whole", 1)
    small = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    cfg = replace(CFG, pixel_size_um=2 * CFG.pixel_size_um)     # same physical sizes
    seg = segment(small, cfg)
    assert seg.well is not None and seg.info["well"]
    assert len(seg.colonies) >= 10
    assert any(c["border"] for c in seg.colonies)             # colonies cut by the rim
    big = max(c["area"] for c in seg.colonies)
    assert big < 0.2 * seg.well.sum()
    off = segment(small, replace(cfg, well_mask="off", split_touching=False))
    assert max(c["area"] for c in off.colonies) > 0.5 * seg.well.sum()   # the paper's failure
    assert mask_iou(seg.mask, reference_segment(small, cfg, well=seg.well)) >= 0.97


def test_segment_files_reads_stacks_and_pixel_size(tmp_path):
    import csv

    import tifffile

    from ipb.data.segment import segment_files
    img, _ = _well(size=256, colonies=3, seed=4)
    stack = np.stack([img, np.roll(img, 6, axis=1), np.roll(img, 12, axis=1)])
    tifffile.imwrite(tmp_path / "movie.tif", stack, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "one.tif", img, resolution=(1e4 / 0.8, 1e4 / 0.8),
                     resolutionunit="CENTIMETER")
    n = segment_files([tmp_path / "movie.tif", tmp_path / "one.tif"], tmp_path / "o", CFG)
    rows = list(csv.DictReader(open(tmp_path / "o" / "colonies.csv")))
    assert n == len(rows) and {r["time"] for r in rows} == {"-1", "0", "1", "2"}
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == [
        "movie_t0_mask.png", "movie_t1_mask.png", "movie_t2_mask.png", "one_mask.png"]
    tifffile.imwrite(tmp_path / "z.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match=r"z\.tif.*Z stack"):
        segment_files([tmp_path / "z.tif"], tmp_path / "o2", CFG)
