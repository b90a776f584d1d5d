"""YAML loading with precise errors.

A config is built from layers, lowest first: the files named by ``extends:`` (recursively),
the file itself, then ``--set section.key=value`` overrides. Each leaf value remembers the
layer it came from, so an error names the file (or ``--set``) and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ploutos.config.sections import SECTIONS, Config, InvalidValue
from ploutos.errors import ConfigError

DEFAULT_CONFIG = "quickstart"
"""The embedded config used when no --config is given."""

_Leaf = tuple[Any, str]  # (value, origin)


def configs_dir() -> Path:
    """The shipped ``configs/`` folder: inside the wheel, or at the top of a source checkout."""
    packaged = Path(__file__).resolve().parent.parent / "_configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "configs"


def resolve_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of an embedded one (``quickstart``, ``hardware/laptop``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    embedded = configs_dir() / (str(name_or_path) + ("" if str(name_or_path).endswith(".yaml") else ".yaml"))
    if embedded.is_file():
        return embedded
    known = sorted(str(p.relative_to(configs_dir()).with_suffix("")) for p in configs_dir().rglob("*.yaml"))
    raise ConfigError(f"{name_or_path}: no such config file or embedded config (embedded: {', '.join(known)})")


def load(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a config file (default: the embedded quickstart), apply ``extends`` and overrides, validate."""
    leaves: dict[str, _Leaf] = {}
    _read_layers(resolve_path(path or DEFAULT_CONFIG), leaves, seen=())
    for text in overrides:
        key, value = _parse_override(text)
        _check_key(key, f"--set {text}")
        leaves.pop(key, None)  # re-insert so that insertion order stays application order
        leaves[key] = (value, f"--set {text}")
    return _build(leaves)


def _read_layers(path: Path, leaves: dict[str, _Leaf], seen: tuple[Path, ...]) -> None:
    origin = _display(path)
    if path.resolve() in seen:
        raise ConfigError(f"{origin}: extends: circular chain {' -> '.join(map(str, (*seen, path)))}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{origin}: {where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    except OSError as err:
        raise ConfigError(f"{origin}: cannot read ({err.strerror})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections, not {type(raw).__name__}")
    parents = raw.pop("extends", None) or []
    for parent in [parents] if isinstance(parents, str) else parents:
        parent_path = path.parent / parent
        _read_layers(parent_path if parent_path.is_file() else resolve_path(parent), leaves, (*seen, path.resolve()))
    for key, value in _flatten(raw, origin):
        leaves.pop(key, None)
        leaves[key] = (value, origin)


def _display(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _flatten(raw: dict[str, Any], origin: str) -> typing.Iterator[tuple[str, Any]]:
    for name, value in raw.items():
        if name in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {name}: must be a mapping of keys, not {type(value).__name__}")
            for key, leaf in value.items():
                _check_key(f"{name}.{key}", origin)
                yield f"{name}.{key}", leaf
        else:
            _check_key(str(name), origin)
            yield str(name), value


def _check_key(key: str, origin: str) -> None:
    section, _, name = key.partition(".")
    top_level = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
    if not name:
        if section in top_level:
            return
        valid = top_level + list(SECTIONS)
        raise ConfigError(f"{origin}: {section}: unknown key{_did_you_mean(section, valid)}")
    if section not in SECTIONS:
        raise ConfigError(f"{origin}: {section}: unknown section{_did_you_mean(section, list(SECTIONS))}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in names:
        raise ConfigError(f"{origin}: {key}: unknown key{_did_you_mean(name, names, prefix=section + '.')}")


def _did_you_mean(word: str, valid: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid: {', '.join(valid)}"


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text}: expected section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _build(leaves: dict[str, _Leaf]) -> Config:
    hints = _hints(Config)
    top: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        section_hints = _hints(cls)
        kwargs = {
            key.partition(".")[2]: _coerce(value, section_hints[key.partition(".")[2]], key, origin)
            for key, (value, origin) in leaves.items()
            if key.startswith(name + ".")
        }
        top[name] = _construct(cls, kwargs, name, leaves)
    for key, (value, origin) in leaves.items():
        if "." not in key:
            top[key] = _coerce(value, hints[key], key, origin)
    return _construct(Config, top, "", leaves)


def _construct(cls: type, kwargs: dict[str, Any], section: str, leaves: dict[str, _Leaf]) -> Any:
    try:
        return cls(**kwargs)
    except InvalidValue as err:
        qualified = [k if "." in k or not section else f"{section}.{k}" for k in (err.key, *err.related)]
        # The layer applied last among the keys the rule reads is the one that broke it.
        order = list(leaves)
        culprit = max((k for k in qualified if k in leaves), key=order.index, default=None)
        origin = leaves[culprit][1] if culprit else "defaults"
        raise ConfigError(f"{origin}: {qualified[0]}: {err.message}") from None


def _coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    """Check ``value`` against the field's type; convert only where YAML's reading is lossless."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{origin}: {key}: expected {expected}, got {type(value).__name__} {value!r}")

    origin_type = typing.get_origin(hint)
    if origin_type in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        return _coerce(value, inner[0], key, origin)
    if origin_type is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint_text = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{origin}: {key}: {value!r} is not one of {', '.join(map(str, choices))}{hint_text}")
    if origin_type is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise wrong("a list")
        return tuple(_coerce(v, item, f"{key}[{i}]", origin) for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise wrong("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong("an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 3e-4, without a dot, as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise wrong("a number")
    if hint is str:
        if isinstance(value, (datetime, date)):  # YAML reads 2021-01-04 as a date
            return value.isoformat()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise wrong("a string")
    raise ConfigError(f"{origin}: {key}: unsupported field type {hint}")  # a bug in sections.py, not in input


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The one-line doc of each field of a config dataclass, from its metadata (no source needed)."""
    return {item.name: item.metadata["doc"].strip() for item in dataclasses.fields(cls) if "doc" in item.metadata}


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data (tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def dump(config: Config, *, with_docs: bool = False) -> str:
    """The resolved config as YAML; with ``with_docs`` each key carries its doc as a comment."""
    data = to_dict(config)
    if not with_docs:
        return yaml.safe_dump(data, sort_keys=False)
    lines: list[str] = []
    top_docs = field_docs(Config)
    for name, value in data.items():
        if name in SECTIONS:
            lines.append(f"{name}:  # {top_docs[name]}")
            docs = field_docs(SECTIONS[name])
            for key, leaf in value.items():
                lines.append(f"  {key}: {json.dumps(leaf)}  # {docs[key]}")
        else:
            lines.append(f"{name}: {json.dumps(value)}  # {top_docs[name]}")
    return "\n".join(lines) + "\n"


def config_hash(config: Config) -> str:
    """A short stable fingerprint of the resolved config (sha256 of its canonical JSON)."""
    blob = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
