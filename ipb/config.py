"""Configuration: frozen dataclasses, profiles, YAML files and `key.sub=value` overrides.

    ipb config --profile smoke model.arch=hrnet_w18 train.epochs=3   # print the resolved config

Every switch named in shared/PAPER.md is a field here with the default named there. A config is
built by `load_config(profile, overrides)`: profile defaults (or a YAML file), then overrides,
each checked against the field's type; an unknown key or a bad value raises `ConfigError` naming
the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

PAPER_CLASSES = ("Debris", "Dense", "Differentiated", "Spread")


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key and what is allowed."""


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic phase-contrast wells (PAPER.md section 1 imbalance by default)."""
    wells: int = 24
    size: int = 1024                  # px, square images
    bit_depth: Literal[8, 16] = 8
    time_points: int = 1              # >1: time-lapse series, colonies grow and may change class
    colonies_per_well: int = 14
    # fractions of ALL colonies; the four single-class ones are renormalised over the rest
    class_mix: tuple[tuple[str, float], ...] = (
        ("Spread", 0.56), ("Dense", 0.21), ("Debris", 0.19), ("Differentiated", 0.035))
    multi_label_frac: float = 0.12
    difficulty: float = 0.5           # 0 = clean and separable, 1 = noisy, blurred, overlapping
    # >0: class-independent conditions drawn per well (gain, blur, illumination, cell scale;
    # ipb/data/synth_render.py NUISANCE), so a few labels see few of U's conditions
    well_nuisance: float = 0.0
    pixel_size_um: float = 0.8
    seed: int = 0


@dataclass(frozen=True)
class SegmentationConfig:
    """Colony segmentation (PAPER.md section 2); lengths in um, scaled by `pixel_size_um`."""
    order: Literal["paper", "code"] = "paper"
    pixel_size_um: float = 0.8
    blur_px: int = 3                  # Gaussian kernel, px (the paper's 3x3)
    entropy_radius_um: float = 2.4    # disk radius 3 px at 0.8 um/px
    opening_radius_um: float = 2.4
    min_area_um2: float = 1280.0      # 2000 px at 0.8 um/px
    well_mask: Literal["auto", "on", "off"] = "auto"
    split_touching: bool = True       # watershed on the distance map to cut merged colonies
    max_merge_area_um2: float = 250000.0  # objects larger than this are candidates for splitting
    pad_px: int = 8                   # margin added around each colony box


@dataclass(frozen=True)
class DataConfig:
    """Where the data live. Empty `table` = the synthetic data set cached under `cache_dir`."""
    table: str = ""
    cache_dir: str = "~/.cache/ipb"
    min_colony_px: int = 32           # crops with a side shorter than this are rejected at ingest
    ingest_workers: int = 2
    shard_size: int = 8               # images per ingest shard (unit of resume)
    # a labelled box whose segmented pixels cover less of it than this gets a mask made inside
    # the box (mask_source box_local / box); the label is never dropped
    box_min_cover: float = 0.2
    # metadata: an image's own pixel size (OME/ImageJ/TIFF tags) wins over
    # segmentation.pixel_size_um; config: always segmentation.pixel_size_um
    pixel_size_from: Literal["metadata", "config"] = "metadata"
    # class names to rename at ingest, "FROM=TO" (e.g. "red blood cell=RBC"); applied before
    # spellings that differ only in case are merged; every rename is listed in the manifest
    label_map: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitConfig:
    """Folds: U 80% / L 10% / T 10% per class (PAPER.md section 1)."""
    folds: int = 10
    labeled_fraction: float = 0.10
    test_fraction: float = 0.10
    val_fraction: float = 0.20        # of L, for model selection
    group_by: Literal["none", "source", "group"] = "none"
    seed: int = 0
    allow_weak_val: bool = False      # run even when val holds < 2 classes (selection is noise)


@dataclass(frozen=True)
class PatchConfig:
    """Patch sampling (PAPER.md section 3)."""
    size: int = 128                   # single-scale patch side
    ms_size: int = 224                # multi-scale (ms_* archs): this patch + its centre half
    min_cover: float = 0.25
    max_tries: int = 10               # the reference code: 2 (and accepts the 2nd draw anyway)
    test_patches: int = 1             # >1: average the softmax of K patches inside the mask


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation (PAPER.md section 4). chain=paper: the paper's chain on all training patches."""
    chain: Literal["paper", "code"] = "paper"
    p: float = 0.25
    strong_p: float = 0.5
    rotate_deg: float = 180.0
    brightness: float = 0.2
    contrast: float = 0.2
    strong_brightness: float = 0.4
    strong_contrast: float = 0.4
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    weak: Literal["flips", "none"] = "flips"
    normalize: bool = True
    # pixel: brightness scales and contrast stretches the [0,1] patch, then the z-score uses the
    # incoming patch's statistics, so on a low-contrast patch (std ~0.02) a x1.4 brightness
    # shifts the network input by ~10 std. normalized: z-score first, then brightness is an
    # offset of +-brightness std and contrast a factor on the z-scores (bounded shifts)
    jitter_space: Literal["pixel", "normalized"] = "pixel"


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vgg19"               # any name in ipb.models registry
    width: float = 1.0                # channel multiplier; 1.0 = the paper's network
    dropout: float = 0.5


