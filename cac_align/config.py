"""Recipe configuration: dataclasses are the schema, YAML files are presets, ``a.b=value`` arguments override them.

A recipe declares its settings as (nested) dataclasses with a comment above each field; that comment is the
documentation ``--help`` prints. It then calls::

    cfg = load_config(Stage3Config, sys.argv[1:])   # --config preset.yaml train.lr=1e-6 lora.targets=[q_proj,v_proj]
    save_config(cfg, run_dir / "config.yaml")       # the resolved config, for the run record

and passes flat keyword arguments on to library code (library functions never receive ``cfg``).

Rules:
    * One ``--config FILE`` preset, then ``key=value`` overrides applied in order. A YAML mapping for a ``dict``
      field replaces its default; a dotted override (``rewards.cac=2``) sets one entry. Override values are YAML (``1e-4``, ``true``, ``null``, ``[a, b]``, ``{cac: 1.0}``); for ``str`` and
      ``Path`` fields the text is taken as written, so ``name=2024`` is the string ``"2024"``.
    * Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Path``, ``Literal[...]``, ``X | None``, other
      unions, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]``, ``Any`` and nested dataclasses.
      An ``int`` is accepted for a ``float`` field; YAML 1.1 reads ``1e-4`` as a string, so numeric strings are
      accepted for ``float`` fields too. Nothing else is converted: a mismatch is an error.
    * Unknown keys, type mismatches and missing required fields raise :class:`ConfigError`, naming the key, where it
      came from (``FILE:LINE`` or ``command line``) and what was expected, with a "did you mean" for typos.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import sys
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from cac_align.utils import atomic_write_text

T = TypeVar("T")

__all__ = ["ConfigError", "config_to_dict", "format_help", "load_config", "save_config"]


class ConfigError(ValueError):
    """A config file or override does not fit the schema; the message names the key and where it came from."""


class _DictPatch(dict):
    """Entries set by dotted overrides into a ``dict`` field (``rewards.cac=2``): merged into the current dict."""


# --------------------------------------------------------------------------------------------------- sources
class _Sources:
    """Where each dotted key was set: ``FILE:LINE`` for YAML keys, ``command line`` for overrides."""

    def __init__(self) -> None:
        self._where: dict[str, str] = {}

    def set(self, key: str, where: str) -> None:
        # A later source replaces the key and everything set below it.
        for k in [k for k in self._where if k == key or k.startswith(key + ".") or k.startswith(key + "[")]:
            del self._where[k]
        self._where[key] = where

    def of(self, key: str) -> str:
        """The source of ``key`` or of its closest enclosing key that has one."""
        k = key
        while k:
            if k in self._where:
                return self._where[k]
            cut = max(k.rfind("."), k.rfind("["))
            k = k[:cut] if cut > 0 else ""
        return "defaults"


def _fail(sources: _Sources, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{sources.of(key)}: {key}: {msg}")


# ------------------------------------------------------------------------------------------------- type names
def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    if dataclasses.is_dataclass(tp):
        return tp.__name__
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return tp.__name__


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as e:
        raise TypeError(f"{cls.__name__}: cannot resolve a field's type annotation ({e})") from None


# ---------------------------------------------------------------------------------------------------- coercion
def _coerce(value: Any, tp: Any, key: str, sources: _Sources, base: Any = dataclasses.MISSING) -> Any:
    """Check ``value`` against ``tp`` and convert it (dicts -> dataclasses, lists -> tuples, str -> Path)."""
    expected = _type_name(tp)

    def bad() -> ConfigError:
        return _fail(sources, key, f"expected {expected}, got {value!r} ({type(value).__name__})")

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _fail(sources, key, f"expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key, sources, None if base is dataclasses.MISSING else base)
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # X | None: report X's own, more precise error
            return _coerce(value, arms[0], key, sources, base)
        for arm in arms:
            try:
                return _coerce(value, arm, key, sources, base)
            except ConfigError:
                continue
        raise bad()
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise bad()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            item_types = [args[0] if args else Any] * len(value)
        else:
            if len(value) != len(args):
                raise _fail(sources, key, f"expected {expected} ({len(args)} items), got {len(value)} items")
            item_types = list(args)
        items = [_coerce(v, t, f"{key}[{i}]", sources) for i, (v, t) in enumerate(zip(value, item_types, strict=True))]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        ktype, vtype = args if args else (Any, Any)
        if isinstance(value, _DictPatch) and isinstance(base, dict):
            value = {**base, **value}  # dotted overrides set single entries of the current dict
        return {_coerce(k, ktype, key, sources): _coerce(v, vtype, f"{key}.{k}", sources) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if isinstance(tp, type) and issubclass(tp, Path):
        if isinstance(value, (str, Path)):
            return tp(value)
        raise bad()
    raise TypeError(f"{key}: field type {expected} is not supported by cac_align.config")


def _build(cls: type[T], data: dict[str, Any], prefix: str, sources: _Sources, base: Any = None) -> T:
    """Instantiate ``cls`` from ``data``; fields not in ``data`` come from ``base`` (if given) or the defaults."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    for name in data:
        if name not in fields:
            key = f"{prefix}.{name}" if prefix else str(name)
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
            known = ", ".join(fields)
            raise _fail(sources, key, f"unknown key{hint} (known keys of {prefix or 'the config'}: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        current: Any = dataclasses.MISSING
        if base is not None:
            current = getattr(base, name)
        elif f.default is not dataclasses.MISSING:
            current = f.default
        elif f.default_factory is not dataclasses.MISSING:
            current = f.default_factory()
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key, sources, current)
        elif current is not dataclasses.MISSING:
            kwargs[name] = current
        else:
            raise _fail(sources, key, f"required ({_type_name(hints[name])}); set it in the YAML file or as {key}=...")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


