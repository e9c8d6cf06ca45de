"""Tiny in-memory colony tables for fast tests (no Ray, no files): class-dependent textures."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ipb.data.table import encode_png


def colony(rng: np.random.Generator, cls: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey crop whose texture frequency and brightness depend on the class."""
    h, w = rng.integers(size, size * 2, 2)
    yy, xx = np.mgrid[:h, :w]
    freq = 0.15 + 0.35 * cls
    img = 0.5 + 0.25 * np.sin(freq * xx + rng.random() * 6) * np.cos(freq * yy) \
        + 0.1 * cls - 0.1 + 0.03 * rng.standard_normal((h, w))
    mask = ((yy - h / 2) ** 2 / (h / 2) ** 2 + (xx - w / 2) ** 2 / (w / 2) ** 2) < 1
    img = np.where(mask, img, 0.5)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask


def tiny_rows(n_per_class=(12, 8, 4), size=32, seed=0, classes=("A", "B", "C"),
              n_unlabeled=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    labels = [c for c, n in zip(range(len(classes)), n_per_class) for _ in range(n)]
    for k, cls in enumerate(labels + [None] * n_unlabeled):
        true = cls if cls is not None else int(rng.integers(len(classes)))
        crop, mask = colony(rng, true, size)
        rows.append({"colony_id": f"c{seed}-{k:05d}", "source": f"img{k % 5}.png",
                     "group": f"img{k % 5}", "label": None if cls is None else classes[cls],
                     "multi_label": False, "crop": encode_png(crop), "mask": encode_png(mask)})
    return pd.DataFrame(rows)


def tiny_cfg(method: str, *extra: str, size: int = 32):
    """The smoke profile at the TINY budget for method tests on `tiny_parts` (batch 12, no
    confidence threshold); `extra` overrides come last and win."""
    from ipb.config import load_config
    return load_config("smoke", [*TINY, f"method.name={method}", f"patch.size={size}",
                                 "train.lr=0.003", "train.batch_size=12",
                                 "train.unlabeled_batch_size=12", "method.mpl.threshold=0.0", *extra])


CLASSES = ["A", "B", "C"]
SIZE = 32


def small_cfg(method: str, *extra: str):
    """tiny_cfg on the CPU-study network at half width, SIZE px (the method-switch tests)."""
    return tiny_cfg(method, "model.arch=small_cnn", "model.width=0.5", *extra, size=SIZE)


def tiny_parts(classes=("A", "B", "C"), size=32) -> dict:
    """labeled / val / test / unlabeled Parts of an imbalanced tiny set (U skewed like L)."""
    from ipb.engine import Part
    classes = list(classes)
    return {"labeled": Part.from_rows(tiny_rows((12, 8, 6), seed=0), classes, size),
            "val": Part.from_rows(tiny_rows((3, 3, 3), seed=1), classes, size),
            "test": Part.from_rows(tiny_rows((3, 3, 3), seed=2), classes, size),
            "unlabeled": Part.from_rows(tiny_rows((30, 12, 4), seed=3), classes, size)}


def write_tiny_table(path, n_per_class=(24, 16, 10), n_unlabeled=20, size=32, seed=0):
    """A complete colony table on disk (schema, shards, manifest), marked synthetic."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ipb.data.table import SCHEMA, decode_png, write_json_atomic
    path = Path(path)
    (path / "colonies").mkdir(parents=True, exist_ok=True)
    df = tiny_rows(n_per_class, size=size, seed=seed, n_unlabeled=n_unlabeled)
    rows = []
    for r in df.to_dict("records"):
        crop = decode_png(r["crop"])
        h, w = crop.shape
        r["label"] = r["label"] if isinstance(r["label"], str) else None
        rows.append({**r, "time": -1, "x0": 0, "y0": 0, "x1": w, "y1": h, "labels": r["label"],
                     "height": h, "width": w, "area": int((decode_png(r["mask"]) > 0).sum()),
                     "border": False, "bit_depth": 8, "synthetic": True})
    half = len(rows) // 2
    for k, chunk in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(chunk, schema=SCHEMA),
                       path / "colonies" / f"shard-{k:05d}.parquet")
    classes = df["label"].dropna().value_counts().sort_index().to_dict()
    write_json_atomic(path / "manifest.json", {
        "format": "ipb-colony-table/1", "synthetic": True, "n_images": 5,
        "n_colonies": len(rows), "classes": classes, "multi_label": 0,
        "unlabeled": n_unlabeled, "rejected": []})
    return path


# The budget tests run at: every code path in seconds. The `smoke` profile is the main job's
# real (minutes) budget, so a test that trains says what it runs: TINY first, its own keys after.
TINY = ["model.width=0.125", "model.dropout=0.2", "train.batch_size=16",
        "train.unlabeled_batch_size=16", "train.steps_per_epoch=2", "train.epochs=2",
        "train.lr=0.003", "method.teacher_pretrain_epochs=1", "method.pretext.epochs=1",
        "method.mpl.uda_steps=10", "split.test_fraction=0.1", "sweep.max_concurrent=1"]
