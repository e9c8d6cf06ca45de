"""Model registry: `create_model(cfg.model.arch, num_classes, width=cfg.model.width, ...)`.

    python -c "from ipb.models import list_models, model_info; print([model_info(n) for n in list_models()])"

Each architecture is a factory function decorated with `@register_model(...)`; the decorator
keeps metadata (family, multi-scale, smallest input) so callers can check a config without
building a network.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, dict] = {}


def register_model(*, family: str, multi_scale: bool, min_size: int, paper_params: float):
    """Decorator: register `fn(num_classes, width, dropout, in_chans) -> nn.Module` under its name.

    `min_size` is the smallest square input side the forward accepts (for multi-scale models: the
    large patch); `paper_params` the paper's parameter count at width 1 with 4 classes.
    """
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is registered twice ({fn.__module__})")
        _FACTORIES[name] = fn
        _INFO[name] = {"name": name, "family": family, "multi_scale": multi_scale,
                       "min_size": min_size, "paper_params": paper_params}
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_FACTORIES)


def _check_name(name: str) -> None:
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())} "
                         "(set model.arch to one of them)")


def model_info(name: str) -> dict:
    """Metadata of a registered model without building it."""
    _check_name(name)
    return dict(_INFO[name])


def create_model(name: str, num_classes: int, width: float = 1.0, dropout: float = 0.5,
                 in_chans: int = 1) -> nn.Module:
    """Build a registered model; forward(x) -> (logits B x num_classes, embedding B x embed_dim)."""
    _check_name(name)
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not width > 0:
        raise ValueError(f"model.width must be > 0, got {width!r} (1.0 = the paper's network)")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout must be in [0, 1), got {dropout!r}")
    if int(in_chans) != in_chans or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    return _FACTORIES[name](num_classes=int(num_classes), width=float(width),
                            dropout=float(dropout), in_chans=int(in_chans))