# ------------------------------------------------------------------------------------------------ YAML + argv
def _yaml_lines(node: yaml.Node, prefix: str, file: str, sources: _Sources) -> None:
    """Record ``FILE:LINE`` of every mapping key in a composed YAML document."""
    if not isinstance(node, yaml.MappingNode):
        return
    for knode, vnode in node.value:
        key = f"{prefix}.{knode.value}" if prefix else str(knode.value)
        sources.set(key, f"{file}:{knode.start_mark.line + 1}")
        _yaml_lines(vnode, key, file, sources)


def _read_yaml(path: str, sources: _Sources) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    _yaml_lines(node, "", path, sources)
    return data


def _field_type(cls: type, path: list[str]) -> Any:
    """The declared type at a dotted path, or raise ``KeyError(index)`` at the first unknown part."""
    tp: Any = cls
    for i, part in enumerate(path):
        while _is_union(tp):  # step through Optional[Section]
            arms = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a) or typing.get_origin(a) is dict]
            if not arms:
                break
            tp = arms[0]
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            names = [f.name for f in dataclasses.fields(tp) if f.init]
            if part not in names:
                raise KeyError(i)
            tp = hints[part]
        elif typing.get_origin(tp) is dict:
            args = typing.get_args(tp)
            tp = args[1] if args else Any
        elif tp is Any:
            return Any
        else:
            raise KeyError(i)
    return tp


def _accepts_text(tp: Any) -> bool:
    if _is_union(tp):
        return any(_accepts_text(a) for a in typing.get_args(tp))
    return tp is str or (isinstance(tp, type) and issubclass(tp, Path))


def _apply_override(cls: type, data: dict[str, Any], arg: str, sources: _Sources) -> None:
    key, _, text = arg.partition("=")
    key = key.strip()
    path = key.split(".")
    if not key or any(not p for p in path):
        raise ConfigError(f"command line: {arg!r}: expected key=value with a dotted key such as train.lr=1e-4")
    try:
        tp = _field_type(cls, path)
    except KeyError as e:
        i = e.args[0]
        parent = ".".join(path[:i])
        section = _field_type(cls, path[:i])
        names = [f.name for f in dataclasses.fields(section)] if dataclasses.is_dataclass(section) else []
        close = difflib.get_close_matches(path[i], names, n=1)
        bad = ".".join(path[: i + 1])
        if not names:
            msg = f"{parent} is a {_type_name(section)} value, not a section"
        else:
            hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
            msg = f"unknown key{hint} (known keys of {parent or 'the config'}: {', '.join(names)})"
        raise ConfigError(f"command line: {bad}: {msg}") from None
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # e.g. a path with a colon; only valid for str/Path fields, checked when the config is built
    if _accepts_text(tp) and (text == "" or (value is not None and not isinstance(value, str))):
        value = text  # run_name=2024 is the string "2024"
    node = data
    for j, part in enumerate(path[:-1]):
        if not isinstance(node.get(part), dict):
            is_dict_field = typing.get_origin(_field_type(cls, path[: j + 1])) is dict
            node[part] = _DictPatch() if is_dict_field else {}
        node = node[part]
    node[path[-1]] = value
    sources.set(key, f"command line ({arg})")


