"""Patch sampling from colony crops (PAPER.md section 3). No Ray here.

    bank = ColonyBank.from_rows(load_colonies(TABLE), size=128)     # once per training worker
    pos = bank.sample_positions(idx, rng); x = bank.extract(idx, pos)  # per batch, (B,1,S,S)

A `ColonyBank` decodes every colony once, resizes crops shorter than the patch up (aspect kept,
masks nearest-neighbour), and packs all crops into one flat buffer. Each colony's mask is kept
only as its integral image (summed-area table), so the colony cover of any candidate window is
four look-ups; drawing and checking candidate positions is vectorised over the whole batch.
"""
from __future__ import annotations

import struct
from typing import Iterable, Literal

import cv2
import numpy as np
import torch

from ipb.data.table import decode_colony, to_unit

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def prepared_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shape of a (height, width) crop after `prepare_colony`: short side >= size."""
    short = min(height, width)
    if short >= size:
        return height, width
    scale = size / short
    # the short side is set exactly so rounding can never leave it one pixel short
    if height <= width:
        return size, max(size, int(round(width * scale)))
    return max(size, int(round(height * scale))), size


def prepare_colony(crop: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a crop (float32 in [0,1]) and its bool mask up so the short side is `size`.

    Crops already large enough come back unchanged. The crop is resized bilinearly, the mask
    nearest-neighbour so it stays binary with its edges in place (the reference code resized it
    bilinearly and truncated, which eroded every edge).
    """
    crop = np.asarray(crop)
    mask = np.asarray(mask)
    if crop.ndim != 2:
        raise ValueError(f"colony crop must be a 2-D grey image, got shape {crop.shape}")
    if mask.shape != crop.shape:
        raise ValueError(f"colony mask shape {mask.shape} differs from its crop {crop.shape}")
    if size < 1:
        raise ValueError(f"patch size must be >= 1, got {size}")
    if crop.dtype != np.float32:
        crop = to_unit(crop)
    mask = mask.astype(bool, copy=False)
    h, w = crop.shape
    nh, nw = prepared_shape(h, w, size)
    if (nh, nw) == (h, w):
        return crop, mask
    crop = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0
    return crop, mask


def png_shape(data: bytes) -> tuple[int, int]:
    """(height, width) from a PNG header without decoding the pixels."""
    if len(data) < 24 or data[:8] != _PNG_MAGIC or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (the colony table stores crops and masks as PNG bytes)")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


