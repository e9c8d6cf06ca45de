"""Which supervised model an MPL-family trial's teacher pre-training reproduces, so a sweep
hands it the supervised row's selected model instead of training it again:

    python -c "from ipb.config import load_config; from ipb.methods.teacher import teacher_key; \
print(teacher_key(load_config('study', ['method.name=ipb'])))"
"""
from __future__ import annotations

from dataclasses import fields

from ipb.config import AugmentConfig, Config, MethodConfig, apply, config_hash, identity
from ipb.methods.base import method_class


def teacher_key(cfg: Config) -> str | None:
    """Identity of the supervised model that an MPL-family trial's teacher pre-training
    reproduces (same table, split, fold, seed, network, patches, augmentation, optimiser and
    budget; selected on validation): a supervised trial's own key, an MPL/IPB trial's teacher's
    key, None when there is no such model (no pre-training, or the last epoch is kept). The
    method switches and the unlabeled views act only after pre-training and the multi-label
    colonies only join U, so none of them is part of it."""
    if cfg.method.name != "supervised":
        m = cfg.method
        if m.teacher_pretrain_epochs <= 0 or m.teacher_select != "val" or \
                not _pretrains_teacher(m.name):
            return None
        cfg = apply(cfg, {"method.name": "supervised", "train.epochs": m.teacher_pretrain_epochs,
                          "train.finetune_epochs": 0})
    # multi_label_loss=partial puts multi-label colonies in L: the teacher trains on them
    neutral = {f"method.{f.name}": getattr(MethodConfig(), f.name)
               for f in fields(MethodConfig) if f.name not in ("name", "multi_label_loss")}
    # the views of unlabeled patches only: the supervised CNN never sees them
    neutral.update({f"augment.{k}": getattr(AugmentConfig(), k)
                    for k in ("weak", "strong_p", "strong_brightness", "strong_contrast")})
    flat = {**identity(cfg), **neutral}
    return "teacher-" + config_hash(flat, cfg.train.fold, cfg.train.seed)


def _pretrains_teacher(name: str) -> bool:
    """Whether method `name` starts with the supervised CNN's training (MPL, IPB, FixMatch,
    ABC: a class attribute), so a sweep can hand it the supervised row's model."""
    try:
        return method_class(name).pretrains_teacher
    except ValueError:
        return False
