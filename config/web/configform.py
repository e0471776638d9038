"""The configuration form, generated from the pydantic schema; checked, saved atomically, audited.

Every field of the schema becomes one form field named by its key path
(``links[0].rate``), with its title, description and bounds. A submitted form changes
the file's own TOML only where a value differs from the running one; the whole result
is validated before anything is written, and written by temp file + fsync + rename.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel

from config.loader import BadConfig, ConfigIssue, read_raw, validate
from config.schema import KitConfig
from config.web import tomlw
from edge.fsync import fsync_dir as _fsync_dir
from security.trail import AuditTrail

ALL_PROCESSES = ("edge", "uplink", "drivers", "mesh", "media", "web")
# Which processes read each top-level section (each reads it once, at start).
SECTION_PROCESSES: dict[str, tuple[str, ...]] = {
    "kit": ALL_PROCESSES,
    "paths": ALL_PROCESSES,
    "edge": ALL_PROCESSES,  # every process is an edge client (time-outs)
    "log": ALL_PROCESSES,
    "uplink": ("uplink",),
    "links": ("uplink",),
    "gnss": ("drivers",),
    "power": ("drivers",),
    "gpio": ("drivers",),
    "mesh": ("mesh",),
    "media": ("media",),
    "web": ("web",),
    "status": ("edge",),  # the status item is filed by the edge daemon
    "wifi": ("hostapd",),  # outside the kit's processes: the page writes its file
}
# Read again by the web page after every save: no restart needed.
LIVE = frozenset({"web.max_photo_mb", "web.max_photos", "web.session_idle_min", "web.tiles"})
# Changed only in the file, in maintenance: a new data folder would strand the queued items.
READ_ONLY = re.compile(r"^paths\.")
SECRET = "********"


@dataclass
class FormField:
    path: str
    title: str
    description: str
    widget: str  # int, float, text, bool, select, multi, lines, secret, readonly
    value: Any
    choices: tuple[str, ...] = ()
    bounds: str = ""
    optional: bool = False
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class FormGroup:
    path: str
    title: str
    description: str
    fields: list[FormField] = field(default_factory=list)
    groups: list[FormGroup] = field(default_factory=list)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type without Annotated and None, whether None is allowed)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            inner, _ = _unwrap(args[0])
            return inner, optional
        return Union[tuple(args)], optional  # noqa: UP007 (a runtime union of models)
    return annotation, False


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _is_models(t: Any) -> bool:
    if _is_model(t):
        return True
    if typing.get_origin(t) in (Union, types.UnionType):
        return all(_is_model(_unwrap(a)[0]) for a in typing.get_args(t))
    return False


def _num(v: Any) -> str:
    return f"{int(v):,}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def _bounds(metadata: list[Any]) -> tuple[str, dict[str, str]]:
    parts: list[str] = []
    attrs: dict[str, str] = {}
    for m in metadata:
        if isinstance(m, Ge):
            parts.append(f"≥ {_num(m.ge)}")
            attrs["min"] = f"{m.ge:g}"
        elif isinstance(m, Gt):
            parts.append(f"> {_num(m.gt)}")
        elif isinstance(m, Le):
            parts.append(f"≤ {_num(m.le)}")
            attrs["max"] = f"{m.le:g}"
        elif isinstance(m, Lt):
            parts.append(f"< {_num(m.lt)}")
        elif isinstance(m, MinLen):
            parts.append(f"≥ {m.min_length} 字 / chars")
        elif isinstance(m, MaxLen):
            parts.append(f"≤ {m.max_length} 字 / chars")
            attrs["maxlength"] = str(m.max_length)
        elif getattr(m, "pattern", None):
            parts.append(f"格式 / pattern {m.pattern}")
    return ", ".join(parts), attrs


def _field(path: str, info: Any, value: Any) -> FormField | FormGroup | list[FormGroup]:
    t, optional = _unwrap(info.annotation)
    title = info.title or path.rsplit(".", 1)[-1]
    desc = info.description or ""
    if _is_models(t):
        if value is None:
            return FormField(path, title, desc, "readonly", "未设置 / not set (raw TOML)")
        return build_group(path, title, desc, value)
    origin = typing.get_origin(t)
    if origin is list:
        (inner,) = typing.get_args(t)
        inner, _ = _unwrap(inner)
        if _is_models(inner):
            return [
                build_group(f"{path}[{i}]", f"{title} {i + 1}", desc, v)
                for i, v in enumerate(value or [])
            ]
        bounds, attrs = _bounds(info.metadata)
        if typing.get_origin(inner) is Literal:
            choices = tuple(str(c) for c in typing.get_args(inner))
            return FormField(path, title, desc, "multi", list(value), choices, bounds)
        return FormField(path, title, desc, "lines", list(value), (), bounds)
    bounds, attrs = _bounds(info.metadata)
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if READ_ONLY.match(path):
        return FormField(path, title, desc, "readonly", value)
    if origin is Literal:
        choices = tuple(str(c) for c in typing.get_args(t))
        widget = "readonly" if len(choices) == 1 else "select"
        return FormField(path, title, desc, widget, value, choices, bounds, optional)
    if extra.get("secret"):
        return FormField(path, title, desc, "secret", value, (), bounds, optional, attrs)
    widget = {bool: "bool", int: "int", float: "float"}.get(t, "text")
    return FormField(path, title, desc, widget, value, (), bounds, optional, attrs)


def build_group(path: str, title: str, description: str, model: BaseModel) -> FormGroup:
    group = FormGroup(path, title, description)
    for name, info in type(model).model_fields.items():
        sub = f"{path}.{name}" if path else name
        made = _field(sub, info, getattr(model, name))
        if isinstance(made, FormField):
            group.fields.append(made)
        elif isinstance(made, FormGroup):
            group.groups.append(made)
        else:
            group.groups.extend(made)
    return group


def build_form(config: KitConfig) -> FormGroup:
    return build_group("", "", "", config)


def all_fields(group: FormGroup) -> list[FormField]:
    out = list(group.fields)
    for g in group.groups:
        out += all_fields(g)
    return out


# -- key paths in the raw TOML --------------------------------------------------------------

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_path(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _PART.findall(path)]


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set (or, for None, remove) the value at ``path`` in the file's TOML tree."""
    parts = split_path(path)
    node: Any = raw
    for part, nxt in itertools.pairwise(parts):
        if isinstance(part, int):
            node = node[part]
        else:
            if part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
    last = parts[-1]
    if value is None:
        if isinstance(node, dict):
            node.pop(last, None)
    else:
        node[last] = value


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parse_value(f: FormField, form: dict[str, list[str]]) -> Any:
    """The form's value for ``f`` in its field's type; text that does not parse is left
    as text, so validation reports it at its key path."""
    got = form.get(f.path, [])
    if f.widget == "bool":
        return bool(got) and got[-1] in ("on", "true", "1")
    if f.widget == "multi":
        return [v for v in got if v in f.choices]
    text = got[-1] if got else ""
    if f.widget == "lines":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if f.widget == "secret" and text == "":
        return f.value  # left empty: unchanged
    if text.strip() == "" and f.optional:
        return None
    if f.widget == "int":
        try:
            return int(text.strip())
        except ValueError:
            return text
    if f.widget == "float":
        try:
            number = float(text.strip())
        except ValueError:
            return text
        return number if number == number and abs(number) != float("inf") else text
    return text