class ColonyBank:
    """All colonies of one split, prepared for one patch size, packed for fast patch cutting.

    Memory: 4 bytes per crop pixel (float32; `dtype=np.float16` halves it, exact for 8-bit
    data, ~11 bits for 16-bit data) plus 2 bytes per pixel for the mask integral (4 when
    size > 255).
    """

    def __init__(self, crops: list[np.ndarray], masks: list[np.ndarray], size: int,
                 dtype: type = np.float32):
        if len(crops) != len(masks):
            raise ValueError(f"ColonyBank: {len(crops)} crops but {len(masks)} masks")
        shapes = [tuple(np.shape(c))[:2] for c in crops]
        self._build(shapes, zip(crops, masks), size, dtype)

    @classmethod
    def from_rows(cls, rows, size: int, dtype: type = np.float32) -> "ColonyBank":
        """From colony-table rows (a DataFrame or dicts with PNG 'crop' and 'mask' bytes).

        Shapes are read from the PNG headers first so the packed buffers are allocated once and
        each colony is decoded straight into place (peak memory = the bank + one colony).
        """
        if hasattr(rows, "columns"):
            missing = {"crop", "mask"} - set(rows.columns)
            if missing:
                raise KeyError(f"colony table rows lack column(s) {sorted(missing)}; "
                               "load them with load_colonies(table) (all columns)")
            records = [{"crop": c, "mask": m} for c, m in zip(rows["crop"], rows["mask"])]
        else:
            records = list(rows)
            for i, r in enumerate(records):
                if "crop" not in r or "mask" not in r:
                    raise KeyError(f"colony row {i} lacks 'crop'/'mask' PNG bytes")
        shapes = [png_shape(r["crop"]) for r in records]
        bank = cls.__new__(cls)
        bank._build(shapes, (decode_colony(r) for r in records), size, dtype)
        return bank

    def _build(self, shapes: list[tuple[int, int]], colonies: Iterable, size: int, dtype) -> None:
        if size < 1:
            raise ValueError(f"patch size must be >= 1, got {size}")
        if len(shapes) == 0:
            raise ValueError("ColonyBank needs at least one colony")
        self.size = int(size)
        # Window sums never exceed size*size, so when that fits in 16 bits the integral can be
        # stored modulo 2**16: unsigned wrap-around in the four-corner difference is exact.
        self._itype = np.uint16 if self.size * self.size < 2 ** 16 else np.uint32
        prepared = np.array([prepared_shape(h, w, size) for h, w in shapes], np.int64)
        self.heights, self.widths = prepared[:, 0].copy(), prepared[:, 1].copy()
        n_pix = self.heights * self.widths
        n_int = (self.heights + 1) * (self.widths + 1)
        self._crop_off = np.concatenate([[0], np.cumsum(n_pix)[:-1]]).astype(np.int64)
        self._int_off = np.concatenate([[0], np.cumsum(n_int)[:-1]]).astype(np.int64)
        self._crops = np.empty(int(n_pix.sum()), dtype)
        self._integral = np.empty(int(n_int.sum()), self._itype)
        self.areas = np.zeros(len(shapes), np.int64)    # colony pixels after resizing
        count = 0
        for i, (crop, mask) in enumerate(colonies):
            if i >= len(shapes):
                raise ValueError(f"ColonyBank: more colonies than the {len(shapes)} shapes")
            crop, mask = prepare_colony(crop, mask, size)
            h, w = int(self.heights[i]), int(self.widths[i])
            if crop.shape != (h, w):
                raise ValueError(f"colony {i}: decoded shape {crop.shape} differs from its "
                                 f"header/declared shape; the table row is corrupt")
            self._crops[self._crop_off[i]:self._crop_off[i] + h * w] = crop.ravel()
            ii = self._integral[self._int_off[i]:self._int_off[i] + n_int[i]].reshape(h + 1, w + 1)
            ii[0, :] = 0
            ii[:, 0] = 0
            np.cumsum(mask, axis=0, dtype=self._itype, out=ii[1:, 1:])
            np.cumsum(ii[1:, 1:], axis=1, dtype=self._itype, out=ii[1:, 1:])
            self.areas[i] = int(mask.sum())
            count += 1
        if count != len(shapes):
            raise ValueError(f"ColonyBank: {len(shapes)} shapes but {count} colonies")
        # 2-D views into the flat buffer, so cutting a patch is one slice copy
        self._views = [self._crops[o:o + h * w].reshape(h, w)
                       for o, h, w in zip(self._crop_off, self.heights, self.widths)]

    # -- sharing ----------------------------------------------------------------------------
    _ARRAYS = ("heights", "widths", "areas", "_crop_off", "_int_off", "_crops", "_integral")

    def arrays(self) -> dict[str, np.ndarray]:
        """The bank as plain numpy arrays: what `from_arrays` needs. Put once in Ray's object
        store, every trial of a sweep maps it zero-copy instead of decoding every colony."""
        return {"size": np.asarray(self.size), **{k: getattr(self, k) for k in self._ARRAYS}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ColonyBank":
        """A bank over `arrays` (`arrays()` of another bank, possibly read-only), no copy."""
        bank = cls.__new__(cls)
        bank.size = int(arrays["size"])
        for k in cls._ARRAYS:
            setattr(bank, k, arrays[k])
        bank._itype = bank._integral.dtype
        bank._views = [bank._crops[o:o + h * w].reshape(h, w)
                       for o, h, w in zip(bank._crop_off, bank.heights, bank.widths)]
        return bank

    def take(self, idx) -> "ColonyBank":
        """The colonies `idx` (in that order) as a bank sharing this one's buffers."""
        idx = self._index(idx)
        sub = self.__class__.__new__(self.__class__)
        sub.size, sub._itype = self.size, self._itype
        sub._crops, sub._integral = self._crops, self._integral
        for k in ("heights", "widths", "areas", "_crop_off", "_int_off"):
            setattr(sub, k, getattr(self, k)[idx])
        sub._views = [self._views[i] for i in idx.tolist()]
        return sub

    # -- inspection -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.heights)

    @property
    def nbytes(self) -> int:
        return self._crops.nbytes + self._integral.nbytes

    def crop(self, i: int) -> np.ndarray:
        """The prepared crop of colony i (a read-only view)."""
        v = self._views[i].view()
        v.flags.writeable = False
        return v

    def mask(self, i: int) -> np.ndarray:
        """The prepared bool mask of colony i, recovered from its integral image."""
        h, w = int(self.heights[i]), int(self.widths[i])
        ii = self._integral[self._int_off[i]:self._int_off[i] + (h + 1) * (w + 1)]
        ii = ii.reshape(h + 1, w + 1)
        return (ii[1:, 1:] - ii[:-1, 1:] - ii[1:, :-1] + ii[:-1, :-1]) > 0

    def _index(self, idx) -> np.ndarray:
        idx = np.asarray(idx, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"colony index out of range 0..{len(self) - 1}")
        return idx

    def cover(self, idx, positions) -> np.ndarray:
        """Fraction of each size x size window (top-left `positions`) that is colony."""
        idx = self._index(idx)
        pos = np.asarray(positions, np.int64).reshape(-1, 2)
        s = self.size
        row = self.widths[idx] + 1
        a = self._int_off[idx] + pos[:, 0] * row + pos[:, 1]   # top-left corner of the window
        b = a + s * row                                        # bottom-left
        ii = self._integral
        total = ii[b + s] - ii[b] - ii[a + s] + ii[a]           # wraps exactly (see _build)
        return total.astype(np.float64) / (s * s)

    # -- positions --------------------------------------------------------------------------
    def sample_positions(self, idx, rng: np.random.Generator, min_cover: float = 0.25,
                         max_tries: int = 10, keep: Literal["best", "last"] = "best") -> np.ndarray:
        """Random top-left (y, x) per colony in `idx`, the patch at least `min_cover` colony.

        Every try draws one uniform position for all still-pending patches at once; a patch is
        done at its first draw with cover >= min_cover. After `max_tries` draws a patch that never
        reached it keeps its best-covering draw (`keep='best'`) or its last one (`keep='last'`;
        with max_tries=2 this is the reference code: a second draw is accepted whatever it covers).
        """
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        if keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
        idx = self._index(idx)
        n = len(idx)
        span_y = self.heights[idx] - self.size + 1
        span_x = self.widths[idx] - self.size + 1
        out = np.zeros((n, 2), np.int64)
        best = np.full(n, -1.0)
        pending = np.arange(n)
        for _ in range(max_tries):
            if pending.size == 0:
                break
            pos = np.stack([rng.integers(0, span_y[pending]),
                            rng.integers(0, span_x[pending])], axis=1)
            cov = self.cover(idx[pending], pos)
            take = cov > best[pending] if keep == "best" else np.ones(len(pending), bool)
            out[pending[take]] = pos[take]
            best[pending[take]] = cov[take]
            pending = pending[cov < min_cover]
        return out

    def center_positions(self, idx) -> np.ndarray:
        """The deterministic centre patch of each colony (the paper's test protocol)."""
        idx = self._index(idx)
        return np.stack([(self.heights[idx] - self.size) // 2,
                         (self.widths[idx] - self.size) // 2], axis=1)

    def random_positions_in_mask(self, idx, k: int, rng: np.random.Generator) -> np.ndarray:
        """(len(idx), k, 2) top-left positions whose patch centre pixel lies in the mask.

        Centres are uniform over the mask pixels that admit an in-bounds patch; a colony with
        none (empty or edge-only mask) gets its centre patch k times. To cut them:
        `extract(np.repeat(idx, k), pos.reshape(-1, 2))`.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        idx = self._index(idx)
        s, half = self.size, self.size // 2
        out = np.empty((len(idx), k, 2), np.int64)
        centre = self.center_positions(idx)
        for j, i in enumerate(idx):
            h, w = int(self.heights[i]), int(self.widths[i])
            # centres that keep the patch in bounds: top-left in [0, h - s] -> centre + half
            inner = self.mask(i)[half:h - s + half + 1, half:w - s + half + 1]
            flat = np.flatnonzero(inner)
            if flat.size == 0:
                out[j] = centre[j]
                continue
            pick = flat[rng.integers(0, flat.size, size=k)]
            out[j, :, 0], out[j, :, 1] = np.divmod(pick, inner.shape[1])
        return out

    def neighbour_positions(self, idx, positions, rng: np.random.Generator,
                            min_cover: float = 0.25, max_tries: int = 10) -> np.ndarray:
        """A neighbouring patch of the same colony for each (colony, top-left position): moved
        half to one patch side in a random direction, clipped to the crop (a crop no larger
        than the patch leaves it in place), at least `min_cover` colony when one of `max_tries`
        draws is, else the best-covering draw (SimTriplet's spatial positive)."""
        idx = self._index(idx)
        pos = np.asarray(positions, np.int64).reshape(-1, 2)
        hi = np.stack([self.heights[idx], self.widths[idx]], axis=1) - self.size
        out, best, pending = pos.copy(), np.full(len(idx), -1.0), np.arange(len(idx))
        for _ in range(max_tries):
            if pending.size == 0:
                break
            angle = rng.uniform(0.0, 2 * np.pi, len(pending))
            r = rng.uniform(0.5, 1.0, len(pending)) * self.size
            step = np.stack([np.sin(angle), np.cos(angle)], axis=1) * r[:, None]
            cand = np.clip(pos[pending] + np.round(step).astype(np.int64), 0, hi[pending])
            cov = self.cover(idx[pending], cand)
            take = cov > best[pending]
            out[pending[take]], best[pending[take]] = cand[take], cov[take]
            pending = pending[cov < min_cover]
        return out

    # -- cutting ----------------------------------------------------------------------------
    def extract(self, idx, positions, out: np.ndarray | None = None) -> torch.Tensor:
        """Cut size x size patches -> float32 tensor (B, 1, size, size) (shares `out` if given)."""
        idx = self._index(idx)
        pos = np.asarray(positions, np.int64).reshape(-1, 2)
        if len(pos) != len(idx):
            raise ValueError(f"extract: {len(idx)} colonies but {len(pos)} positions")
        s = self.size
        if ((pos < 0).any() or (pos[:, 0] + s > self.heights[idx]).any()
                or (pos[:, 1] + s > self.widths[idx]).any()):
            raise ValueError("extract: a patch position falls outside its colony crop")
        if out is None:
            out = np.empty((len(idx), 1, s, s), np.float32)
        elif out.shape != (len(idx), 1, s, s) or out.dtype != np.float32:
            raise ValueError(f"extract: out must be float32 {(len(idx), 1, s, s)}")
        # one contiguous slice copy per patch beats a gathered index array of B*s*s elements
        for j, (i, (y, x)) in enumerate(zip(idx.tolist(), pos.tolist())):
            out[j, 0] = self._views[i][y:y + s, x:x + s]
        return torch.from_numpy(out)

