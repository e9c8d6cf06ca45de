"""Methods on one `train_step` contract, in a registry like timm's models.

    python -c "from ipb.methods import list_methods; print(list_methods())"

`create_method(name, cfg, num_classes, ...)` builds one; every registered method is exercised
by tests/test_methods.py (a few steps on a tiny table: finite, decreasing losses). Every module
of this package is imported here, so a new method is one file: a `Method` subclass under
`@register_method` with a `name` and a one-line class docstring (`ipb methods` lists them,
from ipb/method_catalog.py).
"""
import importlib
import pkgutil

from ipb.methods.base import PHASE_INPUTS, Method, create_method, list_methods, method_class, \
    register_method

# importing registers them
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PHASE_INPUTS", "Method", "create_method", "list_methods", "method_class",
           "register_method"]
