"""The pieces behind MPL/IPB's robust switches (config `method.*`, each off at the paper's value).

    python -c "from ipb.methods.stabilize import relative_threshold; print(relative_threshold(0.65, 13))"

- `ModelEMA` (method.mpl.ema): an exponential moving average of the student, evaluated in its
  place; buffers (BN running statistics) are averaged too, so they fit the averaged weights.
- `recalibrate_bn` (method.mpl.bn_recalibrate): BN running statistics re-estimated on clean
  unlabeled patches before evaluation (the strong view the student trains on is not what it
  is tested on), averaged over workers.
- `DistAlign` (method.mpl.dist_align): the teacher's soft targets re-weighted toward a target class
  distribution (ReMixMatch's distribution alignment), by the running mean of its predictions.
- `relative_threshold`, `FlexThreshold` (method.mpl.threshold_mode): confidence thresholds that
  work for any number of classes; the paper's fixed 0.65 admits almost nothing when a weak
  teacher spreads its softmax over 13 classes (shared/notes/science-facts.md).
Plain torch; collectives through ipb.dist (no-ops in one process).
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from ipb.dist import all_reduce_mean, all_reduce_sum


def _bare(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class ModelEMA(nn.Module):
    """`decay` * average + (1 - decay) * model after every update; the copy never trains."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"method.mpl.ema must be in (0, 1) when on, got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(_bare(model))
        self.module.requires_grad_(False)

    def forward(self, x):
        return self.module(x)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        self.module.load_state_dict(_bare(model).state_dict())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = _bare(model).state_dict()
        for name, avg in self.module.state_dict().items():
            new = src[name].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(self.decay).add_(new.to(avg.dtype), alpha=1.0 - self.decay)
            else:              # num_batches_tracked
                avg.copy_(new)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average
    over `batches` (train-mode BN, everything else in eval mode: no dropout); then average
    them over workers. Returns the number of patches seen on this worker."""
    model = _bare(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was = model.training
    model.eval()
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None          # cumulative average over the batches, not an EMA
        m.train()
    n = 0
    for x in batches:
        model(x)
        n += len(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
        m.running_mean.copy_(all_reduce_mean(m.running_mean))
        m.running_var.copy_(all_reduce_mean(m.running_var))
    model.train(was)
    return n


class DistAlign:
    """p -> normalise(p * target / running mean of p): soft targets whose class mix follows
    `target` (uniform, or a prior) instead of the teacher's skew toward the majority class."""

    def __init__(self, target: torch.Tensor, momentum: float = 0.99):
        target = torch.as_tensor(target, dtype=torch.float32)
        if target.ndim != 1 or (target <= 0).any():
            raise ValueError(f"distribution alignment target must be positive per class, "
                             f"got {target.tolist()}")
        self.target = target / target.sum()
        self.running = torch.full_like(self.target, 1.0 / len(self.target))
        self.momentum = momentum

    @torch.no_grad()
    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        mean = all_reduce_mean(p.float().mean(dim=0).cpu())
        self.running = self.momentum * self.running + (1 - self.momentum) * mean
        q = p * (self.target / self.running.clamp_min(1e-6)).to(p.device, p.dtype)
        return q / q.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def state_dict(self) -> dict:
        return {"running": self.running.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.running = state["running"].clone()


def relative_threshold(threshold: float, num_classes: int) -> float:
    """The paper's threshold read relative to chance: 0.65 at 4 classes is 0.4 of the way
    from 1/4 to 1; the same fraction of the way from 1/C to 1 for C classes."""
    frac = (threshold - 0.25) / 0.75
    return 1.0 / num_classes + frac * (1.0 - 1.0 / num_classes)


class FlexThreshold:
    """FlexMatch's curriculum thresholds (Zhang et al. 2021; USB's FlexMatchThresholdingHook):
    class c's threshold is `threshold * M(beta_c)`, M(b) = b / (2 - b), where beta_c is the
    number of unlabeled colonies whose last confident prediction is c, over the largest such
    count or the number never confidently predicted (warm-up). Classes the teacher is
    unsure of get lower thresholds, so the minority is not filtered away. Counts are summed
    over workers; each worker remembers its own shard of U."""

    def __init__(self, n_unlabeled: int, num_classes: int, threshold: float):
        self.num_classes, self.threshold = num_classes, threshold
        self.selected = torch.full((int(n_unlabeled),), -1, dtype=torch.long)

    def class_thresholds(self) -> torch.Tensor:
        known = self.selected[self.selected >= 0]
        counts = torch.bincount(known, minlength=self.num_classes).double()
        unused = torch.tensor([float((self.selected < 0).sum())], dtype=torch.float64)
        both = all_reduce_sum(torch.cat([counts, unused]))
        counts, unused = both[:-1], both[-1]
        beta = counts / torch.maximum(counts.max(), unused).clamp_min(1.0)
        return (self.threshold * beta / (2.0 - beta)).float()

    @torch.no_grad()
    def mask(self, p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        conf, hard = p.max(dim=1)
        mask = (conf >= self.class_thresholds().to(p.device)[hard]).float()
        sure = (conf >= self.threshold).cpu()
        self.selected[idx.cpu()[sure]] = hard.cpu()[sure]
        return mask

    def state_dict(self) -> dict:
        return {"selected": self.selected.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.selected = state["selected"].clone()
