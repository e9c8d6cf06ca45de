"""ipb: Iterative Pseudo Balancing for stem-cell colony images (Ray + MLflow).

    python -c "import ipb; df = ipb.predict('student.pt', ['images/'])"

`ipb.predict(model, images) -> pandas.DataFrame` is the Python API next to the `ipb` command;
it is imported on first use, so `import ipb` stays cheap (no torch, no Ray).
"""


def __getattr__(name: str):
    if name == "predict":
        import importlib
        return importlib.import_module("ipb.predict")     # a callable module: ipb.predict(...)
    raise AttributeError(f"module 'ipb' has no attribute {name!r}")
