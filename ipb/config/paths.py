"""Paths and locations in config values: ~ and $VARS, and URIs kept as given."""
from __future__ import annotations

import os
from pathlib import Path


def is_uri(p: str | os.PathLike) -> bool:
    """s3://bucket/x, gs://..., file://..., postgresql://...: a location with a scheme."""
    return "://" in str(p)


def expand_path(p: str) -> Path:
    """A local path with ~ and $VARS expanded (not for URIs: see `expand_location`)."""
    return Path(os.path.expandvars(os.path.expanduser(p)))


def expand_location(p: str) -> str:
    """A URI as given (s3://bucket/prefix, with any ?endpoint_override=... query), else the
    absolute local path: Path() would turn s3://b/x into s3:/b/x."""
    return str(p) if is_uri(p) else str(expand_path(p).absolute())
