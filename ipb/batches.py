"""The batches of one trial's worker: what each phase's step needs, and each unlabeled epoch's plan.

    python -c "from ipb.batches import Batches; help(Batches)"     # used by ipb/engine.py

`Batches` draws the labeled batches (the ground-truth-balanced sampler of PAPER.md section 6),
the unlabeled views (weak, strong) in the order the method's epoch plan chose, and the
self-supervised views; `plan_unlabeled_epoch` fixes the epoch's patch positions and asks the
method for its order (a uniform shuffle, or IPB's pseudo-class balanced draw). Plain torch.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ipb.config import Config
from ipb.data.augment import make_augment
from ipb.dist import all_reduce_sum, global_sum
from ipb.evaluation import Part
from ipb.methods import PHASE_INPUTS
from ipb.methods.base import UnlabeledPool, cpu_bf16
from ipb.models import model_info


def patch_size(cfg: Config) -> int:
    return cfg.patch.ms_size if model_info(cfg.model.arch)["multi_scale"] else cfg.patch.size


class Batches:
    """Draws the batches each phase needs; every random number from this worker's rng."""

    def __init__(self, cfg: Config, parts: dict[str, Part], rng: np.random.Generator,
                 gen: torch.Generator, device: torch.device):
        self.cfg, self.parts, self.rng, self.gen, self.device = cfg, parts, rng, gen, device
        self.aug = {v: make_augment(cfg.augment, v) for v in ("train", "weak", "strong", "test")}
        self.fmt = torch.channels_last if cfg.train.channels_last else torch.preserve_format
        y, cand = parts["labeled"].y, parts["labeled"].cand
        # multi_label_loss=partial: multi-label colonies are in L, each a candidate set
        self.partial = cfg.method.multi_label_loss == "partial" and cand is not None
        if self.partial:
            # an A|B colony counts half to A and half to B; a draw picks a class uniformly,
            # then a colony by its share of that class
            k = cand.sum(axis=1, keepdims=True).clip(min=1)
            counts = (cand / k).sum(axis=0)
            w = (cand / counts.clip(min=1e-9)).sum(axis=1) / k[:, 0]
        else:
            counts = np.bincount(y, minlength=y.max() + 1 if len(y) else 1)
            # ground-truth-balanced sampler: weight 1 / class count (PAPER.md section 6)
            w = 1.0 / counts[y]
        self.labeled_p = w / w.sum()
        self.n_l = torch.zeros(max(len(counts), 0 if cand is None else cand.shape[1]))
        self.n_l[:len(counts)] = torch.from_numpy(counts.astype(np.float32))
        self.order = np.zeros(0, np.int64)
        self.order_pos = np.zeros((0, 2), np.int64)
        self.cursor = 0

    def _view(self, view: str, x: torch.Tensor) -> torch.Tensor:
        """One augmented view of patches `x`, on the device (NHWC with train.channels_last)."""
        return self.aug[view](x, generator=self.gen).to(self.device, memory_format=self.fmt)

    def _patches(self, part: Part, idx: np.ndarray) -> torch.Tensor:
        p = self.cfg.patch
        return part.bank.extract(idx, part.bank.sample_positions(idx, self.rng, p.min_cover,
                                                                 p.max_tries))

    def labeled(self) -> dict[str, torch.Tensor]:
        lab = self.parts["labeled"]
        idx = self.rng.choice(len(lab), size=self.cfg.train.batch_size, p=self.labeled_p)
        x = self._patches(lab, idx)
        out = {"x_l": self._view("train", x),
               "y_l": torch.from_numpy(lab.y[idx]).to(self.device),
               "n_l": self.n_l}        # L's class counts (ABC's masks, GAN's top-up)
        if self.partial:
            out["c_l"] = torch.from_numpy(lab.cand[idx]).to(self.device)
        return out

    def set_unlabeled_epoch(self, order: np.ndarray, positions: np.ndarray) -> None:
        self.order, self.order_pos, self.cursor = order, positions, 0

    def unlabeled(self) -> dict[str, torch.Tensor]:
        n = self.cfg.train.unlabeled_batch_size
        take = (self.cursor + np.arange(n)) % max(1, len(self.order))
        self.cursor += n
        u = self.parts["unlabeled"]
        x = u.bank.extract(self.order[take], self.order_pos[take])
        return {"x_uw": self._view("weak", x),
                "x_us": self._view("strong", x),
                "i_u": torch.from_numpy(self.order[take]),
                # U's hidden classes (-1 unknown): for the target-accuracy diagnostic only
                "y_u": torch.from_numpy(u.y[self.order[take]])}

    def contrastive(self) -> dict[str, torch.Tensor]:
        # U + L pooled, in proportion to their sizes on this worker
        u, lab = self.parts["unlabeled"], self.parts["labeled"]
        n = self.cfg.train.unlabeled_batch_size
        from_u = self.rng.random(n) < len(u) / max(1, len(u) + len(lab))
        xs = []
        for part, k in ((u, int(from_u.sum())), (lab, int((~from_u).sum()))):
            if k:
                xs.append(self._patches(part, self.rng.integers(0, len(part), k)))
        x = torch.cat(xs)
        return {"x_1": self._view("strong", x),
                "x_2": self._view("strong", x)}

    def triplet(self) -> dict[str, torch.Tensor]:
        """SimTriplet: two views of a patch of U+L colonies (as `contrastive`), and a view of a
        neighbouring patch of the same colony; the colonies of a batch are distinct where the
        part allows, so the batch rolled by one gives each a patch of another colony."""
        u, lab = self.parts["unlabeled"], self.parts["labeled"]
        n = self.cfg.train.unlabeled_batch_size
        from_u = self.rng.random(n) < len(u) / max(1, len(u) + len(lab))
        p = self.cfg.patch
        xs, ns = [], []
        for part, k in ((u, int(from_u.sum())), (lab, int((~from_u).sum()))):
            if k:
                idx = self.rng.choice(len(part), size=k, replace=k > len(part))
                pos = part.bank.sample_positions(idx, self.rng, p.min_cover, p.max_tries)
                xs.append(part.bank.extract(idx, pos))
                ns.append(part.bank.extract(idx, part.bank.neighbour_positions(
                    idx, pos, self.rng, p.min_cover, p.max_tries)))
        x, x_n = torch.cat(xs), torch.cat(ns)
        return {"x_1": self._view("strong", x),
                "x_2": self._view("strong", x),
                "x_n": self._view("strong", x_n)}

    def batch(self, phase: str) -> dict[str, torch.Tensor]:
        if phase in ("supervised", "gan"):
            return self.labeled()
        if phase == "mpl":
            return {**self.labeled(), **self.unlabeled()}
        if phase == "contrastive":
            return self.contrastive()
        if phase == "clustering":
            return {**self.contrastive(), **self.labeled()}
        if phase == "triplet":
            return self.triplet()
        raise ValueError(f"unknown phase {phase!r}; known: {', '.join(PHASE_INPUTS)}")