def load_config(schema_cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None) -> T:
    """Build ``schema_cls`` from ``--config FILE`` presets and ``key=value`` overrides (style principle 5).

    Args:
        schema_cls: The recipe's top-level config dataclass.
        argv: Command-line arguments without the program name; ``sys.argv[1:]`` when ``None``.
        prog: Program name shown by ``--help``.

    Returns:
        The resolved instance: the schema defaults, then the ``--config`` file, then the overrides in order.

    Raises:
        ConfigError: An unknown key, a value of the wrong type, a missing required field, or a malformed argument.
        SystemExit: After printing the field documentation for ``-h``/``--help``.
    """
    if not dataclasses.is_dataclass(schema_cls):
        raise TypeError(f"load_config needs a dataclass type, got {schema_cls!r}")
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(format_help(schema_cls, prog=prog))
        raise SystemExit(0)
    config_file: str | None = None
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            if config_file is not None:
                raise ConfigError("command line: --config given twice; use one preset plus key=value overrides")
            if arg == "--config":
                if i + 1 >= len(args):
                    raise ConfigError("command line: --config needs a file path")
                i += 1
                config_file = args[i]
            else:
                config_file = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise ConfigError(f"command line: unknown option {arg!r}; expected --config FILE, --help or key=value")
        elif "=" not in arg:
            raise ConfigError(f"command line: {arg!r}: expected key=value (e.g. train.lr=1e-4)")
        else:
            overrides.append(arg)
        i += 1
    sources = _Sources()
    data = _read_yaml(config_file, sources) if config_file is not None else {}
    for arg in overrides:
        _apply_override(schema_cls, data, arg, sources)
    return _build(schema_cls, data, "", sources)


# ----------------------------------------------------------------------------------------------------- output
def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (nested sections as dicts, tuples as lists, paths as str)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {cfg!r}")
    return _plain(cfg)


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically), loadable again with ``--config``; returns ``path``."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=False)
    header = f"# Resolved {type(cfg).__name__}; reload with --config {Path(path).name}\n"
    atomic_write_text(path, header + text)
    return Path(path)


# -------------------------------------------------------------------------------------------------------- help
def _field_comments(cls: type) -> dict[str, str]:
    """The ``#`` comment block directly above each field of ``cls`` (plus a trailing comment on its line)."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    src = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return {}
    body = src.splitlines()
    out: dict[str, str] = {}
    for stmt in tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        block = []
        j = stmt.lineno - 2
        while j >= 0 and body[j].strip().startswith("#"):
            block.append(body[j].strip().lstrip("#").strip())
            j -= 1
        text = " ".join(reversed(block))
        line = body[stmt.lineno - 1]
        if "#" in line:
            tail = line.split("#", 1)[1].strip()
            if tail and not tail.startswith("noqa"):
                text = f"{text} {tail}".strip()
        out[stmt.target.id] = text
    return out


def format_help(schema_cls: type, *, prog: str | None = None) -> str:
    """The ``--help`` text: usage, the class docstring, and each dotted key with its type, default and comment."""
    prog = prog or Path(sys.argv[0]).name
    lines = [f"usage: {prog} [--config FILE] [key=value ...]", ""]
    doc = inspect.getdoc(schema_cls)
    if doc and not doc.startswith(schema_cls.__name__ + "("):  # skip the auto-generated dataclass signature
        lines += [doc.split("\n\n")[0], ""]
    lines += ["Keys (type = default); YAML values, e.g. train.lr=1e-4 flag=true items=[a,b] opt=null:", ""]
    _help_fields(schema_cls, "", lines)
    return "\n".join(lines).rstrip() + "\n"


def _dump_inline(value: Any) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True, sort_keys=False).strip().removesuffix("\n...")


def _help_fields(cls: type, prefix: str, lines: list[str], base: Any = None) -> None:
    hints = _hints(cls)
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        value: Any = dataclasses.MISSING
        if base is not None:
            value = getattr(base, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        default = "(required)" if value is dataclasses.MISSING else _dump_inline(value)
        sections = [a for a in (typing.get_args(tp) if _is_union(tp) else (tp,)) if dataclasses.is_dataclass(a)]
        if sections:
            optional = "" if dataclasses.is_dataclass(tp) else f" ({_type_name(tp)} = {default})"
            lines.append(f"  [{key}]{optional}  {comments.get(f.name, '')}".rstrip())
            _help_fields(sections[0], key + ".", lines, value if isinstance(value, sections[0]) else None)
            continue
        lines.append(f"  {key}: {_type_name(tp)} = {default}")
        if comments.get(f.name):
            for wrapped in textwrap.wrap(comments[f.name], width=100):
                lines.append(f"      {wrapped}")