@dataclass(frozen=True)
class MethodConfig:
    """Method hyper-parameters (PAPER.md section 6); each method reads the ones it uses.

    The keys after `simclr_proj_dim` are the robust switches of MPL/IPB (ipb/methods/mpl.py):
    each is off (the paper's behaviour) by default; `preset: robust` turns on the set that the
    study (sweeps/study.py) found to work -- a row of its own, never "the paper's IPB".
    """
    name: str = "ipb"                 # any name in ipb.methods registry
    preset: Literal["paper", "robust", "learn"] = "paper"
    threshold: float = 0.65
    temperature: float = 1.0          # UDA softmax temperature on the weak view
    lambda_u: float = 1.0
    uda_steps: int = 1000
    student_mask: bool = True
    soft_targets: bool = False
    h_sign: Literal["new_minus_old", "old_minus_new"] = "new_minus_old"
    h_baseline_ema: float = 0.0
    student_warmup_epochs: int = 10
    student_warmup_lr_scale: float = 0.1
    multi_label: bool = False
    teacher_pretrain_epochs: int = 0  # supervised teacher epochs before MPL/IPB starts
    # the pre-trained teacher MPL starts from: its best validation epoch (= the supervised
    # row's selected model, so a sweep reuses that run's weights) or its last epoch
    teacher_select: Literal["val", "last"] = "val"
    simclr_temperature: float = 0.5
    simclr_epochs: int = 100
    simclr_proj_dim: int = 64
    # -- robust switches (off = the paper) ----------------------------------------------------
    student_init: Literal["random", "teacher"] = "random"
    ema: float = 0.0                  # >0: evaluate an EMA of the student with this decay
    h_mode: Literal["paper", "clean"] = "paper"   # clean: x_l-only eval forwards around the step
    mpl_target: Literal["teacher_strong", "student"] = "teacher_strong"
    teacher_lr: Literal["restart", "continue"] = "restart"   # schedule at the MPL stage start
    student_lr_scale: float = 1.0     # the student's lr factor after its warm-up (0.1: a student
                                      # started from the teacher is fine-tuned, not re-trained)
    label_smoothing: float = 0.0      # on the student's pseudo-label loss
    bn_recalibrate: int = 0           # >0: re-estimate the student's BN on this many clean U batches
    dist_align: Literal["off", "uniform", "prior"] = "off"
    dist_prior: tuple[float, ...] = ()   # class order of the table; used by dist_align=prior
    threshold_mode: Literal["fixed", "relative", "flexmatch"] = "fixed"
    # the teacher's class of an unlabeled colony, at each epoch's start (IPB's balancing pass):
    # from pseudo_patches patches inside its mask (1 = the paper's one patch); student_target
    # = colony: the student learns that class (and its confidence masks) for every patch of the
    # colony that epoch, instead of the teacher's guess on the one patch in the batch
    pseudo_patches: int = 1
    student_target: Literal["batch", "colony"] = "batch"
    # issue 18, a student that can move: soft targets sharpened as p^(1/T) (1 = off; the mask
    # is still the unsharpened confidence); the MPL stage as passes over U (0 = train.epochs x
    # train.steps_per_epoch steps; > 0 sets the steps per epoch so the stage sees U this many
    # times, as kekmodel/MPL-pytorch and USB state their budgets); h divided by a running RMS
    # (after the baseline), so the MPL term's size does not vanish with the student's lr
    sharpen_temperature: float = 1.0
    mpl_passes: float = 0.0
    h_normalize: bool = False
    # -- the related methods and switches of issue 12 (each read by the code named) -----------
    # partial: a labeled fraction of the multi-label colonies joins L, `A|B` = "A or B, none of
    # the others" (ipb/methods/partial.py); ignore: they only ever join U (the paper)
    multi_label_loss: Literal["ignore", "partial"] = "ignore"
    fixmatch_threshold: float = 0.95  # fixmatch, abc: confidence cut-off (USB's p_cutoff)
    # contrastive_clustering: the row's result is the encoder fine-tuned on L, or the cluster
    # head mapped to classes by Hungarian matching on L (no fine-tuning)
    cc_eval: Literal["finetune", "hungarian"] = "finetune"
    gan_epochs: int = 0               # gan_balanced's GAN stage; 0 = train.epochs
    # ipb predict on time series (ipb/temporal.py): class changes allowed along a colony track,
    # "From>To" with * for any class (staying is always allowed; a class named in no rule may
    # change freely), and the probability per frame of an allowed change
    temporal_transitions: tuple[str, ...] = ("Dense>Spread", "Dense>Differentiated",
                                             "Spread>Differentiated", "*>Debris")
    temporal_change: float = 0.05


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 32
    unlabeled_batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step_epoch: int = 100          # lr / 10 here
    steps_per_epoch: int = 0          # 0 = len(U) / unlabeled_batch_size
    num_workers: int = 2
    cpus_per_worker: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 1.0      # < 1 packs several small trials onto one GPU
    amp: bool = True                  # only used on GPU
    # NHWC weights and batches: the same computation up to float summation order (not in the
    # trial hash); benchmarks/train_step.py measures it against NCHW per network
    channels_last: bool = False
    # the no-grad passes (evaluation, the teacher's colony pass) on an NHWC copy on CPU: x1.46
    # small_cnn, x1.67 vgg19 (benchmarks/eval_pass.py); off: the model as it trains (not hashed)
    eval_channels_last: bool = True
    select_on: Literal["val", "test"] = "val"
    eval_every: int = 1
    finetune_epochs: int = 0          # optional fine-tune of the selected student on L
    # train: a Ray Train worker group (DDP over num_workers, restarts on failure); inline: one
    # worker in the trial's own process, ~25 s less start-up a trial on 2 cores (ipb/inline.py)
    runner: Literal["train", "inline"] = "train"
    max_failures: int = 2
    seed: int = 0
    fold: int = 0
    storage: str = "~/ray_results"


