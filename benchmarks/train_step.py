"""python benchmarks/train_step.py [--arch vgg19] [--width 0.25] [--size 64] [--rounds 5] [--steps 10] [--unlabeled 2000] [--archs small_cnn:1.0:48,vgg19:0.125:64] [--compile]

One MPL step (32 labeled + 32 unlabeled, weak and strong views) on CPU with ONE thread
(torch.set_num_threads(1)), same architecture, same initial weights, same precomputed batch:
  ours:  create_method("mpl", cfg, C).train_step(batch, epoch) -- ipb/methods/mpl.py, the code
         that ipb and mpl_balanced run too (they differ only in the per-epoch resampling);
  plain: the textbook MPL-pytorch step written inline below (teacher forward on
         cat(l, uw, us), UDA, student forward + step, the student's new labeled loss, the
         teacher's MPL loss, teacher step), same optimiser settings;
  ours bf16: ours with train.cpu_amp=bf16 (NHWC), as the study profile runs where the CPU has
         native bf16 (AMX / AVX512-BF16; skipped elsewhere): the same operations, the
         teacher's in bf16; the student's stay fp32 here, as they give h in the paper's h_mode
         (the study's presets, h_mode=clean, run the student's train forward in bf16 too).
All run interleaved after a warm-up (rounds x steps each, the order alternating per round so
drifting machine load hits both alike); medians of per-step wall times; ratio = ours / plain.
Then the work: one step's GFLOP (torch's FLOP counter on a step after the warm-up: convolutions
and matrix products) over each median, next to this thread's 1024^3 matrix product in fp32 and
bf16, so a reader sees how far a step is from what the core does at all.

The pseudo-balancing pass: `ipb.batches.plan_unlabeled_epoch` for method ipb on a Part of
--unlabeled synthetic colonies (tests/tiny.py rows; building the Part, done once per worker
per run, is timed apart): patch positions for the epoch, the teacher (eval) predicting one patch
per colony, the balanced draw. One epoch of IPB = this pass + len(U) / 32 steps (the paper's
epoch), so share = balance / (balance + ceil(len(U)/32) * our step time). The real epoch also
cuts and augments batches, so this share is an upper bound.
Then one MPL step per architecture of --archs (the CPU-study small_cnn next to VGG19 at the
widths CPU studies used), one thread each, in NCHW and with train.channels_last (interleaved);
with --compile also with train.compile (torch.compile of each network's forward).
Last line: `mpl step ratio <r> (train.cpu_amp=bf16 <r16>), ipb balancing share <s>, <arch>
<ms> ms, channels_last <arch> x<NCHW / NHWC>[, compile <arch> x<eager / compiled>], ...`.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ipb.config import PAPER_CLASSES, apply, load_config  # noqa: E402
from ipb.config.load import native_cpu_bf16  # noqa: E402
from ipb.data.augment import make_augment  # noqa: E402
from ipb.batches import plan_unlabeled_epoch  # noqa: E402
from ipb.engine import Part  # noqa: E402
from ipb.machine import describe
from ipb.methods import create_method  # noqa: E402
from ipb.models import create_model  # noqa: E402


class PlainMPL:
    """Textbook single-process MPL step (kekmodel/MPL-pytorch's train loop, fp32, no DDP)."""

    def __init__(self, cfg, num_classes, teacher_state, student_state):
        m, t = cfg.model, cfg.train
        self.cfg = cfg
        self.teacher = create_model(m.arch, num_classes=num_classes, width=m.width,
                                    dropout=m.dropout)
        self.student = create_model(m.arch, num_classes=num_classes, width=m.width,
                                    dropout=m.dropout)
        self.teacher.load_state_dict(teacher_state)
        self.student.load_state_dict(student_state)
        opt = dict(lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self.t_opt = torch.optim.SGD(self.teacher.parameters(), **opt)
        self.s_opt = torch.optim.SGD(self.student.parameters(), **opt)
        self.step = 0

    def train_step(self, b):
        a = self.cfg.method.mpl
        images_l, targets, images_uw, images_us = b["x_l"], b["y_l"], b["x_uw"], b["x_us"]
        bs = images_l.shape[0]
        self.teacher.train()
        self.student.train()
        t_logits = self.teacher(torch.cat((images_l, images_uw, images_us)))[0]
        t_logits_l = t_logits[:bs]
        t_logits_uw, t_logits_us = t_logits[bs:].chunk(2)
        del t_logits
        t_loss_l = F.cross_entropy(t_logits_l, targets)
        soft_pseudo_label = torch.softmax(t_logits_uw.detach() / a.temperature, dim=-1)
        max_probs, hard_pseudo_label = torch.max(soft_pseudo_label, dim=-1)
        mask = max_probs.ge(a.threshold).float()
        t_loss_u = torch.mean(
            -(soft_pseudo_label * torch.log_softmax(t_logits_us, dim=-1)).sum(dim=-1) * mask)
        weight_u = self.cfg.method.lambda_u * min(1., (self.step + 1) / a.uda_steps)
        t_loss_uda = t_loss_l + weight_u * t_loss_u

        s_logits = self.student(torch.cat((images_l, images_us)))[0]
        s_logits_l, s_logits_us = s_logits[:bs], s_logits[bs:]
        del s_logits
        s_loss_l_old = F.cross_entropy(s_logits_l.detach(), targets)
        # MPL-pytorch's student loss is unmasked; ours masks by default (student_mask=true):
        # the same few element-wise ops are kept here so both steps compute the same thing
        s_loss = (mask * F.cross_entropy(s_logits_us, hard_pseudo_label, reduction="none")).mean()
        s_loss.backward()
        self.s_opt.step()

        with torch.no_grad():
            s_logits_l = self.student(images_l)[0]
        s_loss_l_new = F.cross_entropy(s_logits_l.detach(), targets)
        dot_product = s_loss_l_new - s_loss_l_old
        _, hard_pseudo_label = torch.max(t_logits_us.detach(), dim=-1)
        t_loss_mpl = dot_product * F.cross_entropy(t_logits_us, hard_pseudo_label)
        t_loss = t_loss_uda + t_loss_mpl
        t_loss.backward()
        self.t_opt.step()
        self.teacher.zero_grad()
        self.student.zero_grad()
        self.step += 1
        return t_loss.item()


def make_batch(cfg, num_classes: int, s: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """32 labeled (train view) + 32 unlabeled (weak and strong views) s x s patches."""
    g = torch.Generator().manual_seed(seed)
    t = cfg.train

    def patches(n):   # smooth random textures in [0, 1], like grey colony patches
        x = torch.rand(n, 1, s // 8, s // 8, generator=g)
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)

    aug = {v: make_augment(cfg.augment, v) for v in ("train", "weak", "strong")}
    x_u = patches(t.unlabeled_batch_size)
    return {"x_l": aug["train"](patches(t.batch_size), generator=g),
            "y_l": torch.randint(0, num_classes, (t.batch_size,), generator=g),
            "x_uw": aug["weak"](x_u, generator=g), "x_us": aug["strong"](x_u, generator=g)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_gflop(fn) -> float:
    """GFLOP of one call of `fn` by torch's FLOP counter (convolutions and matrix products,
    forward and backward; element-wise work is not counted). The call runs for real."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    """This thread's rate on an n^3 matrix product (best of `reps`): the reference a step's
    GFLOP/s is read against."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    return 2 * n ** 3 / min(timed(lambda: a @ b) for _ in range(reps)) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vgg19")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=64, help="patch side (ms_* archs: the large one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per round per implementation")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--unlabeled", type=int, default=2000, help="colonies in U for the pass")
    ap.add_argument("--archs", default="small_cnn:1.0:48,vgg19:0.125:64,vgg19:0.25:64",
                    help="arch:width:patch list timed for one MPL step ('' skips)")
    ap.add_argument("--compile", action="store_true",
                    help="also time each arch with train.compile (torch.compile of the forward; "
                         "~5 s of compiling small_cnn, ~65 s vgg19 width 0.25 on 2 cores)")
    args = ap.parse_args()
    print(describe(), flush=True)

    torch.set_num_threads(1)
    num_classes = len(PAPER_CLASSES)
    cfg = load_config("paper", {"train.use_gpu": False, "model.arch": args.arch,
                                "model.width": args.width, "patch.size": args.size,
                                "patch.ms_size": args.size, "method.name": "ipb",
                                # epoch 0 is an MPL epoch (the paper profile pre-trains first)
                                "method.teacher_pretrain_epochs": 0})
    print(f"MPL step benchmark: {args.arch} width {args.width}, patch {args.size}px, "
          f"batch {cfg.train.batch_size} labeled + {cfg.train.unlabeled_batch_size} unlabeled "
          f"(weak + strong), {num_classes} classes, CPU, torch.set_num_threads(1), "
          f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs")

    torch.manual_seed(0)
    ours = create_method("mpl", cfg, num_classes)
    epoch = 0
    assert ours.phase(epoch) == "mpl", "benchmark config must start in the MPL phase"
    ours.start_epoch(epoch)
    plain = PlainMPL(cfg, num_classes, ours.teacher.state_dict(), ours.student.state_dict())
    for g in plain.s_opt.param_groups:     # the student warm-up lr ours set in start_epoch
        g["lr"] = ours.opt_s.param_groups[0]["lr"]
    batch = make_batch(cfg, num_classes, args.size)
    runners = {"ours": lambda: ours.train_step(batch, epoch), "plain": lambda: plain.train_step(batch)}
    # ours as the study runs it where the CPU has native bf16 (train.cpu_amp=auto, the study
    # profile): bf16 autocast and NHWC, against the same fp32 textbook step
    bf16 = native_cpu_bf16()
    if bf16:
        cfg16 = apply(cfg, {"train.cpu_amp": "bf16"})     # NHWC networks with it
        ours16 = create_method("mpl", cfg16, num_classes)
        ours16.teacher.load_state_dict(ours.teacher.state_dict())
        ours16.student.load_state_dict(ours.student.state_dict())
        ours16.start_epoch(epoch)
        batch16 = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                   for k, v in batch.items()}
        runners["ours bf16"] = lambda: ours16.train_step(batch16, epoch)
    else:
        print("this CPU has no native bf16 (AMX or AVX512-BF16): the bf16 step is not timed")
    gflop = {}
    for name, fn in runners.items():
        for _ in range(args.warmup):
            fn()
        # one more step, counted: a first step does one-off work (11.0 against 6.3 GFLOP)
        gflop[name] = step_gflop(fn)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        for name in order:
            times[name] += [timed(runners[name]) for _ in range(args.steps)]
        print(f"  round {r + 1}/{args.rounds}: " + " ".join(
            f"{k} {statistics.median(v):.3f}s" for k, v in times.items())
            + f" (running medians), load {os.getloadavg()[0]:.2f}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["plain"]
    print(f"{'step':<10}{'median s':>10}{'min s':>10}{'max s':>10}{'n':>5}")
    for k, v in times.items():
        print(f"{k:<10}{med[k]:>10.4f}{min(v):>10.4f}{max(v):>10.4f}{len(v):>5}")
    print(f"ratio ours/plain (median) {ratio:.3f}; min-based {min(times['ours']) / min(times['plain']):.3f}")
    ratio16 = med["ours bf16"] / med["plain"] if bf16 else float("nan")
    if bf16:
        print(f"ratio ours with train.cpu_amp=bf16 / plain fp32 (median) {ratio16:.3f}: "
              "precision, not fewer operations (ours is the textbook's computation; the "
              "student's forwards, which give h, stay fp32)")

    peak = {d: matmul_gflops(d) for d in (torch.float32, torch.bfloat16)}
    print(f"work: one MPL step {gflop['ours']:.2f} GFLOP (convolutions and matrix products); "
          + ", ".join(f"{k} {gflop[k] / med[k]:.0f} GFLOP/s" for k in runners)
          + f"; this thread's 1024^3 matrix product {peak[torch.float32]:.0f} GFLOP/s fp32, "
          f"{peak[torch.bfloat16]:.0f} bf16 (a step near that rate has little left to gain "
          "in software at its precision)", flush=True)

    # -- the pseudo-balancing pass at the start of an IPB epoch -------------------------------
    from tiny import tiny_rows
    t0 = time.perf_counter()
    rows = tiny_rows(n_per_class=(0,) * num_classes, size=max(16, args.size * 3 // 4),
                     classes=PAPER_CLASSES, n_unlabeled=args.unlabeled)
    t_rows = time.perf_counter() - t0
    t0 = time.perf_counter()
    part = Part.from_rows(rows, list(PAPER_CLASSES), args.size)
    t_part = time.perf_counter() - t0
    method = create_method("ipb", cfg, num_classes)
    method.teacher.load_state_dict(ours.teacher.state_dict())
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    balance = []
    for _ in range(2):
        balance.append(timed(lambda: plan_unlabeled_epoch(
            method, epoch, part, list(PAPER_CLASSES), cfg, "cpu", rng, gen)))
    t_balance = statistics.median(balance)
    steps_per_epoch = math.ceil(len(part) / cfg.train.unlabeled_batch_size)
    t_steps = steps_per_epoch * med["ours"]
    share = t_balance / (t_balance + t_steps)
    print(f"pseudo-balancing pass over U = {len(part)} colonies at {args.size}px "
          f"(synthetic rows {t_rows:.1f}s and Part build {t_part:.1f}s, once per worker, not "
          f"counted): {t_balance:.2f}s (median of {len(balance)}: "
          f"{', '.join(f'{b:.2f}' for b in balance)})")
    print(f"epoch = pass + {steps_per_epoch} steps x {med['ours']:.3f}s = {t_balance:.1f}s + "
          f"{t_steps:.1f}s; balancing share {share:.3f}; load average {os.getloadavg()[0]:.2f}")
    arch_steps = arch_step_times(args) if args.archs else {}
    with_bf16 = f" (train.cpu_amp=bf16 {ratio16:.3f})" if bf16 else ""
    print(f"mpl step ratio {ratio:.3f}{with_bf16}, ipb balancing share {share:.3f}" + "".join(
        f", {k} x{v:.2f}" if k.startswith(("channels_last", "compile")) else
        f", {k} {v * 1000:.0f} ms"
        for k, v in arch_steps.items()))


def arch_step_times(args) -> dict[str, float]:
    """Median seconds of one MPL step (ours) per architecture, one thread, same batch shape:
    the CPU-study network next to the paper's VGG19 at the widths CPU studies used; each also
    with train.channels_last (NHWC weights and batch, same initial weights), the two
    interleaved round by round. Returns {arch: s, "channels_last <arch>": NCHW s / NHWC s}."""
    out = {}
    num_classes = len(PAPER_CLASSES)
    for spec in args.archs.split(","):
        arch, width, size = spec.split(":")
        runs, first = {}, {}
        fmts = ("nchw", "nhwc", "compiled") if args.compile else ("nchw", "nhwc")
        for fmt in fmts:
            cfg = load_config("paper", {"train.use_gpu": False, "model.arch": arch,
                                        "model.width": float(width), "patch.size": int(size),
                                        "patch.ms_size": int(size), "method.name": "mpl",
                                        "method.teacher_pretrain_epochs": 0,
                                        "train.channels_last": fmt == "nhwc",
                                        "train.compile": fmt == "compiled"})
            torch.manual_seed(0)
            m = create_method("mpl", cfg, num_classes)
            assert m.phase(0) == "mpl"
            m.start_epoch(0)
            memory = torch.channels_last if fmt == "nhwc" else torch.contiguous_format
            batch = {k: v.contiguous(memory_format=memory) if v.dim() == 4 else v
                     for k, v in make_batch(cfg, num_classes, int(size)).items()}
            first[fmt] = timed(lambda: m.train_step(batch, 0))    # compiling, when compiled
            for _ in range(args.warmup):
                m.train_step(batch, 0)
            if fmt == "nchw":
                work = step_gflop(lambda: m.train_step(batch, 0))
            runs[fmt] = (m, batch, [])
        for r in range(args.rounds):
            for fmt in (fmts if r % 2 == 0 else fmts[::-1]):
                m, batch, times = runs[fmt]
                times += [timed(lambda: m.train_step(batch, 0)) for _ in range(args.steps)]
        t, t_cl = (statistics.median(runs[f][2]) for f in ("nchw", "nhwc"))
        key = f"{arch}@{width}x{size}px"
        out[key], out[f"channels_last {key}"] = t, t / t_cl
        if args.compile:
            t_c = statistics.median(runs["compiled"][2])
            out[f"compile {key}"] = t / t_c
            print(f"architecture {arch} width {width} patch {size}px: train.compile MPL step "
                  f"{t_c * 1000:.1f} ms (x{t / t_c:.2f} of NCHW eager) after a first step of "
                  f"{first['compiled']:.1f} s (compiling; inductor's disk cache makes a second "
                  f"process faster); pays for itself after "
                  f"{first['compiled'] / max(t - t_c, 1e-9):.0f} steps", flush=True)
        n = sum(p.numel() for p in runs["nchw"][0].student.parameters())
        print(f"architecture {arch} width {width} patch {size}px: {n / 1e3:.0f} k parameters, "
              f"MPL step {t * 1000:.1f} ms NCHW, {t_cl * 1000:.1f} ms channels_last (x{t / t_cl:.2f}; "
              f"medians of {len(runs['nchw'][2])}, interleaved), supervised-equivalent "
              f"throughput {cfg.train.batch_size / t:.0f} labeled patches/s, {work:.2f} GFLOP "
              f"a step = {work / t:.0f} GFLOP/s NCHW", flush=True)
    steps = {k: v for k, v in out.items() if not k.startswith(("channels_last", "compile"))}
    first = next(iter(steps.values()), None)
    if first:
        print("step time relative to " + next(iter(steps)) + ": " + ", ".join(
            f"{k} {v / first:.1f}x" for k, v in steps.items()))
    return out


if __name__ == "__main__":
    main()
