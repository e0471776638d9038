"""Write a config back as TOML: the subset the schema uses (tables, arrays of tables, scalars)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class NotToml(ValueError):
    """A value TOML cannot hold (None inside a list, NaN …)."""


def _string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; DEL needs its own.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotToml(f"not a finite number: {value}")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
        return "{" + inner + "}"
    raise NotToml(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(path: list[str], table: dict[str, Any], out: list[str]) -> None:
    scalars = [
        (k, v)
        for k, v in table.items()
        if v is not None and not isinstance(v, dict) and not _is_table_array(v)
    ]
    name = ".".join(_key(p) for p in path)
    for k, v in scalars:
        out.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        if isinstance(v, dict):
            out.append("")
            out.append(f"[{name}.{_key(k)}]" if name else f"[{_key(k)}]")
            _table([*path, k], v, out)
    for k, v in table.items():
        if _is_table_array(v):
            for entry in v:
                out.append("")
                out.append(f"[[{name}.{_key(k)}]]" if name else f"[[{_key(k)}]]")
                _table([*path, k], entry, out)


def dumps(doc: dict[str, Any]) -> str:
    """``doc`` as TOML text that ``tomllib.loads`` reads back equal (None values left out)."""
    out: list[str] = []
    _table([], doc, out)
    return "\n".join(out).lstrip("\n") + "\n"
