"""One trial on one worker, in plain torch: patches -> augment -> method steps -> evaluation.

    python -c "from ipb.engine import run_trial; help(run_trial)"   # used by ipb/train.py

Ray Train (ipb/train.py) hands each worker its rows and a `report` callback; unit tests call
`run_trial` directly. Data parallel: the unlabeled, val and test rows are sharded over workers,
the small labeled set is on every worker; counts and confusion matrices are all-reduced, so
every rank runs the same number of steps and sees the same metrics.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ipb.config import Config
from ipb.data.augment import make_augment
from ipb.data.patches import ColonyBank
from ipb.methods import PHASE_INPUTS, create_method
from ipb.methods.base import unwrap
from ipb.methods.ipb import all_reduce_sum, balanced_draw, predict_classes
from ipb.metrics import confusion_matrix, metrics_from_confusion
from ipb.models import model_info


def patch_size(cfg: Config) -> int:
    return cfg.patch.ms_size if model_info(cfg.model.arch)["multi_scale"] else cfg.patch.size


@dataclass
class Part:
    """One part of a split on this worker: its patches bank, labels (-1 = unknown), ids."""
    bank: ColonyBank
    y: np.ndarray
    ids: list[str]

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, classes: list[str], size: int) -> "Part":
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index.get(lab, -1) if isinstance(lab, str) else -1
                      for lab in rows["label"]], np.int64)
        return cls(ColonyBank.from_rows(rows, size), y, list(rows["colony_id"]))

    def __len__(self):
        return len(self.y)


def global_sum(x: float) -> float:
    return float(all_reduce_sum(torch.tensor([float(x)], dtype=torch.float64))[0])


class Batches:
    """Draws the batches each phase needs; every random number from this worker's rng."""

    def __init__(self, cfg: Config, parts: dict[str, Part], rng: np.random.Generator,
                 gen: torch.Generator, device: torch.device):
        self.cfg, self.parts, self.rng, self.gen, self.device = cfg, parts, rng, gen, device
        self.aug = {v: make_augment(cfg.augment, v) for v in ("train", "weak", "strong", "test")}
        y = parts["labeled"].y
        counts = np.bincount(y, minlength=y.max() + 1 if len(y) else 1)
        # ground-truth-balanced sampler: weight 1 / class count (PAPER.md section 6)
        w = 1.0 / counts[y]
        self.labeled_p = w / w.sum()
        self.order = np.zeros(0, np.int64)
        self.order_pos = np.zeros((0, 2), np.int64)
        self.cursor = 0

    def _patches(self, part: Part, idx: np.ndarray) -> torch.Tensor:
        p = self.cfg.patch
        return part.bank.extract(idx, part.bank.sample_positions(idx, self.rng, p.min_cover,
                                                                 p.max_tries))

    def labeled(self) -> dict[str, torch.Tensor]:
        lab = self.parts["labeled"]
        idx = self.rng.choice(len(lab), size=self.cfg.train.batch_size, p=self.labeled_p)
        x = self._patches(lab, idx)
        return {"x_l": self.aug["train"](x, generator=self.gen).to(self.device),
                "y_l": torch.from_numpy(lab.y[idx]).to(self.device)}

    def set_unlabeled_epoch(self, order: np.ndarray, positions: np.ndarray) -> None:
        self.order, self.order_pos, self.cursor = order, positions, 0

    def unlabeled(self) -> dict[str, torch.Tensor]:
        n = self.cfg.train.unlabeled_batch_size
        take = (self.cursor + np.arange(n)) % max(1, len(self.order))
        self.cursor += n
        x = self.parts["unlabeled"].bank.extract(self.order[take], self.order_pos[take])
        return {"x_uw": self.aug["weak"](x, generator=self.gen).to(self.device),
                "x_us": self.aug["strong"](x, generator=self.gen).to(self.device)}

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
        return {"x_1": self.aug["strong"](x, generator=self.gen).to(self.device),
                "x_2": self.aug["strong"](x, generator=self.gen).to(self.device)}

    def batch(self, phase: str) -> dict[str, torch.Tensor]:
        if phase == "supervised":
            return self.labeled()
        if phase == "mpl":
            return {**self.labeled(), **self.unlabeled()}
        if phase == "contrastive":
            return self.contrastive()
        raise ValueError(f"unknown phase {phase!r}; known: {', '.join(PHASE_INPUTS)}")


