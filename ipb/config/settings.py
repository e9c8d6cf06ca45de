"""Method settings: each method file declares its own keys, read here without importing torch.

    ipb methods --settings       # every method's keys: `method.<group>.<key>`, default, range

A method's hyper-parameters live beside its code, USB-style: a frozen dataclass under
`@method_settings("<group>")` in its file of ipb/methods/, each field a `knob(default, range)`.
They become the config section `method.<group>` (e.g. `method.fixmatch.threshold=0.9`), checked
like any other key. The config layer needs no torch (`ipb config`, the CLI's help), so it does not
import the method file: it compiles that one class from the file's source, with only `dataclass`,
`knob`, `Literal` and `ClassVar` in scope, and the method file's decorator hands back the same
class object. Settings read by several methods (`lambda_u`, `pseudo_patches`, `mpl_passes`) are
`method.*` keys of their own (ipb/config/schema.py).

Before method settings, every key was flat (`method.threshold`, `method.fixmatch_threshold`):
`knob(..., legacy=)` names a field's old key, configs that use it still load, and the trial hash
is computed on the old names, so finished trials are still found (ipb/config/identity.py). A
new method's keys have no old name; they enter a trial's hash only when the trial runs that
method or sets them off their defaults, so adding a method changes no finished trial's hash.
"""
from __future__ import annotations

import ast
import builtins
import functools
import sys
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

METHODS_DIR = Path(__file__).resolve().parent.parent / "methods"
DECORATOR = "method_settings"
TUNE_RESERVED = ("eval", "grid_search")   # {"eval": ...} is Tune's sample_from in a param space


class SettingsError(ValueError):
    """A method file's settings class that the config layer cannot read."""


def knob(default: Any, range: str | None = None, *, legacy: str | bool = False) -> Any:
    """A settings field: its default (immutable: a number, string, bool or tuple), its allowed
    interval ("[0, 1]", "(0, inf)": checked after every config update) and, only for the keys
    that existed before method settings, `legacy`: their flat key's name under `method.`
    (True: the field's own name). A new method's keys have none."""
    if isinstance(default, (list, dict, set)):
        raise SettingsError(f"knob default {default!r}: give an immutable value (a tuple)")
    return field(default=default, metadata={"range": range, "legacy": legacy})


def method_settings(group: str):
    """Declare a settings class as config section `method.<group>`. In the method file this
    returns the class the config layer compiled from the same source, so `cfg.method.<group>`
    is an instance of it."""
    def declare(cls):
        found = settings_classes().get(group)
        if found is None or found.__name__ != cls.__name__:
            raise SettingsError(f"{cls.__module__}: settings {cls.__name__} for group "
                                f"{group!r} is not under {METHODS_DIR}")
        return found
    return declare


def _is_ours(d: ast.expr) -> bool:
    """`@method_settings(...)` or `@<module>.method_settings(...)`."""
    return isinstance(d, ast.Call) and DECORATOR in (getattr(d.func, "id", None),
                                                       getattr(d.func, "attr", None))


def _decorated_group(node: ast.ClassDef) -> str | None:
    for d in node.decorator_list:
        if _is_ours(d):
            if len(d.args) != 1 or not isinstance(d.args[0], ast.Constant) or \
                    not isinstance(d.args[0].value, str):
                raise SettingsError(f"line {node.lineno}: {DECORATOR}(...) takes the group "
                                    "name as one string")
            return d.args[0].value
    return None


def _compile(node: ast.ClassDef, path: Path) -> type:
    """The class alone, from its source, in a namespace of dataclass/knob/Literal/ClassVar."""
    where = f"{path}:{node.lineno}: settings class {node.name}"
    node = ast.ClassDef(**{**node.__dict__, "decorator_list": [
        d for d in node.decorator_list if not _is_ours(d)]})
    scope = {"__builtins__": builtins, "__name__": __name__, "dataclass": dataclass,
             "knob": knob, "Literal": Literal, "ClassVar": ClassVar}
    code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec",
                   dont_inherit=True)    # not this module's `annotations` future: real types
    try:
        exec(code, scope)
    except NameError as e:
        raise SettingsError(f"{where} may use only builtins, dataclass, knob, Literal and "
                            f"ClassVar ({e})") from None
    except (TypeError, ValueError, SettingsError) as e:     # no default, a mutable one, ...
        raise SettingsError(f"{where}: {e}") from None
    cls = scope[node.name]
    if not is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise SettingsError(f"{where} must be a @dataclass(frozen=True): configs are frozen")
    cls.__qualname__ = cls.__name__
    bare = [f.name for f in fields(cls) if f.default is MISSING]
    if bare:
        raise SettingsError(f"{where}.{bare[0]} has no default: write it as knob(default)")
    taken = [f.name for f in fields(cls) if f.name in TUNE_RESERVED]
    if taken:
        raise SettingsError(f"{where}.{taken[0]}: a Ray Tune search space reads a mapping with "
                            "this key as its own syntax; rename it")
    return cls


