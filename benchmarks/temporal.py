"""python benchmarks/temporal.py [MODEL] [--wells 6] [--time-points 8] [--difficulty 0.8] [--seed 5]

Temporal constraints (ipb/temporal.py) on SYNTHETIC time-lapse wells, where the generator knows
every colony's class in every frame (ipb/data/synth_render.py: colonies grow; some Dense ones
turn Spread or Differentiated, a few Spread ones Differentiated, at a random frame).
MODEL: a student.pt or MLflow run id; without it a supervised small_cnn is trained here first
(plain torch, no Ray: single-frame synthetic wells of the same difficulty and another seed,
60 % train / 20 % val / 20 % test colonies, the smoke budget). Then `ipb.predict` segments and
classifies every frame of --wells fresh series, tracks colonies across frames and constrains
their classes; every predicted colony is matched to the generator's colony of the same frame
(box IoU >= 0.5). Printed: per-class TPR of the raw and of the constrained classes on the
matched colonies, and last the line `temporal constrained vs raw mean TPR <x>x` (> 1: the
constraints help). SYNTHETIC data: this measures the mechanism, not microscopy.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ipb.config import SynthConfig, load_config, to_dict
from ipb.machine import describe
from ipb.temporal import box_iou, tpr

CLASSES = ["Debris", "Dense", "Differentiated", "Spread"]


def _part_rows(cfg, wells: int, seed: int):
    """Crops, masks and labels of single-frame synthetic wells (multi-label colonies left out)."""
    from ipb.data.synth_render import render_well
    crops, masks, y = [], [], []
    for w in range(wells):
        img, inst, cols = render_well(cfg, np.random.default_rng([seed, w]))[0]
        for c in cols:
            if c["multi_label"]:
                continue
            box = (slice(c["y0"], c["y1"]), slice(c["x0"], c["x1"]))
            crops.append(img[box])
            masks.append(inst[box] == c["id"])
            y.append(CLASSES.index(c["label"]))
    return crops, masks, np.array(y)


def train_model(out: Path, difficulty: float, seed: int) -> Path:
    """A supervised small_cnn on SYNTHETIC single-frame wells, saved as `ipb train` saves it."""
    from ipb.data.patches import ColonyBank
    from ipb.engine import Part, run_trial
    cfg = load_config("smoke", ["method.name=supervised", "train.epochs=15",
                                f"synth.difficulty={difficulty}"])
    crops, masks, y = _part_rows(cfg.synth, 40, seed)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = {"labeled": order[:int(0.6 * len(y))], "val": order[int(0.6 * len(y)):int(0.8 * len(y))],
           "test": order[int(0.8 * len(y)):]}
    cut["unlabeled"] = cut["test"][:1]
    parts = {k: Part(ColonyBank([crops[i] for i in idx], [masks[i] for i in idx],
                                cfg.patch.size), y[idx], [str(i) for i in idx])
             for k, idx in cut.items()}
    res = run_trial(cfg, parts, CLASSES, log=lambda s: None)
    print(f"trained supervised small_cnn on {len(cut['labeled'])} SYNTHETIC colonies: test "
          f"TPR mean {res['metrics']['test.tpr.mean']:.3f}", flush=True)
    path = out / "student.pt"
    torch.save({"state_dict": res["model"].state_dict(), "arch": cfg.model.arch,
                "width": cfg.model.width, "classes": CLASSES, "patch_size": cfg.patch.size,
                "config": to_dict(cfg), "synthetic": True}, path)
    return path


def match(pred_rows, truth_rows) -> list[tuple[int, int, int]]:
    """(true class, raw class, constrained class) of every predicted colony whose box
    overlaps a generator colony of the same frame with IoU >= 0.5."""
    out = []
    for key, truth in truth_rows.items():
        preds = [r for r in pred_rows if (Path(r["image"]).name, r["time"]) == key]
        if not preds or not truth:
            continue
        iou = box_iou(np.array([[r["x0"], r["y0"], r["x1"], r["y1"]] for r in preds]),
                      np.array([t[:4] for t in truth]))
        for i, r in enumerate(preds):
            j = int(iou[i].argmax())
            if iou[i, j] >= 0.5 and truth[j][4] in CLASSES:
                out.append((CLASSES.index(truth[j][4]), CLASSES.index(r["class"]),
                            CLASSES.index(r["class_constrained"])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="student.pt or MLflow run id (default: train one)")
    ap.add_argument("--wells", type=int, default=6)
    ap.add_argument("--time-points", type=int, default=8)
    ap.add_argument("--difficulty", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)
    print(describe(), flush=True)
    import ipb
    from ipb.data.synth import synthesize
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model = args.model or str(train_model(d, args.difficulty, args.seed + 100))
        series = SynthConfig(wells=args.wells, size=1024, time_points=args.time_points,
                             colonies_per_well=14, difficulty=args.difficulty, seed=args.seed)
        synthesize(d / "series", series, progress=False)
        t0 = time.time()
        df = ipb.predict(model, [d / "series" / "images"], test_patches=5)
        seconds = time.time() - t0
        truth: dict[tuple[str, int], list] = {}
        with (d / "series" / "labels.csv").open() as fh:
            for r in csv.DictReader(fh):
                name = Path(r["image"]).name
                key = (name, int(name.rsplit("_t", 1)[1].split(".")[0]))
                truth.setdefault(key, []).append(
                    (int(r["x0"]), int(r["y0"]), int(r["x1"]), int(r["y1"]), r["label"]))
        rows = match(df.to_dict("records"), truth)
    if not rows:
        print("no predicted colony matched a generator colony", file=sys.stderr)
        return 1
    y, raw, con = (np.array(v) for v in zip(*rows))
    raw_tpr, con_tpr = tpr(y, raw, 4), tpr(y, con, 4)
    changed = len({r["track"] for r in df.to_dict("records")})
    print(f"SYNTHETIC series: {args.wells} wells x {args.time_points} frames, {len(df)} colonies "
          f"predicted in {seconds:.0f}s, {changed} tracks, {len(rows)} matched to the generator")
    print("class           " + "  ".join(f"{c[:8]:>8}" for c in CLASSES) + "      mean")
    for name, v in (("raw TPR", raw_tpr), ("constrained TPR", con_tpr)):
        print(f"{name:<16}" + "  ".join(f"{x:8.3f}" for x in v) + f"  {np.nanmean(v):8.3f}")
    print(f"colonies whose class the constraints changed: {(raw != con).sum()} "
          f"({(raw != con).mean():.1%}); true class changes along tracks are in the generator")
    print(f"temporal constrained vs raw mean TPR {np.nanmean(con_tpr) / np.nanmean(raw_tpr):.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