@torch.no_grad()
def predict_proba(model: torch.nn.Module, part: Part, cfg: Config, device: torch.device,
                  rng: np.random.Generator, batch: int = 128) -> np.ndarray:
    """Softmax per colony: the centre patch, or the mean over `patch.test_patches` in the mask."""
    model = unwrap(model)
    was = model.training
    model.eval()
    test = make_augment(cfg.augment, "test")
    k = cfg.patch.test_patches
    out = []
    for s in range(0, len(part), batch):
        idx = np.arange(s, min(len(part), s + batch))
        if k <= 1:
            idx_k, pos = idx, part.bank.center_positions(idx)
        else:
            pos = part.bank.random_positions_in_mask(idx, k, rng).reshape(-1, 2)
            idx_k = np.repeat(idx, k)
        x = test(part.bank.extract(idx_k, pos)).to(device)
        p = torch.softmax(model(x)[0].float(), dim=1).cpu().numpy()
        out.append(p.reshape(len(idx), max(k, 1), -1).mean(axis=1))
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate(model, part: Part, classes: list[str], cfg: Config, device, rng,
             prefix: str) -> tuple[dict[str, float], np.ndarray]:
    """Metrics over ALL workers: each predicts its shard, confusion matrices are all-reduced."""
    c = len(classes)
    known = part.y >= 0
    if len(part):
        pred = predict_proba(model, part, cfg, device, rng).argmax(axis=1)
        cm = confusion_matrix(part.y[known], pred[known], c)
    else:
        cm = np.zeros((c, c), np.int64)
    cm = all_reduce_sum(torch.from_numpy(cm.astype(np.float64))).numpy().astype(np.int64)
    return metrics_from_confusion(cm, classes, prefix=prefix), cm


def steps_for(phase: str, cfg: Config, parts: dict[str, Part], world: int) -> int:
    """Steps per epoch, identical on every rank (DDP must run the same number of steps)."""
    if cfg.train.steps_per_epoch > 0:
        return cfg.train.steps_per_epoch
    if phase == "supervised":   # len(L) draws over all workers
        return max(1, math.ceil(len(parts["labeled"]) / (cfg.train.batch_size * world)))
    n_u = global_sum(len(parts["unlabeled"]))
    extra = len(parts["labeled"]) if phase == "contrastive" else 0
    return max(1, math.ceil((n_u / world + extra) / cfg.train.unlabeled_batch_size))


def plan_unlabeled_epoch(method, epoch: int, part: Part, classes: list[str], cfg: Config,
                         device, rng: np.random.Generator, gen: torch.Generator) -> dict[str, float]:
    """Positions fixed for the epoch; order = uniform shuffle or (pseudo-)balanced draws."""
    n = len(part)
    p = cfg.patch
    positions = part.bank.sample_positions(np.arange(n), rng, p.min_cover, p.max_tries)
    mode = method.balance(epoch)
    stats: dict[str, float] = {}
    if mode is None:
        order = rng.permutation(n)
    else:
        if mode == "pseudo":
            test = make_augment(cfg.augment, "test")
            teacher = unwrap(method.pseudo_model())

            def batches():
                for s in range(0, n, 256):
                    idx = np.arange(s, min(n, s + 256))
                    yield test(part.bank.extract(idx, positions[idx])).to(device)

            cls = predict_classes(teacher, batches)
        else:
            unknown = global_sum(int((part.y < 0).sum()))
            if unknown:
                raise ValueError(f"method {method.name} resamples U by its true classes, but "
                                 f"{int(unknown)} unlabeled colonies have none (multi-label or "
                                 "unlabeled); use method.name=ipb, or method.multi_label=false "
                                 "with a fully labelled U")
            cls = torch.from_numpy(part.y)
        draw = balanced_draw(cls, len(classes), n, gen)
        order = draw["indices"].numpy()
        for i, name in enumerate(classes):
            stats[f"ipb.pseudo_frac.{name}"] = float(draw["fractions"][i])
            stats[f"ipb.weight.{name}"] = float(draw["class_weights"][i])
        drawn = all_reduce_sum(draw["drawn"].to(torch.float64))
        for i, name in enumerate(classes):
            stats[f"ipb.drawn_frac.{name}"] = float(drawn[i] / drawn.sum().clamp(min=1))
        known = part.y >= 0
        if mode == "pseudo":
            agree = global_sum(int((cls.numpy()[known] == part.y[known]).sum()))
            stats["ipb.pseudo_acc"] = agree / max(1.0, global_sum(int(known.sum())))
    return {"order": order, "positions": positions[order] if len(order) else positions,
            "stats": stats}


def true_fractions(part: Part, classes: list[str]) -> dict[str, float]:
    """Class proportions of U's hidden labels (where known), to set against pseudo fractions."""
    counts = all_reduce_sum(torch.from_numpy(
        np.bincount(part.y[part.y >= 0], minlength=len(classes)).astype(np.float64)))
    total = float(counts.sum()) or 1.0
    return {f"ipb.true_frac.{c}": float(counts[i]) / total for i, c in enumerate(classes)}


