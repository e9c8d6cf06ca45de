"""Is the student more than its teacher plus noise? Measurements for every MPL-family run.

    python -c "from ipb.methods.diagnostics import weight_change; help(weight_change)"

Issue 18's audit found a student that agreed with its teacher on ~90 % of test colonies,
had moved 10 % in weight and whose MPL signal |h| never exceeded 5e-4: the teacher plus
noise. These make that visible per run (the engine logs them as `diag.*`, the study report
puts them in a table): how far the student's weights moved from its start, how often it
agrees with the teacher it started from, the MPL term's share of the teacher's gradient, and
how accurate the student's targets are where U's classes are known. Plain torch.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ipb.methods.base import unwrap


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the floating-point weights and buffers (the start to measure from)."""
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()
            if v.is_floating_point()}


def weight_change(model: torch.nn.Module, start: dict[str, torch.Tensor] | None) -> float:
    """||w - w0|| / ||w0|| over the parameters (not BN running statistics) shared with
    `start`; nan without a start."""
    if not start:
        return math.nan
    names = {n for n, _ in unwrap(model).named_parameters()}
    num = den = 0.0
    for k, v in unwrap(model).state_dict().items():
        if k in names and k in start:
            w0 = start[k].to(v.device, torch.float64)
            num += float(((v.double() - w0) ** 2).sum())
            den += float((w0 ** 2).sum())
    return math.sqrt(num / den) if den > 0 else math.nan


def grad_share(model: torch.nn.Module, base_loss: torch.Tensor, mpl_loss: torch.Tensor) -> float:
    """|g_mpl| / (|g_mpl| + |g_base|): the MPL term's share of the gradient norm of `model`'s
    parameters (base = supervised + UDA). Graphs are kept for the step that follows."""
    params = [p for p in model.parameters() if p.requires_grad]

    def norm(loss: torch.Tensor) -> float:
        if not loss.requires_grad:
            return 0.0
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))

    g_mpl, g_base = norm(mpl_loss), norm(base_loss)
    return g_mpl / (g_mpl + g_base) if g_mpl + g_base > 0 else 0.0


def target_accuracy(targets: torch.Tensor, mask: torch.Tensor,
                    y_u: torch.Tensor | None) -> dict[str, float]:
    """Accuracy of the student's targets (hard or soft) on the U colonies of a batch whose
    class is known (`y_u` >= 0), over those the mask admits; {} when none is known."""
    if y_u is None:
        return {}
    y_u = y_u.to(targets.device)
    known = y_u >= 0
    if not bool(known.any()):
        return {}
    hard = targets.argmax(dim=1) if targets.dim() == 2 else targets
    admitted = known & (mask > 0)
    right = (hard == y_u) & admitted
    return {"train.target_acc": float(right.sum()) / max(1, int(admitted.sum())),
            "train.target_acc_all": float(((hard == y_u) & known).sum()) / int(known.sum())}


def agreement(p_a: np.ndarray, p_b: np.ndarray) -> float:
    """Share of colonies on which two models' (argmax) predictions agree."""
    if len(p_a) == 0:
        return math.nan
    return float((np.asarray(p_a).argmax(1) == np.asarray(p_b).argmax(1)).mean())
