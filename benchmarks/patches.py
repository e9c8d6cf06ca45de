"""python benchmarks/patches.py [--colonies 300] [--size 128] [--batches 40]

Patches per second of a training batch (sample a colony, cut a patch with >= 25% colony cover,
augment with the paper's chain at p=0.25, normalise, stack 32), one thread each:
  naive: a per-sample torch Dataset as the reference code does it -- decode the row's crop and
         mask PNGs, resize small crops with skimage, draw positions checking mask.mean() over the
         window, then torchvision PIL transforms in RandomApply, ToTensor, Normalize, stack;
  ours:  ipb.data.patches.ColonyBank built once (decode + resize + integral images; its build
         time is printed separately and as an amortised figure over one epoch of N patches),
         then vectorised sample_positions + extract + the batched ipb.data.augment 'train' view.
Colonies are synthetic (ipb.data.synth.render_well wells cut at their boxes; falls back to
inline textured blobs if that module is missing). Last line: `patch sampling speedup <x>x`
(steady state, the bank being built once per training worker and reused every epoch).
"""
from __future__ import annotations

import argparse
import io
import time

import cv2
import numpy as np
import torch
from PIL import Image

from ipb.config import AugmentConfig, SynthConfig
from ipb.data.augment import make_augment
from ipb.data.patches import ColonyBank
from ipb.data.table import encode_png
from ipb.machine import describe

BATCH = 32


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """n colony rows {'crop', 'mask'} (PNG bytes), cut from synthetic wells."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    try:
        from ipb.data.synth import render_well
    except ImportError:
        render_well = None
    if render_well is not None:
        cfg = SynthConfig(size=1024, colonies_per_well=14)
        while len(rows) < n:
            img, inst, cols = render_well(cfg, rng)[0]
            for c in cols:
                y0, x0 = max(c["y0"] - 8, 0), max(c["x0"] - 8, 0)
                y1, x1 = c["y1"] + 8, c["x1"] + 8
                rows.append({"crop": encode_png(img[y0:y1, x0:x1]),
                             "mask": encode_png(inst[y0:y1, x0:x1] == c["id"])})
        return rows[:n]
    for _ in range(n):   # textured ellipses, 40..400 px
        h, w = rng.integers(40, 401, 2)
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.42 * w)) ** 2 < 1
        tex = cv2.GaussianBlur(rng.random((h, w), np.float32), (0, 0), 1.5)
        img = 0.5 + 0.3 * mask * (tex - tex.mean()) * 4 + rng.normal(0, 0.02, (h, w))
        rows.append({"crop": encode_png(np.clip(img * 255, 0, 255).astype(np.uint8)),
                     "mask": encode_png(mask)})
    return rows


class NaiveDataset(torch.utils.data.Dataset):
    """The per-sample loader ColonyBank replaces (reference-code style)."""

    def __init__(self, rows, size, min_cover=0.25, max_tries=10, p=0.25, seed=0):
        from torchvision import transforms as T
        self.rows, self.size, self.min_cover, self.max_tries = rows, size, min_cover, max_tries
        self.rng = np.random.default_rng(seed)
        ra = lambda t: T.RandomApply([t], p=p)    # noqa: E731
        self.transform = T.Compose([
            ra(T.RandomHorizontalFlip(1.0)), ra(T.RandomVerticalFlip(1.0)),
            ra(T.RandomRotation(180)), ra(T.ColorJitter(0.2, 0.2)),
            ra(T.GaussianBlur(13, (0.1, 2.0))), T.ToTensor(), T.Normalize((0.5,), (0.25,))])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        from skimage.transform import resize
        row, s = self.rows[i], self.size
        crop = np.asarray(Image.open(io.BytesIO(row["crop"])))
        mask = np.asarray(Image.open(io.BytesIO(row["mask"]))) > 0
        h, w = crop.shape
        if min(h, w) < s:
            k = s / min(h, w)
            shape = (max(s, round(h * k)), max(s, round(w * k)))
            crop = (resize(crop, shape, preserve_range=True) + 0.5).astype(np.uint8)
            mask = resize(mask.astype(np.float32), shape) >= 0.5
            h, w = shape
        best, best_cov = (0, 0), -1.0
        for _ in range(self.max_tries):
            y, x = self.rng.integers(0, h - s + 1), self.rng.integers(0, w - s + 1)
            cov = mask[y:y + s, x:x + s].mean()
            if cov > best_cov:
                best, best_cov = (y, x), cov
            if cov >= self.min_cover:
                break
        y, x = best
        return self.transform(Image.fromarray(np.ascontiguousarray(crop[y:y + s, x:x + s])))


def naive_batches(rows, size, seed):
    """Endless naive batches (a generator, so rounds can interleave with ours)."""
    ds = NaiveDataset(rows, size, seed=seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    while True:
        yield torch.stack([ds[int(i)] for i in rng.integers(0, len(ds), BATCH)])


def our_batches(bank: ColonyBank, seed):
    aug = make_augment(AugmentConfig(), "train")
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    out = np.empty((BATCH, 1, bank.size, bank.size), np.float32)
    while True:
        idx = rng.integers(0, len(bank), BATCH)
        pos = bank.sample_positions(idx, rng, min_cover=0.25, max_tries=10)
        # aug returns a fresh tensor, so reusing the extract buffer is safe
        yield aug(bank.extract(idx, pos, out=out), generator=g)


def timed(batches, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        batch = next(batches)
    assert batch.shape[0] == BATCH
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--colonies", type=int, default=300)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=40, help="naive batches; ours runs 5x more")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(describe(), flush=True)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    rows = synthetic_rows(a.colonies, a.seed)
    t0 = time.perf_counter()
    bank = ColonyBank.from_rows(rows, a.size)
    build_s = time.perf_counter() - t0
    sides = np.array([[r.shape[0], r.shape[1]] for r in map(bank.crop, range(len(bank)))])

    naive_it, ours_it = naive_batches(rows, a.size, a.seed), our_batches(bank, a.seed)
    timed(naive_it, 1), timed(ours_it, 3)            # warm-up (imports, allocator)
    # alternate short rounds so load from other processes hits both loaders alike
    t_naive = t_ours = 0.0
    rounds = 5
    for _ in range(rounds):
        t_naive += timed(naive_it, a.batches // rounds)
        t_ours += timed(ours_it, 5 * a.batches // rounds)
    naive = rounds * (a.batches // rounds) * BATCH / t_naive
    ours = rounds * (5 * a.batches // rounds) * BATCH / t_ours
    epoch = len(bank)                                # one patch per colony per epoch
    ours_epoch = epoch / (epoch / ours + build_s)

    print(f"colonies {len(bank)}  patch {a.size}  batch {BATCH}  threads 1  "
          f"bank {bank.nbytes / 2**20:.1f} MiB, prepared sides {sides.min()}..{sides.max()} px")
    print(f"{'loader':<36}{'patches/s':>12}")
    print(f"{'naive per-sample (PIL/torchvision)':<36}{naive:>12.0f}")
    print(f"{'ColonyBank + batched augment':<36}{ours:>12.0f}")
    print(f"{'  incl. bank build over 1 epoch':<36}{ours_epoch:>12.0f}")
    print(f"bank build {build_s:.2f} s ({1e3 * build_s / len(bank):.2f} ms/colony, once per worker)")
    print(f"patch sampling speedup {ours / naive:.1f}x")


if __name__ == "__main__":
    main()
