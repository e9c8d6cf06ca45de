"""Iterative Pseudo Balancing: MPL whose student sees pseudo-class-balanced unlabeled epochs.

    ipb train --method ipb --arch ms_hrnet_w18 --fold 0      # + method.preset=robust

The whole algorithm is MPL's step (ipb/methods/mpl.py) plus this, at the start of every
unlabeled epoch (PAPER.md section 6, "the IPB part"):
 1 the teacher (eval mode) predicts one clean patch of every unlabeled colony of this worker
   (the patch positions the engine fixed for the epoch; method.pseudo_patches=K: the mean of
   its softmax over K patches inside the colony's mask);
 2 per-pseudo-class counts are all-reduced over workers; weight = 1 / global count;
 3 each worker draws len(shard) colonies with replacement from those weights, so every
   pseudo-class gets about 1/C of the epoch. Patch positions stay fixed for the epoch,
   augmentations stay random, the student still gets its targets from the teacher per batch;
 4 proportions, weights and the teacher's pseudo-label accuracy on U (where U's classes are
   known, e.g. synthetic data) are returned for logging (paper Figs. 6 and 7).
`mpl_balanced` resamples by the TRUE classes of U instead (our reading of the paper's
"MPL (Balanced)": an oracle that needs a U whose classes are all known, e.g. synthetic data).
"""
from __future__ import annotations

import numpy as np
import torch

from ipb.dist import all_reduce_sum, global_sum
from ipb.methods.base import register_method
from ipb.methods.mpl import MPL


def balanced_draw(classes: torch.Tensor, num_classes: int, n_draws: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw `n_draws` indices with weight 1 / global count of each colony's class."""
    counts = all_reduce_sum(torch.bincount(classes, minlength=num_classes).to(torch.float64))
    weights = 1.0 / counts.clamp(min=1)[classes]
    if len(classes) == 0:
        idx = torch.zeros(0, dtype=torch.long)
    else:
        idx = torch.multinomial(weights, n_draws, replacement=True, generator=generator)
    total = counts.sum().clamp(min=1)
    return {"indices": idx, "counts": counts, "fractions": counts / total,
            "class_weights": 1.0 / counts.clamp(min=1),
            "drawn": torch.bincount(classes[idx], minlength=num_classes)}


def balanced_epoch(classes: torch.Tensor, pool, prefix: str = "ipb") -> tuple[np.ndarray, dict]:
    """The epoch order drawn by `balanced_draw` and its statistics (pseudo_frac, weight,
    drawn_frac per class; drawn fractions summed over workers)."""
    names = pool.classes
    draw = balanced_draw(classes, len(names), len(pool), pool.gen)
    drawn = all_reduce_sum(draw["drawn"].to(torch.float64))
    stats = {}
    for i, name in enumerate(names):
        stats[f"{prefix}.pseudo_frac.{name}"] = float(draw["fractions"][i])
        stats[f"{prefix}.weight.{name}"] = float(draw["class_weights"][i])
        stats[f"{prefix}.drawn_frac.{name}"] = float(drawn[i] / drawn.sum().clamp(min=1))
    return draw["indices"].numpy(), stats


def pseudo_balanced_epoch(proba: torch.Tensor, pool) -> tuple[np.ndarray, dict]:
    """IPB's epoch from a pseudo-labeller's per-colony softmax `proba`: balanced by its argmax,
    with the pseudo-labels' accuracy where U's classes are known (`ipb.pseudo_acc`)."""
    pseudo = proba.argmax(dim=1)
    order, stats = balanced_epoch(pseudo, pool)
    known = pool.y >= 0
    agree = global_sum(int((pseudo.numpy()[known] == pool.y[known]).sum()))
    stats["ipb.pseudo_acc"] = agree / max(1.0, global_sum(int(known.sum())))
    return order, stats


@register_method
class IPB(MPL):
    """Iterative Pseudo Balancing: MPL whose student sees pseudo-class-balanced unlabeled epochs."""
    name = "ipb"

    def resample(self, pool):
        return pseudo_balanced_epoch(self.colony_pseudo(pool), pool)


@register_method
class MPLBalanced(MPL):
    """MPL whose unlabeled epochs are balanced by U's true classes (an oracle: needs U's labels)."""
    name = "mpl_balanced"

    @classmethod
    def check_data(cls, cfg, unlabeled_counts):
        unknown = unlabeled_counts.get("multi_label", 0) + unlabeled_counts.get("unlabeled", 0)
        if unknown:
            raise ValueError(
                f"method {cls.name} resamples U by its true classes, but {unknown} unlabeled "
                "colonies have none (multi-label or unlabeled); it needs a fully labelled U "
                "(e.g. synthetic data with method.multi_label=false): use method.name=ipb here")

    def resample(self, pool):
        unknown = int(global_sum(int((pool.y < 0).sum())))
        if unknown:
            self.check_data(self.cfg, {"unlabeled": unknown})
        return balanced_epoch(torch.from_numpy(pool.y), pool)
