"""Typed, validated configs from YAML.

A config is a dataclass. ``load_config`` reads a YAML file, applies ``key=value`` overrides
(dotted keys reach nested dataclasses), and builds the dataclass, checking every key and
type: an unknown key or a wrong type is a one-line error naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from unirl.errors import UnirlError

C = TypeVar("C")


@dataclasses.dataclass
class RunConfig:
    """Fields every recipe shares. Recipes subclass it (one documented config per trainer)."""

    recipe: str = ""
    """Which recipe trains: unirl, ospo, jigsaw, sail."""
    model: str = "toy"
    """A `load_model` spec: toy, janus-tiny, janus:PATH, showo:PATH, or a checkpoint folder."""
    seed: int = 0
    max_steps: int = 100
    save_every: int = 50
    """Write a checkpoint every this many steps (and always at the end)."""
    log_every: int = 1
    sample_every: int = 10
    """Write samples/step-<n>/ (images and what the model answered, with rewards) every this many
    steps; 0: never. `unirl report` shows them."""
    device: str | None = None
    """None picks cuda when available, else cpu."""
    dtype: str | None = None
    """None picks bfloat16 on GPU, float32 on CPU."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Return value as type tp, or raise naming the key. Ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except UnirlError:
                pass
        raise UnirlError(f"{source}: '{key}' expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UnirlError(f"{source}: '{key}' expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UnirlError(f"{source}: '{key}' expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, source, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UnirlError(f"{source}: '{key}' expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UnirlError(f"{source}: '{key}' expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{key}.{k}", source) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise UnirlError(f"{source}: '{key}' expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UnirlError(f"{source}: '{key}' expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], source: str = "config", prefix: str = "") -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise UnirlError(f"{source}: unknown key '{prefix}{key}' (known: {', '.join(fields)})")
    kwargs = {k: _coerce(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "command line") -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict; values are parsed as YAML scalars/lists."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise UnirlError(f"{source}: override '{item}' expected the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[parts[-1]] = value
    return data


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file holding one object (a model or tokenizer config); `what` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise UnirlError(f"{path}: not found (expected {what})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnirlError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UnirlError(f"{path}: expected a JSON object ({what})")
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UnirlError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UnirlError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UnirlError(f"{path}: expected a mapping of config keys at the top level")
    return data


def load_config(path: str | Path, cls: type[C], overrides: list[str] | None = None) -> C:
    data = apply_overrides(read_yaml(path), overrides or [])
    return from_dict(cls, data, source=str(path))

