"""Microscopy files: pixel size from TIFF tags / ImageJ / OME-XML, stacks, broken files. No Ray.

    .venv/bin/pytest tests/test_microscopy.py -q
"""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import tifffile

from ipb.data.microscopy import ImageError, StackError, grey_level_note, read_image, unit_to_um


def _tiff(data: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kw)
    return buf.getvalue()


IMG = (np.random.default_rng(0).random((60, 80)) * 255).astype(np.uint8)


def test_pixel_size_from_tiff_resolution_tags_in_cm_and_inch():
    d = read_image(_tiff(IMG, resolution=(1e4 / 1.3, 1e4 / 1.3), resolutionunit="CENTIMETER"),
                   "a.tif")
    assert d.pixel_size_um == pytest.approx(1.3) and d.pixel_size_from == "TIFF resolution"
    d = read_image(_tiff(IMG, resolution=(25400 / 0.65, 25400 / 0.65), resolutionunit="INCH"),
                   "a.tif")
    assert d.pixel_size_um == pytest.approx(0.65, rel=1e-6)
    # 72 dpi is what every image editor writes: not a microscope's pixel size
    d = read_image(_tiff(IMG, resolution=(72, 72), resolutionunit="INCH"), "a.tif")
    assert d.pixel_size_um is None and any("72 dpi" in n for n in d.notes)
    assert read_image(_tiff(IMG), "plain.tif").pixel_size_um is None     # no tags at all
    ok, png = cv2.imencode(".png", IMG)
    assert read_image(png.tobytes(), "a.png").pixel_size_um is None


def test_pixel_size_from_imagej_metadata_unit_aware():
    d = read_image(_tiff(IMG, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                         metadata={"unit": "um"}), "ij.tif")
    assert d.pixel_size_um == pytest.approx(0.65, rel=1e-6) and d.pixel_size_from == "ImageJ"
    # ImageJ writes the micro sign escaped; nanometres are converted
    d = read_image(_tiff(IMG, imagej=True, resolution=(1 / 650, 1 / 650),
                         metadata={"unit": "nm"}), "ij.tif")
    assert d.pixel_size_um == pytest.approx(0.65, rel=1e-6)
    assert unit_to_um("\\u00B5m") == 1.0 and unit_to_um("micron") == 1.0
    assert unit_to_um("mm") == 1000.0 and unit_to_um("parsec") is None


def test_pixel_size_from_ome_xml_with_unit_and_anisotropy():
    d = read_image(_tiff(IMG, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.325,
                                                  "PhysicalSizeY": 0.325}), "a.ome.tif")
    assert d.pixel_size_um == pytest.approx(0.325) and d.pixel_size_from == "OME-XML"
    d = read_image(_tiff(IMG, ome=True, metadata={
        "axes": "YX", "PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 500, "PhysicalSizeYUnit": "nm"}), "a.ome.tif")
    assert d.pixel_size_um == pytest.approx(0.5)
    d = read_image(_tiff(IMG, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 1.0,
                                                  "PhysicalSizeY": 4.0}), "a.ome.tif")
    assert d.pixel_size_um == pytest.approx(2.0) and "not square" in d.notes[0]


def test_stacks_are_time_series_and_z_or_c_is_an_error():
    stack = np.stack([IMG, IMG // 2, IMG // 3])
    for kw in ({"photometric": "minisblack"},                     # a plain 3-page TIFF
               {"imagej": True, "metadata": {"axes": "TYX"}},
               {"ome": True, "metadata": {"axes": "TYX"}}):
        d = read_image(_tiff(stack, **kw), "s.tif")
        assert d.stack and len(d.frames) == 3, kw
        assert all((f == s).all() for f, s in zip(d.frames, stack))
    # the same 3 pages written one by one (a microscope's export) are a time series too
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        for f in stack:
            w.write(f, metadata=None)
    assert len(read_image(buf.getvalue(), "s.tif").frames) == 3
    # planar RGB stays colour: one frame
    rgb = read_image(_tiff(np.stack([IMG] * 3), photometric="rgb"), "rgb.tif")
    assert not rgb.stack and rgb.frames[0].shape == (60, 80, 3)
    with pytest.raises(StackError, match=r"Z stack.*Z Project"):
        read_image(_tiff(stack, imagej=True, metadata={"axes": "ZYX"}), "z.tif")
    with pytest.raises(StackError, match=r"z\.ome\.tif is a Z stack of focal planes \(3 along Z"):
        read_image(_tiff(stack, ome=True, metadata={"axes": "ZYX"}), "z.ome.tif")
    with pytest.raises(StackError, match=r"multi-channel.*channel"):
        read_image(_tiff(stack, imagej=True, metadata={"axes": "CYX"}), "c.tif")
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf, ome=True) as w:      # two positions of a plate in one file
        for f in stack[:2]:
            w.write(f, metadata={"axes": "YX"})
    with pytest.raises(StackError, match=r"plate\.ome\.tif holds 2 image series.*own file"):
        read_image(buf.getvalue(), "plate.ome.tif")
    with pytest.raises(StackError, match="two stack axes"):
        read_image(_tiff(np.stack([stack, stack]), ome=True, metadata={"axes": "TQYX"}),
                   "tq.tif")


def test_broken_files_say_what_is_wrong():
    good = _tiff(IMG)
    with pytest.raises(ImageError, match="truncated TIFF"):
        read_image(good[: len(good) // 2], "cut.tif")
    with pytest.raises(ImageError, match="corrupt or unreadable TIFF"):
        read_image(good[:60], "cut.tif")
    with pytest.raises(ImageError, match="1x1 px: too small"):
        read_image(_tiff(np.zeros((1, 1), np.uint8)), "dot.tif")
    ok, png = cv2.imencode(".png", np.zeros((1, 1), np.uint8))
    with pytest.raises(ImageError, match="1x1 px"):
        read_image(png.tobytes(), "dot.png")
    with pytest.raises(ImageError, match="empty file"):
        read_image(b"", "e.png")
    with pytest.raises(ImageError, match="float32.*8- or 16-bit"):
        read_image(_tiff(IMG.astype(np.float32)), "f.tif")
    with pytest.raises(ImageError, match="PNG/JPEG"):
        read_image(b"\x89PNG\r\n garbage", "g.png")


def test_grey_level_notes():
    assert grey_level_note(IMG) is None
    assert grey_level_note(IMG.astype(np.uint16) * 257) is None
    low = (IMG >> 4).astype(np.uint16)                     # 4-bit data in a 16-bit file
    assert "only up to 15 (4 bits)" in grey_level_note(low)
    assert "16 grey levels" in grey_level_note((IMG >> 4).astype(np.uint8))
