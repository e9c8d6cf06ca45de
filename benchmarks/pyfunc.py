"""python benchmarks/pyfunc.py [--image TILE] [--repeats 2]

How long a user waits for the `colonies` model (issue 20: 29 s to load and 28 s for the first
predict on 2 cores, numba compiling the entropy kernel into the artifact store). A small_cnn
student with random weights (SYNTHETIC: the model's scores are not the point, its latency is)
is logged as a trial logs it (ipb.logged_models.log_student) to a throw-away sqlite store; then,
in fresh Python processes, as a serving process would:
  cold:   empty numba and bytecode caches (the first load on a machine),
  cached: the same caches again (every later load: colony_pyfunc keeps them in ~/.cache/ipb,
          never in the artifact store),
each timing mlflow.pyfunc.load_model, the first predict of one image and a second predict of
it (the reference: the same work once warm, measured in the same process). The image is a
real hiPSC tile from ../shared/data/real/allen-hipsc when there, else a synthetic well.
Last line:
  `pyfunc colonies: load <s> s, first predict <s> s (x<r> of a warm one, <s> s); cold caches: load <s> s, first predict <s> s; target first predict < 5 s: met|NOT met`
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ipb.machine import describe

ROOT = Path(__file__).resolve().parents[1]
TILES = ROOT.parent / "shared" / "data" / "real" / "allen-hipsc" / "six-well-tiles"

PROBE = """
import json, sys, time
t0 = time.perf_counter()
import mlflow.pyfunc
m = mlflow.pyfunc.load_model(sys.argv[1])
t1 = time.perf_counter()
df = m.predict([sys.argv[2]])
t2 = time.perf_counter()
m.predict([sys.argv[2]])
t3 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "first": t2 - t1, "warm": t3 - t2, "colonies": len(df)}))
"""


def log_model(d: Path) -> str:
    """A random-weights small_cnn as a trial's student.pt, logged like a trial's: the URI of
    its `colonies` model."""
    import mlflow
    import torch

    from ipb.config import Config, to_dict
    from ipb.logged_models import log_student
    from ipb.models import create_model
    classes = ["Differentiated", "Rosette", "Peak", "Flat"]
    net = create_model("small_cnn", len(classes), width=1.0)
    torch.save({"state_dict": net.state_dict(), "arch": "small_cnn", "width": 1.0,
                "classes": classes, "patch_size": 48, "config": to_dict(Config()),
                "synthetic": True}, d / "student.pt")
    uri = f"sqlite:///{d}/bench.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("pyfunc-bench", artifact_location=str(d / "artifacts"))
    run = client.create_run(exp, run_name="SYNTHETIC random small_cnn")
    out = log_student(uri, run.info.run_id, d / "student.pt")
    client.set_terminated(run.info.run_id)
    return uri, out["colonies"]


def an_image(d: Path, given: str | None) -> str:
    if given:
        return given
    tiles = sorted(p for p in TILES.glob("*") if p.suffix.lower() in (".tif", ".tiff", ".png"))
    if tiles:
        return str(tiles[0])
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    img = np.full((512, 512), 120, np.uint8)
    for y, x in rng.integers(80, 430, (6, 2)):
        yy, xx = np.ogrid[:512, :512]
        disk = (yy - y) ** 2 + (xx - x) ** 2 < 45 ** 2
        img[disk] = rng.integers(40, 200, disk.sum()).astype(np.uint8)
    Image.fromarray(img).save(d / "SYNTHETIC-well.png")
    return str(d / "SYNTHETIC-well.png")


def probe(uri: str, model: str, image: str, cache: Path) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NUMBA_CACHE_DIR": str(cache / "numba"),
           "PYTHONPYCACHEPREFIX": str(cache / "pycache")}
    out = subprocess.run([sys.executable, "-c", PROBE, model, image], env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit(f"the probe failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", help="an image to predict (default: a real hiPSC tile)")
    ap.add_argument("--repeats", type=int, default=2, help="cached-cache probes (median)")
    args = ap.parse_args(argv)
    print(describe(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        uri, model = log_model(d)
        image = an_image(d, args.image)
        cold = probe(uri, model, image, d / "cache")
        print(f"cold caches: {json.dumps({k: round(v, 2) for k, v in cold.items()})}", flush=True)
        cached = []
        for i in range(args.repeats):
            cached.append(probe(uri, model, image, d / "cache"))
            print(f"cached #{i + 1}: {json.dumps({k: round(v, 2) for k, v in cached[-1].items()})}",
                  flush=True)
    med = {k: statistics.median(c[k] for c in cached) for k in ("load", "first", "warm")}
    verdict = "met" if med["first"] < 5 else "NOT met"
    print(f"image {image} ({cold['colonies']} colonies)")
    print(f"pyfunc colonies: load {med['load']:.1f} s, first predict {med['first']:.2f} s "
          f"(x{med['first'] / med['warm']:.1f} of a warm one, {med['warm']:.2f} s); cold caches: "
          f"load {cold['load']:.1f} s, first predict {cold['first']:.2f} s; target first predict "
          f"< 5 s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
