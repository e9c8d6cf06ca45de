"""Fast local (rank) entropy of an 8-bit image over a disk, equal to skimage.filters.rank.entropy.

    python -c "from ipb.data.entropy import local_entropy; import numpy as np; print(local_entropy(np.zeros((64, 64), np.uint8), 3).max())"

Why not skimage: its rank filter spends ~500 ns per pixel (sliding 256-bin histogram plus a
loop over all bins). The entropy of a window only depends on which of its n pixels are equal:
H(p) = log2 n - (1/n) * log2 prod_j c_j(p), where c_j(p) counts the pixels in the window equal to
the pixel at offset j. We count equalities with whole-array numpy operations that are shared
between windows:

- E_d(x) = [I(x) == I(x + d)] for every difference vector d of two disk offsets (half of them
  compared, the other half are shifted views since E_-d(x) = E_d(x - d));
- F_c(x) = sum_{i in disk} E_{i+c}(x) = count of I(x) in the disk centred at x - c, built from
  horizontal run sums of E (sliding sums, two operations per step);
- c_j(p) = F_{-j}(p + j), so the product over j is a product of shifted views of the F_c.

About 600 uint8 array operations per pixel instead of ~1200 for plain pairwise counting; the run
sums dominate. Measured on a 1958^2 tile: ~0.33 s against ~2 s for skimage, max difference
~1e-6 bits (float32). Border windows are truncated like skimage's (pixels outside the image do not count):
the image is padded with a grey value it does not use and its counts are removed afterwards.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.morphology import disk

_BAND = 64               # rows per block (32 to 128 measured the same; E stack ~13 MB at r=3)


def disk_offsets(radius: int) -> list[tuple[int, int]]:
    fp = disk(radius)
    return [(int(dy) - radius, int(dx) - radius) for dy, dx in zip(*np.nonzero(fp))]


def _border_counts(shape: tuple[int, int], offs, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Number of disk offsets that fall inside the image, for the grid ys x xs."""
    H, W = shape
    n = np.zeros((len(ys), len(xs)), np.int32)
    for dy, dx in offs:
        n += ((ys + dy >= 0) & (ys + dy < H))[:, None] & ((xs + dx >= 0) & (xs + dx < W))[None, :]
    return n


