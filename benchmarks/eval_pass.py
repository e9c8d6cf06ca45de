"""python benchmarks/eval_pass.py [--archs small_cnn:1.0:48,vgg19:0.25:64,hrnet_w18:0.25:64] [--patches 4096] [--rounds 5] [--threads 1]

The no-grad passes over many patches (issue 22): evaluation of val/test each epoch and the
teacher's colony pass of IPB / MPL (learn) (4 patches of every unlabeled colony, every epoch:
26 % of a study trial's time on 2 cores, benchmarks/trial_time.py). Per architecture, the same
weights and the same --patches random 1-channel patches in batches of 256 (as
ipb.evaluation.predict_proba and UnlabeledPool.colony_proba cut them), predicted
  nchw: the model as it trains (train.eval_channels_last=false),
  nhwc: ipb.methods.base.inference_model(model, nhwc=True), the default on CPU,
interleaved (the order alternating per round, so drifting machine load hits both alike), the
median of --rounds passes each; ratio = nchw / nhwc (> 1: NHWC is faster). The two passes'
softmax outputs are compared too (the same computation up to float summation order).
Last line: `eval pass nchw/nhwc: <arch> x<ratio> (<ms> ms per 1k patches), ...; max |dp| <d>`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from ipb.machine import describe
from ipb.methods.base import inference_model, nhwc_input
from ipb.models import create_model


def one_pass(net, xs, nhwc: bool) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    with torch.no_grad():
        p = torch.cat([torch.softmax(net(nhwc_input(x, nhwc))[0].float(), dim=1) for x in xs])
    return time.perf_counter() - t0, p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="small_cnn:1.0:48,vgg19:0.25:64,hrnet_w18:0.25:64")
    ap.add_argument("--patches", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a trial's: 1)")
    a = ap.parse_args(argv)
    print(describe(), flush=True)
    torch.set_num_threads(a.threads)
    parts, worst = [], 0.0
    for spec in a.archs.split(","):
        arch, width, size = spec.split(":")
        torch.manual_seed(0)
        model = create_model(arch, 4, width=float(width), dropout=0.5).eval()
        xs = [torch.randn(min(256, a.patches - s), 1, int(size), int(size))
              for s in range(0, a.patches, 256)]
        nets = {False: model, True: inference_model(model, nhwc=True)}
        times = {False: [], True: []}
        out = {}
        one_pass(nets[False], xs[:1], False), one_pass(nets[True], xs[:1], True)  # warm-up
        for r in range(a.rounds):
            for nhwc in ((False, True) if r % 2 == 0 else (True, False)):
                t, out[nhwc] = one_pass(nets[nhwc], xs, nhwc)
                times[nhwc].append(t)
        dp = float((out[False] - out[True]).abs().max())
        worst = max(worst, dp)
        agree = float((out[False].argmax(1) == out[True].argmax(1)).float().mean())
        nchw, nhwc = statistics.median(times[False]), statistics.median(times[True])
        print(f"{arch} width {width} {size} px: nchw {nchw * 1e3 / a.patches * 1e3:.0f} ms, "
              f"nhwc {nhwc * 1e3 / a.patches * 1e3:.0f} ms per 1k patches; max |dp| {dp:.1e}, "
              f"argmax agreement {agree:.4f}", flush=True)
        parts.append(f"{arch} x{nchw / nhwc:.2f} ({nhwc * 1e6 / a.patches:.0f} ms per 1k patches)")
    print(f"eval pass nchw/nhwc ({a.threads} thread): " + ", ".join(parts)
          + f"; max |dp| {worst:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
