"""YAML loading with precise errors.

A config is built from layers, lowest first: the files named by ``extends:`` (recursively),
the file itself, then ``--set section.key=value`` overrides. Each leaf value remembers the
layer it came from, so an error names the file (or ``--set``) and the dotted key.

Whatever the input, the only exception :func:`load` raises is :class:`ConfigError`: a file that
is not UTF-8, YAML that is malformed or nested too deeply, a key written twice in one mapping, a
date PyYAML recognises but cannot build (``2024-02-30``), a non-finite number (``.inf``, ``.nan``),
an integer beyond 64 bits or a control character in a string are all refused in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import math
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

MAX_INT = 2**63 - 1
"""No config integer is larger: every one ends up in a C integer somewhere (numpy, torch, Slurm)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a scalar it recognises but cannot convert stays text.

    ``2024-02-30``, ``2024-01-01T00:00+25:00`` or ``0x_`` would otherwise raise a ``ValueError``
    from inside the parser; as text, the field's own check names the key and says what is wrong.
    """


def _text_if_invalid(construct: Any) -> Any:
    def lenient(loader: _Loader, node: yaml.ScalarNode) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, OverflowError):
            return loader.construct_scalar(node)

    return lenient


for _tag in ("timestamp", "int", "float"):
    _Loader.add_constructor(
        f"tag:yaml.org,2002:{_tag}", _text_if_invalid(getattr(yaml.SafeLoader, f"construct_yaml_{_tag}"))
    )


def configs_dir() -> Path:
    """The shipped ``configs/`` folder: inside the wheel, or at the top of a source checkout."""
    packaged = Path(__file__).resolve().parent.parent / "_configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "configs"


def resolve_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of an embedded one (``quickstart``, ``hardware/laptop``)."""
    path = Path(name_or_path)
    if _is_file(path):
        return path
    embedded = configs_dir() / (str(name_or_path) + ("" if str(name_or_path).endswith(".yaml") else ".yaml"))
    if _is_file(embedded):
        return embedded
    known = sorted(str(p.relative_to(configs_dir()).with_suffix("")) for p in configs_dir().rglob("*.yaml"))
    raise ConfigError(f"{name_or_path}: no such config file or embedded config (embedded: {', '.join(known)})")


