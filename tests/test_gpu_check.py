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
    left = sorted((Path.home() / "ray_results").glob("gpu-check-*"))
    assert mod.main(["--cpu", "--width", "0.125", "--size", "32", "--ms-size", "64",
                     "--steps", "2", "--warmup", "1", "--data-steps", "2", "--colonies", "32",
                     "--learn-steps", "25"]) == 0
    # Ray Train's fit in the main thread left its own SIGINT handler in this process (a later
    # test's command then handed its SIGTERM to it)
    assert signal.getsignal(signal.SIGINT) is handler
    # its Ray Train run directory is a temporary one (each check left one in ~/ray_results)
    assert sorted((Path.home() / "ray_results").glob("gpu-check-*")) == left
    out = capsys.readouterr().out.strip().splitlines()
    assert re.match(r"gpu check: cpu \(no CUDA device\); vgg19 fp32 \S+ [\d.]+ samples/s .*"
                    r"ms_hrnet_w18 fp32 .*; data cpu-aug [\d.]+ device-aug [\d.]+ steps/s vs "
                    r"[\d.]+ needed, keeps up: (yes|no); vgg19 sgd lr 0.005 loss [\d.]+ -> "
                    r"[\d.]+ over 25 steps \(ln 4 = 1.386\)$", out[-1]), out[-1]
    assert sum(line.startswith(("vgg19 fp32", "ms_hrnet_w18 fp32")) for line in out) == 4


DEVICE_IMAGE_LACKS = ("ray", "mlflow", "optuna", "imagecodecs")


@pytest.mark.timeout(300)
def test_gpu_check_runs_without_ray_as_on_the_lent_gpu_machines(tmp_path):
    """The lent GPU machines' image has PyTorch but no Ray, MLflow or Optuna (and Ray's wheel is
    over what may travel there): `--runner auto` then measures in its own process. Simulated
    here by an import hook that refuses those packages, run from outside the checkout."""
    import os
    import subprocess
    import sys
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        f"BLOCK = {DEVICE_IMAGE_LACKS!r}\n"
        "class _Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCK:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, _Refuse())\n")
    env = {**os.environ, "PYTHONPATH": str(hook), "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--width", "0.125", "--size", "32",
         "--ms-size", "64", "--steps", "2", "--warmup", "1", "--data-steps", "2",
         "--colonies", "32", "--learn-steps", "5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.strip().splitlines()
    assert out[0].startswith("machine: "), out[0]
    assert "Ray is not installed here; measuring in this process" in r.stdout
    assert re.match(r"gpu check: cpu \(no CUDA device\); vgg19 fp32 .* vgg19 sgd lr 0.005 loss "
                    r"[\d.]+ -> [\d.]+ over 5 steps", out[-1]), out[-1]
    assert not any(m in line for line in r.stderr.splitlines() for m in ("Traceback",))
    # and the hook does refuse them: without --runner auto's check this run would have failed
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True,
                           text=True, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'ray'" in probe.stderr
