"""Networks of the paper behind one registry: `create_model(cfg.model.arch, num_classes, ...)`.

    python -c "from ipb.models import list_models; print(list_models())"

Every model: forward(x: B x in_chans x S x S) -> (logits B x C, embedding B x embed_dim), and
attributes `multi_scale`, `embed_dim`, `num_classes`. Multi-scale models take the large patch
and cut its centre half themselves. Smallest S: model_info(name)["min_size"] (32 single-scale,
64 multi-scale).
"""
from . import hrnet, multiscale, small, vgg  # noqa: F401  (importing registers the models)
from .registry import create_model, list_models, model_info, register_model

__all__ = ["create_model", "list_models", "model_info", "register_model"]
