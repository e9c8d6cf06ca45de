"""python benchmarks/gpu.py [--steps 30] [--archs vgg19,ms_hrnet_w18] [--learn-steps 300]

The GPU check in one command (issue 22): run it first on a machine with a CUDA device; on one
without, the same code runs on the CPU at a tiny budget (what tests/test_gpu_check.py does), so
it has been run before it meets a GPU. Nothing in ipb depends on it.

All inside ONE Ray Train worker (a TorchTrainer, 1 GPU when there is one), as a trial runs
(or in this process where Ray is missing, see --runner below):
  compute: per network x AMP bf16 {off, on} x channels_last {off, on}: `--steps` MPL steps
    (ipb/methods/mpl.py train_step, the step MPL and IPB run: teacher and student) on one
    batch resident on the device, after warm-up; samples/s (labeled + unlabeled samples per
    step over the median step time), peak device memory, GPU busy % (NVML utilisation
    sampled every 50 ms during the steps; "n/a" without NVML);
  data: one step's batches the engine's way (ColonyBank positions + extract, the train / weak /
    strong augmentations on the CPU, copied to the device) and with the augmentations on the
    device (extract on the CPU, copy, augment there with a device generator): steps/s each;
    "keeps up" = the data path's steps/s >= the fastest compute setting's;
  learn: the paper profile's optimiser (SGD 0.005, momentum 0.9) on vgg19, supervised steps on
    synthetic colonies of 4 classes whose texture depends on the class (tests/tiny.py): the
    last 20 steps' mean loss against ln 4 = 1.386 (the smoke profile's Adam 2e-3 sat at ln 4).
Last line: `gpu check: <device>, <arch> <best> <samples/s> (x<speed-up> over fp32), ...; data
cpu-aug <steps/s> device-aug <steps/s>, keeps up: <yes|no>; vgg19 SGD loss <l> (ln 4 1.386)`.
On an H200-class GPU the defaults take about 3 minutes.

`--runner auto` (default) measures inside a Ray Train worker where Ray is installed, and in this
process where it is not: the lent GPU machines' image has PyTorch, NumPy, OpenCV, scikit-image,
numba and timm but no Ray, MLflow or Optuna, and Ray's wheel is larger than what may travel
there. The measurements are the same functions either way. From a bare checkout there:
`PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py` (the repository root is put on sys.path here).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the repository root too: on a lent GPU machine ipb is not installed, only checked out
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from ipb.machine import describe  # noqa: E402

CLASSES = ("Spread", "Dense", "Differentiated", "Debris")


class Busy:
    """GPU utilisation sampled by NVML every 50 ms while the `with` block runs."""

    def __init__(self, index: int):
        self.samples: list[int] = []
        try:
            import pynvml
            pynvml.nvmlInit()
            self.handle, self.nvml = pynvml.nvmlDeviceGetHandleByIndex(index), pynvml
        except Exception:           # no driver, no NVML: busy % is "n/a"
            self.handle = None

    def __enter__(self):
        self.stop = threading.Event()

        def sample():
            while not self.stop.wait(0.05):
                self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        if self.handle is not None:
            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.handle is not None:
            self.thread.join()

    def percent(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paper_cfg(arch: str, a, cuda: bool, amp: bool = False):
    from ipb.config import load_config
    return load_config("paper", {"model.arch": arch, "model.width": a.width,
                                 "patch.size": a.size, "patch.ms_size": a.ms_size,
                                 "method.name": "mpl", "method.teacher_pretrain_epochs": 0,
                                 "train.use_gpu": cuda, "train.amp": amp})


def compute(arch: str, amp: bool, channels_last: bool, a, device) -> dict:
    """MPL steps of `arch` on a device-resident batch."""
    import torch

    from ipb.methods import create_method
    from train_step import make_batch
    cfg = paper_cfg(arch, a, device.type == "cuda", amp)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    m = create_method("mpl", cfg, len(CLASSES), device=device,
                      wrap=lambda net: net.to(memory_format=fmt))
    m.start_epoch(0)
    side = a.ms_size if arch.startswith("ms_") else a.size
    batch = {k: (v.to(device).contiguous(memory_format=fmt) if v.dim() == 4 else v.to(device))
             for k, v in make_batch(cfg, len(CLASSES), side).items()}
    for _ in range(a.warmup):
        m.train_step(batch, 0)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with Busy(device.index or 0) as busy:
        for _ in range(a.steps):
            t0 = time.perf_counter()
            m.train_step(batch, 0)
            _sync(device)
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    n = cfg.train.batch_size + cfg.train.unlabeled_batch_size
    return {"step_s": step, "samples_s": n / step, "steps_s": 1 / step,
            "peak_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                         if device.type == "cuda" else None),
            "busy_pct": busy.percent() if device.type == "cuda" else None}


def data_path(a, device) -> dict:
    """Steps/s of one MPL step's batches: augmentations on the CPU (the engine) or on the
    device."""
    import numpy as np
    import torch

    from ipb.data.augment import make_augment
    from ipb.engine import Part
    from tiny import tiny_rows
    cfg = paper_cfg("vgg19", a, device.type == "cuda")
    rows = tiny_rows(n_per_class=(a.colonies // 4,) * 4, size=a.size, classes=CLASSES)
    part = Part.from_rows(rows, list(CLASSES), a.size)
    aug = {v: make_augment(cfg.augment, v) for v in ("train", "weak", "strong")}
    rng = np.random.default_rng(0)
    gens = {"cpu": torch.Generator().manual_seed(0),
            "device": torch.Generator(device=device).manual_seed(0)}
    b, p = cfg.train.batch_size, cfg.patch

    def patches(n):
        idx = rng.integers(0, len(part), n)
        return part.bank.extract(idx, part.bank.sample_positions(idx, rng, p.min_cover,
                                                                 p.max_tries))

    def step(where: str):
        g = gens[where]
        x_l, x_u = patches(b), patches(cfg.train.unlabeled_batch_size)
        if where == "device":
            x_l, x_u = x_l.to(device, non_blocking=True), x_u.to(device, non_blocking=True)
        out = [aug["train"](x_l, generator=g), aug["weak"](x_u, generator=g),
               aug["strong"](x_u, generator=g)]
        out = [t.to(device) for t in out]
        _sync(device)
        return out

    res = {}
    for where in ("cpu", "device"):
        step(where)
        t0 = time.perf_counter()
        for _ in range(a.data_steps):
            step(where)
        res[f"{where}_steps_s"] = a.data_steps / (time.perf_counter() - t0)
    return res


def learn(a, device) -> dict:
    """vgg19 with the paper profile's SGD 0.005 on class-textured synthetic colonies."""
    import numpy as np
    import torch

    from ipb.data.augment import make_augment
    from ipb.engine import Part
    from ipb.methods import create_method
    from tiny import tiny_rows
    cfg = paper_cfg("vgg19", a, device.type == "cuda", amp=device.type == "cuda")
    rows = tiny_rows(n_per_class=(a.colonies // 4,) * 4, size=a.size, classes=CLASSES, seed=1)
    part = Part.from_rows(rows, list(CLASSES), a.size)
    aug = make_augment(cfg.augment, "train")
    torch.manual_seed(0)
    m = create_method("supervised", cfg, len(CLASSES), device=device)
    m.start_epoch(0)
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    losses = []
    for _ in range(a.learn_steps):
        idx = rng.integers(0, len(part), cfg.train.batch_size)
        x = part.bank.extract(idx, part.bank.sample_positions(idx, rng, 0.25, 10))
        losses.append(m.train_step({"x_l": aug(x, generator=g).to(device),
                                    "y_l": torch.from_numpy(part.y[idx]).to(device)}, 0)
                      ["train.loss"])
    return {"loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:])),
            "optimizer": f"{cfg.train.optimizer} lr {cfg.train.lr}", "steps": a.learn_steps}


def measure(a: argparse.Namespace, device) -> dict:
    """Every measurement on `device`, as one JSON-able dict (Ray Train worker or this process)."""
    import torch
    cuda = device.type == "cuda"
    out = {"device": torch.cuda.get_device_name(device) if cuda else "cpu (no CUDA device)",
           "compute": {}}
    for arch in a.archs.split(","):
        for amp in ((False, True) if cuda else (False,)):
            for cl in (False, True):
                key = f"{arch} {'bf16' if amp else 'fp32'} {'channels_last' if cl else 'nchw'}"
                out["compute"][key] = compute(arch, amp, cl, a, device)
    out["data"] = data_path(a, device)
    out["learn"] = learn(a, device)
    return out


def bench_loop(config: dict) -> None:
    """The Ray Train worker: `measure`, reported once as JSON."""
    import ray.train
    import torch
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]   # a new process
    a = argparse.Namespace(**config)
    cuda = torch.cuda.is_available() and a.use_gpu
    out = measure(a, ray.train.torch.get_device() if cuda else torch.device("cpu"))
    import tempfile
    with tempfile.TemporaryDirectory() as d:    # Train v2 keeps the metrics of checkpoints
        (Path(d) / "gpu_check.json").write_text(json.dumps(out))
        ray.train.report({"done": 1}, checkpoint=ray.train.Checkpoint.from_directory(d))


def summary(out: dict) -> str:
    parts = []
    fastest = 0.0
    for arch in dict.fromkeys(k.split()[0] for k in out["compute"]):
        rows = {k: v for k, v in out["compute"].items() if k.startswith(arch + " ")}
        best = max(rows, key=lambda k: rows[k]["samples_s"])
        base = rows[f"{arch} fp32 nchw"]["samples_s"]
        fastest = max(fastest, rows[best]["steps_s"])
        parts.append(f"{best} {rows[best]['samples_s']:.0f} samples/s "
                     f"(x{rows[best]['samples_s'] / base:.2f} over fp32 nchw)")
    d = out["data"]
    keeps = max(d["cpu_steps_s"], d["device_steps_s"]) >= fastest
    lr = out["learn"]
    return (f"gpu check: {out['device']}; " + ", ".join(parts)
            + f"; data cpu-aug {d['cpu_steps_s']:.1f} device-aug {d['device_steps_s']:.1f} "
            f"steps/s vs {fastest:.1f} needed, keeps up: {'yes' if keeps else 'no'}; vgg19 "
            f"{lr['optimizer']} loss {lr['loss_first']:.3f} -> {lr['loss_last']:.3f} over "
            f"{lr['steps']} steps (ln 4 = {math.log(4):.3f})")


def _installed(module: str) -> bool:
    """Whether `module` can be imported here (a broken install counts as missing)."""
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def run_on_ray_train(a: argparse.Namespace, cuda: bool, t0: float) -> dict:
    """`measure` in one Ray Train worker (1 GPU when `cuda`), as a trial runs."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from ipb.runtime import init_ray
    from ipb.train import fit_interruptible
    init_ray(num_cpus=None)
    # Train's run directory only carries the result back: a temporary one (every check left
    # a gpu-check-<time> directory in ~/ray_results)
    with tempfile.TemporaryDirectory(prefix="ipb-gpu-check-",
                                     ignore_cleanup_errors=True) as storage:
        # as `ipb train` does: in the main thread Train's fit leaves its own SIGINT handler
        result = fit_interruptible(TorchTrainer(
            bench_loop, train_loop_config={**vars(a), "use_gpu": cuda},
            scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=cuda),
            run_config=ray.train.RunConfig(name=f"gpu-check-{int(t0)}", storage_path=storage)))
        if result.error:
            raise result.error
        with result.checkpoint.as_directory() as d:
            return json.loads((Path(d) / "gpu_check.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="vgg19,ms_hrnet_w18")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=128, help="single-scale patch side")
    ap.add_argument("--ms-size", type=int, default=224, help="multi-scale patch side")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--data-steps", type=int, default=30)
    ap.add_argument("--colonies", type=int, default=512)
    ap.add_argument("--learn-steps", type=int, default=300)
    ap.add_argument("--cpu", action="store_true", help="ignore any GPU (the test's budget)")
    ap.add_argument("--runner", choices=("auto", "train", "inline"), default="auto",
                    help="train: one Ray Train worker; inline: this process; auto: Ray Train "
                         "where Ray is installed (the lent GPU machines have no Ray)")
    a = ap.parse_args(argv)
    print(describe(), flush=True)
    import torch
    cuda = torch.cuda.is_available() and not a.cpu
    if not cuda:
        print("gpu check: no CUDA device here; running on the CPU at the given budget",
              flush=True)
    runner = a.runner
    if runner == "auto":
        runner = "train" if _installed("ray") else "inline"
        if runner == "inline":
            print("gpu check: Ray is not installed here; measuring in this process "
                  "(--runner inline)", flush=True)
    t0 = time.time()
    if runner == "inline":
        out = measure(a, torch.device("cuda", torch.cuda.current_device()) if cuda
                      else torch.device("cpu"))
    else:
        out = run_on_ray_train(a, cuda, t0)
    print(f"{'setting':<44}{'samples/s':>10}{'step ms':>9}{'peak GiB':>9}{'busy %':>8}")
    for k, v in out["compute"].items():
        print(f"{k:<44}{v['samples_s']:>10.1f}{v['step_s'] * 1000:>9.1f}"
              f"{v['peak_gib'] if v['peak_gib'] is not None else float('nan'):>9.2f}"
              f"{v['busy_pct'] if v['busy_pct'] is not None else float('nan'):>8.0f}")
    print(f"data path: {json.dumps(out['data'])}; learn: {json.dumps(out['learn'])}; "
          f"wall {time.time() - t0:.0f}s")
    print(summary(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
