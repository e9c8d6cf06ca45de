"""Evaluation of one model on one part of a split, over every data-parallel worker.

    python -c "from ipb.evaluation import evaluate; help(evaluate)"     # used by ipb/engine.py

Each worker predicts its shard; confusion matrices and counts are all-reduced, so every rank
sees the same metrics. Besides TPR/precision/F1 (ipb/metrics.py) this measures collapse: the
largest share of one predicted class, against the largest true share of the same colonies. A
student that predicts one class for 80 % of colonies where no class holds 60 % is collapsed
(with a dominant class: more than halfway from its true share to 1; metrics.collapse_threshold).
A `part` is a Part (below: a patch bank `bank` and true classes `y`, -1 unknown); `ipb predict`
builds one per image, so it needs this module and not the training engine.
Plain torch/numpy: no Ray, no MLflow.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ipb.config import Config
from ipb.data.augment import make_augment
from ipb.data.patches import ColonyBank
from ipb.dist import all_reduce_sum
from ipb.methods.base import forward_chunks, inference_model, nhwc_input, unwrap
from ipb.methods.partial import candidates
from ipb.metrics import collapse_threshold, confusion_matrix, metrics_from_confusion


@dataclass
class Part:
    """One part of a split on this worker: its patches bank, labels (-1 = unknown), ids and
    candidate classes (n, C multi-hot: one class, both of an `A|B` colony, none if unknown)."""
    bank: ColonyBank
    y: np.ndarray
    ids: list[str]
    cand: np.ndarray | None = None

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, classes: list[str], size: int) -> "Part":
        return cls.of(ColonyBank.from_rows(rows, size), rows["label"], rows["colony_id"],
                      classes)

    @classmethod
    def of(cls, bank: ColonyBank, labels, ids, classes: list[str]) -> "Part":
        """The part whose colonies are `bank`'s, with these labels and ids (same order)."""
        labels = list(labels)
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index.get(lab, -1) if isinstance(lab, str) else -1 for lab in labels],
                     np.int64)
        return cls(bank, y, list(ids), candidates(labels, classes))

    def __len__(self):
        return len(self.y)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, part, cfg: Config, device: torch.device,
                  rng: np.random.Generator, batch: int = 256,
                  idx: np.ndarray | None = None) -> np.ndarray:
    """Softmax per colony: the centre patch, or the mean over `patch.test_patches` in the mask
    (`batch` colonies a chunk, cut by `forward_chunks`)."""
    model = unwrap(model)
    was = model.training
    cpu = torch.device(device).type == "cpu"
    nhwc = cfg.train.eval_channels_last and cpu
    net = inference_model(model, nhwc)
    test = make_augment(cfg.augment, "test")
    k = cfg.patch.test_patches
    rows = np.arange(len(part)) if idx is None else np.asarray(idx)
    out = []
    for a, b in forward_chunks(len(rows), batch, k, cut=cpu):
        chunk = rows[a:b]
        if k <= 1:
            idx_k, pos = chunk, part.bank.center_positions(chunk)
        else:
            pos = part.bank.random_positions_in_mask(chunk, k, rng).reshape(-1, 2)
            idx_k = np.repeat(chunk, k)
        x = nhwc_input(test(part.bank.extract(idx_k, pos)).to(device), nhwc)
        p = torch.softmax(net(x)[0].float(), dim=1).cpu().numpy()
        out.append(p.reshape(len(chunk), max(k, 1), -1).mean(axis=1))
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(model, part, classes: list[str], cfg: Config, device, rng,
             prefix: str) -> tuple[dict[str, float], np.ndarray]:
    """Metrics over ALL workers: each predicts its shard, confusion matrices are all-reduced.
    Adds `{prefix}.pred_share.max` / `{prefix}.true_share.max` (collapse)."""
    c = len(classes)
    known = part.y >= 0
    if len(part):
        pred = predict_proba(model, part, cfg, device, rng).argmax(axis=1)
        cm = confusion_matrix(part.y[known], pred[known], c)
    else:
        cm = np.zeros((c, c), np.int64)
    cm = all_reduce_sum(torch.from_numpy(cm.astype(np.float64))).numpy().astype(np.int64)
    out = metrics_from_confusion(cm, classes, prefix=prefix)
    total = max(1, int(cm.sum()))
    out[f"{prefix}.pred_share.max"] = float(cm.sum(axis=0).max() / total) if c else 0.0
    out[f"{prefix}.true_share.max"] = float(cm.sum(axis=1).max() / total) if c else 0.0
    return out, cm


def unlabeled_shares(model, part, num_classes: int, cfg: Config, device, rng,
                     limit: int = 2048) -> dict[str, float]:
    """Largest predicted-class share on (a random sample of at most `limit` colonies per worker
    of) U, and the largest true share where U's classes are known (synthetic data)."""
    n = len(part)
    idx = np.sort(rng.choice(n, size=min(n, limit), replace=False)) if n else np.zeros(0, int)
    pred = predict_proba(model, part, cfg, device, rng, idx=idx).argmax(axis=1) if n else \
        np.zeros(0, int)
    y = part.y[idx]
    counts = torch.from_numpy(np.concatenate([
        np.bincount(pred, minlength=num_classes), np.bincount(y[y >= 0], minlength=num_classes)
    ]).astype(np.float64))
    counts = all_reduce_sum(counts).numpy()
    pred_c, true_c = counts[:num_classes], counts[num_classes:]
    return {"u.pred_share.max": float(pred_c.max() / max(1.0, pred_c.sum())),
            "u.true_share.max": float(true_c.max() / true_c.sum()) if true_c.sum() else float("nan")}


def collapsed(metrics: dict[str, float], prefix: str) -> bool:
    """The collapse rule on one evaluation's metrics (see the module docstring)."""
    pred = metrics.get(f"{prefix}.pred_share.max")
    true = metrics.get(f"{prefix}.true_share.max")
    if pred is None or true is None or np.isnan(true):
        return False
    return pred > collapse_threshold(true)