def local_entropy(img: np.ndarray, radius: int) -> np.ndarray:
    """Local Shannon entropy (bits) of uint8 `img` over disk(radius); float32, same shape."""
    if img.dtype != np.uint8 or img.ndim != 2:
        raise TypeError(f"local_entropy needs a 2-D uint8 image, got {img.dtype} {img.shape}")
    if radius < 1:
        raise ValueError(f"local_entropy: radius must be >= 1, got {radius}")
    r = int(radius)
    offs = disk_offsets(r)
    n = len(offs)
    H, W = img.shape
    free = np.flatnonzero(np.bincount(img.ravel(), minlength=256) == 0)
    if n > 255:              # counts are kept in uint8
        from skimage.filters import rank
        return rank.entropy(img, disk(r)).astype(np.float32)
    if free.size == 0:       # all 256 grey levels used: no pad value can be told apart
        return _entropy_all_levels(img, r)
    P = 5 * r
    pad = cv2.copyMakeBorder(img, P, P, P, P, cv2.BORDER_CONSTANT, value=int(free[0]))
    width = {dy: max(dx for y, dx in offs if y == dy) for dy in range(-r, r + 1)}
    # run sums R[(w, a, b)] = sum_{|k|<=w} E_(a, b+k), needed for F_c = sum_dy R[(w(dy), dy+cy, cx)]
    runs: dict[tuple[int, int], set[int]] = {}
    for cy, cx in offs:
        for dy in range(-r, r + 1):
            runs.setdefault((width[dy], dy + cy), set()).add(cx)
    dd = {(a, k) for (w, a), bs in runs.items() for k in range(min(bs) - w, max(bs) + w + 1)}
    runs = {k: v for k, v in runs.items() if k[0] > 0}      # width-1 runs are E itself
    half = sorted({d if (d[0] > 0 or (d[0] == 0 and d[1] > 0)) else (-d[0], -d[1])
                   for d in dd if d != (0, 0)})
    hidx = {d: k for k, d in enumerate(half)}
    run_keys = [(w, a, b) for (w, a), bs in sorted(runs.items()) for b in range(min(bs), max(bs) + 1)]
    ridx = {k: i for i, k in enumerate(run_keys)}
    band = _BAND
    hx, wx = band + 2 * r, W + 2 * r            # domain of F: the block +- r
    he, we = hx + 4 * r, wx + 4 * r             # domain of E: F's +- 2r (for the -d views)
    Ebuf = np.empty((len(half), he, we), np.uint8)
    Rbuf = np.empty((len(run_keys), hx, wx), np.uint8)
    Fbuf = np.empty((hx, wx), np.uint8)
    ones = np.ones((hx, wx), np.uint8)
    chunk = max(1, int(37 / math.log10(max(n, 2))))    # float32 products of `chunk` counts <= n
    nch = -(-n // chunk)
    prod = np.empty((nch, band, W), np.float32)
    out = np.empty((H, W), np.float32)
    for y0 in range(0, H, band):
        h = min(band, H - y0)
        hxx, hee = h + 2 * r, h + 6 * r
        oy = y0 - 3 * r + P                     # padded row of E's first row
        ox = -3 * r + P
        base = pad[oy:oy + hee, ox:ox + we]
        for (dy, dx), k in hidx.items():
            np.equal(base, pad[oy + dy:oy + dy + hee, ox + dx:ox + dx + we],
                     out=Ebuf[k, :hee].view(bool))

        def E(a: int, b: int) -> np.ndarray:
            if a == 0 and b == 0:
                return ones[:hxx]
            k = hidx.get((a, b))
            if k is not None:
                return Ebuf[k, 2 * r:2 * r + hxx, 2 * r:2 * r + wx]
            e = Ebuf[hidx[(-a, -b)]]            # E_d(x) = E_-d(x + d)
            return e[2 * r + a:2 * r + a + hxx, 2 * r + b:2 * r + b + wx]

        for (w, a), bs in sorted(runs.items()):
            lo, hi = min(bs), max(bs)
            s = Rbuf[ridx[(w, a, lo)], :hxx]
            np.copyto(s, E(a, lo - w))
            for k in range(lo - w + 1, lo + w + 1):
                np.add(s, E(a, k), out=s)
            for b in range(lo + 1, hi + 1):
                s2 = Rbuf[ridx[(w, a, b)], :hxx]
                np.add(s, E(a, b + w), out=s2)
                np.subtract(s2, E(a, b - w - 1), out=s2)
                s = s2
        pr = prod[:, :h]
        for j, (cy, cx) in enumerate(offs):
            # F_c on the X rows the output rows need: X row = output row + r - cy
            first = r - cy
            F = Fbuf[first:first + h]
            terms = [Rbuf[ridx[(width[dy], dy + cy, cx)], first:first + h]
                     if width[dy] else E(dy + cy, cx)[first:first + h]
                     for dy in range(-r, r + 1)]
            np.add(terms[0], terms[1], out=F)
            for t in terms[2:]:
                np.add(F, t, out=F)
            view = F[:, r - cx:r - cx + W]
            acc = pr[j // chunk]
            if j % chunk == 0:
                np.copyto(acc, view)
            else:
                np.multiply(acc, view, out=acc)
        np.log2(pr, out=pr)
        np.sum(pr, axis=0, out=out[y0:y0 + h])
    # out holds log2 prod c_j; border windows also counted the m pad pixels (m each)
    ent = out
    ent *= -1.0 / n
    ent += math.log2(n)
    _fix_borders(ent, offs)
    return ent


def _fix_borders(ent: np.ndarray, offs) -> None:
    """Recompute the entropy of border windows from log2 prod over all n (pad included)."""
    H, W = ent.shape
    n, r = len(offs), max(abs(dy) for dy, _ in offs)
    strips = [(np.arange(0, min(r, H)), np.arange(W)), (np.arange(max(H - r, r), H), np.arange(W)),
              (np.arange(r, H - r), np.arange(0, min(r, W))),     # corners only once
              (np.arange(r, H - r), np.arange(max(W - r, r), W))]
    for ys, xs in strips:
        if ys.size == 0 or xs.size == 0:
            continue
        nv = _border_counts((H, W), offs, ys, xs)
        m = n - nv
        logprod = (math.log2(n) - ent[np.ix_(ys, xs)].astype(np.float64)) * n
        mlogm = np.where(m > 0, m * np.log2(np.maximum(m, 1)), 0.0)
        ent[np.ix_(ys, xs)] = np.log2(nv) - (logprod - mlogm) / nv


def _entropy_all_levels(img: np.ndarray, r: int) -> np.ndarray:
    """Rare case, every grey level used: merge level 255 into 254 so 255 can pad, then redo the
    windows that contain a former 255 with skimage (exact there)."""
    from skimage.filters import rank
    merged = img.copy()
    merged[merged == 255] = 254
    ent = local_entropy(merged, r)
    H, W = img.shape
    ys, xs = np.nonzero(img == 255)
    y0, y1 = max(int(ys.min()) - r, 0), min(int(ys.max()) + r + 1, H)
    x0, x1 = max(int(xs.min()) - r, 0), min(int(xs.max()) + r + 1, W)
    # compute on the box + r so its own edges do not truncate the windows written back
    Y0, Y1, X0, X1 = max(y0 - r, 0), min(y1 + r, H), max(x0 - r, 0), min(x1 + r, W)
    sub = rank.entropy(img[Y0:Y1, X0:X1], disk(r)).astype(np.float32)
    ent[y0:y1, x0:x1] = sub[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0]
    return ent
