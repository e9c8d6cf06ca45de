"""A trial's student as MLflow models, and a sweep's champion in the model registry.

    ipb predict "models:/ipb-main-colonies@champion" images/ --out pred/
    mlflow models serve -m "models:/ipb-main-colonies@champion" --env-manager local -p 5001

Every finished trial logs two models from its student.pt (the run's "Logged models", the
experiment's Models tab): `student` (mlflow.pytorch: a batch of patches (N, 1, S, S) float32, as
`ipb.evaluation.predict_proba` feeds them, -> class logits (N, C); signature and input example) and
`colonies` (mlflow.pyfunc: image paths -> one row per colony, segmented and classified by
`ipb.predict`, the code of `ipb predict`; signature: a string column in, colonies.csv's columns
out, param test_patches). Both carry the ipb source (code_paths), so they
load wherever the pinned requirements install. At the end of a sweep the `colonies` model of
its best trial by VALIDATION score (never test) is registered as `<experiment>-colonies` with
alias `champion`.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import torch

from ipb import stop
from ipb.tracking import global_uri, quiet_artifact_bars

ALIAS = "champion"
SCORE = "best.val.tpr.mean"     # what sweeps optimise: validation mean TPR at the selected epoch
# what `ipb.predict` imports, pinned to this environment's versions (MLflow's own inference of
# requirements loads the model in a subprocess: seconds per trial)
REQUIREMENTS = ("torch", "torchvision", "numpy", "pandas", "scipy", "scikit-image", "numba",
                "opencv-python-headless", "tifffile", "imagecodecs", "pyyaml", "matplotlib",
                "timm", "tqdm")


# The `colonies` model's signature: image paths, one string each (a served model takes
# {"inputs": ["a.tif", ...]}), the param test_patches, and the columns of colonies.csv. MLflow's
# schemas cannot say "a path or an image", so numpy images go through `ipb.predict` (or the
# loaded model's unwrap_python_model().predict(None, [image])), not through the pyfunc predict
# the schema checks. No input example: a path does not travel with the model, and MLflow would
# load the model and predict on it at every trial's logging to check one
COLONY_INPUT = ("a list of image paths, or a DataFrame whose one column holds them; params: "
                "test_patches (default 5); numpy images: ipb.predict, or the loaded model's "
                "unwrap_python_model().predict(None, [image])")
_COLONY_TYPES = {"id": "long", "image": "string", "time": "long", "colony": "long", "x0": "long",
                 "y0": "long", "x1": "long", "y1": "long", "area": "long", "area_um2": "double",
                 "pixel_size_um": "double", "border": "boolean", "class": "string",
                 "track": "string", "class_constrained": "string"}
COLONY_OUTPUT = ("one row per colony: " + ", ".join(_COLONY_TYPES)
                 + ", p_<class>... (ipb predict's colonies.csv)")


def colony_signature(classes: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from ipb.predict import DEFAULT_TEST_PATCHES
    out = [ColSpec(t, name) for name, t in _COLONY_TYPES.items()]
    out += [ColSpec("double", f"p_{c}") for c in classes]
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema(out),
                          params=ParamSchema([ParamSpec("test_patches", "long",
                                                        DEFAULT_TEST_PATCHES)]))


def registered_name(experiment: str) -> str:
    """The registry's name for a sweep's champion: it holds the `colonies` pyfunc (images in,
    one row per colony out), so it is named so (ipb before 2026-12 named it `<experiment>-student`)."""
    return f"{experiment}-colonies"


class Logits(torch.nn.Module):
    """The student's class logits alone (its forward also returns the embedding)."""

    def __init__(self, student: torch.nn.Module):
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)[0]


@contextlib.contextmanager
def _active(uri: str, run_id: str):
    """log_model logs to the active run: this run, at this URI, for the duration (a trial's
    driver logs one run at a time). Quiet: the input example's validation is a prediction in
    this process, and the pyfunc model takes image paths, of which no example travels."""
    import os
    import warnings
    quiet_artifact_bars()
    os.environ.setdefault("MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING", "false")
    import logging
    # MLflow's notes on signature inference and type hints: both models are logged with one
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    with global_uri(uri), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided",
                                category=UserWarning)
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            yield


def _requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{name}=={version(name)}")
    return out


def _code(dst: Path) -> str:
    """A copy of the ipb package's sources (no caches): the models' code_paths."""
    src = Path(__file__).resolve().parent
    shutil.copytree(src, dst / "ipb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc",
                                                                    "*.nbi", "*.nbc"))
    return str(dst / "ipb")