@dataclass(frozen=True)
class SweepConfig:
    folds: tuple[int, ...] = (0, 1)
    seeds: tuple[int, ...] = (0,)
    max_concurrent: int = 1
    num_samples: int = 20             # Optuna trials in sweeps/search.py
    archs: tuple[str, ...] = ()       # empty = every arch of the sweep script
    limit: int = 0                    # >0: only the first N configurations (quick checks)
    fractions: tuple[float, ...] = ()  # empty = the paper's labeled fractions
    # Optuna study of sweeps/search.py: a SQLAlchemy URL (postgresql://...) or a journal file on
    # a file system every node shares; empty = SQLite in train.storage (a local path only)
    study_storage: str = ""


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI wins when set
    experiment: str = ""
    # every: each trial logs its `student` and `colonies` models (~10-25 s a trial on 2 cores,
    # benchmarks/trial_time.py); champion: a sweep's trials keep student.pt only and the sweep
    # logs the two models for its champion alone (the study, where nobody serves the others)
    log_models: Literal["every", "champion"] = "every"


@dataclass(frozen=True)
class Config:
    profile: str = "smoke"
    synth: SynthConfig = field(default_factory=SynthConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# Profiles are override lists on top of the dataclass defaults (= the paper's numbers).
PROFILES: dict[str, dict[str, Any]] = {
    # the teacher is pre-trained as long as the supervised CNN trains (PAPER.md section 6)
    "paper": {"profile": "paper", "split.folds": 10, "sweep.folds": list(range(10)),
              "method.teacher_pretrain_epochs": 200,
              "train.use_gpu": True, "sweep.max_concurrent": 8, "train.num_workers": 1,
              "train.cpus_per_worker": 6},
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
              "method.student_warmup_epochs": 1, "method.uda_steps": 50,
              "method.teacher_pretrain_epochs": 15, "method.simclr_epochs": 4,
              "sweep.folds": [0, 1], "sweep.max_concurrent": 2},
    # the CPU study of sweeps/study.py: a paper-sized SYNTHETIC set (17.9k colonies, the
    # paper's class mix) where labels are the bottleneck (issue 18): difficulty 0.5 with
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
              "method.student_warmup_epochs": 1, "method.uda_steps": 100,
              "method.teacher_pretrain_epochs": 20, "method.simclr_epochs": 8,
              # all 10 folds: with 5 pairs the corrected test could only detect ~0.08 (the
              # paired differences' SD is ~0.05 at 1 % labelled), more than any row gained
              "sweep.folds": list(range(10)), "sweep.max_concurrent": 2},
}