def load(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a config file (default: the embedded quickstart), apply ``extends`` and overrides, validate."""
    leaves: dict[str, _Leaf] = {}
    _read_layers(resolve_path(path or DEFAULT_CONFIG), leaves, seen=())
    for text in overrides:
        key, value = _parse_override(text)
        _check_key(key, _set_origin(text))
        leaves.pop(key, None)  # re-insert so that insertion order stays application order
        leaves[key] = (value, _set_origin(text))
    return _build(leaves)


def _set_origin(text: str) -> str:
    """``--set <text>`` as errors name it: quoted when it holds a newline or another control character."""
    return f"--set {text}" if text.isprintable() else f"--set {text!r}"


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL byte
        return False


def _read_layers(path: Path, leaves: dict[str, _Leaf], seen: tuple[Path, ...]) -> None:
    origin = _display(path)
    if path.resolve() in seen:
        raise ConfigError(f"{origin}: extends: circular chain {' -> '.join(map(str, (*seen, path)))}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{origin}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "a config is a YAML text file saved as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{origin}: cannot read ({err.strerror or type(err).__name__})") from None
    raw = _parse_yaml(text, origin)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections, not {type(raw).__name__}")
    declared = raw.pop("extends", None)
    parents = [] if declared is None else [declared] if isinstance(declared, str) else declared
    if not isinstance(parents, list) or not all(isinstance(p, str) and p.strip() for p in parents):
        raise ConfigError(f"{origin}: extends: expected a config file name or a list of them, got {_short(declared)}")
    for parent in parents:
        parent_path = path.parent / parent
        _read_layers(parent_path if _is_file(parent_path) else resolve_path(parent), leaves, (*seen, path.resolve()))
    for key, value in _flatten(raw, origin):
        leaves.pop(key, None)
        leaves[key] = (value, origin)


def _parse_yaml(text: str, origin: str) -> Any:
    """``text`` as YAML data; a syntax error or a repeated key is one line naming ``origin`` and the line."""
    try:
        loader = _Loader(text)  # the reader checks every character here
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _refuse_duplicate_keys(node, origin)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as err:
        character = err.character if isinstance(err.character, int) else ord(err.character)
        raise ConfigError(
            f"{origin}: not valid YAML (character #x{character:04x} at offset {err.position} is not allowed)"
        ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(
            f"{origin}: {where}: not valid YAML ({_one_line(err.problem or err.context or err)})"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{origin}: not valid YAML ({_one_line(err)})") from None
    except RecursionError:
        raise ConfigError(f"{origin}: not valid YAML for a config (nested too deeply)") from None


def _refuse_duplicate_keys(node: yaml.Node, origin: str) -> None:
    """Refuse a key written twice in one mapping (PyYAML would silently keep the last), with both lines."""
    done: set[int] = set()
    todo: list[tuple[yaml.Node, str]] = [(node, "")]
    while todo:
        current, path = todo.pop()
        if id(current) in done:  # an alias: already checked where its anchor is
            continue
        done.add(id(current))
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, yaml.Node] = {}
            for key_node, value_node in current.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if name is not None and key_node.tag != "tag:yaml.org,2002:merge":
                    dotted = f"{path}.{name}" if path else name
                    if name in seen:
                        raise ConfigError(
                            f"{origin}: line {key_node.start_mark.line + 1}: {dotted}: duplicate key "
                            f"(first at line {seen[name].start_mark.line + 1}); write each key once"
                        )
                    seen[name] = key_node
                    todo.append((value_node, dotted))
                else:
                    todo.append((value_node, path))
        elif isinstance(current, yaml.SequenceNode):
            todo += [(item, f"{path}[{i}]") for i, item in enumerate(current.value)]


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _short(value: Any, limit: int = 60) -> str:
    """``type value`` for a message, the value's repr cut to ``limit`` characters."""
    text = repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


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
            if isinstance(value, dict) and str(name) not in _top_level_keys():
                for key in value:  # an unknown section: its keys may tell where they belong
                    _check_key(f"{name}.{key}", origin)
            _check_key(str(name), origin)
            yield str(name), value


def _top_level_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]