def run_trial(cfg: Config, parts: dict[str, Part], classes: list[str], *,
              device: torch.device | str = "cpu", wrap=None, rank: int = 0, world: int = 1,
              resume: dict[str, Any] | None = None,
              report: Callable[[dict[str, float], Callable[[], dict] | None], None] | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `cfg.method.name` and evaluate; returns final metrics, confusion matrices, history.

    `report(metrics, state_fn)` is called once per epoch (and once at the end with test.*);
    `state_fn()` gives the checkpoint dict to save. `resume` is such a dict.
    """
    device = torch.device(device)
    seed = cfg.train.seed * 1000 + cfg.train.fold
    torch.manual_seed(seed)      # same initial weights on every rank (DDP also broadcasts)
    method = create_method(cfg.method.name, cfg, len(classes), device=device, wrap=wrap)
    rng = np.random.default_rng([seed, rank])
    gen = torch.Generator().manual_seed(seed * 7919 + rank)
    batches = Batches(cfg, parts, rng, gen, device)
    start, history, best = 0, [], {"score": -1.0, "epoch": -1, "state": None}
    if resume:
        method.load_state_dict(resume["method"])
        start, history, best = resume["epoch"] + 1, resume["history"], resume["best"]
        log(f"resumed from the checkpoint of epoch {resume['epoch']}")
    select = cfg.train.select_on            # val (default) | test (reproduction only)
    if select == "val" and global_sum(len(parts["val"])) == 0:
        log("no validation colonies: the student of the last epoch is kept (no selection)")
        select = "last"
    u_true = true_fractions(parts["unlabeled"], classes) if method.uses_unlabeled else {}
    n_epochs = method.num_epochs()
    final_phase = method.phase(n_epochs - 1)
    for epoch in range(start, n_epochs):
        t0 = time.time()
        # per-epoch streams: a resumed run draws exactly what an uninterrupted one would
        rng = batches.rng = np.random.default_rng([seed, rank, epoch])
        gen.manual_seed(seed * 7919 + rank * 1_000_003 + epoch)
        method.start_epoch(epoch)
        phase = method.phase(epoch)
        metrics: dict[str, float] = {"epoch": epoch}
        if phase == "mpl":
            plan = plan_unlabeled_epoch(method, epoch, parts["unlabeled"], classes, cfg,
                                        device, rng, gen)
            batches.set_unlabeled_epoch(plan["order"], plan["positions"])
            metrics.update(plan["stats"])
            metrics["time.balance"] = time.time() - t0
            if plan["stats"]:
                metrics.update(u_true)
        sums: dict[str, float] = {}
        n_steps = steps_for(phase, cfg, parts, world)
        for _ in range(n_steps):
            for k, v in method.train_step(batches.batch(phase), epoch).items():
                sums[k] = sums.get(k, 0.0) + v
        metrics.update({k: v / n_steps for k, v in sums.items()})
        last = epoch == n_epochs - 1
        if (epoch + 1) % cfg.train.eval_every == 0 or last:
            m_val, _ = evaluate(method.eval_model(), parts["val"], classes, cfg, device, rng, "val")
            metrics.update(m_val)
            if select == "test":
                score = evaluate(method.eval_model(), parts["test"], classes, cfg, device, rng,
                                 "select")[0]["select.tpr.mean"]
            else:
                score = m_val["val.tpr.mean"] if select == "val" else float(epoch)
            # only the final phase's models compete (not an untrained student during the
            # teacher's pre-training, nor SimCLR's encoder before its classifier is trained)
            if phase == final_phase and score > best["score"]:
                best = {"score": score, "epoch": epoch,
                        "state": copy.deepcopy(unwrap(method.eval_model()).state_dict())}
        metrics["time.epoch"] = time.time() - t0
        metrics["phase." + phase] = 1.0
        history.append(metrics)
        log(f"epoch {epoch + 1}/{n_epochs} [{phase}] " + " ".join(
            f"{k}={v:.4g}" for k, v in metrics.items()
            if k.startswith(("train.", "val.tpr.mean", "ipb.pseudo_acc"))))
        if report:
            def state_fn(epoch=epoch):
                return {"method": method.state_dict(), "epoch": epoch, "history": history,
                        "best": best}
            report(metrics, state_fn)
    # test with the selected student (or a fine-tuned copy of it)
    model = unwrap(method.eval_model())
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    if cfg.train.finetune_epochs > 0:
        finetune(method, cfg, batches, world, log)
    m_test, cm_test = evaluate(model, parts["test"], classes, cfg, device, rng, "test")
    m_val, cm_val = evaluate(model, parts["val"], classes, cfg, device, rng, "val")
    final = {**m_test, **{f"best.{k}": v for k, v in m_val.items()},
             "best.epoch": best["epoch"], "selected_on": cfg.train.select_on}
    return {"metrics": final, "cm_test": cm_test, "cm_val": cm_val, "history": history,
            "model": model, "classes": classes}


def finetune(method, cfg: Config, batches: Batches, world: int, log) -> None:
    """Optional stage (off by default): fine-tune the selected student on L (reference code),
    at a tenth of the learning rate, through the same DDP wrapper as training."""
    from ipb.methods.base import make_optimizer
    model = method.train_model()
    opt = make_optimizer(cfg, model.parameters(), lr_scale=0.1)
    for epoch in range(cfg.train.finetune_epochs):
        losses = [method.supervised_step(model, opt, batches.labeled())
                  for _ in range(steps_for("supervised", cfg, batches.parts, world))]
        log(f"fine-tune epoch {epoch + 1}/{cfg.train.finetune_epochs} "
            f"loss {sum(losses) / len(losses):.4f}")