@dataclass
class Change:
    path: str
    old: Any
    new: Any
    secret: bool = False

    def shown(self) -> tuple[str, str]:
        if self.secret:
            return SECRET, SECRET
        return json.dumps(self.old, ensure_ascii=False), json.dumps(self.new, ensure_ascii=False)


def _same(new: Any, old: Any) -> bool:
    numbers = (int, float)
    if (
        isinstance(new, numbers)
        and isinstance(old, numbers)
        and not isinstance(new, bool)
        and not isinstance(old, bool)
    ):
        return bool(new == old)
    return type(new) is type(old) and bool(new == old)


def changes_from_form(config: KitConfig, form: dict[str, list[str]]) -> list[Change]:
    """Every field whose submitted value differs from the running config's."""
    changes: list[Change] = []
    for f in all_fields(build_form(config)):
        if f.widget == "readonly":
            continue
        new, old = parse_value(f, form), _plain(f.value)
        if not _same(new, old):
            changes.append(Change(f.path, old, new, f.widget == "secret"))
    return changes


def section_of(path: str) -> str:
    first = split_path(path)[0]
    return str(first)


def processes_for(paths: list[str]) -> list[str]:
    names: set[str] = set()
    for p in paths:
        if p in LIVE:
            continue
        names.update(SECTION_PROCESSES.get(section_of(p), ALL_PROCESSES))
    return [n for n in (*ALL_PROCESSES, "hostapd") if n in names]


