"""One trial on one worker, in plain torch: patches -> augment -> method steps -> evaluation.

    python -c "from ipb.engine import run_trial; help(run_trial)"   # used by ipb/train.py

Ray Train (ipb/train.py) hands each worker its rows and a `report` callback; unit tests call
`run_trial` directly. Data parallel: the unlabeled, val and test rows are sharded over workers,
the small labeled set is on every worker; counts and confusion matrices are all-reduced, so
every rank runs the same number of steps and sees the same metrics.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable

import numpy as np
import torch

from ipb import stop
from ipb.batches import (Batches, bn_batches, clean_pool, plan_unlabeled_epoch, steps_for,
                         true_fractions)
from ipb.config import Config
from ipb.dist import all_reduce_sum, global_sum
from ipb.evaluation import Part, collapsed, evaluate, predict_proba, unlabeled_shares  # noqa: F401
from ipb.methods import PHASE_INPUTS, create_method
from ipb.methods.base import unwrap
from ipb.methods.stabilize import recalibrate_bn


def _evaluate_epoch(method, phase: str, final_phase: str, parts: dict[str, Part],
                    classes: list[str], cfg: Config, device, rng, pool) -> dict[str, float]:
    """Validation metrics of the phase's model (the student after BN re-estimation when
    switched on), and for MPL-family students the collapse shares on U and test."""
    model = method.phase_model(phase)
    student = phase == final_phase
    if student and method.recalibrates_bn():
        recalibrate_bn(model, bn_batches(pool, method.recalibrates_bn(),
                                         cfg.train.unlabeled_batch_size, rng))
    metrics, _ = evaluate(model, parts["val"], classes, cfg, device, rng, "val")
    if student and method.pseudo_model() is not None:
        # shares only: the test split's TPR is never looked at before the end
        shares, _ = evaluate(model, parts["test"], classes, cfg, device, rng, "test")
        metrics.update({k: v for k, v in shares.items() if "_share." in k})
        metrics.update(unlabeled_shares(model, parts["unlabeled"], len(classes), cfg, device,
                                        rng))
        metrics["collapse.now"] = float(collapsed(metrics, "u") or collapsed(metrics, "test"))
    return metrics


def _keep_if_best(best: dict, score: float, epoch: int, model) -> dict:
    if score > best["score"]:
        return {"score": score, "epoch": epoch,
                "state": copy.deepcopy(unwrap(model).state_dict())}
    return best


# the numbers on a trial's one line per epoch
EPOCH_LINE = ("train.", "val.tpr.mean", "ipb.pseudo_acc", "u.pred_share")


def run_trial(cfg: Config, parts: dict[str, Part], classes: list[str], *,
              device: torch.device | str = "cpu", wrap=None, rank: int = 0, world: int = 1,
              resume: dict[str, Any] | None = None, teacher_state: dict | None = None,
              report: Callable[[dict[str, float], Callable[[], dict] | None], None] | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `cfg.method.name` and evaluate; returns final metrics, confusion matrices, history.

    `report(metrics, state_fn)` is called once per epoch; `state_fn()` gives the checkpoint
    dict to save, and `resume` is such a dict. `teacher_state`: a pre-trained teacher (the
    supervised run of the same split, seed and budget) -- MPL-family methods then skip their
    pre-training stage and start the final one from it.
    """
    device = torch.device(device)
    seed = cfg.train.seed * 1000 + cfg.train.fold
    torch.manual_seed(seed)      # same initial weights on every rank (DDP also broadcasts)
    method = create_method(cfg.method.name, cfg, len(classes), device=device, wrap=wrap)
    rng = np.random.default_rng([seed, rank])
    gen = torch.Generator().manual_seed(seed * 7919 + rank)
    batches = Batches(cfg, parts, rng, gen, device)
    n_epochs = method.num_epochs()
    _check_phases(method, n_epochs)
    final_phase = method.phase(n_epochs - 1)
    first_final = next(e for e in range(n_epochs) if method.phase(e) == final_phase)
    run = _start(method, resume, teacher_state, first_final, log)
    select = cfg.train.select_on            # val (default) | test (reproduction only)
    if select == "val" and global_sum(len(parts["val"])) == 0:
        log("no validation colonies: the student of the last epoch is kept (no selection)")
        select = "last"
    u_true = true_fractions(parts["unlabeled"], classes) if method.uses_unlabeled else {}
    stage_teacher, pool = None, None
    for epoch in range(run["start"], n_epochs):
        t0 = time.time()
        rng = batches.rng = _seed_epoch(seed, rank, epoch, gen)
        phase = method.phase(epoch)
        if epoch == first_final and first_final > 0:
            stage_teacher = _begin_final_stage(method, cfg, run["pre_best"], epoch)
        method.start_epoch(epoch)
        metrics: dict[str, float] = {"epoch": epoch}
        if phase == "mpl":
            plan = plan_unlabeled_epoch(method, epoch, parts["unlabeled"], classes, cfg,
                                        device, rng, gen)
            batches.set_unlabeled_epoch(plan["order"], plan["positions"])
            pool = plan["pool"]
            metrics.update(plan["stats"])
            metrics["time.balance"] = time.time() - t0
            if plan["stats"]:
                metrics.update(u_true)
        metrics.update(_train_steps(method, batches, phase, epoch,
                                    steps_for(phase, cfg, parts, world)))
        metrics["time.steps"] = time.time() - t0 - metrics.get("time.balance", 0.0)
        t_eval = time.time()
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch == n_epochs - 1:
            metrics.update(_evaluate_epoch(method, phase, final_phase, parts, classes, cfg,
                                           device, rng, pool))
            _select(run, method, phase, final_phase, epoch, select, metrics, parts, classes,
                    cfg, device, rng)
        metrics["time.eval"] = time.time() - t_eval
        metrics["time.epoch"] = time.time() - t0
        metrics["phase." + phase] = 1.0
        run["history"].append(metrics)
        log(f"epoch {epoch + 1}/{n_epochs} [{phase}] " + " ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(EPOCH_LINE)))
        if report:
            def state_fn(epoch=epoch):
                return {"method": method.state_dict(), "epoch": epoch,
                        "history": run["history"], "best": run["best"],
                        "pre_best": run["pre_best"]}
            report(metrics, state_fn)
    start_teacher = stage_teacher if stage_teacher is not None else run["pre_best"]["state"]
    out = _finish(method, cfg, parts, classes, batches, world, device, rng, gen, run["best"],
                  run["history"], stage_teacher if teacher_state is None else None, pool, log)
    if method.pseudo_model() is not None:
        out["metrics"].update(diagnostics(method, out["model"], start_teacher, parts["test"],
                                          run["history"], cfg, device, rng))
    return out


def _check_phases(method, n_epochs: int) -> None:
    """A method's epochs stay within the phases it declares, each a batch the engine makes."""
    undeclared = sorted({method.phase(e) for e in range(n_epochs)} - set(method.phases))
    if undeclared:
        raise ValueError(f"method {method.name!r} runs epochs of phase(s) {undeclared} that its "
                         f"`phases` {method.phases} does not declare; add them there")
    unknown = sorted(set(method.phases) - set(PHASE_INPUTS))
    if unknown:
        raise ValueError(f"method {method.name!r} declares phase(s) {unknown} the engine has no "
                         f"batch for; known: {sorted(PHASE_INPUTS)}")


def _start(method, resume: dict | None, teacher_state: dict | None, first_final: int,
           log) -> dict[str, Any]:
    """Where the epochs begin: {"start", "history", "best", "pre_best"} (best: the final
    phase's selected model; pre_best: an earlier stage's, the teacher the final one starts
    from), from a checkpoint, a given pre-trained teacher, or nothing."""
    empty = {"score": -1.0, "epoch": -1, "state": None}
    run = {"start": 0, "history": [], "best": dict(empty), "pre_best": dict(empty)}
    if resume:
        method.load_state_dict(resume["method"])
        run.update(start=resume["epoch"] + 1, history=resume["history"], best=resume["best"],
                   pre_best=resume.get("pre_best", run["pre_best"]))
        log(f"resumed from the checkpoint of epoch {resume['epoch']}")
    elif teacher_state is not None and first_final > 0:
        run.update(start=first_final, pre_best={**empty, "state": teacher_state})
        log("teacher pre-training skipped: starting from the given pre-trained teacher")
    return run


def _seed_epoch(seed: int, rank: int, epoch: int, gen: torch.Generator) -> np.random.Generator:
    """Per-epoch streams: a resumed run draws exactly what an uninterrupted one would."""
    gen.manual_seed(seed * 7919 + rank * 1_000_003 + epoch)
    # dropout draws from the global stream: per epoch too, so a supervised run and an
    # MPL teacher's pre-training of the same split and seed are the same computation
    torch.manual_seed(seed * 104_729 + rank * 1_000_003 + epoch)
    return np.random.default_rng([seed, rank, epoch])


def _begin_final_stage(method, cfg: Config, pre_best: dict, epoch: int) -> dict:
    """The teacher the final stage starts from (the earlier stage's best by validation, or
    its last epoch), handed to the method; returned for the diagnostics and teacher.pt."""
    stage_teacher = pre_best["state"] if cfg.method.teacher_select == "val" else None
    if stage_teacher is None:
        stage_teacher = copy.deepcopy(unwrap(method.phase_model(
            method.phase(epoch - 1))).state_dict())
    method.begin_final_stage(stage_teacher)
    return stage_teacher


def _train_steps(method, batches: Batches, phase: str, epoch: int, n_steps: int
                 ) -> dict[str, float]:
    """The epoch's steps; the mean of every number `train_step` returned."""
    sums: dict[str, float] = {}
    for _ in range(n_steps):
        stop.check()      # a Ctrl-C / SIGTERM whose KeyboardInterrupt was lost in an extension
        for k, v in method.train_step(batches.batch(phase), epoch).items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / n_steps for k, v in sums.items()}


