"""The `colonies` MLflow model (models from code): image paths -> one row per colony.

    python -c "import mlflow; m = mlflow.pyfunc.load_model('models:/ipb-main-colonies@champion'); print(m.predict(['well.tif']))"

MLflow runs this file when it loads the model (ipb.logged_models logs it with the ipb sources
as code_paths and the trial's student.pt as artifact `student`); the code is `ipb.predict`'s,
so a served model answers what `ipb predict` writes to colonies.csv. Input (its signature: one
string column): a list of image paths, or a DataFrame whose one column (e.g. `image`) holds them.
Params: test_patches (patches averaged per colony, default 5). Numpy images (grey or RGB,
8/16-bit), which the signature refuses: `model.unwrap_python_model().predict(None, [image])`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# Loading the model must not write into the artifact store (or a checkout) it loads from: the
# ipb code it carries (code_paths) is imported from there, and Python's bytecode and numba's
# compiled kernels were written beside it. Both go to the user's cache instead.
_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ipb"
os.environ.setdefault("NUMBA_CACHE_DIR", str(_CACHE / "numba"))
if sys.pycache_prefix is None:
    sys.pycache_prefix = str(_CACHE / "pycache")

import mlflow.models  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def images_of(model_input) -> list:
    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns and len(model_input.columns) == 1:
            return list(model_input.iloc[:, 0])
        if "image" not in model_input.columns:
            raise ValueError(f"input columns {list(model_input.columns)}: expected a column "
                             "`image` of image paths")
        return list(model_input["image"])
    if isinstance(model_input, np.ndarray):
        # a served model gets {"inputs": ["a.tif", ...]} as an array of strings
        if model_input.dtype.kind in "USO":
            return [str(p) if model_input.dtype.kind != "O" else p for p in model_input.ravel()]
        return [model_input]
    if isinstance(model_input, dict) and "image" in model_input:
        return list(model_input["image"])
    return list(model_input)


class ColonyModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from ipb.predict import warm_up
        from ipb.student import load_student
        self.student = load_student(context.artifacts["student"])
        warm_up()      # at load, not in the first request

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        from ipb.predict import DEFAULT_TEST_PATCHES, predict
        k = int((params or {}).get("test_patches", DEFAULT_TEST_PATCHES))
        df = predict(self.student, images_of(model_input), test_patches=k)
        if df.empty and df.attrs["skipped"]:
            # a served model would answer an empty table: say which input failed, and why
            raise ValueError("no input image could be read: " + "; ".join(
                f"{s['image']}: {s['reason']}" for s in df.attrs["skipped"][:5]))
        return df


mlflow.models.set_model(ColonyModel())
