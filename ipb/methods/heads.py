"""Extra heads on an architecture's embedding, for the methods that train more than one head.

    python -c "from ipb.methods.heads import fresh_head; help(fresh_head)"

ABC's balanced classifier and Contrastive Clustering's cluster head are copies of the
architecture's own classifier head (`model.classifier` on the embedding, every arch in
ipb/models has one), so `with_head(model, head)` is a plain <arch> network: the same parameter
names, saved as student.pt and loaded by `ipb predict` like any other.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def fresh_head(model: nn.Module, dropout: float | None = None) -> nn.Module:
    """A newly initialised copy of `model.classifier` (dropout p changed when given)."""
    head = copy.deepcopy(model.classifier)
    for m in head.modules():
        if hasattr(m, "reset_parameters") and m is not head:
            m.reset_parameters()
        if isinstance(m, nn.Dropout) and dropout is not None:
            m.p = dropout
    return head


def with_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """`model` answering with `head` as its classifier. Parameters are shared, not copied:
    training `model`'s trunk or `head` changes the view too."""
    view = copy.copy(model)
    view._modules = {**model._modules, "classifier": head}
    return view


def last_linear(head: nn.Module) -> nn.Linear:
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1]


def projector(dim: int, out: int, bn: bool = False) -> nn.Sequential:
    """Linear -> (BN) -> ReLU -> Linear: the 2-layer MLP of SimCLR / Contrastive Clustering."""
    mid = [nn.BatchNorm1d(dim)] if bn else []
    return nn.Sequential(nn.Linear(dim, dim), *mid, nn.ReLU(inplace=True), nn.Linear(dim, out))


def in_graph(out: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
    """`out` with the unused outputs joined at weight zero: DDP (find_unused_parameters=False)
    wants every parameter of the wrapped module to get a gradient every step."""
    for u in unused:
        out = out + 0.0 * u.float().sum()
    return out