def _select(run: dict, method, phase: str, final_phase: str, epoch: int, select: str,
            metrics: dict, parts, classes, cfg: Config, device, rng) -> None:
    """Keeps the epoch's model in `run` if it scores best so far: the final phase's models
    compete for the result, an earlier stage's (MPL's teacher pre-training) for the model
    the final stage starts from."""
    if select == "test":
        score = evaluate(method.phase_model(phase), parts["test"], classes, cfg, device,
                         rng, "select")[0]["select.tpr.mean"]
    else:
        score = metrics["val.tpr.mean"] if select == "val" else float(epoch)
    if phase == final_phase:
        run["best"] = _keep_if_best(run["best"], score, epoch, method.eval_model())
    else:
        run["pre_best"] = _keep_if_best(run["pre_best"], score, epoch, method.phase_model(phase))


DIAG_MEANS = {"diag.h_abs": "train.h_abs", "diag.mpl_grad_share": "train.mpl_grad_share",
              "diag.mask_rate": "train.mask_rate", "diag.target_acc": "train.target_acc",
              "diag.target_acc_all": "train.target_acc_all", "diag.pseudo_acc": "ipb.pseudo_acc"}


def diagnostics(method, model, start_teacher: dict | None, test: Part, history: list[dict],
                cfg: Config, device, rng) -> dict[str, float]:
    """Teacher plus noise, or more? (ipb/methods/diagnostics.py): the final student's test
    agreement with the teacher it started from, its relative weight change from its own start,
    and the means over the MPL epochs of |h|, the MPL gradient share, the mask's admitted share
    of U and the accuracy of the student's targets (of the teacher's classes for IPB's draw)."""
    from ipb.methods.diagnostics import agreement, weight_change
    out = {"diag.weight_change": weight_change(model, method.student_start)}
    if start_teacher is not None and len(test):
        teacher = method.new_model()
        unwrap(teacher).load_state_dict(start_teacher)
        p_t = predict_proba(teacher, test, cfg, device, rng)
        p_s = predict_proba(model, test, cfg, device, rng)
        mine = all_reduce_sum(torch.tensor([agreement(p_t, p_s) * len(test), len(test)],
                                           dtype=torch.float64))
        out["diag.test_agree"] = float(mine[0] / mine[1])
    mpl = [h for h in history if h.get("phase.mpl")]
    for key, src in DIAG_MEANS.items():
        vals = [h[src] for h in mpl if src in h and not math.isnan(h[src])]
        if vals:
            out[key] = float(np.mean(vals))
    return out


