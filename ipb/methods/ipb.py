"""Iterative Pseudo Balancing: MPL whose student sees pseudo-class-balanced unlabeled epochs.

    ipb train --method ipb --arch ms_hrnet_w18 --fold 0

At the start of every unlabeled epoch (PAPER.md section 6, "the IPB part"):
 1 the teacher (eval mode) predicts one random patch of every unlabeled colony of this worker;
 2 per-pseudo-class counts are all-reduced over workers; weight = 1 / global count;
 3 each worker draws len(shard) colonies with replacement from those weights, so every
   pseudo-class gets about 1/C of the epoch. Patch positions stay fixed for the epoch,
   augmentations stay random, the student still gets its targets from the teacher per batch;
 4 proportions and weights are returned for logging (paper Figs. 6 and 7).
`mpl_balanced` resamples by the TRUE classes of U instead (our reading of the paper's
"MPL (Balanced)": an oracle that needs a U whose classes are known, e.g. synthetic data).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from ipb.methods.base import register_method
from ipb.methods.mpl import MPL


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over workers when a process group is up (Ray Train's DDP), else identity."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        backend = dist.get_backend()
        if backend == "nccl" and x.device.type != "cuda":
            y = x.cuda()
            dist.all_reduce(y)
            return y.to(x.device)
        dist.all_reduce(x)
    return x


@torch.no_grad()
def predict_classes(model: torch.nn.Module, batches: Callable[[], object]) -> torch.Tensor:
    """argmax of `model` (eval mode) over an iterator of input batches; training mode restored."""
    was = model.training
    model.eval()
    out = [model(x)[0].argmax(dim=1).cpu() for x in batches()]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def balanced_draw(classes: torch.Tensor, num_classes: int, n_draws: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw `n_draws` indices with weight 1 / global count of each colony's class."""
    local = torch.bincount(classes, minlength=num_classes).to(torch.float64)
    counts = all_reduce_sum(local)
    weights = 1.0 / counts.clamp(min=1)[classes]
    if len(classes) == 0:
        idx = torch.zeros(0, dtype=torch.long)
    else:
        idx = torch.multinomial(weights, n_draws, replacement=True, generator=generator)
    total = counts.sum().clamp(min=1)
    return {"indices": idx, "counts": counts, "fractions": counts / total,
            "class_weights": 1.0 / counts.clamp(min=1),
            "drawn": torch.bincount(classes[idx], minlength=num_classes)}


@register_method
class IPB(MPL):
    name = "ipb"

    def balance(self, epoch):
        return "pseudo" if self.phase(epoch) == "mpl" else None


@register_method
class MPLBalanced(MPL):
    name = "mpl_balanced"

    def balance(self, epoch):
        return "true" if self.phase(epoch) == "mpl" else None
