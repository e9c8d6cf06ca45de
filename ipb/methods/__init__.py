"""Methods on one `train_step` contract, in a registry like timm's models.

    python -c "from ipb.methods import list_methods; print(list_methods())"

`create_method(name, cfg, num_classes, ...)` builds one; every registered method is exercised
by tests/test_methods.py (a few steps on a tiny table: finite, decreasing losses).
"""
from ipb.methods.base import PHASE_INPUTS, Method, create_method, list_methods, method_class, \
    register_method

# importing registers them
from ipb.methods import supervised, mpl, ipb, simclr  # noqa: E402,F401
from ipb.methods import fixmatch, abc, contrastive_clustering, simtriplet  # noqa: E402,F401
from ipb.methods import fixmatch_ipb  # noqa: E402,F401
from ipb.methods import gan_balanced  # noqa: E402,F401

__all__ = ["PHASE_INPUTS", "Method", "create_method", "list_methods", "method_class",
           "register_method"]