def _finish(method, cfg: Config, parts, classes, batches, world, device, rng, gen, best,
            history, teacher, pool, log) -> dict[str, Any]:
    """Test the selected model (fine-tuned on L first when train.finetune_epochs > 0)."""
    model = unwrap(method.eval_model())
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    if cfg.train.finetune_epochs > 0:
        target = method.train_model()
        if unwrap(target) is not model:      # e.g. the EMA was selected: tune the student
            unwrap(target).load_state_dict(model.state_dict())
        finetune(method, target, cfg, batches, world, log)
        model = unwrap(target)
        if method.recalibrates_bn():
            if pool is None:       # resumed after the last epoch's plan: centre patches
                u = parts["unlabeled"]
                pool = clean_pool(u, u.bank.center_positions(np.arange(len(u))), classes, cfg,
                                  device, rng, gen)
            recalibrate_bn(model, bn_batches(pool, method.recalibrates_bn(),
                                             cfg.train.unlabeled_batch_size, rng))
    m_test, cm_test = evaluate(model, parts["test"], classes, cfg, device, rng, "test")
    m_val, cm_val = evaluate(model, parts["val"], classes, cfg, device, rng, "val")
    final = {**m_test, **{f"best.{k}": v for k, v in m_val.items()},
             "best.epoch": best["epoch"], "selected_on": cfg.train.select_on}
    extra = method.final_report(classes)    # e.g. gan_balanced's realism check and sample grid
    final.update(extra.get("metrics", {}))
    if method.pseudo_model() is not None:
        final["collapse.final"] = float(collapsed(m_test, "test"))
        final["collapse.any"] = float(final["collapse.final"] or any(
            h.get("collapse.now", 0.0) for h in history))
    return {"metrics": final, "cm_test": cm_test, "cm_val": cm_val, "history": history,
            "model": model, "classes": classes, "artifacts": extra.get("artifacts", {}),
            "teacher": teacher if method.pseudo_model() is not None else None}


def finetune(method, model, cfg: Config, batches: Batches, world: int, log) -> None:
    """Optional stage (off by default): fine-tune the selected student on L (reference code),
    at a tenth of the learning rate, through the method's training (DDP) wrapper `model`."""
    from ipb.methods.base import make_optimizer
    opt = make_optimizer(cfg, model.parameters(), lr_scale=0.1)
    for epoch in range(cfg.train.finetune_epochs):
        losses = [method.supervised_step(model, opt, batches.labeled())
                  for _ in range(steps_for("supervised", cfg, batches.parts, world))]
        log(f"fine-tune epoch {epoch + 1}/{cfg.train.finetune_epochs} "
            f"loss {sum(losses) / len(losses):.4f}")
