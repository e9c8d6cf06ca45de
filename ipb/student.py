"""A trained student from a file, a checkpoint directory or an MLflow run, with its meta.

    python -c "from ipb.student import load_student; net, meta = load_student('student.pt'); print(meta['classes'])"

MODEL is a student.pt, a directory holding one (a Ray checkpoint), an MLflow run id (32 hex
digits, or runs:/<id>) whose artifact model/student.pt is downloaded, or an MLflow model URI
(models:/NAME@champion, models:/NAME/VERSION, models:/<model id>) of the `colonies` model a
trial logs (ipb.logged_models), whose student.pt is downloaded; an http(s) tracking server is
checked first (ipb.preflight), so a dead one fails in seconds. No Ray; MLflow only for a run
id or a model URI.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ipb.config import Config, ConfigError, apply, expand_path, flatten, from_dict, load_config
from ipb.lineage import MODEL_ARTIFACT, MODEL_FILE
_RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-fA-F]{32})(?:/.*)?$")


def load_student(model: str | os.PathLike, tracking_uri: str | None = None
                 ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(student in eval mode, meta) from a student.pt, a directory with one, or an MLflow run.

    meta: arch, width, classes, patch_size, config (dict), source, synthetic (True / False /
    None = unknown) and synthetic_why.
    """
    path = Path(str(model)).expanduser()
    if path.is_dir():
        found = path / MODEL_FILE if (path / MODEL_FILE).is_file() else next(
            iter(sorted(path.rglob(MODEL_FILE))), None)
        if found is None:
            raise FileNotFoundError(f"model directory {path} holds no {MODEL_FILE}; give the "
                                    "file, a checkpoint directory, or an MLflow run id")
        return _read_student(found, str(found))
    if path.is_file():
        return _read_student(path, str(path))
    if str(model).startswith("models:/"):
        return _load_model_uri(str(model), tracking_uri)
    m = _RUN_ID.match(str(model))
    if m is None:
        raise FileNotFoundError(f"model {model!r} is neither a file, a directory holding "
                                f"{MODEL_FILE}, nor an MLflow run id (32 hex digits or runs:/<id>)")
    return _load_run(m.group(1).lower(), tracking_uri)


def checked_store(what: str, uri: str | None,
                  fix: str = "give --tracking-uri or set MLFLOW_TRACKING_URI") -> str:
    """The tracking URI, checked: a server that answers, or a SQLite file that exists (`fix`:
    what the error tells the user to do)."""
    from ipb.preflight import check_tracking_uri
    from ipb.tracking import quiet_artifact_bars, tracking_uri
    quiet_artifact_bars()
    uri = uri or tracking_uri()
    check_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():     # MLflow would silently create an empty store here
            raise FileNotFoundError(f"{what}: no MLflow store {db} (tracking URI "
                                    f"{uri}); {fix}")
    return uri


def _load_model_uri(model: str, uri: str | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The student.pt inside a logged or registered `colonies` model."""
    uri = checked_store(f"MLflow model {model}", uri)
    import mlflow.artifacts

    from ipb.tracking import global_uri
    with tempfile.TemporaryDirectory() as d, global_uri(uri):
        try:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=model, dst_path=d, tracking_uri=uri, registry_uri=uri))
        except Exception as e:
            raise FileNotFoundError(
                f"MLflow model {model} not found at {uri} (list registered models with "
                f"`mlflow models` / the UI's Models tab); {type(e).__name__}: "
                f"{str(e)[:200]}") from None
        found = sorted(local.rglob(MODEL_FILE)) if local.is_dir() else []
        if not found:
            raise FileNotFoundError(f"MLflow model {model} holds no {MODEL_FILE}: give the "
                                    "`colonies` model of a trial (ipb.logged_models), not the "
                                    "`student` network")
        return _read_student(found[0], model)


def _load_run(run_id: str, uri: str | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    uri = checked_store(f"MLflow run {run_id}", uri)
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient
    try:
        tags = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    except Exception as e:
        raise FileNotFoundError(f"MLflow run {run_id} not found at {uri} "
                                f"({type(e).__name__}: {str(e)[:200]})") from None
    with tempfile.TemporaryDirectory() as d:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"runs:/{run_id}/{MODEL_ARTIFACT}", dst_path=d, tracking_uri=uri)
        except Exception as e:
            raise FileNotFoundError(
                f"MLflow run {run_id} at {uri} has no artifact {MODEL_ARTIFACT} (did the trial finish? "
                f"status tag ipb.error: {tags.get('ipb.error', '-')[:200]}); "
                f"{type(e).__name__}: {str(e)[:200]}") from None
        return _read_student(Path(local), f"runs:/{run_id}", tags)


def _read_student(path: Path, source: str, run_tags: dict | None = None
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    from ipb.models import create_model
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # PyTorch's own text advises weights_only=False, i.e. running code from the file:
        # never the advice for a file we cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = "it holds more than tensors and plain values" if "weights_only" in str(e) \
            else (first[:160] or type(e).__name__)
        raise ValueError(f"model file {path} is not a readable student checkpoint ({why}); "
                         f"give the {MODEL_FILE} that `ipb train` saves (a truncated copy? "
                         "copy it again)") from None
    missing = {"state_dict", "arch", "width", "classes", "patch_size", "config"} - set(blob)
    if not isinstance(blob, dict) or missing:
        raise ValueError(f"model file {path} lacks key(s) {sorted(missing)}; expected the "
                         f"{MODEL_FILE} that `ipb train` saves")
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    meta["classes"] = list(meta["classes"])
    meta["source"] = source
    meta["synthetic"], meta["synthetic_why"] = _synthetic(meta, run_tags)
    dropout = meta["config"].get("model", {}).get("dropout", 0.5)
    net = create_model(meta["arch"], len(meta["classes"]), width=meta["width"], dropout=dropout)
    state = {k.removeprefix("module."): v for k, v in blob["state_dict"].items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"model file {path}: weights do not fit {meta['arch']} width "
                         f"{meta['width']} with {len(meta['classes'])} classes: {str(e)[:300]}"
                         ) from None
    return net.eval(), meta


def _synthetic(meta: dict, run_tags: dict | None) -> tuple[bool | None, str]:
    """Was the student trained on synthetic data? The most direct evidence available."""
    if "synthetic" in meta:
        return bool(meta["synthetic"]), "saved with the model"
    if run_tags and "ipb.synthetic" in run_tags:
        return run_tags["ipb.synthetic"] == "true", "MLflow run tag ipb.synthetic"
    table = meta["config"].get("data", {}).get("table", "")
    if not table:
        return True, "trained with data.table empty: the cached synthetic data set"
    manifest = expand_path(table) / "manifest.json"
    if manifest.is_file():
        return bool(json.loads(manifest.read_text()).get("synthetic")), f"manifest of {table}"
    return None, f"unknown: training table {table} is not found here"


def config_for(meta: dict, profile: str | None = None,
               overrides: dict[str, Any] | None = None) -> Config:
    """The config saved with the model (or `profile` instead), then key=value overrides."""
    if profile:
        return load_config(profile, overrides or None)
    try:
        cfg = from_dict(meta["config"])
    except ConfigError:
        # a model saved by another ipb version: keep the keys this one knows
        cfg = Config()
        for k, v in flatten(meta["config"]).items():
            try:
                cfg = apply(cfg, {k: v})
            except ConfigError:
                print(f"predict: ignoring saved config key {k!r} (unknown here)", file=sys.stderr)
    return apply(cfg, overrides) if overrides else cfg


__all__ = ["load_student", "config_for"]
