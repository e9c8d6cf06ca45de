"""Building a config: a profile or YAML file, then `key.sub=value` overrides, each checked.

    python -c "from ipb.config.load import load_config; print(load_config('smoke', ['train.epochs=3']).train)"

An unknown key or a bad value raises ConfigError naming the key and what is allowed.
"""
from __future__ import annotations

import os
import typing
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from ipb.config.profiles import PRESETS, PROFILES
from ipb.config.schema import Config, ConfigError, validate
from ipb.config.settings import legacy_keys


def _allowed(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert `value` to the annotated type `tp`; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key {key!r}: bad value {value!r}; allowed: {_allowed(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (tuple,):
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith(("[", "(")) else [value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no",
                                                        "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if f != int(f):
            raise bad
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        return str(value)
    return value


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)     # resolved in the schema module, where cls lives


def _set(obj: Any, path: list[str], value: Any, full: str) -> Any:
    name = path[0]
    names = [f.name for f in fields(obj)]
    if name not in names:
        raise ConfigError(f"unknown config key {full!r}; allowed here: {', '.join(names)}")
    current = getattr(obj, name)
    if len(path) == 1:
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full!r} is a section; give a mapping")
            for k, v in value.items():
                current = _set(current, [k], v, f"{full}.{k}")
            return replace(obj, **{name: current})
        return replace(obj, **{name: _coerce(full, value, _hints(type(obj))[name])})
    if not is_dataclass(current):
        raise ConfigError(f"unknown config key {full!r}: {name!r} is not a section")
    return replace(obj, **{name: _set(current, path[1:], value, full)})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"train.epochs": 3, ...} (updates, MLflow params, trial hashes; no config
    value is a dict)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def current_keys(updates: dict[str, Any]) -> dict[str, Any]:
    """Dotted updates with the flat method keys of before method settings (`method.threshold`,
    `method.fixmatch_threshold`, ...) under their keys now (`method.mpl.threshold`, ...): old
    YAML files, sweeps and stored trial configs still load. Both spellings of one key in one
    update are refused."""
    old = legacy_keys()
    out: dict[str, Any] = {}
    given: dict[str, str] = {}      # key now -> as it was typed
    for k, v in flatten(updates).items():
        new = old.get(k, k)
        if new in out:
            was = k if k in old else given[new]
            raise ConfigError(f"config keys {given[new] if was == k else k!r} and {was!r} are "
                              f"the same setting ({was!r} is its name before method "
                              "settings); give one")
        out[new], given[new] = v, k
    return out


def _with_preset(updates: dict[str, Any]) -> dict[str, Any]:
    name = updates.get("method.preset")
    if name is None:
        return updates
    if name not in PRESETS:
        raise ConfigError(f"config key 'method.preset': bad value {name!r}; allowed: "
                          f"{' | '.join(map(repr, PRESETS))}")
    return {**current_keys(PRESETS[name]), **updates}


def apply(cfg: Config, updates: dict[str, Any]) -> Config:
    """Apply dotted-key (or nested) updates, validating every key and value."""
    for key, value in _with_preset(current_keys(updates)).items():
        cfg = _set(cfg, key.split("."), value, key)
    return validate(cfg)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16): where it does not, oneDNN
    emulates bf16 and a bf16 step is slower than an fp32 one. Measured faster with both:
    x1.56-1.66 per MPL step on AMX, x1.61-1.77 on an AMD EPYC's AVX512-BF16 (cpu_bf16.py)."""
    import torch
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_cpu_amp(value: str, use_gpu: bool = False) -> str:
    """`train.cpu_amp` as it runs here: auto -> bf16 where the CPU has native bf16 (and the
    trial trains on CPU), else off."""
    if value != "auto":
        return value
    return "bf16" if not use_gpu and native_cpu_bf16() else "off"


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["train.epochs=3", "model.arch=vgg19"]` -> dict; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML "
                              f"({_yaml_problem(e)})") from None
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()   # YAML 1.1 reads on/off/yes/no as booleans; keep the word
        out[key.strip()] = value
    return out


def load_config(profile: str = "smoke", overrides: list[str] | dict | None = None) -> Config:
    """A profile name (smoke, paper, study) or a YAML file path, then key=value overrides."""
    cfg = _load(profile, overrides)
    if cfg.train.cpu_amp == "auto":
        # what this machine runs, once every key is known (a YAML file's base profile may say
        # auto and the file train.use_gpu): the trial hash names it, and a trial's workers
        # follow it (a worker CPU without native bf16 emulates it, warned)
        cfg = apply(cfg, {"train.cpu_amp": resolve_cpu_amp("auto", cfg.train.use_gpu)})
    return cfg


def _load(profile: str, overrides: list[str] | dict | None) -> Config:
    cfg = Config()
    if profile in PROFILES:
        cfg = apply(cfg, PROFILES[profile])
    elif profile.endswith((".yaml", ".yml")) or os.path.exists(profile):
        path = Path(profile)
        if not path.is_file():
            raise ConfigError(f"profile file {profile!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"profile file {profile!r} is not valid YAML: {_yaml_problem(e)}; "
                              "fix it (a mapping of section: {key: value})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"profile file {profile!r} must hold a mapping")
        base = data.pop("base_profile", "smoke")
        cfg = _load(base, None)
        cfg = apply(cfg, {"profile": data.pop("profile", path.stem)})
        cfg = apply(cfg, data)
    else:
        raise ConfigError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)} "
                          "or a path to a YAML file")
    if overrides:
        if not isinstance(overrides, dict):
            overrides = parse_overrides(list(overrides))
        cfg = apply(cfg, overrides)
    return cfg


def _yaml_problem(e: Exception) -> str:
    """One line from a YAML parser error: what and where (its own message spans many)."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{where}{what}"