def _allowed(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert `value` to the annotated type `tp`; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key {key!r}: bad value {value!r}; allowed: {_allowed(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (tuple,):
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith(("[", "(")) else [value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no",
                                                        "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if f != int(f):
            raise bad
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        return str(value)
    return value


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls, globalns=globals(), localns=globals())


def _set(obj: Any, path: list[str], value: Any, full: str) -> Any:
    name = path[0]
    names = [f.name for f in fields(obj)]
    if name not in names:
        raise ConfigError(f"unknown config key {full!r}; allowed here: {', '.join(names)}")
    current = getattr(obj, name)
    if len(path) == 1:
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full!r} is a section; give a mapping")
            for k, v in value.items():
                current = _set(current, [k], v, f"{full}.{k}")
            return replace(obj, **{name: current})
        return replace(obj, **{name: _coerce(full, value, _hints(type(obj))[name])})
    if not is_dataclass(current):
        raise ConfigError(f"unknown config key {full!r}: {name!r} is not a section")
    return replace(obj, **{name: _set(current, path[1:], value, full)})


# `method.preset`: a named set of method switches, applied before the other keys of the same
# update (so `method.preset=robust method.ema=0` is the preset without the EMA). `paper` puts
# every switch back to the paper's value. `robust` is the set sweeps/study.py found to work on
# the development data (synthetic seed 1, validation split); see README "The study".
_SWITCHES = ("student_init", "ema", "h_mode", "h_sign", "h_baseline_ema", "mpl_target",
             "teacher_lr", "student_lr_scale", "label_smoothing", "bn_recalibrate",
             "dist_align", "dist_prior", "threshold_mode", "pseudo_patches", "student_target",
             "soft_targets", "sharpen_temperature", "mpl_passes", "h_normalize")
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {f"method.{k}": getattr(MethodConfig(), k) for k in _SWITCHES},
    "robust": {"method.student_init": "teacher", "method.ema": 0.99, "method.h_mode": "clean",
               "method.h_sign": "old_minus_new", "method.h_baseline_ema": 0.95,
               "method.mpl_target": "student", "method.teacher_lr": "continue",
               "method.student_lr_scale": 0.1, "method.label_smoothing": 0.1,
               "method.bn_recalibrate": 8, "method.threshold_mode": "relative"},
}
# `learn` (issue 18): robust, plus what lets the student learn what its teacher does not know,
# each its own key (an --ablation row each): targets from the teacher's view of the whole
# colony (mean softmax of 4 patches in its mask) rather than of the one patch the student sees,
# soft and sharpened; the student at the full lr for 2 passes over U; h normalised; then
# fine-tuning on L (3 epochs, as the study's "+ fine-tune" rows). Chosen from the literature
# (Noisy Student / MPL-pytorch / FixMatch) before any study run. 4 patches and 2 passes are
# the 2-core budget: 8 and 3 took 10 min a trial (the colony pass is ~60 % of an epoch)
PRESETS["learn"] = {**PRESETS["robust"], "method.student_target": "colony",
                    "method.pseudo_patches": 4, "method.soft_targets": True,
                    "method.sharpen_temperature": 0.5, "method.student_lr_scale": 1.0,
                    "method.mpl_passes": 2.0, "method.h_normalize": True,
                    "train.finetune_epochs": 3}


def _with_preset(updates: dict[str, Any]) -> dict[str, Any]:
    nested = updates.get("method") if isinstance(updates.get("method"), dict) else {}
    name = updates.get("method.preset", nested.get("preset"))
    if name is None:
        return updates
    if name not in PRESETS:
        raise ConfigError(f"config key 'method.preset': bad value {name!r}; allowed: "
                          f"{' | '.join(map(repr, PRESETS))}")
    return {**PRESETS[name], **updates}


def apply(cfg: Config, updates: dict[str, Any]) -> Config:
    """Apply dotted-key (or nested) updates, validating every key and value."""
    for key, value in _with_preset(updates).items():
        cfg = _set(cfg, key.split("."), value, key)
    return validate(cfg)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["train.epochs=3", "model.arch=vgg19"]` -> dict; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML "
                              f"({_yaml_problem(e)})") from None
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()   # YAML 1.1 reads on/off/yes/no as booleans; keep the word
        out[key.strip()] = value
    return out


def load_config(profile: str = "smoke", overrides: list[str] | dict | None = None) -> Config:
    """A profile name (smoke, paper, study) or a YAML file path, then key=value overrides."""
    cfg = Config()
    if profile in PROFILES:
        cfg = apply(cfg, PROFILES[profile])
    elif profile.endswith((".yaml", ".yml")) or os.path.exists(profile):
        path = Path(profile)
        if not path.is_file():
            raise ConfigError(f"profile file {profile!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"profile file {profile!r} is not valid YAML: {_yaml_problem(e)}; "
                              "fix it (a mapping of section: {key: value})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"profile file {profile!r} must hold a mapping")
        base = data.pop("base_profile", "smoke")
        cfg = load_config(base)
        cfg = apply(cfg, {"profile": data.pop("profile", path.stem)})
        cfg = apply(cfg, data)
    else:
        raise ConfigError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)} "
                          "or a path to a YAML file")
    if overrides:
        if not isinstance(overrides, dict):
            overrides = parse_overrides(list(overrides))
        cfg = apply(cfg, overrides)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"train.epochs": 3, ...} (MLflow params, trial hashes)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def to_yaml(cfg: Config) -> str:
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)


def config_hash(cfg: Config | dict, *extra: Any) -> str:
    """Stable short hash of a resolved config (+ fold, seed, ...) used to identify trials."""
    d = to_dict(cfg) if is_dataclass(cfg) else cfg
    blob = json.dumps([flatten(d), [str(e) for e in extra]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# settings that say where/how a trial runs, not what it computes
_NOT_IN_TRIAL_HASH = ("profile", "tracking.", "sweep.", "train.storage", "data.cache_dir",
                      "data.ingest_workers", "train.num_workers", "train.cpus_per_worker",
                      "train.max_failures", "split.allow_weak_val", "train.channels_last",
                      "train.eval_channels_last",
                      "data.label_map")


def identity(cfg: Config) -> dict[str, Any]:
    """The flat config keys that decide what a trial computes (not where or how fast)."""
    return {k: v for k, v in flatten(to_dict(cfg)).items()
            if not any(k == p or k.startswith(p) for p in _NOT_IN_TRIAL_HASH)}


def trial_hash(cfg: Config) -> str:
    """Identity of a trial (resolved config incl. fold and seed) for resume and dedup."""
    return config_hash(identity(cfg), cfg.train.fold, cfg.train.seed)


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of `to_dict` (used to ship configs to Ray workers as plain dicts)."""
    return apply(Config(), {k: v for k, v in flatten(d).items()})


def is_uri(p: str | os.PathLike) -> bool:
    """s3://bucket/x, gs://..., file://..., postgresql://...: a location with a scheme."""
    return "://" in str(p)


def expand_path(p: str) -> Path:
    """A local path with ~ and $VARS expanded (not for URIs: see `expand_location`)."""
    return Path(os.path.expandvars(os.path.expanduser(p)))


def expand_location(p: str) -> str:
    """A URI as given (s3://bucket/prefix, with any ?endpoint_override=... query), else the
    absolute local path: Path() would turn s3://b/x into s3:/b/x."""
    return str(p) if is_uri(p) else str(expand_path(p).absolute())


# -- value ranges (issue 13) ------------------------------------------------------------------
# Checked after every update (`apply`), so a profile, YAML file or override that types a
# negative learning rate or a fraction above 1 is refused before any work starts. Intervals:
# "[" / "]" include the end, "(" / ")" exclude it.
RANGES: dict[str, str] = {
    "synth.wells": "[1, inf)", "synth.size": "[32, inf)", "synth.time_points": "[1, inf)",
    "synth.colonies_per_well": "[0, inf)", "synth.multi_label_frac": "[0, 1]",
    "synth.difficulty": "[0, 1]", "synth.well_nuisance": "[0, 3]", "synth.pixel_size_um": "(0, inf)",
    "segmentation.pixel_size_um": "(0, inf)", "segmentation.blur_px": "[0, 99]",
    "segmentation.entropy_radius_um": "(0, inf)", "segmentation.opening_radius_um": "[0, inf)",
    "segmentation.min_area_um2": "[0, inf)", "segmentation.max_merge_area_um2": "(0, inf)",
    "segmentation.pad_px": "[0, inf)",
    "data.min_colony_px": "[1, inf)", "data.ingest_workers": "[1, inf)",
    "data.shard_size": "[1, inf)", "data.box_min_cover": "[0, 1]",
    "split.folds": "[1, inf)", "split.labeled_fraction": "(0, 1]",
    "split.test_fraction": "[0, 1)", "split.val_fraction": "[0, 1)",
    "patch.size": "[16, inf)", "patch.ms_size": "[16, inf)", "patch.min_cover": "[0, 1]",
    "patch.max_tries": "[1, inf)", "patch.test_patches": "[1, inf)",
    "augment.p": "[0, 1]", "augment.strong_p": "[0, 1]", "augment.rotate_deg": "[0, 360]",
    "augment.brightness": "[0, inf)", "augment.contrast": "[0, inf)",
    "augment.strong_brightness": "[0, inf)", "augment.strong_contrast": "[0, inf)",
    "model.width": "(0, inf)", "model.dropout": "[0, 1)",
    "method.threshold": "[0, 1]", "method.temperature": "(0, inf)",
    "method.lambda_u": "[0, inf)", "method.uda_steps": "[0, inf)",
    "method.h_baseline_ema": "[0, 1)", "method.student_warmup_epochs": "[0, inf)",
    "method.student_warmup_lr_scale": "(0, inf)", "method.teacher_pretrain_epochs": "[0, inf)",
    "method.simclr_temperature": "(0, inf)", "method.simclr_epochs": "[0, inf)",
    "method.simclr_proj_dim": "[1, inf)", "method.ema": "[0, 1)",
    "method.label_smoothing": "[0, 1)", "method.bn_recalibrate": "[0, inf)",
    "method.pseudo_patches": "[1, inf)", "method.sharpen_temperature": "(0, inf)",
    "method.mpl_passes": "[0, inf)", "method.student_lr_scale": "(0, inf)",
    "method.fixmatch_threshold": "[0, 1]", "method.gan_epochs": "[0, inf)",
    "method.temporal_change": "(0, 1)",
    "train.epochs": "[1, inf)", "train.batch_size": "[1, inf)",
    "train.unlabeled_batch_size": "[1, inf)", "train.lr": "(0, inf)",
    "train.momentum": "[0, 1)", "train.weight_decay": "[0, inf)",
    "train.lr_step_epoch": "[1, inf)", "train.steps_per_epoch": "[0, inf)",
    "train.num_workers": "[1, inf)", "train.cpus_per_worker": "[0, inf)",
    "train.gpus_per_worker": "(0, inf)", "train.eval_every": "[1, inf)",
    "train.finetune_epochs": "[0, inf)", "train.max_failures": "[-1, inf)",
    "train.fold": "[0, inf)",
    "sweep.max_concurrent": "[1, inf)", "sweep.num_samples": "[1, inf)", "sweep.limit": "[0, inf)",
}


def _in_range(value: float, spec: str) -> bool:
    lo, hi = (float(v) for v in spec[1:-1].split(","))
    return (lo <= value if spec[0] == "[" else lo < value) and \
        (value <= hi if spec[-1] == "]" else value < hi)


def validate(cfg: Config) -> Config:
    """`cfg` when every value in RANGES lies in its interval; else ConfigError naming the key."""
    for key, spec in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not _in_range(float(value), spec):
            raise ConfigError(f"config key {key!r}: {value!r} is out of range; allowed {spec}")
    return cfg


def _yaml_problem(e: Exception) -> str:
    """One line from a YAML parser error: what and where (its own message spans many)."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{where}{what}"


__all__ = [n for n in dir() if not n.startswith("_") and n != "annotations"]
