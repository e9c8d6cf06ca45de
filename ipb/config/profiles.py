"""Named starting points: profiles (a run's scale) and presets (a set of method switches).

    python -c "from ipb.config.profiles import PRESETS; print(PRESETS['learn'])"
"""
from __future__ import annotations

import functools
from typing import Any

from ipb.config.schema import Config, ConfigError
from ipb.config.settings import settings_classes, settings_presets

# Profiles are override lists on top of the dataclass defaults (= the paper's numbers).
PROFILES: dict[str, dict[str, Any]] = {
    # the teacher is pre-trained as long as the supervised CNN trains (PAPER.md section 6).
    # The cluster's profile: a trial's weights go to MLflow once (model/student.pt), and the
    # sweep logs the `student` and `colonies` models of its champion alone; every trial's
    # (tracking.log_models=every) is three copies of its weights through one MLflow server
    "paper": {"profile": "paper", "split.folds": 10, "sweep.folds": list(range(10)),
              "method.teacher_pretrain_epochs": 200,
              "train.use_gpu": True, "sweep.max_concurrent": 8, "train.num_workers": 1,
              "train.cpus_per_worker": 6, "tracking.log_models": "champion"},
    # the main job (`ipb run`): 1,200 SYNTHETIC colonies, the small fast network at 48 px and
    # budgets at which the supervised CNN is well above chance in ~30 s of CPU; 20 % test
    # colonies (~240 a fold) so that a row is not decided by one minority colony
    "smoke": {"profile": "smoke", "synth.wells": 60, "synth.size": 1024,
              "synth.colonies_per_well": 20, "split.folds": 5, "split.labeled_fraction": 0.2,
              "split.test_fraction": 0.2, "patch.size": 48, "patch.ms_size": 96,
              "model.arch": "small_cnn", "model.width": 1.0, "model.dropout": 0.5,
              "train.epochs": 4, "train.batch_size": 32, "train.unlabeled_batch_size": 32,
              "train.steps_per_epoch": 50, "train.lr_step_epoch": 12, "train.num_workers": 1,
              "train.optimizer": "adam", "train.lr": 0.002,
              "method.mpl.student_warmup_epochs": 1, "method.mpl.uda_steps": 50,
              "method.teacher_pretrain_epochs": 15, "method.pretext.epochs": 4,
              "sweep.folds": [0, 1], "sweep.max_concurrent": 2},
    # the CPU study of sweeps/study.py: a paper-sized SYNTHETIC set (17.9k colonies, the
    # paper's class mix) where labels are the bottleneck: difficulty 0.5 with
    # class-independent nuisance per well (ideal-observer ceiling 0.990,
    # benchmarks/ideal_observer.py), test wells unseen in training (group_by=source), and the
    # labeled fraction chosen on supervised runs only, on a development partition
    # (split.seed=1), by the rule fixed before any run (`python sweeps/study.py --calibrate`):
    # the largest fraction whose supervised mean TPR is >= 0.08 below its 50 % score. Measured
    # (3 folds): 1 % 0.761, 2 % 0.807, 5 % 0.844, 10 % 0.844, 50 % 0.847 -> 1 % (headroom
    # 0.086; past 5 % the network's budget, not the labels, is the limit). The small fast
    # network at 48 px; the supervised row trains as long as the teacher is pre-trained: it
    # IS the teacher MPL/IPB start from
    "study": {"profile": "study", "synth.wells": 320, "synth.size": 1536,
              "synth.colonies_per_well": 56, "synth.difficulty": 0.5,
              "synth.well_nuisance": 1.0, "split.folds": 10, "split.group_by": "source",
              "split.labeled_fraction": 0.01,
              "patch.size": 48, "patch.ms_size": 96, "model.arch": "small_cnn",
              "model.width": 1.0, "model.dropout": 0.5,
              "train.epochs": 5, "train.batch_size": 32, "train.unlabeled_batch_size": 32,
              "train.steps_per_epoch": 100, "train.lr_step_epoch": 14, "train.num_workers": 1,
              "train.optimizer": "adam", "train.lr": 0.002, "train.eval_every": 1,
              "train.runner": "inline", "tracking.log_models": "champion",
              "method.mpl.student_warmup_epochs": 1, "method.mpl.uda_steps": 100,
              "method.teacher_pretrain_epochs": 20, "method.pretext.epochs": 8,
              # all 10 folds: with 5 pairs the corrected test could only detect ~0.08 (the
              # paired differences' SD is ~0.05 at 1 % labelled), more than any row gained
              "sweep.folds": list(range(10)), "sweep.max_concurrent": 2,
              # bf16 (and NHWC) where the CPU has it natively (AMX / AVX512-BF16): small_cnn's
              # MPL step x1.56-1.66, its colony pass x1.86, 62 -> 84 trials an hour on this
              # AMX CPU (benchmarks/trial_time.py); fp32 NCHW elsewhere, under the old hashes
              "train.cpu_amp": "auto"},
}


# `method.preset`: a named set of keys, declared by a method's settings (PRESETS beside its
# fields, e.g. MplSettings in ipb/methods/mpl.py), applied before the other keys of the same
# update. `paper` puts every key of the settings' SWITCHES back to its default.
def _presets() -> dict[str, dict[str, Any]]:
    default = Config()
    paper = {k: functools.reduce(getattr, k.split("."), default)
             for cls in settings_classes().values() for k in getattr(cls, "SWITCHES", ())}
    declared = settings_presets()
    if "paper" in declared:
        raise ConfigError("a method's settings declare preset 'paper', the built-in one that "
                          "puts every SWITCHES key back to its default; name it otherwise")
    return {"paper": paper, **declared}


PRESETS: dict[str, dict[str, Any]] = _presets()
