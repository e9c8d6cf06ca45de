"""Every registered method: a few steps on a tiny table, finite losses that fall on a fixed batch;
IPB's resampling balances a skewed teacher; the MPL feedback sign follows `h_sign`."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from ipb.config import apply
from ipb.batches import Batches, plan_unlabeled_epoch
from ipb.engine import run_trial
from ipb.methods import PHASE_INPUTS, create_method, list_methods
from ipb.methods.ipb import balanced_draw
from tiny import tiny_cfg, tiny_parts

CLASSES = ["A", "B", "C"]
SIZE = 32


@pytest.fixture(scope="module")
def parts():
    return tiny_parts(CLASSES, SIZE)


def cfg_for(method, *extra):
    return tiny_cfg(method, "model.arch=vgg19", "model.dropout=0.0", *extra, size=SIZE)


def test_registry_lists_the_paper_methods():
    assert {"supervised", "mpl", "ipb", "mpl_balanced", "simclr"} <= set(list_methods())
    with pytest.raises(ValueError, match="registered: "):
        create_method("nosuch", cfg_for("mpl"), 3)


MAIN_LOSS = {"supervised": ("train.loss", "train.teacher_sup"),
             "mpl": ("train.teacher_sup", "train.sup"), "contrastive": ("train.nt_xent",),
             "clustering": ("train.cc",), "triplet": ("train.simtriplet",), "gan": ("train.gan_d",)}


@pytest.mark.parametrize("method", list_methods())
def test_method_losses_fall_on_a_fixed_batch(method, parts):
    torch.manual_seed(0)
    cfg = cfg_for(method)
    m = create_method(method, cfg, len(CLASSES))
    batches = Batches(cfg, parts, np.random.default_rng(0), torch.Generator().manual_seed(0),
                      torch.device("cpu"))
    batches.set_unlabeled_epoch(np.arange(len(parts["unlabeled"])),
                                parts["unlabeled"].bank.center_positions(
                                    np.arange(len(parts["unlabeled"]))))
    phases = sorted({m.phase(e) for e in range(m.num_epochs())})
    assert set(phases) <= set(PHASE_INPUTS)
    for phase in phases:
        epoch = next(e for e in range(m.num_epochs()) if m.phase(e) == phase)
        m.start_epoch(epoch)
        batch = batches.batch(phase)
        assert set(PHASE_INPUTS[phase]) <= set(batch)
        losses = [m.train_step(batch, epoch) for _ in range(12)]
        for step in losses:
            assert all(np.isfinite(v) for v in step.values()), step
        key = next(k for k in MAIN_LOSS[phase] if k in losses[0])
        first, last = np.mean([s[key] for s in losses[:3]]), np.mean([s[key] for s in losses[-3:]])
        assert last < first, f"{method}/{phase}: {key} {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("method", list_methods())
def test_run_trial_end_to_end(method, parts):
    cfg = cfg_for(method, "train.steps_per_epoch=2", "train.epochs=2")
    reports = []
    out = run_trial(cfg, parts, CLASSES, report=lambda m, s: reports.append((m, s)),
                    log=lambda s: None)
    m = out["metrics"]
    for c in CLASSES:
        for k in ("tpr", "precision", "f1"):
            assert 0.0 <= m[f"test.{k}.{c}"] <= 1.0
    assert {"test.tpr.mean", "test.f1.mean", "best.val.tpr.mean"} <= set(m)
    assert out["cm_test"].sum() == len(parts["test"])
    assert len(reports) == create_method(method, cfg, 3).num_epochs()
    assert all("val.tpr.mean" in r[0] for r in reports)
    state = reports[-1][1]()
    assert state["epoch"] == len(reports) - 1 and "method" in state
    if method == "ipb":
        fr = [r[0] for r in reports if "ipb.pseudo_frac.A" in r[0]]
        assert fr and abs(sum(fr[0][f"ipb.pseudo_frac.{c}"] for c in CLASSES) - 1) < 1e-6


@pytest.mark.parametrize("method", list_methods())
def test_finetune_stage_changes_the_selected_model(method, parts):
    """train.finetune_epochs > 0: the selected student is trained on L further (reference
    code's last stage) through the method's own training wrapper."""
    cfg = cfg_for(method, "train.steps_per_epoch=1", "train.epochs=1")
    plain = run_trial(cfg, parts, CLASSES, log=lambda s: None)["model"].state_dict()
    lines = []
    tuned = run_trial(apply(cfg, {"train.finetune_epochs": 2}), parts, CLASSES,
                      log=lines.append)["model"].state_dict()
    assert [s.split(" loss")[0] for s in lines if s.startswith("fine-tune")] == [
        "fine-tune epoch 1/2", "fine-tune epoch 2/2"]
    assert any(not torch.equal(plain[k], tuned[k]) for k in plain)


def test_resume_continues_from_checkpoint(parts):
    cfg = cfg_for("ipb", "train.steps_per_epoch=1", "train.epochs=2")
    states = []
    run_trial(cfg, parts, CLASSES, report=lambda m, s: states.append(s()), log=lambda s: None)
    seen = []
    run_trial(cfg, parts, CLASSES, resume=states[0], log=lambda s: None,
              report=lambda m, s: seen.append(m["epoch"]))
    assert seen == list(range(1, len(states)))


def test_balanced_draw_is_uniform_for_a_skewed_teacher():
    gen = torch.Generator().manual_seed(0)
    classes = torch.tensor([0] * 800 + [1] * 150 + [2] * 40 + [3] * 10)
    out = balanced_draw(classes, 4, 4000, gen)
    drawn = out["drawn"].double() / 4000
    assert torch.allclose(drawn, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03)
    assert torch.allclose(out["fractions"], torch.tensor([.8, .15, .04, .01], dtype=torch.float64))


class SkewedTeacher(torch.nn.Module):
    """Predicts class 0 for most patches: the resampled epoch must still be balanced."""

    def forward(self, x):
        score = x.flatten(1).mean(1)
        logits = torch.stack([torch.full_like(score, 2.0), (score > 0.5).float() * 3,
                              (score > 0.8).float() * 3], dim=1)
        return logits, logits


@pytest.mark.parametrize("method, pseudo_labeller", [("ipb", "teacher"),
                                                     ("fixmatch_ipb", "model")])
def test_ipb_epoch_histogram_near_uniform(method, pseudo_labeller, parts):
    """IPB's teacher, or fixmatch_ipb's own network, predicts class 0 for most colonies;
    the epoch drawn is balanced over the classes it predicts."""
    cfg = cfg_for(method, "augment.normalize=false")
    m = create_method(method, cfg, 3)
    setattr(m, pseudo_labeller, SkewedTeacher())
    epoch = m.num_epochs() - 1
    u = parts["unlabeled"]
    rng = np.random.default_rng(0)
    plan = plan_unlabeled_epoch(m, epoch, u, CLASSES, cfg, "cpu", rng,
                                torch.Generator().manual_seed(0))
    pseudo = np.array([plan["stats"][f"ipb.pseudo_frac.{c}"] for c in CLASSES])
    drawn = np.array([plan["stats"][f"ipb.drawn_frac.{c}"] for c in CLASSES])
    present = pseudo > 0
    assert pseudo.max() > 0.5            # the teacher is skewed
    assert np.all(np.abs(drawn[present] - 1 / present.sum()) < 0.2)
    assert len(plan["order"]) == len(u) and len(plan["positions"]) == len(u)
    assert 0 <= plan["stats"]["ipb.pseudo_acc"] <= 1


def test_fixmatch_epoch_is_a_plain_shuffle(parts):
    """The control of fixmatch_ipb: FixMatch draws every unlabeled colony once, unbalanced."""
    m = create_method("fixmatch", cfg_for("fixmatch"), 3)
    m.model = SkewedTeacher()
    u = parts["unlabeled"]
    plan = plan_unlabeled_epoch(m, m.num_epochs() - 1, u, CLASSES, cfg_for("fixmatch"), "cpu",
                                np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert sorted(plan["order"]) == list(range(len(u))) and plan["stats"] == {}


@pytest.mark.parametrize("sign, expected", [("new_minus_old", 0.3), ("old_minus_new", -0.3)])
def test_mpl_feedback_sign(sign, expected):
    m = create_method("mpl", cfg_for("mpl", f"method.mpl.h_sign={sign}"), 3)
    h = m.feedback(torch.tensor(1.0), torch.tensor(1.3))
    assert h == pytest.approx(expected, abs=1e-6)


def test_mpl_h_baseline_ema_subtracts_moving_average():
    m = create_method("mpl", cfg_for("mpl", "method.mpl.h_baseline_ema=0.5"), 3)
    assert m.feedback(torch.tensor(1.0), torch.tensor(2.0)) == pytest.approx(0.5)
    assert m.feedback(torch.tensor(1.0), torch.tensor(2.0)) == pytest.approx(0.25)


def test_student_mask_and_soft_targets():
    p = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3]])
    m = create_method("mpl", cfg_for("mpl", "method.mpl.threshold=0.65"), 3)
    t, w, mask, _ = m.student_targets(p)
    assert t.tolist() == [0, 0] and w.tolist() == [1.0, 0.0] and mask.tolist() == [1.0, 0.0]
    m = create_method("mpl", cfg_for("mpl", "method.mpl.student_mask=false",
                                     "method.mpl.soft_targets=true"), 3)
    t, w, _, _ = m.student_targets(p)
    assert torch.equal(t, p) and w.tolist() == [1.0, 1.0]


def test_empty_confidence_mask_still_updates_every_teacher_parameter(parts):
    cfg = cfg_for("mpl", "method.mpl.threshold=1.0", "method.teacher_pretrain_epochs=0")
    m = create_method("mpl", cfg, 3)
    b = Batches(cfg, parts, np.random.default_rng(0), torch.Generator().manual_seed(0), "cpu")
    b.set_unlabeled_epoch(np.arange(10), parts["unlabeled"].bank.center_positions(np.arange(10)))
    out = m.train_step(b.batch("mpl"), 0)
    assert out["train.mask_rate"] == 0.0 and np.isfinite(out["train.teacher"])
    assert all(p.grad is not None for p in m.teacher.parameters())


def test_mpl_stages_run_their_own_lr_schedule():
    """Pre-training and MPL each run the step schedule from their own epoch 0 (paper: 200 +
    200 epochs), and the student's warm-up scale applies only at the start of MPL."""
    cfg = cfg_for("mpl", "train.lr=1.0", "train.lr_step_epoch=2", "train.epochs=4",
                  "method.teacher_pretrain_epochs=3", "method.mpl.student_warmup_epochs=1",
                  "method.mpl.student_warmup_lr_scale=0.5")
    m = create_method("mpl", cfg, 3)
    seen = []
    for epoch in range(m.num_epochs()):
        m.start_epoch(epoch)
        seen.append((m.opt_t.param_groups[0]["lr"], m.opt_s.param_groups[0]["lr"]))
    teacher, student = zip(*seen)
    assert np.allclose(teacher, [1, 1, .1, 1, 1, .1, .1])
    assert np.allclose(student[3:], [.5, 1, .1, .1])


@pytest.mark.parametrize("method", ["supervised", "ipb"])
def test_channels_last_is_the_same_run_up_to_float_order(method, parts):
    """train.channels_last: NHWC weights and batches, the same draws (so the same run up to
    the order of float sums); benchmarks/train_step.py measures its speed."""
    out = {}
    for cl in ("false", "true"):
        cfg = cfg_for(method, "train.steps_per_epoch=2", "train.epochs=2",
                      f"train.channels_last={cl}")
        if cl == "true":
            m = create_method(method, cfg, 3)
            net = m.eval_model()
            assert next(p for p in net.parameters() if p.dim() == 4).is_contiguous(
                memory_format=torch.channels_last)
        out[cl] = run_trial(cfg, parts, CLASSES, log=lambda s: None)
    a, b = ([h.get("train.loss", h.get("train.teacher_sup")) for h in out[k]["history"]]
            for k in ("false", "true"))
    assert np.allclose(a, b, rtol=1e-3, atol=1e-4), (a, b)


def _conv_dtypes(model):
    """Records the output dtype of every Conv2d of `model` (and of its copies: the hooks are
    copied with it, as inference_model's NHWC copy does)."""
    seen = []
    for c in model.modules():
        if isinstance(c, torch.nn.Conv2d):
            c.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen


def test_cpu_bf16_trains_under_autocast_with_h_and_evaluation_in_fp32(parts, monkeypatch):
    """train.cpu_amp=bf16: the steps and the teacher's colony pass run under CPU bf16
    autocast on NHWC networks (another trial, near the fp32 one); evaluation and the student
    forwards that give MPL's h stay fp32 (bf16 rounding is a sizeable part of h: issue 22)."""
    import warnings

    from ipb.batches import clean_pool
    from ipb.evaluation import predict_proba
    monkeypatch.setattr("ipb.methods.base.native_cpu_bf16", lambda: True)   # no warning
    out = {}
    for amp in ("off", "bf16"):
        cfg = cfg_for("ipb", "method.preset=robust", "train.steps_per_epoch=2",
                      "train.epochs=2", f"train.cpu_amp={amp}")
        m = create_method("ipb", cfg, len(CLASSES))
        low = torch.bfloat16 if amp == "bf16" else torch.float32
        assert m.cpu_bf16 is (amp == "bf16")
        assert next(p for p in m.teacher.parameters() if p.dim() == 4).is_contiguous(
            memory_format=torch.channels_last if amp == "bf16" else torch.contiguous_format)
        seen = _conv_dtypes(m.teacher)
        pos = parts["unlabeled"].bank.center_positions(np.arange(len(parts["unlabeled"])))
        pool = clean_pool(parts["unlabeled"], pos, CLASSES, cfg, "cpu",
                          np.random.default_rng(0), torch.Generator().manual_seed(0))
        pool.colony_proba(m.teacher, k=2)
        assert seen and set(seen) == {low}
        seen.clear()
        predict_proba(m.teacher, parts["unlabeled"], cfg, "cpu", np.random.default_rng(0))
        assert seen and set(seen) == {torch.float32}
        torch.manual_seed(0)
        out[amp] = run_trial(cfg, parts, CLASSES, log=lambda s: None)
    a, b = ([h["train.teacher_sup"] for h in out[k]["history"]] for k in ("off", "bf16"))
    assert not np.array_equal(a, b) and np.allclose(a, b, rtol=0.05, atol=0.02), (a, b)
    # h: every student forward of a step in fp32, the teacher's in bf16, in both h modes
    batch = {"x_l": torch.rand(8, 1, SIZE, SIZE), "y_l": torch.arange(8) % 3,
             "x_uw": torch.rand(8, 1, SIZE, SIZE), "x_us": torch.rand(8, 1, SIZE, SIZE),
             "i_u": torch.arange(8)}
    for h_mode in ("clean", "paper"):
        cfg = cfg_for("mpl", "method.preset=robust", f"method.mpl.h_mode={h_mode}",
                      "train.cpu_amp=bf16", "method.teacher_pretrain_epochs=0")
        m = create_method("mpl", cfg, len(CLASSES))
        m.start_epoch(0)
        m.begin_final_stage(None)
        teacher, student = _conv_dtypes(m.teacher), _conv_dtypes(m.student)
        m.train_step(batch, 0)
        assert set(teacher) == {torch.bfloat16}, h_mode
        # clean: the student's train forward on x_us is bf16, its two eval forwards fp32
        want = [torch.bfloat16, torch.float32, torch.float32] if h_mode == "clean" else \
            [torch.float32, torch.float32]
        per = len(student) // len(want)
        assert [student[i * per] for i in range(len(want))] == want, (h_mode, student)
    # a CPU without native bf16 is told that it emulates it
    monkeypatch.setattr("ipb.methods.base.native_cpu_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_method("supervised", cfg, len(CLASSES))
    assert any("emulates" in str(w.message) for w in caught)


def test_cpu_amp_auto_becomes_what_this_machine_runs_and_only_bf16_is_hashed(monkeypatch,
                                                                               tmp_path):
    from ipb.config import identity, load_config, trial_hash
    gpu_file = tmp_path / "gpu.yaml"
    gpu_file.write_text("base_profile: study\ntrain:\n  use_gpu: true\n")
    for native, want in ((True, "bf16"), (False, "off")):
        monkeypatch.setattr("ipb.config.load.native_cpu_bf16", lambda: native)
        assert load_config("smoke", ["train.cpu_amp=auto"]).train.cpu_amp == want
        assert load_config("study").train.cpu_amp == want
        # decided once every key is known: a GPU trial has nothing on CPU autocast
        assert load_config("study", ["train.use_gpu=true"]).train.cpu_amp == "off"
        assert load_config(str(gpu_file)).train.cpu_amp == "off"
    off = load_config("smoke")
    assert off.train.cpu_amp == "off"
    assert "train.cpu_amp" not in identity(off)     # the old trials keep their hashes
    bf16 = load_config("smoke", ["train.cpu_amp=bf16"])
    assert trial_hash(bf16) != trial_hash(off)
    gpu = [load_config("smoke", ["train.use_gpu=true", f"train.cpu_amp={v}"]) for v in
           ("off", "bf16")]
    assert trial_hash(gpu[0]) == trial_hash(gpu[1])


def test_the_catalog_is_the_registry_and_the_readme_table():
    """`ipb methods`, the CLI's help, sweeps/baselines.py and the README's table all come from
    ipb/method_catalog.py, which reads the files; it must list exactly what is registered."""
    from pathlib import Path

    from ipb import method_catalog
    assert sorted(method_catalog.names()) == list_methods()
    from ipb.methods import method_class
    assert {e.name: e.pretrains_teacher for e in method_catalog.catalog()} == \
        {m: method_class(m).pretrains_teacher for m in list_methods()}
    assert {e.name: e.phases for e in method_catalog.catalog()} == \
        {m: method_class(m).phases for m in list_methods()}
    assert all(e.what and e.what[0].isupper() for e in method_catalog.catalog())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split(method_catalog.README_BEGIN)[1].split(method_catalog.README_END)[0]
    assert block.strip() == method_catalog.markdown(), \
        "the README's method table is stale: python -m ipb.method_catalog --markdown"


@pytest.mark.parametrize("method", list_methods())
def test_a_method_declares_the_phases_its_epochs_use(method):
    """`phases` names every batch its epochs need, with and without a pre-training stage."""
    declared = create_method(method, cfg_for(method), 3).phases
    assert declared and set(declared) <= set(PHASE_INPUTS)
    for extra in ([], ["method.teacher_pretrain_epochs=2", "method.pretext.epochs=2",
                       "method.gan_balanced.epochs=2"], ["method.teacher_pretrain_epochs=0"]):
        m = create_method(method, cfg_for(method, *extra), 3)
        assert {m.phase(e) for e in range(m.num_epochs())} <= set(declared), extra


TINY_METHOD = '''"""Pseudo-Label (Lee, ICML-W 2013): the network's own confident argmax on U as a target."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ipb.config.settings import knob, method_settings
from ipb.methods.base import register_method
from ipb.methods.supervised import Supervised


@method_settings("pseudo_label_test")
@dataclass(frozen=True)
class PseudoLabelSettings:
    """Pseudo-Label's keys."""
    threshold: float = knob(0.95, "[0, 1]")    # confidence cut-off on the weak view
    weight: float = knob(1.0, "[0, inf)")      # of the pseudo-label loss


@register_method
class PseudoLabel(Supervised):
    """Pseudo-Label (Lee 2013): confident argmax targets on the weak view of U, one network."""
    name = "pseudo_label_test"
    uses_unlabeled = True
    phases = ("mpl",)

    def phase(self, epoch):
        return "mpl"

    def train_step(self, batch, epoch):
        s = self.cfg.method.pseudo_label_test
        self.model.train()
        n_l = len(batch["x_l"])
        logits, _ = self.model(torch.cat([batch["x_l"], batch["x_uw"]]))
        conf, hard = torch.softmax(logits[n_l:].detach(), dim=1).max(dim=1)
        unsup = ((conf >= s.threshold).float() * F.cross_entropy(logits[n_l:], hard,
                                                                 reduction="none")).mean()
        loss = self.labeled_loss(logits[:n_l], batch) + s.weight * unsup
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"train.sup": loss.item() - unsup.item(), "train.unsup": unsup.item()}
'''

# run in a copy of the package with the one new file in ipb/methods/, as a user would add it
NEW_METHOD_CHECK = '''
import importlib.util, sys
from pathlib import Path
import pytest
from ipb import method_catalog
from ipb.cli import build_parser
from ipb.config import ConfigError, to_yaml
from ipb.engine import run_trial
from tiny import tiny_cfg, tiny_parts
assert "pseudo_label_test" in method_catalog.text()
train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
assert "pseudo_label_test" in next(a.help for a in train._actions if a.dest == "method")
spec = importlib.util.spec_from_file_location("baselines", Path(sys.argv[1]) / "baselines.py")
baselines = importlib.util.module_from_spec(spec)
spec.loader.exec_module(baselines)
assert {"method.name": "pseudo_label_test"} in baselines.configurations(tiny_cfg("supervised"))
cfg = tiny_cfg("pseudo_label_test", "method.pseudo_label_test.threshold=0.5",
               "train.steps_per_epoch=2", "train.epochs=2")
assert cfg.method.pseudo_label_test.threshold == 0.5 and "  weight: 1.0" in to_yaml(cfg)
with pytest.raises(ConfigError, match="method.pseudo_label_test.threshold"):
    tiny_cfg("pseudo_label_test", "method.pseudo_label_test.threshold=2")
out = run_trial(cfg, tiny_parts(), ["A", "B", "C"], log=lambda s: None)
assert 0.0 <= out["metrics"]["test.tpr.mean"] <= 1.0
# the other trials keep their hashes and teachers; the old `method.threshold` is still MPL's
import json
from ipb.config import load_config, trial_hash
from ipb.lineage import teacher_key
ipb = load_config("smoke", ["method.name=ipb", "method.preset=learn"])
assert [trial_hash(load_config("smoke")), trial_hash(ipb), teacher_key(ipb)] == \
    json.loads(sys.argv[2])
off = load_config("smoke", ["method.pseudo_label_test.weight=2", "method.threshold=0.5"])
assert trial_hash(off) != trial_hash(load_config("smoke", ["method.threshold=0.5"]))
assert off.method.mpl.threshold == 0.5 and off.method.pseudo_label_test.threshold == 0.95
print("new method ok")
'''


def test_a_new_method_is_one_file(tmp_path):
    """Issue 21's target, shown: one file dropped into ipb/methods/ (a copy of the package),
    with its own settings beside it, and the method is listed by `ipb methods`, named in `ipb
    train --help`, a row of sweeps/baselines.py, configured as `method.pseudo_label_test.*`
    (ranges checked) and trained end to end by the engine, with nothing else edited (the
    registry's own tests then cover it); every other trial keeps its hash and teacher."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "ipb", tmp_path / "ipb",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "ipb" / "methods" / "pseudo_label_test.py").write_text(TINY_METHOD)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root / 'tests'}"}
    from ipb.config import load_config, trial_hash
    from ipb.lineage import teacher_key
    ipb = load_config("smoke", ["method.name=ipb", "method.preset=learn"])
    before = json.dumps([trial_hash(load_config("smoke")), trial_hash(ipb), teacher_key(ipb)])
    r = subprocess.run([sys.executable, "-c", NEW_METHOD_CHECK, str(root / "sweeps"), before],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "new method ok" in r.stdout, r.stderr[-3000:]


def test_a_compiled_forward_trains_like_eager(parts):
    """train.compile (nn.Module.compile in Method.new_model): the MPL trial, its grad-share
    diagnostic (a graph backpropagated twice) included, keeps its weights' names and is the
    same run up to float rounding, as train.channels_last is."""
    out = {}
    for compiled in ("false", "true"):
        cfg = tiny_cfg("mpl", "train.steps_per_epoch=2", "train.epochs=1",
                       "method.teacher_pretrain_epochs=1", f"train.compile={compiled}")
        torch.manual_seed(0)
        out[compiled] = run_trial(cfg, parts, CLASSES, log=lambda s: None)
    eager, compiled = (out[k]["model"].state_dict() for k in ("false", "true"))
    assert eager.keys() == compiled.keys()
    assert any(not torch.equal(eager[k], compiled[k]) for k in eager)    # it did compile
    a, b = ([h.get("train.loss", h.get("train.teacher_sup")) for h in out[k]["history"]]
            for k in ("false", "true"))
    assert np.allclose(a, b, rtol=1e-3, atol=1e-4), (a, b)


def test_the_machine_line_names_the_cpu_and_its_bf16_and_agrees_with_auto(monkeypatch):
    """Every timing benchmark prints ipb.machine.describe() first: figures moved between an
    AMX and an AVX512-BF16 CPU, so a figure must say which one gave it."""
    from ipb import machine
    from ipb.config.load import native_cpu_bf16
    line = machine.describe()
    assert re.fullmatch(r"machine: .+, \d+ cores usable, native bf16 (AMX|AVX512-BF16|none), "
                        r"torch \S+, (no GPU|GPU .+)", line), line
    assert native_cpu_bf16() == (machine.native_bf16() != "none")
    for amx, avx, want in ((True, False, "AMX"), (False, True, "AVX512-BF16"),
                           (False, False, "none")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx)
        assert machine.native_bf16() == want
        assert native_cpu_bf16() == (want != "none")
