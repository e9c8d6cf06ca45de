"""Connected-component bookkeeping for segmentation in one pass each (numba): areas, and the
relabelling of the kept objects with their boxes.

    python -c "import numpy as np; from ipb.data.components import areas; print(areas(np.eye(3, dtype=np.int32), 2))"

Why not numpy/scipy: on a 1958^2 label image `np.bincount` costs ~18 ms (it first copies the
int32 labels to int64), the `lut[lab]` gather ~9 ms and `ndi.find_objects` ~8 ms; these kernels
do the same work in ~3 ms (areas) and ~5 ms (relabel + boxes), one thread. Results are equal:
the same areas, the same labels, and the boxes `ndi.find_objects` gives.
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _areas(lab, n):
    # counted per run of one label: `out[v] += 1` per pixel re-read the bin it had just
    # written (the background's, mostly), ~2x slower
    out = np.zeros(n, np.int64)
    flat = lab.ravel()
    if flat.size == 0:
        return out
    cur = flat[0]
    run = 0
    for i in range(flat.size):
        v = flat[i]
        if v != cur:
            if cur < 0 or cur >= n:       # numba checks no bounds: a wrong n must not write
                raise ValueError("areas: a label is outside 0..n-1")
            out[cur] += run
            cur = v
            run = 0
        run += 1
    if cur < 0 or cur >= n:
        raise ValueError("areas: a label is outside 0..n-1")
    out[cur] += run
    return out


@njit(cache=True, nogil=True)
def _relabel(lab, lut, k):
    H, W = lab.shape
    out = np.empty((H, W), np.int32)
    box = np.empty((k + 1, 4), np.int64)        # y0, x0, y1, x1 (exclusive)
    box[:, 0] = H
    box[:, 1] = W
    box[:, 2] = 0
    box[:, 3] = 0
    for y in range(H):
        for x in range(W):
            u = lab[y, x]
            if u < 0 or u >= lut.size:
                raise ValueError("relabel: a label is outside the lut")
            v = lut[u]
            out[y, x] = v
            if v:
                if y < box[v, 0]:
                    box[v, 0] = y
                if x < box[v, 1]:
                    box[v, 1] = x
                if y >= box[v, 2]:
                    box[v, 2] = y + 1
                if x >= box[v, 3]:
                    box[v, 3] = x + 1
    return out, box


def areas(lab: np.ndarray, n: int) -> np.ndarray:
    """Pixel count of each label 0..n-1 of an int32 label image (= np.bincount, minlength n)."""
    if lab.dtype != np.int32:
        raise TypeError(f"areas needs int32 labels, got {lab.dtype}")
    return _areas(np.ascontiguousarray(lab), int(n))


def relabel(lab: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lut[lab], boxes): int32 labels through `lut` (0 drops an object, kept ones numbered
    1..k) and each new label's box as rows (y0, x0, y1, x1), row 0 unused."""
    k = int(lut.max()) if lut.size else 0
    return _relabel(np.ascontiguousarray(lab), np.ascontiguousarray(lut, np.int32), k)


def warm_up() -> float:
    """Compile the kernels, or load them from numba's cache; seconds taken."""
    t = time.perf_counter()
    lab = np.zeros((2, 3), np.int32)
    areas(lab, 1)
    relabel(lab, np.zeros(1, np.int32))
    return time.perf_counter() - t


__all__ = ["areas", "relabel", "warm_up"]
