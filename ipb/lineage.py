"""Where a trial's results live, by one name each, and which supervised model a trial's teacher is.

    python -c "from ipb.config import load_config; from ipb.lineage import teacher_key; \
print(teacher_key(load_config('study', ['method.name=ipb'])))"

A trial writes its files into its checkpoint directory (ipb/worker.py) and `ipb.tracking` logs
them into its MLflow run; `ipb.student` loads a student from either, `ipb.logged_models` logs
the `student` and `colonies` models from the first. An MPL-family trial (and FixMatch, ABC)
pre-trains its teacher exactly as the supervised row of the same split, seed and budget trains
its network, so a sweep hands it that row's selected model (`teacher_key`; found by
`ipb.tracking.find_teacher`, logged as TEACHER_ARTIFACT). No torch, no MLflow here.
"""
from __future__ import annotations

from ipb.config import AugmentConfig, Config, apply, config_hash, identity
from ipb.method_catalog import pretrains_teacher

# a trial's files (its checkpoint directory)
STATE_FILE = "state.pt"       # a running trial's checkpoint (engine state, every epoch)
RESULT_FILE = "result.json"   # a finished trial's metrics, confusion matrices and history
MODEL_FILE = "student.pt"     # a finished trial's selected student (what ipb predict loads)
TEACHER_FILE = "teacher.pt"   # an MPL-family trial's pre-trained teacher, for later trials
METHOD_DIR = "method"         # a method's own files (gan_balanced: sample grid, realism)
# where the MLflow run holds them
ARTIFACT_DIR = "model"
MODEL_ARTIFACT = f"{ARTIFACT_DIR}/{MODEL_FILE}"
TEACHER_ARTIFACT = f"{ARTIFACT_DIR}/{TEACHER_FILE}"


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
                not pretrains_teacher(m.name):
            return None
        cfg = apply(cfg, {"method.name": "supervised", "train.epochs": m.teacher_pretrain_epochs,
                          "train.finetune_epochs": 0})
    # every method key at its default but these (multi_label_loss=partial puts multi-label
    # colonies in L: the teacher trains on them)
    keep = ("method.name", "method.multi_label_loss")
    neutral = {k: v for k, v in identity(Config()).items() if k.startswith("method.")
               and k not in keep}
    # the views of unlabeled patches only: the supervised CNN never sees them
    neutral.update({f"augment.{k}": getattr(AugmentConfig(), k)
                    for k in ("weak", "strong_p", "strong_brightness", "strong_contrast")})
    flat = {**{k: v for k, v in identity(cfg).items()
               if not k.startswith("method.") or k in keep}, **neutral}
    return "teacher-" + config_hash(flat, cfg.train.fold, cfg.train.seed)