@stop.deferred()        # its writes end before a stop (ipb/stop.py)
def log_student(uri: str, run_id: str, model_file: Path) -> dict[str, str]:
    """Log the `student` (pytorch) and `colonies` (pyfunc) models of a trial's student.pt;
    {"student": model URI, "colonies": model URI}, also set as run tags ipb.model.*."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from ipb.student import load_student
    net, meta = load_student(model_file)
    size, classes = int(meta["patch_size"]), list(meta["classes"])
    # two patches: torch.export (MLflow's pytorch format) fixes a batch dimension of size 1
    # as a constant, so an example of one patch gave a model that takes one patch at a time;
    # the example is stored twice as JSON, so no more than two
    example = np.random.default_rng(0).standard_normal((2, 1, size, size)).astype(np.float32)
    tensor_sig = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, size, size))]),
                                outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(classes)))]))
    reqs = _requirements()
    tags = {"ipb.arch": meta["arch"], "ipb.classes": ",".join(classes),
            "ipb.synthetic": str(bool(meta.get("synthetic"))).lower()}
    with tempfile.TemporaryDirectory() as d, _active(uri, run_id):
        code = _code(Path(d))
        student = mlflow.pytorch.log_model(
            Logits(net.eval()), name="student", signature=tensor_sig, input_example=example,
            pip_requirements=reqs, code_paths=[code], tags=tags)
        colonies = mlflow.pyfunc.log_model(
            name="colonies", python_model=str(Path(__file__).with_name("colony_pyfunc.py")),
            artifacts={"student": str(model_file)}, pip_requirements=reqs, code_paths=[code],
            signature=colony_signature(classes),
            tags=tags, metadata={"input": COLONY_INPUT, "output": COLONY_OUTPUT,
                                 "classes": classes})
    out = {"student": student.model_uri, "colonies": colonies.model_uri}
    client = mlflow.MlflowClient(uri)
    for k, v in out.items():
        client.set_tag(run_id, f"ipb.model.{k}", v)
    return out


# -- the champion ------------------------------------------------------------------------------

def champion_run(client, experiment_id: str, parent_run_id: str):
    """The best trial of a sweep by validation: the configuration (`ipb.config_label`) with the
    best mean `best.val.tpr.mean` over its folds and seeds, then its best run. Runs whose model
    was selected on the test split, and runs without a `colonies` model (or one deferred to the
    champion, tracking.log_models=champion), never qualify."""
    runs = [r for r in client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                         "attributes.status = 'FINISHED'", max_results=50000)
            if SCORE in r.data.metrics and r.data.tags.get("ipb.selected_on") != "test"
            and ("ipb.model.colonies" in r.data.tags or "ipb.model.deferred" in r.data.tags)]
    if not runs:
        return None, None
    by: dict[str, list] = {}
    for r in runs:
        by.setdefault(r.data.tags.get("ipb.config_label") or r.info.run_name, []).append(r)
    label = max(by, key=lambda k: np.mean([r.data.metrics[SCORE] for r in by[k]]))
    best = max(by[label], key=lambda r: r.data.metrics[SCORE])
    return best, float(np.mean([r.data.metrics[SCORE] for r in by[label]]))


@stop.deferred()        # a stop waits for the registry's writes (ipb/stop.py)
def register_champion(uri: str, experiment: str, parent_run_id: str) -> dict[str, Any] | None:
    """Register the sweep's best-by-validation `colonies` model (a new version unless that run
    already has one) and point alias `champion` at it; the parent run gets tags ipb.champion.*."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    best, config_mean = champion_run(client, exp.experiment_id, parent_run_id)
    if best is None:
        return None
    name = registered_name(experiment)
    run_id, score = best.info.run_id, best.data.metrics[SCORE]
    if "ipb.model.colonies" not in best.data.tags:
        # tracking.log_models=champion: its trial kept model/student.pt; log the models now
        with tempfile.TemporaryDirectory() as d:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=
                                                       "model/student.pt", dst_path=d,
                                                       tracking_uri=uri)
            log_student(uri, run_id, Path(path))
        best = client.get_run(run_id)
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        mv = found[0]
    else:
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name, description=(
                f"The best student (by validation mean TPR) of sweeps in experiment {experiment}; "
                f"alias {ALIAS}: the latest sweep's best. Input: image paths; output: one row "
                "per colony (ipb predict)."))
        source = best.data.tags["ipb.model.colonies"]
        with global_uri(uri):
            mv = client.create_model_version(
                name, source=source, run_id=run_id, model_id=source.removeprefix("models:/"),
                tags={"ipb.run_id": run_id, SCORE: f"{score:.4f}",
                      "ipb.config_label": best.data.tags.get("ipb.config_label", ""),
                      "ipb.selected_by": f"{SCORE} (validation; the configuration's mean over "
                                         "folds, then its best run)",
                      "ipb.synthetic": best.data.tags.get("ipb.synthetic", "")},
                await_creation_for=0)
    client.set_registered_model_alias(name, ALIAS, mv.version)
    out = {"name": name, "version": str(mv.version), "alias": ALIAS, "run_id": run_id,
           "val": score, "config_mean_val": config_mean,
           "label": best.data.tags.get("ipb.config_label", best.info.run_name),
           "uri": f"models:/{name}@{ALIAS}"}
    for k in ("name", "version", "run_id", "val", "uri"):
        client.set_tag(parent_run_id, f"ipb.champion.{k}", str(out[k]))
    return out
