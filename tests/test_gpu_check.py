"""benchmarks/gpu.py, the one-command GPU check, runs here on the CPU at a tiny budget (the
same code path a GPU takes, minus CUDA), so that it works the first time a GPU is lent."""
from __future__ import annotations

import importlib.util
import re
import signal
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_gpu_check_runs_on_cpu_and_prints_its_last_line(ray_local, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    handler = signal.getsignal(signal.SIGINT)
    assert mod.main(["--cpu", "--width", "0.125", "--size", "32", "--ms-size", "64",
                     "--steps", "2", "--warmup", "1", "--data-steps", "2", "--colonies", "32",
                     "--learn-steps", "25"]) == 0
    # Ray Train's fit in the main thread left its own SIGINT handler in this process (a later
    # test's command then handed its SIGTERM to it)
    assert signal.getsignal(signal.SIGINT) is handler
    out = capsys.readouterr().out.strip().splitlines()
    assert re.match(r"gpu check: cpu \(no CUDA device\); vgg19 fp32 \S+ [\d.]+ samples/s .*"
                    r"ms_hrnet_w18 fp32 .*; data cpu-aug [\d.]+ device-aug [\d.]+ steps/s vs "
                    r"[\d.]+ needed, keeps up: (yes|no); vgg19 sgd lr 0.005 loss [\d.]+ -> "
                    r"[\d.]+ over 25 steps \(ln 4 = 1.386\)$", out[-1]), out[-1]
    assert sum(line.startswith(("vgg19 fp32", "ms_hrnet_w18 fp32")) for line in out) == 4
