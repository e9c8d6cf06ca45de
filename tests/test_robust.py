"""pytest tests/test_robust.py -- each robust MPL/IPB switch does what it claims (no Ray).

Every switch is off at the paper's value; `method.preset=robust` turns on a set of them."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ipb.config import PRESETS, load_config
from ipb.batches import Batches
from ipb.engine import run_trial
from ipb.evaluation import collapsed, evaluate
from ipb.methods import create_method
from ipb.methods.stabilize import DistAlign, FlexThreshold, ModelEMA, recalibrate_bn, \
    relative_threshold
from tiny import CLASSES, SIZE, tiny_parts
from tiny import small_cfg as cfg_for


@pytest.fixture(scope="module")
def parts():
    return tiny_parts(CLASSES, SIZE)


def mpl_batch(cfg, parts, seed=0):
    b = Batches(cfg, parts, np.random.default_rng(seed), torch.Generator().manual_seed(seed),
                torch.device("cpu"))
    n = len(parts["unlabeled"])
    b.set_unlabeled_epoch(np.arange(n), parts["unlabeled"].bank.center_positions(np.arange(n)))
    return b.batch("mpl")


def test_preset_robust_sets_the_switches_and_explicit_keys_win():
    cfg = load_config("smoke", ["method.preset=robust", "method.mpl.ema=0"])
    for key, value in PRESETS["robust"].items():
        if key != "method.mpl.ema":
            assert functools.reduce(getattr, key.split("."), cfg) == value
    assert cfg.method.mpl.ema == 0.0 and cfg.method.preset == "robust"
    back = load_config("smoke", ["method.preset=robust", "method.preset=paper"])
    assert back.method.mpl.student_init == "random" and back.method.mpl.h_mode == "paper"


def test_student_init_from_teacher():
    for init, same in (("random", False), ("teacher", True)):
        m = create_method("ipb", cfg_for("ipb", f"method.mpl.student_init={init}"), 3)
        m.begin_final_stage(None)
        t, s = m.teacher.state_dict(), m.student.state_dict()
        assert all(torch.equal(t[k], s[k]) for k in t) == same


def test_ema_is_the_evaluated_model_and_averages_the_student():
    m = create_method("mpl", cfg_for("mpl", "method.mpl.ema=0.9"), 3)
    assert isinstance(m.eval_model(), ModelEMA) and m.train_model() is m.student
    ema = ModelEMA(torch.nn.Linear(2, 2), 0.9)
    before = ema.module.weight.clone()
    src = torch.nn.Linear(2, 2)
    ema.update(src)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * src.weight)


def test_clean_h_is_zero_when_the_student_step_changes_nothing(parts):
    """h_mode=clean measures the labeled loss on the same eval-mode forward before and after the
    student's step: with a zero student lr, h is exactly 0. The paper's h mixes a train-mode
    forward on cat(x_l, x_us) with one on x_l alone (other BN batch statistics, dropout), so it
    is not 0 even when the student did not move."""
    hs = {}
    for mode in ("paper", "clean"):
        cfg = cfg_for("mpl", f"method.mpl.h_mode={mode}", "model.dropout=0.3",
                      "method.teacher_pretrain_epochs=0", "method.mpl.student_warmup_epochs=0")
        m = create_method("mpl", cfg, 3)
        for g in m.opt_s.param_groups:
            g["lr"] = 0.0
        m.opt_s.param_groups[0]["weight_decay"] = 0.0
        hs[mode] = m.train_step(mpl_batch(cfg, parts), 0)["train.h"]
    assert hs["clean"] == 0.0
    assert abs(hs["paper"]) > 1e-4


def test_mpl_target_student_is_masked_like_the_student():
    """mpl_target=student: the teacher's MPL term uses the student's targets and mask, so an
    empty mask gives a zero MPL term; teacher_strong (the paper's) does not."""
    torch.manual_seed(0)
    batch = {"x_l": torch.randn(4, 1, SIZE, SIZE), "y_l": torch.tensor([0, 1, 2, 0]),
             "x_uw": torch.randn(6, 1, SIZE, SIZE), "x_us": torch.randn(6, 1, SIZE, SIZE),
             "i_u": torch.arange(6)}
    out = {}
    for target in ("teacher_strong", "student"):
        cfg = cfg_for("mpl", f"method.mpl.mpl_target={target}", "method.mpl.threshold=1.0",
                      "method.teacher_pretrain_epochs=0")
        m = create_method("mpl", cfg, 3)
        m.feedback = lambda old, new: 1.0          # a fixed, non-zero h
        out[target] = m.train_step(batch, 0)
    assert out["student"]["train.mask_rate"] == 0.0
    assert out["student"]["train.mpl"] == 0.0
    assert out["teacher_strong"]["train.mpl"] > 0.0


def test_h_sign_old_minus_new_reinforces_a_helpful_pseudo_label():
    m = create_method("mpl", cfg_for("mpl", "method.mpl.h_sign=old_minus_new"), 3)
    assert m.feedback(torch.tensor(1.0), torch.tensor(0.8)) == pytest.approx(0.2)


def test_teacher_lr_continue_has_no_jump_between_stages():
    for mode, expect in (("restart", [1, 1, .1, 1, 1]), ("continue", [1, 1, .1, .1, .1])):
        cfg = cfg_for("mpl", "train.lr=1.0", "train.lr_step_epoch=2",
                      "method.teacher_pretrain_epochs=3", f"method.mpl.teacher_lr={mode}")
        m = create_method("mpl", cfg, 3)
        seen = []
        for epoch in range(5):
            m.start_epoch(epoch)
            seen.append(m.opt_t.param_groups[0]["lr"])
        assert np.allclose(seen, expect), (mode, seen)


def test_student_lr_scale_after_the_warm_up():
    cfg = cfg_for("mpl", "train.lr=1.0", "train.lr_step_epoch=100", "train.epochs=3",
                  "method.teacher_pretrain_epochs=1", "method.mpl.student_warmup_epochs=1",
                  "method.mpl.student_warmup_lr_scale=0.5", "method.mpl.student_lr_scale=0.1")
    m = create_method("mpl", cfg, 3)
    seen = []
    for epoch in range(1, 4):
        m.start_epoch(epoch)
        seen.append(m.opt_s.param_groups[0]["lr"])
    assert np.allclose(seen, [0.5, 0.1, 0.1])


def test_label_smoothing_on_the_student_loss():
    m = create_method("mpl", cfg_for("mpl", "method.mpl.label_smoothing=0.2"), 3)
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    y, w = torch.tensor([0, 2]), torch.ones(2)
    smooth = torch.tensor([[0.8 + 0.2 / 3, 0.2 / 3, 0.2 / 3], [0.2 / 3, 0.2 / 3, 0.8 + 0.2 / 3]])
    expect = -(smooth * F.log_softmax(logits, 1)).sum(1).mean()
    assert m._student_loss(logits, y, w).item() == pytest.approx(expect.item(), rel=1e-5)


def test_bn_recalibration_is_the_plain_average_over_the_batches():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3),
                                torch.nn.Dropout(0.5))
    model[1].running_mean.fill_(5.0)
    xs = [torch.randn(8, 1, 10, 10) + k for k in range(3)]
    n = recalibrate_bn(model, iter(xs))
    feats = torch.cat([model[0](x) for x in xs])
    assert n == 24 and model.training          # its mode is restored
    assert torch.allclose(model[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-4)
    assert model[1].momentum == 0.1


def test_distribution_alignment_pulls_a_skewed_teacher_toward_uniform():
    align = DistAlign(torch.ones(3), momentum=0.0)
    p = torch.tensor([[0.8, 0.15, 0.05]]).repeat(10, 1)
    q = align(p)
    assert torch.allclose(q.sum(1), torch.ones(10))
    assert torch.allclose(q.mean(0), torch.full((3,), 1 / 3), atol=1e-5)
    prior = DistAlign(torch.tensor([0.5, 0.3, 0.2]), momentum=0.0)
    assert torch.allclose(prior(p).mean(0), torch.tensor([0.5, 0.3, 0.2]), atol=1e-5)


def test_relative_threshold_keeps_the_paper_at_4_classes_and_scales_with_c():
    assert relative_threshold(0.65, 4) == pytest.approx(0.65)
    assert relative_threshold(0.65, 13) < 0.6 < relative_threshold(0.65, 3)
    m = create_method("mpl", cfg_for("mpl", "method.mpl.threshold=0.65",
                                     "method.mpl.threshold_mode=relative"), 3)
    _, _, mask, _ = m.student_targets(torch.tensor([[0.68, 0.16, 0.16], [0.70, 0.2, 0.1]]))
    assert mask.tolist() == [0.0, 1.0]          # 3 classes: 0.689


def test_flexmatch_lowers_the_threshold_of_classes_rarely_predicted_confidently():
    flex = FlexThreshold(n_unlabeled=8, num_classes=3, threshold=0.9)
    p = torch.tensor([[0.95, 0.03, 0.02]] * 6 + [[0.05, 0.91, 0.04], [0.3, 0.3, 0.4]])
    flex.mask(p, torch.arange(8))              # remembers 6 x class 0, 1 x class 1
    tau = flex.class_thresholds()
    assert tau[0] == pytest.approx(0.9) and tau[2] == 0.0 and 0 < tau[1] < tau[0]
    mask = flex.mask(torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]]), torch.tensor([0, 1]))
    assert mask.tolist() == [0.0, 1.0]         # class 1's threshold 0.9 * (1/6)/(2-1/6)


