"""python benchmarks/segmentation.py [--real DIR] [--synthetic N] [--repeats-ref 2] [--repeats 3]

Colony segmentation, ours (ipb.data.segment.segment) against the plain scikit-image pipeline
(ipb.data.segment.reference_segment), single-threaded (cv2.setNumThreads(1)), best wall time of
a few repeats each, on:
- the 12 real six-well tiles and 4 real whole 96-well images (shared/data/real/allen-hipsc);
  for the 96-well images the reference gets OUR well mask (Otsu and mask restricted to it), so
  both sides segment the same well interior (without it the reference returns the well as one
  object; its object count without the mask is printed too);
- N synthetic wells from ipb.data.synth.render_well with their ground-truth instance masks.
Mask IoU = sum of intersections / sum of unions over all images. Against synthetic ground truth:
colony recall (a ground-truth colony is found when one predicted object covers >= 50% of it)
and mask IoU. Our entropy and component kernels are numba: they are compiled (or loaded from
numba's cache) once before any timing, and the one-off compile time is printed first, measured
in a fresh process with an empty cache. The speedup is from wall time; the CPU time of the
timing thread is printed as a cross-check that other jobs on a shared machine hardly move.
Before it, ours again with and without the watershed cut of merged colonies (which the
reference does not do), image by image, warm. Last line: `segmentation speedup <x>x, mask IoU
<iou>`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from ipb.config import SegmentationConfig, SynthConfig
from ipb.data.segment import reference_segment, segment, warm_up
from ipb.machine import describe


def _default_real() -> Path:
    here = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    return here if here.is_dir() else Path("/work/shared/data/real")


def best_time(fn, repeats: int):
    """(best wall s, best CPU s of this thread, result) over `repeats` calls."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.thread_time()
        out = fn()
        best_cpu = min(best_cpu, time.thread_time() - c)
        best = min(best, time.perf_counter() - t)
    return best, best_cpu, out


def fresh_compile_seconds() -> float:
    """Time to JIT-compile the numba kernels in a new process with an empty numba cache."""
    code = ("import numba, skimage.morphology; from ipb.data.segment import warm_up; "
            "print(warm_up())")
    with tempfile.TemporaryDirectory() as cache:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "NUMBA_CACHE_DIR": cache}, check=True)
    return float(r.stdout.split()[-1])


def synthetic_wells(n: int, size: int, seed: int):
    """(name, image, instance mask) from render_well; a textured-blob stand-in if synth is absent."""
    try:
        from ipb.data.synth import render_well
    except ImportError:                 # FALLBACK: only while ipb.data.synth does not exist
        render_well = None
    scfg = SynthConfig(size=size, seed=seed)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        if render_well is not None:
            img, inst, _ = render_well(scfg, rng)[0]
            yield f"synth-{i}", img, inst.astype(np.int32)
        else:
            yield (f"blobs-{i}", *_blob_well(size, rng))


def _blob_well(size: int, rng: np.random.Generator):
    img = 0.5 + 0.01 * rng.standard_normal((size, size))
    inst = np.zeros((size, size), np.int32)
    for k in range(1, 11):
        r = rng.uniform(40, 90)
        cy, cx = rng.uniform(r, size - r, 2)
        yy, xx = np.ogrid[:size, :size]
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (inst == 0)
        inst[m] = k
        img[m] += 0.12 * rng.standard_normal(m.sum())
    return np.clip(cv2.GaussianBlur(img, (0, 0), 0.7) * 255, 0, 255).astype(np.uint8), inst


