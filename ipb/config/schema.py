"""The configuration's schema: frozen dataclasses, one per section, and the value ranges.

    python -c "from ipb.config.schema import Config; print(Config().method)"

Every switch named in shared/PAPER.md is a field here with the default named there; RANGES
gives the interval a number must lie in, checked by `validate` after every update.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Literal

from ipb.config.settings import legacy_keys, settings_classes, settings_ranges

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
class MethodCommon:
    """The keys every method family shares (PAPER.md section 6). A method's own keys are its
    settings section `method.<group>` (ipb/config/settings.py): `ipb methods --settings`
    lists them."""
    name: str = "ipb"                 # any name in ipb.methods registry
    # a named set of keys that a method's settings declare (mpl: paper, robust, learn)
    preset: str = "paper"
    lambda_u: float = 1.0             # weight of the unlabeled loss (MPL's UDA term, FixMatch's)
    multi_label: bool = False
    teacher_pretrain_epochs: int = 0  # supervised teacher epochs before MPL/IPB starts
    # the pre-trained teacher MPL starts from: its best validation epoch (= the supervised
    # row's selected model, so a sweep reuses that run's weights) or its last epoch
    teacher_select: Literal["val", "last"] = "val"
    # the teacher's class of an unlabeled colony, at each epoch's start (IPB's balancing pass,
    # MPL's colony targets, FixMatch + IPB): from pseudo_patches patches inside its mask (1 =
    # the paper's one patch)
    pseudo_patches: int = 1
    # the unlabeled stage ("mpl" phase) as passes over U: 0 = train.epochs x
    # train.steps_per_epoch steps; > 0 sets the steps per epoch so the stage sees U this many
    # times, as kekmodel/MPL-pytorch and USB state their budgets
    mpl_passes: float = 0.0
    # partial: a labeled fraction of the multi-label colonies joins L, `A|B` = "A or B, none of
    # the others" (ipb/methods/partial.py); ignore: they only ever join U (the paper)
    multi_label_loss: Literal["ignore", "partial"] = "ignore"
    # ipb predict on time series (ipb/temporal.py): class changes allowed along a colony track,
    # "From>To" with * for any class (staying is always allowed; a class named in no rule may
    # change freely), and the probability per frame of an allowed change
    temporal_transitions: tuple[str, ...] = ("Dense>Spread", "Dense>Differentiated",
                                             "Spread>Differentiated", "*>Debris")
    temporal_change: float = 0.05


def _method_sections() -> list[tuple[str, type, Any]]:
    """`method.<group>` for every method file's settings class; a group or old key that a
    common key already names is refused (it would shadow `method.name`, `method.lambda_u`...)."""
    common = {f.name for f in fields(MethodCommon)}
    for g in settings_classes():
        if g in common:
            raise ConfigError(f"settings group {g!r} is a common method key; name it otherwise")
    for old in legacy_keys():
        if old.split(".", 1)[1] in common:
            raise ConfigError(f"an old key of a method's settings is the common key {old}")
    return [(g, cls, field(default_factory=cls)) for g, cls in settings_classes().items()]


# the common keys, then `method.<group>` for every method file's settings class
MethodConfig = make_dataclass(
    "MethodConfig", _method_sections(), bases=(MethodCommon,), frozen=True)
MethodConfig.__module__ = __name__
MethodConfig.__doc__ = "Method hyper-parameters: the common keys, then one section per method."


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
    # bf16 autocast on CPU (the networks of Method.new_model in NHWC): training steps and the
    # teacher's colony pass; evaluation and the student's forwards that give MPL's h stay
    # fp32. On this AMX CPU, one thread: small_cnn's MPL step x1.56 robust, x1.66 learn, the
    # learn preset's colony pass x1.86 (benchmarks/cpu_bf16.py), x1.58 and vgg19 width 0.25's
    # x1.86 in the paper's h mode (benchmarks/train_step.py). Not the fp32 computation
    # (8-bit mantissa): in the trial hash when not off. auto = bf16 where the CPU has native
    # bf16 (AMX or AVX512-BF16) and the trial is not on a GPU, fixed by load_config on the
    # machine that builds the config (its hash says which ran); without native bf16 oneDNN
    # emulates it, slower than fp32
    cpu_amp: Literal["off", "bf16", "auto"] = "off"
    # NHWC weights and batches: the same computation up to float summation order (not in the
    # trial hash); benchmarks/train_step.py measures it against NCHW per network
    channels_last: bool = False
    # the no-grad passes (evaluation, the teacher's colony pass) on an NHWC copy on CPU: x1.46
    # small_cnn, x1.67 vgg19 (benchmarks/eval_pass.py); off: the model as it trains (not hashed)
    eval_channels_last: bool = True
    # torch.compile each network's forward made by Method.new_model (nn.Module.compile; the
    # same weights and state_dict keys). One CPU thread, per MPL step: small_cnn x1.18 after
    # 5.6 s of compiling, vgg19 width 0.25 x1.24 after 65 s (benchmarks/train_step.py
    # --compile): worth it past a few hundred steps. Not bit-identical to eager (weights differ
    # by ~6e-7 after 5 steps, float rounding as with channels_last), so off by default and, like
    # channels_last, not in the trial hash
    compile: bool = False
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
    # a trial's Tune process runs the next trial (Tune's reuse_actors): without it every trial
    # paid a new process and its imports (torch, MLflow, timm: ~5 s of each study trial's
    # start-up on 2 cores, benchmarks/trial_time.py); false: a fresh process per trial
    reuse_actors: bool = True


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


# -- value ranges -----------------------------------------------------------------------------
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
    "method.lambda_u": "[0, inf)", "method.teacher_pretrain_epochs": "[0, inf)",
    "method.pseudo_patches": "[1, inf)", "method.mpl_passes": "[0, inf)",
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
    **settings_ranges(),     # each method's own keys, declared beside them
}


def _in_range(value: float, spec: str) -> bool:
    lo, hi = (float(v) for v in spec[1:-1].split(","))
    return (lo <= value if spec[0] == "[" else lo < value) and \
        (value <= hi if spec[-1] == "]" else value < hi)


def validate(cfg: Config) -> Config:
    """`cfg` when every value in RANGES lies in its interval; else ConfigError naming the key."""
    for key, spec in RANGES.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        if not _in_range(float(value), spec):
            raise ConfigError(f"config key {key!r}: {value!r} is out of range; allowed {spec}")
    return cfg
