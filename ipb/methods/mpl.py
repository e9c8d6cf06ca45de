"""Meta Pseudo Labels with UDA (the paper's "MPL (Imbalanced)" row), PAPER.md section 6.

    ipb train --method mpl --arch vgg19 --fold 0            # method.preset=robust: the switches

Stage 1 pre-trains the teacher on L (`teacher_pretrain_epochs`; the engine keeps its best
validation epoch, or reuses the supervised run of the same split, seed and budget). Stage 2,
one step in the reference code's order made explicit:
 1 teacher forward on labeled, weak and strong unlabeled in one batch
 2 teacher supervised loss            3 UDA consistency, masked by confidence >= threshold
 4 student loss on the strong view against the teacher's (hard, masked) pseudo-labels
 5 student step; its labeled loss before and after it
 6 MPL feedback h = (after - before) [h_sign] times the teacher's CE on the strong view
 7 teacher step on supervised + UDA + MPL losses.
Every rank runs the same graph even when its confidence mask is empty (DDP needs that).

Robust switches (config `method.mpl.*`, paper behaviour by default; ipb/methods/stabilize.py):
 student_init=teacher  the student starts from the pre-trained teacher, not random weights
 ema>0                 an EMA of the student is evaluated and saved
 h_mode=clean          h from the SAME eval-mode forward on x_l alone before and after the step
                       (BN statistics frozen, no dropout); with h_baseline_ema, a baseline
 h_sign=old_minus_new  the sign the first-order derivation gives: a pseudo-label that lowered
                       the student's labeled loss is reinforced
 mpl_target=student    the teacher's MPL term on the student's targets, weighted by its mask
 teacher_lr=continue   the teacher's schedule goes on at stage 2 (no x10 jump back)
 student_lr_scale      the student's lr factor after warm-up (a student started from the
                       teacher is fine-tuned at a tenth, not re-trained at the full lr)
 pseudo_patches=K     the teacher's class of a colony (for IPB's balancing) from K patches
 student_target=colony the student learns that colony-level class for any patch of the colony
 label_smoothing, dist_align, threshold_mode=relative|flexmatch, bn_recalibrate (the engine).
Issue 18 (preset `learn`): soft_targets + sharpen_temperature (p^(1/T), mask on the unsharpened
confidence); mpl_passes (the engine's stage length in passes over U); h_normalize (h over a
running RMS, so the MPL term keeps its size whatever the student's lr).
Diagnostics every MPL step (logged per epoch; ipb/methods/diagnostics.py): |h| before any
normalisation, the MPL term's share of the teacher's gradient norm (every GRAD_EVERY steps),
the share of U the mask admits, and the accuracy of the student's targets where U's classes
are known (synthetic data: never trained on, only counted).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ipb.config.settings import knob, method_settings
from ipb.methods.base import Method, make_optimizer, register_method, set_lr, unwrap
from ipb.methods.diagnostics import grad_share, snapshot, target_accuracy
from ipb.methods.stabilize import DistAlign, FlexThreshold, ModelEMA, relative_threshold

GRAD_EVERY = 25   # MPL steps between two measurements of the MPL term's gradient share


@method_settings("mpl")
@dataclass(frozen=True)
class MplSettings:
    """MPL's and IPB's own keys: the paper's, then the robust switches (off = the paper).
    Each was `method.<name>` before method settings (legacy=True)."""
    threshold: float = knob(0.65, "[0, 1]", legacy=True)   # UDA's confidence mask, weak view
    temperature: float = knob(1.0, "(0, inf)", legacy=True)   # UDA's softmax T, weak view
    uda_steps: int = knob(1000, "[0, inf)", legacy=True)     # the UDA weight's linear ramp
    student_mask: bool = knob(True, legacy=True)
    soft_targets: bool = knob(False, legacy=True)
    h_sign: Literal["new_minus_old", "old_minus_new"] = knob("new_minus_old", legacy=True)
    h_baseline_ema: float = knob(0.0, "[0, 1)", legacy=True)
    student_warmup_epochs: int = knob(10, "[0, inf)", legacy=True)
    student_warmup_lr_scale: float = knob(0.1, "(0, inf)", legacy=True)
    # -- robust switches (off = the paper; the module docstring says what each does) ----------
    student_init: Literal["random", "teacher"] = knob("random", legacy=True)
    ema: float = knob(0.0, "[0, 1)", legacy=True)    # >0: the student's EMA of this decay
    h_mode: Literal["paper", "clean"] = knob("paper", legacy=True)
    mpl_target: Literal["teacher_strong", "student"] = knob("teacher_strong", legacy=True)
    teacher_lr: Literal["restart", "continue"] = knob("restart", legacy=True)   # at stage 2
    student_lr_scale: float = knob(1.0, "(0, inf)", legacy=True)   # the student's lr after warm-up
    label_smoothing: float = knob(0.0, "[0, 1)", legacy=True)      # of the pseudo-label loss
    bn_recalibrate: int = knob(0, "[0, inf)", legacy=True)   # >0: student BN on N clean U batches
    dist_align: Literal["off", "uniform", "prior"] = knob("off", legacy=True)
    dist_prior: tuple[float, ...] = knob((), legacy=True)   # table's class order; dist_align=prior
    threshold_mode: Literal["fixed", "relative", "flexmatch"] = knob("fixed", legacy=True)
    # colony: the student learns the teacher's colony-level class (method.pseudo_patches) for
    # every patch of the colony that epoch, not the teacher's guess on the one patch it sees
    student_target: Literal["batch", "colony"] = knob("batch", legacy=True)
    # a student that can move (preset learn): soft targets sharpened as p^(1/T) (1 = off; the
    # mask is still the unsharpened confidence); h over a running RMS (after the baseline), so
    # the MPL term's size does not vanish with the student's lr
    sharpen_temperature: float = knob(1.0, "(0, inf)", legacy=True)
    h_normalize: bool = knob(False, legacy=True)

    # `method.preset`: a named set of switches, applied before the other keys of the same
    # update (so `method.preset=robust method.mpl.ema=0` is the preset without the EMA).
    # `paper` puts every one of SWITCHES back to its default. `robust` is the set
    # sweeps/study.py found to work on the development data (synthetic seed 1, validation
    # split); see README "The study"
    SWITCHES: ClassVar[tuple] = tuple(f"method.mpl.{k}" for k in (
        "student_init", "ema", "h_mode", "h_sign", "h_baseline_ema", "mpl_target", "teacher_lr",
        "student_lr_scale", "label_smoothing", "bn_recalibrate", "dist_align",
        "dist_prior", "threshold_mode")) + ("method.pseudo_patches",) + tuple(
        f"method.mpl.{k}" for k in ("student_target", "soft_targets", "sharpen_temperature")) \
        + ("method.mpl_passes", "method.mpl.h_normalize")
    ROBUST: ClassVar[dict] = {
        "method.mpl.student_init": "teacher", "method.mpl.ema": 0.99,
        "method.mpl.h_mode": "clean", "method.mpl.h_sign": "old_minus_new",
        "method.mpl.h_baseline_ema": 0.95, "method.mpl.mpl_target": "student",
        "method.mpl.teacher_lr": "continue", "method.mpl.student_lr_scale": 0.1,
        "method.mpl.label_smoothing": 0.1, "method.mpl.bn_recalibrate": 8,
        "method.mpl.threshold_mode": "relative"}
    # `learn`: robust, plus what lets the student learn what its teacher does not know, each
    # its own key (an --ablation row each): targets from the teacher's view of the whole
    # colony (mean softmax of 4 patches in its mask) rather than of the one patch the student
    # sees, soft and sharpened; the student at the full lr for 2 passes over U; h normalised;
    # then fine-tuning on L (3 epochs, as the study's "+ fine-tune" rows). Chosen from the
    # literature (Noisy Student / MPL-pytorch / FixMatch) before any study run. 4 patches and
    # 2 passes are the 2-core budget: 8 and 3 took 10 min a trial (the colony pass is ~60 % of
    # an epoch)
    PRESETS: ClassVar[dict] = {"robust": ROBUST, "learn": {
        **ROBUST, "method.mpl.student_target": "colony", "method.pseudo_patches": 4,
        "method.mpl.soft_targets": True, "method.mpl.sharpen_temperature": 0.5,
        "method.mpl.student_lr_scale": 1.0, "method.mpl_passes": 2.0,
        "method.mpl.h_normalize": True, "train.finetune_epochs": 3}}


@register_method
class MPL(Method):
    """Meta Pseudo Labels with UDA, the paper's "MPL (imbalanced)": a teacher taught by its student."""
    name = "mpl"
    phases = ("supervised", "mpl")     # teacher pre-training, then MPL steps
    uses_unlabeled = True
    pretrains_teacher = True    # stage 1 = the supervised row (ipb.lineage.teacher_key)

    def __init__(self, cfg, num_classes, device, wrap):
        super().__init__(cfg, num_classes, device, wrap)
        m = cfg.method.mpl
        self.teacher = self.new_model()
        self.student = self.new_model()
        self.opt_t = make_optimizer(cfg, self.teacher.parameters())
        self.opt_s = make_optimizer(cfg, self.student.parameters())
        self.h_baseline = 0.0
        self.h_sq = 0.0      # running mean of h^2 after the baseline (h_normalize)
        self.mpl_steps = 0   # steps since the MPL phase began (UDA ramp)
        self.grad_share = float("nan")   # the last measured MPL share of the teacher gradient
        self.ema = ModelEMA(self.student, m.ema) if m.ema > 0 else None
        self.align = None
        if m.dist_align != "off":
            prior = m.dist_prior if m.dist_align == "prior" else (1.0,) * num_classes
            if len(prior) != num_classes:
                raise ValueError(f"method.mpl.dist_prior has {len(prior)} values for "
                                 f"{num_classes} classes (give one per class, table order)")
            self.align = DistAlign(torch.tensor(prior))
        self.flex: FlexThreshold | None = None     # sized at the first unlabeled epoch
        self.colony_q: torch.Tensor | None = None  # the teacher's per-colony softmax this epoch

    # -- stages ------------------------------------------------------------------------------
    def phase(self, epoch):
        # the teacher is pre-trained on L first (the paper's supervised stage)
        return "supervised" if epoch < self.cfg.method.teacher_pretrain_epochs else "mpl"

    def num_epochs(self):
        return self.cfg.method.teacher_pretrain_epochs + self.cfg.train.epochs

    def start_epoch(self, epoch):
        m = self.cfg.method.mpl
        mpl_epoch = epoch - self.cfg.method.teacher_pretrain_epochs
        # restart: each stage runs its own schedule from its epoch 0 (the teacher's lr jumps
        # back up at stage 2); continue: the teacher's pre-training schedule goes on
        t_epoch = mpl_epoch if mpl_epoch >= 0 and m.teacher_lr == "restart" else epoch
        set_lr(self.opt_t, t_epoch, self.cfg)
        # student warm-up: a low student lr for the first epochs of MPL
        scale = m.student_warmup_lr_scale if 0 <= mpl_epoch < m.student_warmup_epochs else \
            m.student_lr_scale
        set_lr(self.opt_s, max(mpl_epoch, 0), self.cfg, scale)

    def begin_final_stage(self, pretrained):
        if pretrained is not None:
            unwrap(self.teacher).load_state_dict(pretrained)
        # a fresh teacher optimizer: the same start whether the teacher was pre-trained here
        # or loaded from the supervised run
        self.opt_t = make_optimizer(self.cfg, self.teacher.parameters())
        if self.cfg.method.mpl.student_init == "teacher":
            unwrap(self.student).load_state_dict(unwrap(self.teacher).state_dict())
        self.student_start = snapshot(self.student)   # diagnostics: how far it moves
        if self.ema is not None:
            self.ema.reset(self.student)

    def unlabeled_epoch(self, epoch, pool):
        m = self.cfg.method.mpl
        if m.threshold_mode == "flexmatch" and (
                self.flex is None or len(self.flex.selected) != len(pool)):
            self.flex = FlexThreshold(len(pool), self.num_classes, m.threshold)
        self.colony_q = None
        order, stats = self.resample(pool)
        if m.student_target == "colony" and self.colony_q is None:
            self.colony_pseudo(pool)
        return order, stats

    def colony_pseudo(self, pool) -> torch.Tensor:
        """The teacher's (eval mode) softmax per unlabeled colony of this worker, from
        `method.pseudo_patches` patches (1: the epoch's patch, the paper's); kept for the
        epoch (student_target=colony)."""
        self.colony_q = pool.colony_proba(unwrap(self.teacher), self.cfg.method.pseudo_patches)
        return self.colony_q

    def resample(self, pool) -> tuple[np.ndarray, dict]:
        """MPL (imbalanced): the unlabeled epoch is a uniform shuffle; IPB overrides this."""
        return pool.rng.permutation(len(pool)), {}

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, batch, epoch):
        if self.phase(epoch) == "supervised":
            return {"train.teacher_sup": self.supervised_step(self.teacher, self.opt_t, batch)}
        return self._mpl_step(batch)

    def student_targets(self, p_uw: torch.Tensor, idx: torch.Tensor | None = None,
                        align: bool = True):
        """(targets, per-sample weight, mask, p) for the student from the teacher's weak-view
        softmax p (distribution-aligned when switched on)."""
        m = self.cfg.method.mpl
        if self.align is not None and align:
            p_uw = self.align(p_uw)
        conf, hard = p_uw.max(dim=1)
        if m.threshold_mode == "flexmatch" and self.flex is not None and idx is not None:
            mask = self.flex.mask(p_uw, idx)
        else:
            tau = m.threshold if m.threshold_mode == "fixed" else \
                relative_threshold(m.threshold, self.num_classes)
            mask = (conf >= tau).float()
        weight = mask if m.student_mask else torch.ones_like(mask)
        soft = p_uw
        if m.soft_targets and m.sharpen_temperature != 1.0:
            soft = p_uw ** (1.0 / m.sharpen_temperature)
            soft = soft / soft.sum(dim=1, keepdim=True)
        return (soft if m.soft_targets else hard), weight, mask, p_uw

    def feedback(self, s_loss_l_old: torch.Tensor, s_loss_l_new: torch.Tensor) -> float:
        """The MPL signal h; its sign is disputed (MPL issue 602 / MPL-pytorch issue 6).
        h_normalize: divided by the running RMS of h (after the baseline): with a student
        started from the teacher at a small lr, the raw |h| is ~1e-4 and the MPL term nothing."""
        m = self.cfg.method.mpl
        diff = (s_loss_l_new - s_loss_l_old).item()
        h = diff if m.h_sign == "new_minus_old" else -diff
        if m.h_baseline_ema > 0:
            self.h_baseline = m.h_baseline_ema * self.h_baseline + (1 - m.h_baseline_ema) * h
            h = h - self.h_baseline
        if m.h_normalize:
            decay = m.h_baseline_ema if m.h_baseline_ema > 0 else 0.95
            self.h_sq = h * h if self.h_sq == 0.0 else decay * self.h_sq + (1 - decay) * h * h
            h = h / (self.h_sq ** 0.5 + 1e-12)
        return h

    @torch.no_grad()
    def _labeled_loss_clean(self, x_l, batch) -> torch.Tensor:
        """The student's labeled loss in eval mode (running BN statistics, no dropout), on
        the bare module so DDP neither syncs nor prepares a backward for it. Always fp32
        (`_student_step` says why)."""
        model = unwrap(self.student)
        model.eval()
        logits, _ = model(x_l)
        model.train()
        return self.labeled_nll(logits, batch)

    def _student_loss(self, s_us, targets, weight) -> torch.Tensor:
        ls = self.cfg.method.mpl.label_smoothing
        if self.cfg.method.mpl.soft_targets:
            soft = targets * (1 - ls) + ls / self.num_classes
            per = -(soft * F.log_softmax(s_us, dim=1)).sum(dim=1)
        else:
            per = F.cross_entropy(s_us, targets, reduction="none", label_smoothing=ls)
        # mean of weight * loss (not a masked mean): an empty mask still backprops zeros
        return (weight * per).mean()

    def _student_step(self, batch, targets, weight):
        """Steps 4-5: the student's loss on the strong view against the teacher's targets, its
        step, and its labeled loss before and after that step: (loss, before, after)."""
        clean = self.cfg.method.mpl.h_mode == "clean"
        x_l, x_us = batch["x_l"], batch["x_us"]
        n_l = len(x_l)
        # 4: student; paper: one train-mode forward on cat(x_l, x_us), its x_l part is the
        # "before" loss. clean: x_us alone, then the "before" loss from an eval forward that
        # sees the BN statistics this forward just updated, as the "after" one will.
        # h = after - before comes from fp32 forwards whatever train.amp / train.cpu_amp say:
        # bf16 rounding of the labeled loss was 3.4e-4 on a trained small_cnn (6 % of its |h|
        # of 0.0055, a fifth of the study's robust mean |h| 0.0018; benchmarks/cpu_bf16.py)
        # and 63 % of |h| at chance level. So in paper mode, whose "before" is this forward,
        # the student's forwards stay fp32
        with self.autocast() if clean else contextlib.nullcontext():
            s_logits, _ = self.student(x_us if clean else torch.cat([x_l, x_us]))
        s_logits = s_logits.float()
        s_us = s_logits if clean else s_logits[n_l:]
        s_loss_l_old = self._labeled_loss_clean(x_l, batch) if clean else \
            self.labeled_nll(s_logits[:n_l].detach(), batch)
        s_loss = self._student_loss(s_us, targets, weight)
        # 5: student step, then its labeled loss after the step
        self.opt_s.zero_grad(set_to_none=True)
        s_loss.backward()
        self.opt_s.step()
        if self.ema is not None:
            self.ema.update(self.student)
        if clean:
            s_loss_l_new = self._labeled_loss_clean(x_l, batch)
        else:
            with torch.no_grad():
                s_l_new, _ = self.student(x_l)
            s_loss_l_new = self.labeled_nll(s_l_new, batch)
        return s_loss, s_loss_l_old, s_loss_l_new

    def _mpl_step(self, batch):
        m = self.cfg.method.mpl
        x_l, x_uw, x_us = batch["x_l"], batch["x_uw"], batch["x_us"]
        n_l, n_u = len(x_l), len(x_uw)
        self.teacher.train()
        self.student.train()
        # 1-3: teacher
        with self.autocast():
            t_logits, _ = self.teacher(torch.cat([x_l, x_uw, x_us]))
        t_logits = t_logits.float()
        t_l, t_uw, t_us = t_logits[:n_l], t_logits[n_l:n_l + n_u], t_logits[n_l + n_u:]
        t_sup = self.labeled_loss(t_l, batch)
        p_uw = torch.softmax(t_uw.detach() / m.temperature, dim=1)
        targets, weight, mask, p_uw = self.student_targets(p_uw, batch.get("i_u"))
        uda = (mask * -(p_uw * F.log_softmax(t_us, dim=1)).sum(dim=1)).mean()
        if m.student_target == "colony" and self.colony_q is not None:
            # the colony's class from the epoch's teacher pass, for whichever patch is drawn
            q = self.colony_q[batch["i_u"]].to(p_uw.device)
            targets, weight, mask, _ = self.student_targets(q, None, align=False)
        lambda_u = self.cfg.method.lambda_u * min(1.0, (self.mpl_steps + 1) / max(1, m.uda_steps))
        s_loss, s_loss_l_old, s_loss_l_new = self._student_step(batch, targets, weight)
        # 6: MPL feedback on the teacher
        h_raw = abs((s_loss_l_new - s_loss_l_old).item())
        h = self.feedback(s_loss_l_old, s_loss_l_new)
        if m.mpl_target == "student":
            hard = targets.argmax(dim=1) if m.soft_targets else targets
            t_mpl = h * (weight * F.cross_entropy(t_us, hard, reduction="none")).mean()
        else:
            t_mpl = h * F.cross_entropy(t_us, t_us.detach().argmax(dim=1))
        # 7: teacher step
        t_loss = t_sup + lambda_u * uda + t_mpl
        if self.mpl_steps % GRAD_EVERY == 0:
            self.grad_share = grad_share(self.teacher, t_sup + lambda_u * uda, t_mpl)
        self.opt_t.zero_grad(set_to_none=True)
        t_loss.backward()
        self.opt_t.step()
        self.step_count += 1
        self.mpl_steps += 1
        return {"train.teacher": t_loss.item(), "train.teacher_sup": t_sup.item(),
                "train.uda": uda.item(), "train.mpl": t_mpl.item(), "train.h": h,
                "train.student": s_loss.item(), "train.student_l_new": s_loss_l_new.item(),
                "train.mask_rate": mask.mean().item(), "train.h_abs": h_raw,
                "train.mpl_grad_share": self.grad_share,
                **target_accuracy(targets, mask, batch.get("y_u"))}

    # -- models and checkpoints --------------------------------------------------------------
    def eval_model(self):
        return self.ema if self.ema is not None else self.student

    def train_model(self):
        return self.student

    def phase_model(self, phase):
        return self.teacher if phase == "supervised" else self.eval_model()

    def pseudo_model(self):
        return self.teacher

    def recalibrates_bn(self) -> int:
        return self.cfg.method.mpl.bn_recalibrate

    def modules(self):
        out: dict[str, Any] = {"teacher": self.teacher, "student": self.student,
                               "opt_t": self.opt_t, "opt_s": self.opt_s}
        for name in ("ema", "align", "flex"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def load_state_dict(self, state):
        if "flex" in state and self.cfg.method.mpl.threshold_mode == "flexmatch":
            self.flex = FlexThreshold(len(state["flex"]["selected"]), self.num_classes,
                                      self.cfg.method.mpl.threshold)
        super().load_state_dict(state)

    def extra_state(self):
        return {"h_baseline": self.h_baseline, "h_sq": self.h_sq, "mpl_steps": self.mpl_steps,
                "student_start": self.student_start}

    def load_extra_state(self, state):
        self.h_baseline = state.get("h_baseline", 0.0)
        self.h_sq = state.get("h_sq", 0.0)
        self.mpl_steps = state.get("mpl_steps", 0)
        self.student_start = state.get("student_start")