def steps_for(phase: str, cfg: Config, parts: dict[str, Part], world: int) -> int:
    """Steps per epoch, identical on every rank (DDP must run the same number of steps)."""
    if phase == "mpl" and cfg.method.mpl_passes > 0:
        # the stage sees U mpl_passes times over its train.epochs epochs
        n_u = global_sum(len(parts["unlabeled"]))
        per_pass = n_u / (world * cfg.train.unlabeled_batch_size)
        return max(1, math.ceil(cfg.method.mpl_passes * per_pass / cfg.train.epochs))
    if cfg.train.steps_per_epoch > 0:
        return cfg.train.steps_per_epoch
    if phase in ("supervised", "gan"):   # len(L) draws over all workers
        return max(1, math.ceil(len(parts["labeled"]) / (cfg.train.batch_size * world)))
    n_u = global_sum(len(parts["unlabeled"]))
    extra = len(parts["labeled"]) if phase in ("contrastive", "clustering", "triplet") else 0
    return max(1, math.ceil((n_u / world + extra) / cfg.train.unlabeled_batch_size))


def plan_unlabeled_epoch(method, epoch: int, part: Part, classes: list[str], cfg: Config,
                         device, rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    """Patch positions fixed for the epoch; the order comes from the method's own hook
    (a uniform shuffle for MPL, pseudo-class balanced draws for IPB: ipb/methods/ipb.py)."""
    p = cfg.patch
    positions = part.bank.sample_positions(np.arange(len(part)), rng, p.min_cover, p.max_tries)
    pool = clean_pool(part, positions, classes, cfg, device, rng, gen)
    order, stats = method.unlabeled_epoch(epoch, pool)
    pool.order = order
    return {"order": order, "positions": positions[order] if len(order) else positions,
            "stats": stats, "pool": pool}


def clean_pool(part: Part, positions: np.ndarray, classes: list[str], cfg: Config, device,
               rng: np.random.Generator, gen: torch.Generator) -> UnlabeledPool:
    """The unlabeled part as a method sees it: true classes (-1 unknown) and clean patches."""
    test = make_augment(cfg.augment, "test")

    def patches(idx: np.ndarray) -> torch.Tensor:
        return test(part.bank.extract(idx, positions[idx])).to(device)

    def patches_in_mask(idx: np.ndarray, k: int) -> torch.Tensor:
        pos = part.bank.random_positions_in_mask(idx, k, rng).reshape(-1, 2)
        return test(part.bank.extract(np.repeat(idx, k), pos)).to(device)

    cpu = torch.device(device).type == "cpu"
    return UnlabeledPool(y=part.y, classes=classes, patches=patches, rng=rng, gen=gen,
                         patches_in_mask=patches_in_mask, cpu=cpu,
                         nhwc=cfg.train.eval_channels_last and cpu, bf16=cpu_bf16(cfg, device))


def true_fractions(part: Part, classes: list[str]) -> dict[str, float]:
    """Class proportions of U's hidden labels (where known), to set against pseudo fractions."""
    counts = all_reduce_sum(torch.from_numpy(
        np.bincount(part.y[part.y >= 0], minlength=len(classes)).astype(np.float64)))
    total = float(counts.sum()) or 1.0
    return {f"ipb.true_frac.{c}": float(counts[i]) / total for i, c in enumerate(classes)}


def bn_batches(pool: UnlabeledPool, n_batches: int, size: int, rng: np.random.Generator):
    """`n_batches` batches of clean patches of unlabeled colonies drawn as the epoch draws them
    (IPB: pseudo-class balanced; MPL: uniform). BN statistics carry the class mix: on the
    dev set, re-estimating a supervised CNN's on clean U patches in U's own mix (56 % Spread)
    cost 6 points of val TPR, in a class-balanced mix none."""
    order = pool.order if pool.order is not None and len(pool.order) else np.arange(len(pool))
    idx = order[rng.permutation(len(order))[:n_batches * size]]
    for s in range(0, len(idx), size):
        yield pool.patches(idx[s:s + size])
