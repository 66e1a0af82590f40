"""Typed dataclass configs loaded from YAML, with strict checking.

Every config in the project is a dataclass. `from_dict` refuses unknown keys (suggesting the
closest known one) and values of the wrong type, naming the source file and the dotted field,
so a typo in a YAML file fails loudly instead of silently training the wrong model.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from krmini.errors import KrminiError

T = TypeVar("T")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's reason for rejecting a text, in one line."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if r"'\t'" in problem:
        return f"{problem} (YAML indents with spaces, not tabs)"
    return f"{problem} (check the indentation)" if "<block end>" in problem else problem


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KrminiError(f"{path}: config file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise KrminiError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # PyYAML counts lines from 0
        line = mark.line + 1 if mark is not None else text.count("\n", 0, getattr(exc, "position", 0)) + 1
        where = f"{path}:{line}"
        raise KrminiError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KrminiError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides; values are parsed as YAML (so `1e-3`, `true` work)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise KrminiError(f"override {item!r}: expected key=value, e.g. train.lr=3e-4")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KrminiError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise KrminiError(f"override {item!r}: the value is not valid YAML: {_yaml_problem(exc)}") from None
    return data


def _join(where: str, key: str) -> str:
    """`file.yaml:` + `train` → `file.yaml: train`; `…train` + `lr` → `…train.lr`."""
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except KrminiError as exc:
                errors.append(str(exc))
        raise KrminiError(errors[0])
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise KrminiError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise KrminiError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `3e-4` (no dot) as a string; accept any number spelled that way.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise KrminiError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise KrminiError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KrminiError(f"{_join(where, str(key))}: unknown key{hint}")
    kwargs = {k: _coerce(v, hints[k], _join(where, k)) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise KrminiError(f"{where}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where.rstrip(":"))
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