def recall_at_half(inst: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """GT colonies covered >= 50% by a single predicted object, and the number of GT colonies."""
    ng, npred = int(inst.max()), int(pred.max())
    if ng == 0:
        return 0, 0
    joint = np.bincount(inst.ravel().astype(np.int64) * (npred + 1) + pred.ravel(),
                        minlength=(ng + 1) * (npred + 1)).reshape(ng + 1, npred + 1)
    sizes = joint.sum(1)[1:]
    present = sizes > 0
    cover = joint[1:, 1:].max(1) if npred else np.zeros(ng)
    return int(((cover >= 0.5 * sizes) & present).sum()), int(present.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=_default_real())
    ap.add_argument("--synthetic", type=int, default=3)
    ap.add_argument("--synth-size", type=int, default=1024)
    ap.add_argument("--repeats-ref", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(describe(), flush=True)
    cv2.setNumThreads(1)
    cfg = SegmentationConfig()
    first = warm_up()
    print(f"numba kernels: one-off compile {fresh_compile_seconds():.2f} s (new process, "
          f"empty cache); first call here {first:.2f} s (compile or cache load); "
          "both excluded from the timings below")
    images = []
    root = args.real / "allen-hipsc"
    if root.is_dir():
        import tifffile
        for sub in ("six-well-tiles", "96-well-whole"):
            for f in sorted((root / sub).glob("*.tif*")):
                images.append((f"{sub[:3]}:{f.name[-28:]}", tifffile.imread(str(f)), None))
    else:
        print(f"real images not found under {root}; synthetic only")
    images += list(synthetic_wells(args.synthetic, args.synth_size, seed=0))

    print(f"{'image':<36} {'size':>9} {'ref s':>7} {'ours s':>7} {'x':>6} {'IoU':>6} "
          f"{'objs':>5} {'split':>5} {'well':>4} {'GT rec':>7} {'GT IoU':>6}")
    t_ref = t_ours = c_ref = c_ours = 0.0
    inter = union = 0
    gt_found = gt_total = gt_inter = gt_union = 0
    for name, img, inst in images:
        t_o, cpu_o, seg = best_time(lambda: segment(img, cfg), args.repeats)
        t_r, cpu_r, ref = best_time(lambda: reference_segment(img, cfg, well=seg.well),
                                    args.repeats_ref)
        t_ref, t_ours, c_ref, c_ours = t_ref + t_r, t_ours + t_o, c_ref + cpu_r, c_ours + cpu_o
        i, u = int(np.count_nonzero(ref & seg.mask)), int(np.count_nonzero(ref | seg.mask))
        inter, union = inter + i, union + u
        gt = ""
        if inst is not None:
            found, total = recall_at_half(inst, seg.labels)
            gi = int(np.count_nonzero((inst > 0) & seg.mask))
            gu = int(np.count_nonzero((inst > 0) | seg.mask))
            gt_found, gt_total, gt_inter, gt_union = (gt_found + found, gt_total + total,
                                                       gt_inter + gi, gt_union + gu)
            gt = f"{found:>3}/{total:<3} {gi / max(gu, 1):>6.3f}"
        print(f"{name:<36} {img.shape[0]:>4}x{img.shape[1]:<4} {t_r:>7.3f} {t_o:>7.3f} "
              f"{t_r / t_o:>6.1f} {i / max(u, 1):>6.3f} {seg.info['n_objects']:>5} "
              f"{seg.info['n_merged_split']:>5} {'yes' if seg.well is not None else 'no':>4} {gt}")
        if seg.well is not None:
            whole = reference_segment(img, cfg, well=None)
            print(f"{'':<36} reference without a well mask: {ndi.label(whole)[1]} object(s), "
                  f"{whole.mean():.0%} of the image")
    if gt_total:
        print(f"synthetic ground truth: colony recall {gt_found}/{gt_total} "
              f"= {gt_found / gt_total:.3f}, mask IoU {gt_inter / max(gt_union, 1):.3f}")
    print(f"total: reference {t_ref:.2f} s, ours {t_ours:.2f} s over {len(images)} images "
          f"(single-threaded, best of {args.repeats_ref}/{args.repeats})")
    print(f"CPU time of the timing thread: reference {c_ref:.2f} s, ours {c_ours:.2f} s, "
          f"ratio {c_ref / c_ours:.1f}x")
    # the reference cuts no merged colonies: ours without that step does the reference's work
    # (plus the well mask, which the reference is handed). Both timed here, image by image, so
    # the cut's cost is a like-for-like difference: the headline's timings alternate with the
    # reference's, which leaves ours colder caches (2026-12-07: 0.74 s and 0.04 s for the cut
    # in two runs when it was taken as the headline minus this)
    plain = dataclasses.replace(cfg, split_touching=False)
    t_plain = t_cut = 0.0
    for _, img, _ in images:
        t_cut += best_time(lambda: segment(img, cfg), args.repeats)[0]
        t_plain += best_time(lambda: segment(img, plain), args.repeats)[0]
    print(f"ours without the watershed cut of merged colonies (the reference has none): "
          f"{t_plain:.2f} s, {t_ref / t_plain:.1f}x the reference; with it, timed the same way, "
          f"{t_cut:.2f} s ({t_ref / t_cut:.1f}x): the cut costs {t_cut - t_plain:.2f} s")
    print(f"segmentation speedup {t_ref / t_ours:.1f}x, mask IoU {inter / max(union, 1):.3f}")


if __name__ == "__main__":
    main()
