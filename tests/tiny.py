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
