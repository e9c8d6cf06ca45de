"""Microscopy files -> frames + pixel size: OME-XML, ImageJ and TIFF resolution tags, T-stacks.

    python -c "from ipb.data.microscopy import read_image as r; print(r(open('a.tif', 'rb').read(), 'a.tif'))"

A TIFF is read by its axes (tifffile's series): Y and X are the image, S is colour only when the
file says RGB, one of T (time), I or Q (a plain multi-page stack) is a time series with one frame
per time point; a Z or C axis longer than one, or a second stack axis, is a clear error naming
the axis and what to do. Pixel size, first found wins: OME-XML `PhysicalSizeX/Y` (+ unit),
ImageJ's `unit=` with the resolution tags, TIFF resolution tags in cm or inch. Resolution tags in
inch coarser than MAX_INCH_PIXEL_UM are a display/print default (72-300 dpi), not a microscope's,
and are ignored. PNG/JPEG carry no microscopy metadata (their dpi is for printing): None.
No Ray here.
"""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import cv2
import numpy as np

TIFF_EXTS = (".tif", ".tiff")
MAX_INCH_PIXEL_UM = 50.0       # 508 dpi; 72, 96, 150 and 300 dpi are software defaults
ANISOTROPY_TOLERANCE = 0.01    # X and Y pixel sizes further apart than this are reported
TIME_AXES = "TIQ"              # tifffile: T time, I generic page sequence, Q unknown stack axis
MIN_GREY_LEVELS = 32           # fewer distinct levels than this deserve a note

# micrometres per unit; ImageJ and OME spell micrometre many ways
_UNIT_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
            "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3,
            "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "å": 1e-4, "angstrom": 1e-4,
            "pm": 1e-6, "inch": 25400.0, "in": 25400.0}
_AXIS_WHAT = {"Z": "a Z stack of focal planes", "C": "a multi-channel image",
              "S": "an image with extra samples per pixel"}


class ImageError(ValueError):
    """A file that cannot be used as an image; the message says why and what to do."""


class StackError(ImageError):
    """A stack that is not a time series (Z, C, ...); the message says what to do."""


@dataclass
class ImageData:
    """Frames of one file (one for a plain image, T for a time series) and its pixel size."""
    frames: list[np.ndarray]                 # HxW or HxWx3/4, uint8/uint16
    stack: bool = False                      # True: frames are time points of one file
    pixel_size_um: float | None = None       # None: the file says nothing usable
    pixel_size_from: str = ""                # "OME-XML", "ImageJ", "TIFF resolution" or ""
    notes: list[str] = field(default_factory=list)


def unit_to_um(unit: str | None) -> float | None:
    """Micrometres per `unit` (OME/ImageJ spellings, '\\u00B5m' escapes too), None if unknown."""
    if not unit:
        return None
    u = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    return _UNIT_UM.get(u)


def _rational(tag) -> float | None:
    if tag is None:
        return None
    v = tag.value
    num, den = (v if isinstance(v, tuple) else (v, 1))
    return float(num) / float(den) if den and num else None


