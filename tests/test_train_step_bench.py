"""benchmarks/train_step.py's work line: the FLOP count it divides by is a step's real work
(the benchmark itself takes minutes: run it, not a test, for the figures)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_gflop_counts_a_convolution_forward_and_backward():
    mod = _script()
    conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 1, 8, 8)
    forward = 2 * (2 * 8 * 8) * 4 * 9            # 2 FLOP per multiply-add, per output value
    assert mod.step_gflop(lambda: conv(x)) * 1e9 == forward
    # backward: the weight's gradient only (the input needs none), as much work as forward
    assert mod.step_gflop(lambda: conv(x).sum().backward()) * 1e9 == 2 * forward
    assert conv.weight.grad is not None                      # the call really ran
    assert mod.matmul_gflops(torch.float32, n=64, reps=2) > 0
