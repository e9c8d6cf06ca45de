"""The method contract shared by every algorithm (USB-style: one short file per method).

    python -c "from ipb.methods import create_method; help(create_method)"

The engine (ipb/engine.py) asks a method which `phase` an epoch is, feeds `train_step` the
batch that phase needs, and evaluates `eval_model()`. Methods never see Ray or MLflow: the
distributed wrapper comes in as `wrap` (DDP under Ray Train, identity in unit tests).
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ipb.config import Config
from ipb.config.load import native_cpu_bf16, resolve_cpu_amp
from ipb.methods.partial import candidate_nll, partial_label_loss
from ipb.models import create_model

_REGISTRY: dict[str, type["Method"]] = {}

# batch keys per phase: what the engine must put in the batch dict
PHASE_INPUTS = {
    "supervised": ("x_l", "y_l"),           # labeled patches, GT-balanced sampler
    "mpl": ("x_l", "y_l", "x_uw", "x_us", "i_u"),  # + weak/strong unlabeled views, their U index
    "contrastive": ("x_1", "x_2"),          # two strong views of U+L patches
    "clustering": ("x_1", "x_2", "x_l", "y_l"),    # contrastive + a labeled batch (cluster map)
    "triplet": ("x_1", "x_2", "x_n"),       # + a view of a neighbouring patch, same colony
    "gan": ("x_l", "y_l", "n_l"),           # labeled batch + L's class counts
}
# every labeled batch also carries "n_l" (L's class counts) and, with
# method.multi_label_loss=partial, "c_l" (B x C candidate classes; ipb/methods/partial.py)


def register_method(cls: type["Method"]) -> type["Method"]:
    _REGISTRY[cls.name] = cls
    return cls


def method_class(name: str) -> type["Method"]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(list_methods())}")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def create_method(name: str, cfg: Config, num_classes: int, device: str | torch.device = "cpu",
                  wrap: Callable[[nn.Module], nn.Module] | None = None) -> "Method":
    return method_class(name)(cfg, num_classes, torch.device(device), wrap or (lambda m: m))


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def inference_model(model: nn.Module, nhwc: bool) -> nn.Module:
    """`model` (unwrapped, eval mode) for a no-grad pass over many patches. With `nhwc` an
    NHWC (channels_last) copy: with one CPU thread small_cnn predicts x1.46 faster that way,
    vgg19 x1.67, hrnet_w18 level (benchmarks/eval_pass.py), while small_cnn's training steps
    gain only x1.08 (train.channels_last);
    the same computation up to float summation order. The caller restores `model.train()`."""
    model = unwrap(model)
    if not nhwc:
        return model.eval()
    return copy.deepcopy(model).eval().to(memory_format=torch.channels_last)


def forward_chunks(n: int, size: int, k: int, cut: bool = True):
    """Colony ranges [a, b) of an inference pass over n colonies with k patches each: chunks
    of `size` colonies, a full one cut into d equal passes (d the largest divisor of `size` up
    to k) of size * k / d patches: at least `size`, under 2 * size when size is a power of
    two. One 1024-patch pass (256 colonies x 4) was 25% slower on CPU than 256-patch passes
    (the activations leave the cache). The last chunk is kept whole, so every pass is as large
    as before or an exact part of one, and on CPU the softmax stays bit-identical (a batch of
    <= 12 patches takes another oneDNN kernel and differs in the last bits; >= 16 agree, every
    registered model, NCHW and NHWC). Callers pass cut=False on a GPU: one pass per chunk, the
    old passes (cuDNN may choose by batch size, and a GPU is fed better by large batches)."""
    d = max(q for q in range(1, max(k, 1) + 1) if size % q == 0) if cut else 1
    for s in range(0, n, size):
        e = min(n, s + size)
        step = size // d if e - s == size else e - s
        for a in range(s, e, step):
            yield a, min(e, a + step)


def cpu_bf16(cfg: Config, device: str | torch.device) -> bool:
    """Whether passes on `device` run under bf16 autocast: a CPU with train.cpu_amp=bf16 (auto
    resolved here when a config was built without `load_config`)."""
    if torch.device(device).type != "cpu" or resolve_cpu_amp(cfg.train.cpu_amp) != "bf16":
        return False
    if not native_cpu_bf16():
        warnings.warn("train.cpu_amp=bf16 on a CPU without native bf16 (AMX or AVX512-BF16): "
                      "oneDNN emulates it, slower than fp32; train.cpu_amp=auto picks fp32 "
                      "here (another trial hash)", RuntimeWarning, stacklevel=2)
    return True


def nhwc_input(x: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if nhwc and x.dim() == 4 else x


def compile_forward(model: nn.Module) -> nn.Module:
    """`model` with its forward compiled in place (train.compile): the module, its weights and
    its state_dict keys stay what they were, so checkpoints and unwrap() do not change."""
    # MPL's grad-share diagnostic backpropagates one graph twice (retain_graph=True), which
    # compiled backwards with donated buffers refuse (torch's own error names this switch)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    functorch_config.donated_buffer = False
    # dropout from eager's random stream: the same masks as an eager run of the same seed
    # (inductor's own generator draws others: a different run, not a rounding difference)
    inductor_config.fallback_random = True
    model.compile()
    return model


def make_optimizer(cfg: Config, params, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr * lr_scale, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr * lr_scale, momentum=t.momentum,
                           weight_decay=t.weight_decay, nesterov=False)


def set_lr(opt: torch.optim.Optimizer, epoch: int, cfg: Config, scale: float = 1.0) -> None:
    """The paper's step schedule: lr / 10 from `train.lr_step_epoch` on."""
    lr = cfg.train.lr * scale * (0.1 if epoch >= cfg.train.lr_step_epoch else 1.0)
    for g in opt.param_groups:
        g["lr"] = lr