def _ome_pixel_size(xml: str) -> tuple[float | None, float | None, list[str]]:
    """(x um, y um, notes) of the first OME Image's Pixels; Nones when absent or unreadable."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        return None, None, [f"OME-XML unreadable ({e}); pixel size not taken from it"]
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None, None, []
    out, notes = [], []
    for ax in ("X", "Y"):
        raw = pixels.get(f"PhysicalSize{ax}")
        unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")      # OME's default unit
        scale = unit_to_um(unit)
        try:
            value = float(raw) if raw is not None else None
        except ValueError:
            value = None
        if value is not None and scale is None:
            notes.append(f"OME PhysicalSize{ax}Unit {unit!r} is not a length unit; ignored")
        out.append(value * scale if value and scale and value > 0 else None)
    return out[0], out[1], notes


def tiff_pixel_size(tif) -> tuple[float | None, str, list[str]]:
    """(um per pixel, where from, notes) of an open tifffile.TiffFile."""
    notes: list[str] = []
    page = tif.pages[0]
    if tif.ome_metadata:
        x, y, notes = _ome_pixel_size(tif.ome_metadata)
        if x:
            return _isotropic(x, y, "OME-XML", notes)
    xres, yres = (_rational(page.tags.get(t)) for t in ("XResolution", "YResolution"))
    if tif.imagej_metadata and tif.imagej_metadata.get("unit"):
        scale = unit_to_um(str(tif.imagej_metadata["unit"]))
        if scale and xres:
            return _isotropic(scale / xres, scale / yres if yres else None, "ImageJ", notes)
        if scale is None and str(tif.imagej_metadata["unit"]).lower() not in ("pixel", "pixels"):
            notes.append(f"ImageJ unit {tif.imagej_metadata['unit']!r} is not a length unit")
    tag = page.tags.get("ResolutionUnit")
    unit = int(tag.value) if tag is not None else 2          # TIFF's default unit is inch
    if xres and unit in (2, 3) and not (xres == 1 and (yres or 1) == 1):
        per = 25400.0 if unit == 2 else 1e4
        x, y = per / xres, (per / yres if yres else None)
        if unit == 2 and x > MAX_INCH_PIXEL_UM:
            notes.append(f"TIFF resolution {xres:g} dpi looks like a display/print default, "
                         "not a microscope's pixel size; ignored")
            return None, "", notes
        return _isotropic(x, y, "TIFF resolution", notes)
    return None, "", notes


def _isotropic(x: float, y: float | None, source: str, notes: list[str]
               ) -> tuple[float, str, list[str]]:
    """Segmentation works in square pixels: anisotropic X/Y give their geometric mean."""
    if y and abs(x - y) > ANISOTROPY_TOLERANCE * max(x, y):
        notes.append(f"pixels are {x:g} x {y:g} um (not square); using their geometric mean "
                     f"{(x * y) ** 0.5:g} um")
        return (x * y) ** 0.5, source, notes
    return x, source, notes


def _tiff_frames(tif, name: str) -> tuple[list[np.ndarray], bool]:
    """(frames, is_time_series) from the file's first image series, by its axes."""
    series = tif.series
    if not series:
        raise ImageError("TIFF holds no image data (truncated or not an image file); re-copy it")
    if len(series) > 1:      # positions/wells of a plate: taking the first would drop the rest
        shapes = ", ".join(f"{s.axes} {tuple(s.shape)}" for s in series[:4])
        raise StackError(f"{name} holds {len(series)} image series ({shapes}"
                         f"{', ...' if len(series) > 4 else ''}); ipb reads one image or time "
                         "series per file: save each series (position/well) as its own file")
    s = series[0]
    axes, shape = s.axes, tuple(s.shape)
    if 0 in shape:
        raise ImageError(f"TIFF image has an empty axis (shape {shape}): truncated or corrupt; "
                         "re-copy it")
    rgb = "S" in axes and shape[axes.index("S")] in (3, 4) and \
        int(tif.pages[0].photometric) in (2, 6)          # RGB, YCbCr
    stack_axes = [(a, n) for a, n in zip(axes, shape) if a not in "YX" and n > 1
                  and not (a == "S" and rgb)]
    bad = [(a, n) for a, n in stack_axes if a not in TIME_AXES]
    if bad:
        a, n = bad[0]
        what = _AXIS_WHAT.get(a, f"a stack along axis {a!r}")
        raise StackError(f"{name} is {what} ({n} along {a}, axes {axes}, shape {shape}); ipb "
                         "reads single images and time series only: "
                         + ("make a projection (e.g. Fiji: Image > Stacks > Z Project) or save "
                            "the plane to use" if a == "Z" else
                            "save the channel to segment (e.g. the brightfield/phase channel) "
                            "as its own file" if a in "CS" else
                            "split it into one file per image")
                         + "; if the planes are time points, mark them as frames (Fiji: "
                           "Image > Properties, frames = planes) and save again")
    if len(stack_axes) > 1:
        raise StackError(f"{name} has two stack axes {[a for a, _ in stack_axes]} (axes {axes}, "
                         f"shape {shape}); one time axis is supported: split it into files")
    data = s.asarray()
    # drop length-1 axes except Y/X (a 1xN image stays 2-D)
    keep = [i for i, (a, n) in enumerate(zip(axes, shape)) if n > 1 or a in "YX"]
    data = data.reshape([shape[i] for i in keep])
    kept = "".join(axes[i] for i in keep)
    if rgb:
        data = np.moveaxis(data, kept.index("S"), -1)
        kept = kept.replace("S", "") + "S"
    if not stack_axes:
        return [data], False
    t = kept.index(stack_axes[0][0])
    return [np.take(data, i, axis=t) for i in range(data.shape[t])], True


def _decode_tiff(data: bytes, name: str) -> ImageData:
    import tifffile
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            frames, stack = _tiff_frames(tif, name)
            px, source, notes = tiff_pixel_size(tif)
    except ImageError:
        raise
    except Exception as e:  # tifffile raises many types for corrupt files
        short = "truncated" if "failed to read" in str(e) else "corrupt or unreadable"
        raise ImageError(f"{short} TIFF ({type(e).__name__}: {e}); re-export or re-copy the "
                         "file") from None
    return ImageData(frames, stack, px, source, notes)


def _decode_raster(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError("corrupt or unreadable PNG/JPEG (truncated download?); re-copy the file")
    if img.ndim == 3 and img.shape[2] >= 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img


def _check_frame(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ImageError(f"unsupported image shape {img.shape}: expected grey HxW or RGB(A)")
    if min(img.shape[:2]) < 2:
        raise ImageError(f"image is {img.shape[1]}x{img.shape[0]} px: too small to hold a colony")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"unsupported pixel type {img.dtype}: convert to 8- or 16-bit")
    return img


def read_image(data: bytes, name: str) -> ImageData:
    """Bytes of a TIFF/PNG/JPEG -> frames (8/16-bit kept) and pixel size. ImageError (or
    StackError) with the reason and what to do when the file cannot be used."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    if name.lower().endswith(TIFF_EXTS):
        out = _decode_tiff(data, name)
    else:
        out = ImageData([_decode_raster(data)])
    out.frames = [_check_frame(f) for f in out.frames]
    return out


def grey_level_note(grey: np.ndarray) -> str | None:
    """A note when a grey frame has too few levels for a trustworthy texture segmentation
    (a 16-bit file holding 4-bit data; an under-exposed image); None when fine."""
    top = int(grey.max())
    if grey.dtype == np.uint16 and top < 256:
        return (f"16-bit image with values only up to {top} ({max(top.bit_length(), 1)} bits): "
                "stretched to 8 bits for segmentation; check the export (8-bit or low-bit data "
                "saved as 16-bit?)")
    levels = int(np.count_nonzero(np.bincount(grey.ravel(), minlength=2)))
    if levels < MIN_GREY_LEVELS:
        return (f"image uses only {levels} grey levels: under-exposed or mis-scaled? "
                "segmentation of texture needs more")
    return None


__all__ = ["ImageData", "ImageError", "StackError", "read_image", "tiff_pixel_size", "unit_to_um",
           "grey_level_note"]