def _check_key(key: str, origin: str) -> None:
    section, _, name = key.partition(".")
    top_level = _top_level_keys()
    if not name:
        if section in top_level:
            return
        if section in SECTIONS:
            example = dataclasses.fields(SECTIONS[section])[0].name
            raise ConfigError(f"{origin}: {section}: is a section; set one of its keys, e.g. {section}.{example}")
        valid = top_level + list(SECTIONS)
        raise ConfigError(f"{origin}: {section}: unknown key{_did_you_mean(section, valid)}")
    if section not in SECTIONS:
        elsewhere = _key_elsewhere(name, section)
        hint = f"; did you mean '{elsewhere}'?" if elsewhere else _did_you_mean(section, list(SECTIONS))
        raise ConfigError(f"{origin}: {section}: unknown section{hint}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        elsewhere = None if close else _key_elsewhere(name, section)
        if elsewhere:
            raise ConfigError(f"{origin}: {key}: unknown key; did you mean '{elsewhere}'?")
        raise ConfigError(f"{origin}: {key}: unknown key{_did_you_mean(name, names, prefix=section + '.')}")


def _key_elsewhere(name: str, section: str) -> str | None:
    """``other.name`` for a key written under the wrong section (``walkforward.members``: ``ensemble.members``).

    The same name in another section wins; else the closest name in any section, when it is close.
    """
    qualified = {f"{other}.{f.name}": f.name for other, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    exact = [full for full, short in qualified.items() if short == name]
    if exact:  # a name in two sections: prefer the one whose section name is closest to the one written
        return max(exact, key=lambda full: difflib.SequenceMatcher(None, section, full.partition(".")[0]).ratio())
    close = difflib.get_close_matches(name, sorted(set(qualified.values())), n=1, cutoff=0.8)
    return next((full for full, short in qualified.items() if close and short == close[0]), None)


def _did_you_mean(word: str, valid: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid: {', '.join(valid)}"


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{_set_origin(text)}: expected section.key=value")
    try:
        parsed = yaml.load(value, Loader=_Loader) if value.strip() else None  # _Loader is a SafeLoader
    except (yaml.YAMLError, RecursionError):
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
        return ConfigError(f"{origin}: {key}: expected {expected}, got {_short(value)}")

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
            if abs(value) > MAX_INT:
                raise ConfigError(f"{origin}: {key}: {value} is too large (the limit is {MAX_INT})")
            return value
        raise wrong("an integer")
    if hint is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                number = math.inf
        elif isinstance(value, str):  # PyYAML (YAML 1.1) reads 3e-4, without a dot, as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise wrong("a number")
        if not math.isfinite(number):  # .inf, .nan, 1e999: nothing downstream can use them
            raise ConfigError(f"{origin}: {key}: {value!r} is not a finite number")
        return number
    if hint is str:
        if isinstance(value, (datetime, date)):  # YAML reads 2021-01-04 as a date
            return value.isoformat()
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            control = next((c for c in text if ord(c) < 0x20 or ord(c) == 0x7F), None)
            if control is not None:
                raise ConfigError(f"{origin}: {key}: control character {control!r} in {_short(text)}")
            return text
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
                lines.append(f"  {key}: {json.dumps(leaf)}  # {docs[key]}{_allowed(SECTIONS[name], key)}")
        else:
            lines.append(f"{name}: {json.dumps(value)}  # {top_docs[name]}{_allowed(Config, name)}")
    return "\n".join(lines) + "\n"


def choices(cls: type, key: str) -> tuple[Any, ...] | None:
    """The values a field of a config dataclass allows, when its type fixes them (a ``Literal``), else None."""
    hint = _hints(cls)[key]
    if typing.get_origin(hint) in (Union, types.UnionType):  # an optional choice: ``Literal[...] | None``
        hint = next((option for option in typing.get_args(hint) if option is not type(None)), hint)
    if typing.get_origin(hint) is tuple:  # a list of choices
        hint = typing.get_args(hint)[0]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _allowed(cls: type, key: str) -> str:
    allowed = choices(cls, key)
    return f" (one of: {', '.join(map(str, allowed))})" if allowed else ""


def starter_config(hardware: str | None = None) -> Config:
    """The embedded default config, or the default on the hardware profile ``configs/hardware/<hardware>.yaml``.

    The profile takes the place of the one the default extends, not a layer over it: a key only the
    default's profile sets (the laptop's ``hardware.gpus: 0``) would otherwise survive under a GPU profile.
    """
    leaves: dict[str, _Leaf] = {}
    _read_layers(resolve_path(DEFAULT_CONFIG), leaves, seen=())
    if hardware is None:
        return _build(leaves)
    profiles = configs_dir() / "hardware"
    known = sorted(p.stem for p in profiles.glob("*.yaml"))
    name = hardware.removeprefix("hardware/").removesuffix(".yaml")
    if name not in known:
        raise ConfigError(f"--hardware {hardware}: no such hardware profile; valid: {', '.join(known)}")
    shipped = {_display(p) for p in profiles.glob("*.yaml")}
    leaves = {key: leaf for key, leaf in leaves.items() if leaf[1] not in shipped}
    _read_layers(profiles / f"{name}.yaml", leaves, seen=())
    return _build(leaves)


def config_hash(config: Config) -> str:
    """A short stable fingerprint of the resolved config (sha256 of its canonical JSON)."""
    blob = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