def discover(directory: Path) -> dict[str, type]:
    """{group: settings class} of the method files in `directory`, in file order."""
    out: dict[str, type] = {}
    names: dict[str, Path] = {}
    for path in sorted(directory.glob("*.py")):
        source = path.read_text()
        if DECORATOR not in source:
            continue
        for node in ast.parse(source, filename=str(path)).body:
            group = _decorated_group(node) if isinstance(node, ast.ClassDef) else None
            if group is None:
                continue
            if group in out:
                raise SettingsError(f"{path}: settings group {group!r} is declared twice")
            if node.name in names:
                raise SettingsError(f"{path}: settings class name {node.name} is taken by "
                                    f"{names[node.name]}")
            out[group], names[node.name] = _compile(node, path), path
    return out


@functools.lru_cache(maxsize=1)
def settings_classes() -> dict[str, type]:
    """{group: settings class} of ipb/methods/, compiled once per process."""
    out = discover(METHODS_DIR)
    for cls in out.values():
        setattr(sys.modules[__name__], cls.__name__, cls)   # pickled by this module's name
    return out


def settings_ranges() -> dict[str, str]:
    """{"method.<group>.<key>": interval} of every knob with a range."""
    return {f"method.{g}.{f.name}": f.metadata["range"]
            for g, cls in settings_classes().items() for f in fields(cls)
            if f.metadata.get("range")}


def _old_key(f) -> str | None:
    """A settings field's flat key of before method settings, or None for a newer key."""
    old = f.metadata.get("legacy")
    return f"method.{f.name if old is True else old}" if old else None


def legacy_keys() -> dict[str, str]:
    """{old flat key: its key now}, e.g. "method.fixmatch_threshold": "method.fixmatch.threshold",
    for the keys that existed before method settings (`knob(legacy=...)`)."""
    out: dict[str, str] = {}
    for g, cls in settings_classes().items():
        for f in fields(cls):
            key = _old_key(f)
            if key:
                if key in out:
                    raise SettingsError(f"old key {key} is claimed by {out[key]} and "
                                        f"method.{g}.{f.name}")
                out[key] = f"method.{g}.{f.name}"
    return out


def new_keys() -> dict[str, tuple[str, Any]]:
    """{"method.<group>.<key>": (group, default)} of the keys with no old name (ipb.config's
    identity: they enter a trial's hash only for the method of that name or off their default,
    so adding a method leaves every finished trial's hash as it was)."""
    return {f"method.{g}.{f.name}": (g, f.default) for g, cls in settings_classes().items()
            for f in fields(cls) if not _old_key(f)}


def settings_presets() -> dict[str, dict[str, Any]]:
    """The `method.preset` values the settings classes declare (their PRESETS), by name."""
    out: dict[str, dict[str, Any]] = {}
    for g, cls in settings_classes().items():
        for name, keys in getattr(cls, "PRESETS", {}).items():
            if name in out:
                raise SettingsError(f"preset {name!r} of method.{g} is declared twice")
            out[name] = dict(keys)
    return out


def describe() -> str:
    """What `ipb methods --settings` prints: each section, its keys and presets."""
    lines = []
    for g, cls in settings_classes().items():
        lines.append(f"method.{g}  ({cls.__name__}: {(cls.__doc__ or '').strip().splitlines()[0]})")
        for f in fields(cls):
            default, old = f.default, _old_key(f)
            allowed = f.metadata.get("range") or (" | ".join(map(repr, typing.get_args(f.type)))
                                                  if typing.get_origin(f.type) is Literal else "")
            lines.append(f"  {f.name} = {default!r}" + (f"  in {allowed}" if allowed else "")
                         + (f"  (was {old})" if old else ""))
        for name, keys in getattr(cls, "PRESETS", {}).items():
            lines.append(f"  preset {name}: " + ", ".join(f"{k}={v!r}" for k, v in keys.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
