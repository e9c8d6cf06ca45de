"""pytest tests/test_learn.py -- issue 18: each `learn` switch, the diagnostics, the nuisance of
the study set and its ceiling (no Ray)."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from ipb.config import PRESETS, SynthConfig, load_config
from ipb.batches import steps_for
from ipb.methods import create_method
from ipb.methods.diagnostics import agreement, grad_share, snapshot, target_accuracy, \
    weight_change
from tiny import CLASSES, SIZE, tiny_parts
from tiny import small_cfg as cfg_for


@pytest.fixture(scope="module")
def parts():
    return tiny_parts(CLASSES, SIZE)


def test_preset_learn_is_robust_plus_its_own_switches():
    cfg = load_config("smoke", ["method.preset=learn"])
    for key, value in PRESETS["learn"].items():
        assert functools.reduce(getattr, key.split("."), cfg) == value
    assert cfg.method.mpl.student_init == "teacher" and cfg.method.mpl.student_lr_scale == 1.0
    assert cfg.train.finetune_epochs == 3
    back = load_config("smoke", ["method.preset=learn", "method.preset=paper"])
    assert back.method.mpl.sharpen_temperature == 1.0 and not back.method.mpl.h_normalize


def test_sharpened_soft_targets_keep_the_order_and_the_mask():
    m = create_method("mpl", cfg_for("mpl", "method.mpl.soft_targets=true",
                                     "method.mpl.sharpen_temperature=0.5", "method.mpl.threshold=0.5"), 3)
    p = torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]])
    targets, weight, mask, p_out = m.student_targets(p)
    sharp = p ** 2 / (p ** 2).sum(1, keepdim=True)
    assert torch.allclose(targets, sharp) and torch.allclose(p_out, p)
    assert mask.tolist() == [1.0, 0.0]        # the mask uses the unsharpened confidence
    assert (targets.argmax(1) == p.argmax(1)).all() and (targets.max(1).values > p.max(1).values).all()


def test_mpl_passes_sets_the_stage_length_in_passes_over_u(parts):
    n_u = len(parts["unlabeled"])
    cfg = cfg_for("mpl", "method.mpl_passes=3", "train.epochs=2", "train.steps_per_epoch=5")
    per_epoch = steps_for("mpl", cfg, parts, 1)
    assert per_epoch == math.ceil(3 * n_u / cfg.train.unlabeled_batch_size / 2)
    assert steps_for("supervised", cfg, parts, 1) == 5        # the teacher's stage unchanged
    assert steps_for("mpl", cfg_for("mpl", "train.steps_per_epoch=5"), parts, 1) == 5


def test_h_normalize_keeps_the_size_of_h_whatever_its_scale():
    out = {}
    for scale in (1e-4, 1.0):
        m = create_method("mpl", cfg_for("mpl", "method.mpl.h_normalize=true",
                                         "method.mpl.h_sign=old_minus_new"), 3)
        rng = np.random.default_rng(0)
        hs = [m.feedback(torch.tensor(1.0), torch.tensor(1.0 - scale * d))
              for d in rng.normal(0, 1, 200)]
        out[scale] = np.abs(hs[50:]).mean()
    assert out[1e-4] == pytest.approx(out[1.0], rel=1e-3) and 0.3 < out[1.0] < 3
    raw = create_method("mpl", cfg_for("mpl"), 3)
    assert abs(raw.feedback(torch.tensor(1.0), torch.tensor(1.0 + 1e-4))) < 1e-3


def test_weight_change_and_agreement():
    lin = torch.nn.Linear(3, 2)
    start = snapshot(lin)
    assert weight_change(lin, start) == 0.0
    with torch.no_grad():
        lin.weight.mul_(1.1)
        lin.bias.mul_(1.1)
    assert weight_change(lin, start) == pytest.approx(0.1)
    assert math.isnan(weight_change(lin, None))
    a = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    b = np.array([[0.8, 0.2], [0.1, 0.9], [0.4, 0.6], [0.45, 0.55]])
    assert agreement(a, b) == 0.75


def test_grad_share_is_the_mpl_terms_share_of_the_gradient_norm():
    lin = torch.nn.Linear(3, 1, bias=False)
    x = torch.ones(1, 3)
    base = lin(x).sum()                   # gradient x: norm sqrt(3)
    assert grad_share(lin, base, 3 * lin(x).sum()) == pytest.approx(0.75)
    assert grad_share(lin, base, torch.tensor(0.0)) == 0.0
    base.backward()                       # the graph is kept for the step after it
    assert lin.weight.grad is not None


def test_target_accuracy_counts_only_known_admitted_colonies():
    targets = torch.tensor([0, 1, 2, 1])
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0])
    y = torch.tensor([0, 2, 2, -1])
    acc = target_accuracy(targets, mask, y)
    assert acc["train.target_acc"] == 0.5 and acc["train.target_acc_all"] == pytest.approx(2 / 3)
    assert target_accuracy(targets, mask, None) == {}
    assert target_accuracy(targets, mask, torch.full((4,), -1)) == {}


def test_mpl_family_runs_log_the_diagnostics(parts):
    from ipb.engine import run_trial
    cfg = cfg_for("ipb", "method.preset=learn", "method.pseudo_patches=2",
                  "method.mpl_passes=0", "train.finetune_epochs=1")
    m = run_trial(cfg, parts, CLASSES, log=lambda s: None)["metrics"]
    for key in ("diag.test_agree", "diag.weight_change", "diag.h_abs", "diag.mpl_grad_share",
                "diag.mask_rate", "diag.target_acc", "diag.pseudo_acc"):
        assert key in m and np.isfinite(m[key]), key
    assert 0 <= m["diag.test_agree"] <= 1 and m["diag.weight_change"] > 0
    assert m["diag.mpl_grad_share"] > 0.01     # normalised h: the MPL term is not nothing
    sup = run_trial(cfg_for("supervised"), parts, CLASSES, log=lambda s: None)["metrics"]
    assert not any(k.startswith("diag.") for k in sup)


def test_well_nuisance_is_off_by_default_and_class_independent():
    from ipb.data.synth_render import render_well, well_nuisance
    off = SynthConfig(wells=1, size=256, colonies_per_well=4)
    assert well_nuisance(off, np.random.default_rng(0)) == dict(scale=1.0, gain=1.0, blur=0.0,
                                                               gradient=1.0, level=0.0)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    well_nuisance(off, rng)
    assert rng.bit_generator.state == state       # old wells: the same random stream
    on = SynthConfig(wells=1, size=256, colonies_per_well=4, well_nuisance=1.0)
    draws = [well_nuisance(on, np.random.default_rng(s)) for s in range(200)]
    scales = np.array([d["scale"] for d in draws])
    assert scales.min() < 0.9 < 1.1 < scales.max()
    img0 = render_well(off, np.random.default_rng(1))[0][0]
    img1 = render_well(on, np.random.default_rng(1))[0][0]
    assert img0.shape == img1.shape and not np.array_equal(img0, img1)


def test_ideal_observer_ceiling_falls_with_difficulty():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ideal_observer.py"
    spec = importlib.util.spec_from_file_location("ideal_observer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    easy = mod.ceiling(SynthConfig(difficulty=0.3), n=1500)
    hard = mod.ceiling(SynthConfig(difficulty=1.0), n=1500)
    assert easy["ceiling"] > 0.97 > hard["ceiling"] > 0.5
    assert easy["without offset"] <= easy["ceiling"] + 0.01


def test_inference_passes_on_an_nhwc_copy_predict_as_the_model_does(parts):
    """train.eval_channels_last (default on CPU): evaluation and the teacher's colony pass run
    on an NHWC copy -- the same probabilities up to float rounding, the trained model itself
    untouched (memory format, train mode)."""
    from ipb.batches import clean_pool
    from ipb.evaluation import predict_proba
    from ipb.models import create_model
    torch.manual_seed(0)
    net = create_model("small_cnn", len(CLASSES), width=0.5).train()
    weight = next(net.parameters())
    part = parts["unlabeled"]
    out = {}
    for on in (True, False):
        cfg = cfg_for("ipb", f"train.eval_channels_last={str(on).lower()}",
                      "patch.test_patches=3")
        out[on] = predict_proba(net, part, cfg, "cpu", np.random.default_rng(1))
        pos = part.bank.sample_positions(np.arange(len(part)), np.random.default_rng(2))
        pool = clean_pool(part, pos, CLASSES, cfg, "cpu", np.random.default_rng(3),
                          torch.Generator().manual_seed(0))
        assert pool.nhwc is on
        out[on, "colony"] = pool.colony_proba(net, k=3).numpy()
        assert net.training and weight.is_contiguous()     # the caller's model as it was
    assert np.abs(out[True] - out[False]).max() < 1e-5
    assert np.abs(out[True, "colony"] - out[False, "colony"]).max() < 1e-5
    assert out[True].shape == (len(part), len(CLASSES))


def test_inference_passes_cut_into_pieces_give_the_softmax_of_whole_chunks(parts):
    """A full chunk of colonies is cut into equal passes of >= `size` patches (k patches a
    colony): the softmax must be bit-identical to one pass per chunk, the old cut, so a run's
    figures stay those of the same seed (a pass of <= 12 patches would differ: oneDNN)."""
    from ipb.batches import clean_pool
    from ipb.evaluation import predict_proba
    from ipb.methods.base import forward_chunks, inference_model, nhwc_input
    from ipb.models import create_model
    assert list(forward_chunks(10, 4, 4)) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6),
                                              (6, 7), (7, 8), (8, 10)]
    assert list(forward_chunks(600, 256, 5))[:2] == [(0, 64), (64, 128)]     # d = 4
    assert list(forward_chunks(300, 256, 1)) == [(0, 256), (256, 300)]
    torch.manual_seed(0)
    net = create_model("small_cnn", len(CLASSES), width=0.5)
    part = parts["unlabeled"]
    pos = part.bank.sample_positions(np.arange(len(part)), np.random.default_rng(2))
    size = 20                                   # 46 colonies: two full chunks and 6 left
    for k in (1, 3, 4, 5):
        cfg = cfg_for("ipb", f"patch.test_patches={k}")
        ours = predict_proba(net, part, cfg, "cpu", np.random.default_rng(1), batch=size)
        rng = np.random.default_rng(1)
        whole = np.concatenate([predict_proba(net, part, cfg, "cpu", rng, batch=10 ** 6,
                                              idx=np.arange(s, min(len(part), s + size)))
                                for s in range(0, len(part), size)])
        assert np.array_equal(ours, whole), k
        pool = clean_pool(part, pos, CLASSES, cfg, "cpu", np.random.default_rng(3),
                          torch.Generator().manual_seed(0))
        ours = pool.colony_proba(net, k=k, size=size)
        pool = clean_pool(part, pos, CLASSES, cfg, "cpu", np.random.default_rng(3),
                          torch.Generator().manual_seed(0))
        eval_net = inference_model(net, pool.nhwc)
        whole = []
        with torch.no_grad():
            for s in range(0, len(part), size):
                idx = np.arange(s, min(len(part), s + size))
                x = pool.patches(idx) if k <= 1 else pool.patches_in_mask(idx, k)
                p = torch.softmax(eval_net(nhwc_input(x, pool.nhwc))[0].float(), dim=1)
                whole.append(p.view(len(idx), k, -1).mean(dim=1))
        assert torch.equal(ours, torch.cat(whole)), k
