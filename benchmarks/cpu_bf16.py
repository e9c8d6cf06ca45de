"""python benchmarks/cpu_bf16.py [--rounds 5] [--steps 10] [--unlabeled 2000]

What `train.cpu_amp=bf16` buys and costs on this CPU (issue 22), one thread, the study's
network (small_cnn width 1.0, 48 px patches, the study profile):
  steps:  one MPL step of the robust and of the learn preset (h_mode=clean: the student's train
          forward in bf16, the two eval forwards that give h in fp32), fp32 NCHW against bf16
          NHWC, same initial weights and batch, interleaved round by round, medians;
  pass:   the learn preset's colony pass (4 patches a colony, eval mode) over --unlabeled
          synthetic colonies (tests/tiny.py rows), fp32 against bf16, medians of 3;
  h:      why h stays fp32: a small_cnn trained on a learnable synthetic label (the patch's
          mean-intensity quartile), then 30 MPL steps; for each, the student's labeled loss
          before and after its step in fp32 and in bf16: mean |h| (fp32) and the mean
          |h(bf16) - h(fp32)|, with how often the two signs agree.
Without native bf16 (AMX / AVX512-BF16) it says so and stops: oneDNN would emulate bf16.
Last line: `cpu bf16: robust step x<a>, learn step x<b>, colony pass x<c>, h rounding <r> of
|h| (signs agree <s>)`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from train_step import make_batch, timed  # noqa: E402

from ipb.config import PAPER_CLASSES, load_config  # noqa: E402
from ipb.config.load import native_cpu_bf16  # noqa: E402
from ipb.machine import describe  # noqa: E402
from ipb.methods import create_method  # noqa: E402

C = len(PAPER_CLASSES)


def study_mpl(preset: str, amp: str):
    cfg = load_config("study", {"method.name": "ipb", "method.preset": preset,
                                "method.teacher_pretrain_epochs": 0, "train.cpu_amp": amp})
    torch.manual_seed(0)
    m = create_method("ipb", cfg, C)
    m.start_epoch(0)
    m.begin_final_stage(None)
    return cfg, m


def step_ratios(rounds: int, steps: int) -> dict[str, float]:
    """fp32 median / bf16 median of one MPL step per preset."""
    out = {}
    for preset in ("robust", "learn"):
        runs = {}
        for amp in ("off", "bf16"):
            cfg, m = study_mpl(preset, amp)
            batch = make_batch(cfg, C, cfg.patch.size)
            batch["i_u"] = torch.arange(len(batch["x_uw"]))
            m.colony_q = torch.softmax(torch.randn(len(batch["x_uw"]), C), dim=1)
            for _ in range(3):
                m.train_step(batch, 0)
            runs[amp] = (m, batch, [])
        for r in range(rounds):
            for amp in (("off", "bf16") if r % 2 == 0 else ("bf16", "off")):
                m, batch, times = runs[amp]
                times += [timed(lambda: m.train_step(batch, 0)) for _ in range(steps)]
        med = {k: statistics.median(v[2]) for k, v in runs.items()}
        print(f"{preset} MPL step: fp32 {med['off'] * 1000:.1f} ms, bf16 "
              f"{med['bf16'] * 1000:.1f} ms (x{med['off'] / med['bf16']:.2f}; medians of "
              f"{rounds * steps}, interleaved)", flush=True)
        out[preset] = med["off"] / med["bf16"]
    return out


def pass_ratio(n: int) -> float:
    """fp32 / bf16 time of the learn preset's 4-patch colony pass over n colonies."""
    from tiny import tiny_rows

    from ipb.batches import clean_pool
    from ipb.engine import Part
    rows = tiny_rows(n_per_class=(0,) * C, size=36, classes=PAPER_CLASSES, n_unlabeled=n)
    part = Part.from_rows(rows, list(PAPER_CLASSES), 48)
    times = {}
    for amp in ("off", "bf16"):
        cfg, m = study_mpl("learn", amp)
        pos = part.bank.sample_positions(np.arange(len(part)), np.random.default_rng(0))
        pool = clean_pool(part, pos, list(PAPER_CLASSES), cfg, "cpu", np.random.default_rng(0),
                          torch.Generator().manual_seed(0))
        times[amp] = statistics.median(
            timed(lambda: pool.colony_proba(m.teacher, cfg.method.pseudo_patches))
            for _ in range(3))
    print(f"colony pass over {len(part)} colonies x 4 patches: fp32 {times['off']:.2f} s, "
          f"bf16 {times['bf16']:.2f} s (x{times['off'] / times['bf16']:.2f})", flush=True)
    return times["off"] / times["bf16"]


def h_rounding() -> tuple[float, float]:
    """(mean |h(bf16) - h(fp32)| / mean |h(fp32)|, share of steps whose signs agree)."""
    cfg, m = study_mpl("robust", "bf16")

    def labelled(seed):     # a label the network can learn: the mean-intensity quartile
        b = make_batch(cfg, C, cfg.patch.size, seed=seed)
        v = b["x_l"].mean(dim=(1, 2, 3))
        b["y_l"] = torch.bucketize(v, torch.quantile(v, torch.tensor([.25, .5, .75])))
        b["i_u"] = torch.arange(len(b["x_uw"]))
        return b

    for g in m.opt_s.param_groups:
        g["lr"] = 2e-3
    for i in range(300):
        m.supervised_step(m.student, m.opt_s, labelled(i))
    m.start_epoch(0)

    def loss(b, bf16):
        m.student.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = F.cross_entropy(m.student(b["x_l"])[0].float(), b["y_l"]).item()
        m.student.train()
        return out

    h32, h16 = [], []
    for i in range(30):
        b = labelled(1000 + i)
        before = loss(b, False), loss(b, True)
        m.train_step(b, 0)
        after = loss(b, False), loss(b, True)
        h32.append(after[0] - before[0])
        h16.append(after[1] - before[1])
    h32, h16 = np.array(h32), np.array(h16)
    share = float(np.abs(h16 - h32).mean() / np.abs(h32).mean())
    agree = float((np.sign(h16) == np.sign(h32)).mean())
    print(f"h over 30 MPL steps of a trained small_cnn (labeled loss {before[0]:.3f}): mean |h| "
          f"{np.abs(h32).mean():.2e} in fp32, mean |h(bf16) - h(fp32)| "
          f"{np.abs(h16 - h32).mean():.2e} ({share:.0%}), signs agree {agree:.0%}", flush=True)
    return share, agree


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--unlabeled", type=int, default=2000)
    a = ap.parse_args()
    print(describe(), flush=True)
    if not native_cpu_bf16():
        print("cpu bf16: this CPU has no native bf16 (AMX or AVX512-BF16); train.cpu_amp=auto "
              "runs fp32 here, nothing to measure")
        return 0
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    steps = step_ratios(a.rounds, a.steps)
    colony = pass_ratio(a.unlabeled)
    share, agree = h_rounding()
    print(f"({time.perf_counter() - t0:.0f} s)")
    print(f"cpu bf16: robust step x{steps['robust']:.2f}, learn step x{steps['learn']:.2f}, "
          f"colony pass x{colony:.2f}, h rounding {share:.0%} of |h| (signs agree {agree:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