@dataclass
class UnlabeledPool:
    """This worker's unlabeled colonies at the start of an epoch (patch positions fixed)."""
    y: np.ndarray              # true class index, -1 unknown (only to score pseudo-labels)
    classes: list[str]
    patches: Callable[[np.ndarray], torch.Tensor]   # clean test-view patches, on the device
    rng: np.random.Generator
    gen: torch.Generator
    order: np.ndarray | None = None   # the epoch's draw order, once the method chose it
    # k clean patches per colony at random positions inside its mask, (len(idx) * k, ...)
    patches_in_mask: Callable[[np.ndarray, int], torch.Tensor] | None = None
    nhwc: bool = False                # the pass on an NHWC copy (train.eval_channels_last)
    cpu: bool = True                  # passes cut to ~256 patches (forward_chunks) on CPU only
    bf16: bool = False                # the pass under CPU bf16 autocast (train.cpu_amp)

    def __len__(self) -> int:
        return len(self.y)

    @torch.no_grad()
    def colony_proba(self, model: nn.Module, k: int = 1, size: int = 256) -> torch.Tensor:
        """(n, C) softmax of `model` (eval mode) per colony: on the epoch's patch (k=1), or the
        mean over k random patches inside the colony's mask (`forward_chunks`)."""
        was = model.training
        net = inference_model(model, self.nhwc)
        out = []
        for a, b in forward_chunks(len(self), size, k, cut=self.cpu):
            idx = np.arange(a, b)
            x = self.patches(idx) if k <= 1 else self.patches_in_mask(idx, k)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits = net(nhwc_input(x, self.nhwc))[0]
            p = torch.softmax(logits.float(), dim=1).cpu()
            out.append(p.view(len(idx), max(k, 1), -1).mean(dim=1))
        model.train(was)
        return torch.cat(out) if out else torch.zeros(0, 0)