# -- the file ------------------------------------------------------------------------------


class Stale(BadConfig):
    """The file changed since the form was shown."""


def fingerprint(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()[:16]


def write_atomically(path: Path, data: bytes, mode: int = 0o640) -> None:
    """``path`` holds either its old bytes or all of ``data``, even across a power cut."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    _fsync_dir(path.parent)


@dataclass
class Saved:
    changes: list[Change]
    restart: list[str]
    config: KitConfig


class ConfigFile:
    """The config file the kit runs from: read, changed, checked and written whole."""

    def __init__(self, path: Path, audit: Path, trail: AuditTrail | None = None) -> None:
        self.path = path
        self.audit = audit
        self.trail = trail  # the kit's chained audit log: who saved, which key paths

    def read(self) -> tuple[bytes, dict[str, Any]]:
        return self.path.read_bytes(), read_raw(self.path)

    def save_form(
        self, config: KitConfig, form: dict[str, list[str]], base: str, who: str
    ) -> Saved:
        text, raw = self.read()
        if fingerprint(text) != base:
            raise Stale(
                self.path,
                [ConfigIssue("", "配置已被他人修改，请重新打开 / changed meanwhile: reload it")],
            )
        changes = changes_from_form(config, form)
        new_raw = copy.deepcopy(raw)
        for c in changes:
            set_path(new_raw, c.path, c.new)
        return self._commit(raw, new_raw, changes, who)

    def save_text(self, toml_text: str, base: str, who: str) -> Saved:
        import tomllib

        text, raw = self._read_lenient()
        if fingerprint(text) != base:
            raise Stale(
                self.path,
                [ConfigIssue("", "配置已被他人修改，请重新打开 / changed meanwhile: reload it")],
            )
        try:
            new_raw = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as exc:
            raise BadConfig(self.path, [ConfigIssue("", f"TOML syntax: {exc}")]) from None
        changes = [
            Change(p, o, n, _is_secret(p)) for p, o, n in diff(flatten(raw), flatten(new_raw))
        ]
        return self._commit(raw, new_raw, changes, who, toml_text.encode())

    def _read_lenient(self) -> tuple[bytes, dict[str, Any]]:
        text = self.path.read_bytes()
        try:
            return text, read_raw(self.path)
        except BadConfig:
            return text, {}

    def _commit(
        self,
        old_raw: dict[str, Any],
        new_raw: dict[str, Any],
        changes: list[Change],
        who: str,
        exact: bytes | None = None,
    ) -> Saved:
        config = validate(new_raw, self.path)  # raises BadConfig with every issue: nothing written
        if not changes:
            return Saved([], [], config)
        data = exact if exact is not None else tomlw.dumps(new_raw).encode()
        write_atomically(self.path, data)
        restart = processes_for([c.path for c in changes])
        self._audit(who, changes, restart)
        return Saved(changes, restart, config)

    def _audit(self, who: str, changes: list[Change], restart: list[str]) -> None:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "who": who,
            "file": str(self.path),
            "changes": [
                {"path": c.path, "old": c.shown()[0], "new": c.shown()[1]} for c in changes
            ],
            "restart": restart,
        }
        self.audit.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.audit, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(entry, ensure_ascii=False) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.trail is not None:
            self.trail.config_changed(who, [c.path for c in changes])

    def audit_entries(self, limit: int = 20) -> list[dict[str, Any]]:
        try:
            lines = self.audit.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in reversed(lines[-limit:]):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _is_secret(path: str) -> bool:
    return path.endswith("passphrase") or path.endswith("password")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Key path → scalar (or list of scalars) for every leaf of a TOML tree."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = tree
    return out


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = sorted(set(old) | set(new))
    return [(k, old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)]