def test_teacher_reuse_is_the_same_computation_as_pretraining(parts):
    """A supervised run, and an MPL-family trial that pre-trains its own teacher (selected on
    val), start the MPL stage from the same weights; handing that teacher in (what a sweep does
    with the supervised run's model) gives the same trial."""
    common = ["train.steps_per_epoch=2", "model.dropout=0.2"]
    sup = run_trial(cfg_for("supervised", "train.epochs=2", *common), parts, CLASSES,
                    log=lambda s: None)
    cfg = cfg_for("ipb", "method.preset=robust", "method.teacher_pretrain_epochs=2",
                  "train.epochs=2", *common)
    own = run_trial(cfg, parts, CLASSES, log=lambda s: None)
    teacher = own["teacher"]
    sup_state = sup["model"].state_dict()
    assert all(torch.equal(teacher[k], sup_state[k]) for k in teacher)
    lines = []
    reused = run_trial(cfg, parts, CLASSES, teacher_state=sup_state, log=lines.append)
    assert any("pre-training skipped" in s for s in lines)
    a, b = own["model"].state_dict(), reused["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert own["metrics"]["test.tpr.mean"] == reused["metrics"]["test.tpr.mean"]
    assert [h["epoch"] for h in reused["history"]] == [2, 3]


def test_collapse_is_measured_and_flagged(parts):
    class OneClass(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(len(x), 3)
            logits[:, 1] = 1.0
            return logits, logits
    cfg = cfg_for("mpl")
    m, _ = evaluate(OneClass(), parts["test"], CLASSES, cfg, "cpu", np.random.default_rng(0),
                    "test")
    assert m["test.pred_share.max"] == 1.0 and m["test.true_share.max"] == pytest.approx(1 / 3)
    assert collapsed(m, "test")
    assert not collapsed({"test.pred_share.max": 0.9, "test.true_share.max": 0.85}, "test")
    out = run_trial(cfg_for("mpl", "train.steps_per_epoch=1", "train.epochs=1"), parts,
                    CLASSES, log=lambda s: None)
    assert {"collapse.final", "collapse.any"} <= set(out["metrics"])
    assert "u.pred_share.max" in out["history"][-1]


def test_a_row_that_cannot_run_fails_before_training():
    cls = type(create_method("mpl_balanced", cfg_for("mpl_balanced"), 3))
    cls.check_data(cfg_for("mpl_balanced"), {"A": 3, "multi_label": 0, "unlabeled": 0})
    with pytest.raises(ValueError, match="2 unlabeled colonies have none"):
        cls.check_data(cfg_for("mpl_balanced"), {"A": 3, "multi_label": 2})