class Method:
    """Base: owns models and optimizers; subclasses implement `phase` and `train_step`."""
    name = "base"
    # the phases (keys of PHASE_INPUTS: the batch each step needs) its epochs may be in
    phases: tuple[str, ...] = ()
    uses_unlabeled = False
    # stage 1 is the supervised CNN's training (MPL, IPB, FixMatch, ABC): a sweep hands such a
    # method the supervised row's selected model instead (ipb.lineage.teacher_key)
    pretrains_teacher = False

    def __init__(self, cfg: Config, num_classes: int, device: torch.device,
                 wrap: Callable[[nn.Module], nn.Module]):
        self.cfg, self.num_classes, self.device, self.wrap = cfg, num_classes, device, wrap
        self.step_count = 0
        self.amp = cfg.train.amp and device.type == "cuda"
        self.cpu_bf16 = cpu_bf16(cfg, device)
        self.student_start: dict | None = None   # the student's weights at its stage start

    # -- building blocks -------------------------------------------------------------------
    def new_model(self) -> nn.Module:
        m = self.cfg.model
        model = create_model(m.arch, num_classes=self.num_classes, width=m.width,
                             dropout=m.dropout).to(self.device)
        # bf16 on CPU trains NHWC: oneDNN's bf16 kernels are fastest there (small_cnn's MPL
        # step with every forward in bf16: x1.8 over fp32 NCHW in NHWC, x1.46 in NCHW)
        if self.cfg.train.channels_last or self.cpu_bf16:
            model = model.to(memory_format=torch.channels_last)
        if self.cfg.train.compile:
            compile_forward(model)
        return self.wrap(model)

    def autocast(self):
        # bf16 needs no GradScaler; CPU runs stay in fp32 unless train.cpu_amp says bf16
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if self.cpu_bf16:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @staticmethod
    def labeled_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss a labeled batch teaches: cross-entropy, or with multi_label_loss=partial
        (candidates `c_l` in the batch) the candidate-set + asymmetric + Dice loss."""
        if "c_l" in batch:
            return partial_label_loss(logits, batch["c_l"])
        return F.cross_entropy(logits.float(), batch["y_l"])

    @staticmethod
    def labeled_nll(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-log P(label) on the labeled batch (P(candidate set) under partial labels)."""
        if "c_l" in batch:
            return candidate_nll(logits, batch["c_l"])
        return F.cross_entropy(logits.float(), batch["y_l"])

    def supervised_step(self, model: nn.Module, opt: torch.optim.Optimizer,
                        batch: dict[str, torch.Tensor]) -> float:
        """One step of `labeled_loss` on the labeled batch (supervised, teacher pre-training,
        SimCLR fine-tuning); returns the loss."""
        model.train()
        with self.autocast():
            logits, _ = model(batch["x_l"])
        loss = self.labeled_loss(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.step_count += 1
        return loss.item()

    # -- the contract ----------------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        """Which batch this epoch's steps need (a key of PHASE_INPUTS)."""
        raise NotImplementedError

    def num_epochs(self) -> int:
        """All epochs of the run, pre-training stages included."""
        return self.cfg.train.epochs

    def start_epoch(self, epoch: int) -> None:
        """Learning-rate schedules and warm-ups; called before the epoch's first step."""

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def eval_model(self) -> nn.Module:
        """The network whose predictions are evaluated and saved (the student for MPL/IPB)."""
        raise NotImplementedError

    def train_model(self) -> nn.Module:
        """eval_model() as it is trained: the DDP wrapper under several workers (it keeps the
        ranks' gradients in sync), used by the optional fine-tuning stage."""
        return self.eval_model()

    def phase_model(self, phase: str) -> nn.Module:
        """The network evaluated (and selected on val) during an epoch of `phase`: MPL's
        teacher while it is pre-trained, eval_model() otherwise."""
        return self.eval_model()

    def begin_final_stage(self, pretrained: dict[str, Any] | None) -> None:
        """Called once at the first epoch of the final phase when an earlier stage ran (or was
        loaded): `pretrained` is that stage's selected phase_model state (None = keep the
        last one). MPL starts its teacher (and, switched on, its student) from it."""

    def recalibrates_bn(self) -> int:
        """Batches of clean unlabeled patches to re-estimate eval_model()'s BatchNorm
        statistics on before each evaluation (0 = off; MPL's method.mpl.bn_recalibrate)."""
        return 0

    def pseudo_model(self) -> nn.Module | None:
        """The network whose predictions steer unlabeled resampling (IPB's teacher), if any."""
        return None

    def unlabeled_epoch(self, epoch: int, pool: "UnlabeledPool") -> tuple[np.ndarray, dict]:
        """The order in which this worker's unlabeled colonies are drawn this epoch, and what
        to log about it. Default: a uniform shuffle (MPL). IPB resamples by pseudo-class."""
        return pool.rng.permutation(len(pool)), {}

    def final_report(self, classes: list[str]) -> dict[str, Any]:
        """Once, after the test evaluation: {"metrics": {name: float}, "artifacts": {file name:
        bytes}} the run logs besides its own (gan_balanced's realism check and sample grid)."""
        return {}

    @classmethod
    def check_data(cls, cfg: Config, unlabeled_counts: dict[str, int]) -> None:
        """Raise ValueError naming the reason when this method cannot run on a split whose
        unlabeled part has these counts (class -> n, plus 'multi_label' and 'unlabeled');
        called before any training starts."""

    # -- checkpoints -----------------------------------------------------------------------
    def modules(self) -> dict[str, Any]:
        """Everything with a state_dict that a checkpoint must hold."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        out = {k: (unwrap(v).state_dict() if isinstance(v, nn.Module) else v.state_dict())
               for k, v in self.modules().items()}
        out["step_count"] = self.step_count
        out.update(self.extra_state())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in self.modules().items():
            (unwrap(v) if isinstance(v, nn.Module) else v).load_state_dict(state[k])
        self.step_count = state.get("step_count", 0)
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass
