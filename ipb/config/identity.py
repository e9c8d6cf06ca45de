"""What a config is: plain dicts and YAML, and the hashes that identify a trial (resume, dedup).

    python -c "from ipb.config import load_config, trial_hash; print(trial_hash(load_config('smoke')))"

A trial hash covers what a trial computes (not where or how fast it runs): finished trials are
skipped by it, so a change here re-runs every sweep's trials (tests/test_config.py pins it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import is_dataclass
from typing import Any

import yaml

from ipb.config.load import apply, flatten, resolve_cpu_amp
from ipb.config.schema import Config
from ipb.config.settings import legacy_keys, new_keys


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return yaml.safe_dump(plain(to_dict(cfg)), sort_keys=False)


def config_hash(cfg: Config | dict, *extra: Any) -> str:
    """Stable short hash of a resolved config (+ fold, seed, ...) used to identify trials."""
    d = to_dict(cfg) if is_dataclass(cfg) else cfg
    blob = json.dumps([flatten(d), [str(e) for e in extra]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# settings that say where/how a trial runs, not what it computes
_NOT_IN_TRIAL_HASH = ("profile", "tracking.", "sweep.", "train.storage", "data.cache_dir",
                      "data.ingest_workers", "train.num_workers", "train.cpus_per_worker",
                      "train.max_failures", "split.allow_weak_val", "train.channels_last",
                      "train.eval_channels_last", "train.compile",
                      "data.label_map")


def identity(cfg: Config) -> dict[str, Any]:
    """The flat config keys that decide what a trial computes (not where or how fast). A
    method's keys of before method settings go by their old names (`method.fixmatch.threshold`
    as `method.fixmatch_threshold`), so a trial keeps the hash it had; a newer method's keys
    count for its own trials and wherever they are off their defaults, so adding a method
    changes no other trial's hash (ipb/config/settings.py)."""
    old_name = {new: old for old, new in legacy_keys().items()}
    newer = new_keys()
    out = {}
    for k, v in flatten(to_dict(cfg)).items():
        if any(k == p or k.startswith(p) for p in _NOT_IN_TRIAL_HASH):
            continue
        if k in newer and newer[k][0] != cfg.method.name and v == newer[k][1]:
            continue
        if k == "train.cpu_amp":
            # what runs (nothing on CPU autocast when on a GPU); added after trials were
            # stored, so hashed only when bf16 runs: a trial without it keeps its hash
            v = "off" if cfg.train.use_gpu else resolve_cpu_amp(v)
            if v == "off":
                continue
        out[old_name.get(k, k)] = v
    return out


def trial_hash(cfg: Config) -> str:
    """Identity of a trial (resolved config incl. fold and seed) for resume and dedup."""
    return config_hash(identity(cfg), cfg.train.fold, cfg.train.seed)


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of `to_dict` (used to ship configs to Ray workers as plain dicts); a dict of an
    older ipb, with flat method keys, loads too."""
    return apply(Config(), d)
