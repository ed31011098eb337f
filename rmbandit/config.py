"""Experiment configs: nested frozen dataclasses read from YAML with dotted overrides.

A schema is a (frozen) dataclass whose fields are scalars, ``X | None``, ``Literal[...]``,
tuples, dicts or further dataclasses (sections). ``load`` reads a YAML file, applies
``key.sub=value`` overrides (values parsed as YAML, like ml_collections' ``--config.a.b=1``),
and builds the dataclass, checking every value against its annotation. Every problem found is
reported at once, one line each, naming the file (or override), the dotted key, what was
expected and what was given::

    cfg = config.load(TrainConfig, "experiments/configs/x.yaml", ["sampling.temperature=1.0"])
    config.dump(cfg, run_dir / "config.yaml")        # load() reads it back equal

This module imports nothing else of rmbandit, so the CLI can check a config before any model loads.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
import pathlib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import yaml

__all__ = [
    "ConfigError", "from_dict", "apply_overrides", "load", "to_dict", "dump", "differences",
    "valid_keys",
]


class ConfigError(ValueError):
    """A bad config: the message has one line per problem (``.problems``)."""

    def __init__(self, problems: str | Sequence[str]):
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("\n".join(self.problems))


_INVALID = object()  # what _convert returns after recording a problem
# PyYAML follows YAML 1.1, where `1e-5` (no dot) is a string; float fields accept that spelling.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


# --- the schema ----------------------------------------------------------------------------

@functools.cache
def _fields(schema: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """name -> (field, resolved annotation) of the fields a config sets (init fields)."""
    hints = typing.get_type_hints(schema)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(schema) if f.init}


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _section_of(tp):
    """The dataclass a field holds (also for ``Section | None``), else None."""
    if _is_section(tp):
        return tp
    if _is_union(tp):
        sections = [a for a in typing.get_args(tp) if _is_section(a)]
        return sections[0] if len(sections) == 1 else None
    return None


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _takes_text(tp, value) -> bool:
    """Whether an override's YAML ``value`` (an int, a bool...) should be its text instead: the
    field takes a str (``str``, ``str | None``) but no value of the type YAML made of it
    (router.rm=2024 is the RM "2024"; null stays null)."""
    options = typing.get_args(tp) if _is_union(tp) else (tp,)
    if str not in options or value is None or isinstance(value, str):
        return False
    return not any(isinstance(option, type) and isinstance(value, option)
                   and not (isinstance(value, bool) and option is not bool) for option in options)


def _is_mapping_type(tp) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def valid_keys(schema: type) -> list[str]:
    """Every dotted leaf key of ``schema``, in declaration order (for help listings)."""
    keys = []
    for name, (_, tp) in _fields(schema).items():
        section = _section_of(tp)
        keys += [f"{name}.{k}" for k in valid_keys(section)] if section else [name]
    return keys


def _describe(tp) -> str:
    """The annotation in the words a YAML author uses."""
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any value"
    if tp is bool:
        return "bool (true or false)"
    if _is_section(tp):
        return f"a mapping with keys {', '.join(sorted(_fields(tp)))}"
    if _is_union(tp):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (tuple, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        if args:
            return f"a list [{', '.join(_describe(a) for a in args)}]"
        return "a list"
    if _is_mapping_type(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _show(value) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _closest(word: str, choices) -> str | None:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_key(schema: type, prefix: str, key: str, root: type) -> str:
    """The message for ``key`` not being a field of ``schema`` (found at dotted ``prefix``)."""
    names = sorted(_fields(schema))
    guess = _closest(key, names)
    if guess is not None:
        guesses = [prefix + guess]
    else:  # a name at the wrong level, e.g. `temperature` for `sampling.temperature`
        leaves = valid_keys(root)
        close = set(difflib.get_close_matches(str(key), [k.rsplit(".", 1)[-1] for k in leaves], cutoff=0.8))
        guesses = [k for k in leaves if k.rsplit(".", 1)[-1] in close]
    hint = f"did you mean {' or '.join(map(repr, guesses))}? " if guesses else ""
    where = f"under {prefix[:-1]!r}" if prefix else "at the top level"
    return f"unknown key {prefix + str(key)!r}; {hint}valid keys {where}: {', '.join(names)}"


# --- dict -> dataclass ---------------------------------------------------------------------

def _convert(tp, value, key: str, problems: list[str], root: type):
    """``value`` checked against annotation ``tp`` (YAML lists become tuples); on a mismatch a
    problem is appended and ``_INVALID`` returned."""
    def wrong(expected=None):
        problems.append(f"{key!r} expects {expected or _describe(tp)}, got {_show(value)}")
        return _INVALID

    if tp is Any:
        return value
    if tp is type(None):
        return None if value is None else wrong()
    if _is_section(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            return wrong()
        return _build(tp, value, None, f"{key}.", problems, root)
    if _is_union(tp):
        for option in typing.get_args(tp):
            trial: list[str] = []
            converted = _convert(option, value, key, trial, root)
            if converted is not _INVALID:
                return converted
            if _is_section(option) and isinstance(value, Mapping):
                problems.extend(trial)  # a section with bad keys: say which, not "expects ..."
                return _INVALID
        return wrong()
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        guess = _closest(value, [c for c in choices if isinstance(c, str)]) if isinstance(value, str) else None
        wrong()
        if guess is not None:
            problems[-1] += f"; did you mean {guess!r}?"
        return _INVALID
    if tp is bool:
        return value if isinstance(value, bool) else wrong()
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else wrong()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
        return wrong()
    if tp is str:
        return value if isinstance(value, str) else wrong()
    if tp in (tuple, list) or typing.get_origin(tp) in (tuple, list):
        container = typing.get_origin(tp) or tp
        if not isinstance(value, (list, tuple)):
            return wrong()
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif not args:
            args = (Any,) * len(value)
        elif len(args) != len(value):
            return wrong(f"{_describe(tp)} ({len(args)} items)")
        items = [_convert(a, v, f"{key}[{i}]", problems, root) for i, (a, v) in enumerate(zip(args, value))]
        return _INVALID if _INVALID in items else container(items)
    if _is_mapping_type(tp):
        if not isinstance(value, Mapping):
            return wrong()
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        out = {}
        for k, v in value.items():
            k = _convert(key_type, k, f"{key}.{k}", problems, root)
            out[k] = _convert(value_type, v, f"{key}.{k}", problems, root)
        return _INVALID if _INVALID in out or _INVALID in out.values() else out
    raise TypeError(f"config key {key!r} has annotation {tp!r}, which rmbandit.config cannot check; "
                    "use int, float, bool, str, X | None, Literal[...], tuple[...], dict or a dataclass")


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _build(schema: type, data: Mapping, base, prefix: str, problems: list[str], root: type):
    """An instance of ``schema`` from ``data``; keys ``data`` lacks keep the values of ``base``
    (or the field defaults), so a partial section only changes what it names."""
    fields, start = _fields(schema), len(problems)
    for key in data:
        if key not in fields:
            problems.append(_unknown_key(schema, prefix, key, root))
    values = {}
    for name, (field, tp) in fields.items():
        dotted = f"{prefix}{name}"
        current = getattr(base, name) if base is not None else _default(field)
        if name not in data:
            if current is dataclasses.MISSING:
                problems.append(f"missing required key {dotted!r} ({_describe(tp)})")
            continue
        value = data[name]
        section = _section_of(tp)
        if value is None and section is tp:  # `sampling:` with every key commented out
            value = {}
        if isinstance(value, Mapping) and section is not None and isinstance(current, section):
            values[name] = _build(section, value, current, f"{dotted}.", problems, root)
        else:
            values[name] = _convert(tp, value, dotted, problems, root)
    if len(problems) > start:
        return _INVALID
    try:
        return dataclasses.replace(base, **values) if base is not None else schema(**values)
    except (ValueError, TypeError) as error:  # the dataclass's own checks (__post_init__)
        problems.append(f"{prefix[:-1] or schema.__name__!r}: {error}")
        return _INVALID


def from_dict(schema: type, data: Mapping, source: str = "config"):
    """Build ``schema`` from nested ``data``, checking every value; raises one ``ConfigError``
    listing every problem, each line starting with ``source``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys, got {_show(data)}")
    problems: list[str] = []
    instance = _build(schema, data, None, "", problems, schema)
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return instance


# --- overrides -----------------------------------------------------------------------------

def _merged(old, new):
    """``new`` laid over ``old``, recursively for mappings."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}
    return new


def _override_problems(data: dict, override: str, schema: type) -> list[str]:
    """Set one ``a.b.c=value`` in ``data`` in place; the problems found (none if it was set)."""
    key, equals, text = override.partition("=")
    key = key.strip()
    if not equals or not key:
        example = key if key in valid_keys(schema) else valid_keys(schema)[0]
        return [f"expected the form key=value, e.g. {example}=VALUE"]
    parts = key.split(".")
    section, target, prefix = schema, data, ""
    for part in parts[:-1]:
        fields = _fields(section)
        if part not in fields:
            return [_unknown_key(section, prefix, part, schema)]
        sub = _section_of(fields[part][1])
        if sub is None:
            return [f"{prefix + part!r} is {_describe(fields[part][1])}, not a section, so it has no "
                    f"key {key!r}; set it whole, e.g. {prefix + part}=VALUE"]
        if not isinstance(target.get(part), dict):
            target[part] = {}
        section, target, prefix = sub, target[part], f"{prefix}{part}."
    name = parts[-1]
    if name not in _fields(section):
        return [_unknown_key(section, prefix, name, schema)]
    tp = _fields(section)[name][1]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return [f"the value {text!r} is not valid YAML ({getattr(error, 'problem', error)}); "
                "quote it, e.g. key='text'"]
    if _takes_text(tp, value):
        value = text.strip()  # a str field takes the text as written: run_dir=2024 is "2024"
    sub = _section_of(tp)
    if sub is not None and not isinstance(value, Mapping) and not (value is None and _is_union(tp)):
        return [f"{key!r} is a section, not a value; set one of its keys, e.g. "
                f"{key}.{valid_keys(sub)[0]}=VALUE (keys: {', '.join(valid_keys(sub))})"]
    problems: list[str] = []
    _convert(tp, value, key, problems, schema)
    if not problems:
        target[name] = _merged(target.get(name), value) if sub is not None else value
    return problems


def apply_overrides(data: Mapping, overrides: Sequence[str], schema: type) -> dict:
    """A copy of ``data`` with each ``a.b.c=value`` override set (value parsed as YAML: ``3``,
    ``0.5``, ``true``, ``[1, 2]``, ``null``; other text stays a string). Keys are checked against
    ``schema`` (so keys absent from ``data`` work) and so are the values' types."""
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    data = copy.deepcopy(dict(data))
    problems = [f"override {override!r}: {p}"
                for override in overrides for p in _override_problems(data, override, schema)]
    if problems:
        raise ConfigError(problems)
    return data


# --- files ---------------------------------------------------------------------------------

class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key written twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` may bring keys that this mapping then overrides
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader's own error names it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (each key may appear once)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _missing_file_message(path: pathlib.Path) -> str:
    folder = path if path.is_dir() else path.parent
    what = "is a directory, not a config file" if path.is_dir() else "no such config file"
    if not folder.is_dir():
        return (f"{path}: {what} (nor a directory {folder}/); give the path from the directory you "
                f"run in (now {pathlib.Path.cwd()})")
    shipped = sorted(p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
    if not shipped:
        return f"{path}: {what}, and {folder}/ holds no .yaml configs"
    guess = _closest(path.name, shipped) if folder == path.parent else None
    hint = f"; did you mean {str(folder / guess)!r}?" if guess else ";"
    return f"{path}: {what}{hint} configs in {folder}/: {', '.join(shipped)}"


def _read_yaml(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise ConfigError(_missing_file_message(path))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(filter(None, [getattr(error, "context", None), getattr(error, "problem", None)]))
        raise ConfigError(f"{where}: invalid YAML: {problem or error}") from None
    if data is None:  # an empty file: every default
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys such as 'seed: 0', "
                          f"got {_show(data)}")
    return data


def load(schema: type, path: str | os.PathLike | None = None, overrides: Sequence[str] = ()):
    """``schema`` built from the YAML file at ``path`` (None or an empty file: the defaults) with
    ``overrides`` applied; any problem is a ``ConfigError`` naming the file/override and key."""
    data = {} if path is None else _read_yaml(pathlib.Path(path))
    data = apply_overrides(data, overrides, schema)
    return from_dict(schema, data, source="config" if path is None else str(path))


def to_dict(instance) -> dict:
    """``instance`` as plain YAML-safe data: dataclasses become dicts, tuples become lists."""
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {f.name: to_dict(getattr(instance, f.name)) for f in dataclasses.fields(instance) if f.init}
    if isinstance(instance, Mapping):
        return {k: to_dict(v) for k, v in instance.items()}
    if isinstance(instance, (list, tuple)):
        return [to_dict(v) for v in instance]
    return instance


class _Dumper(yaml.SafeDumper):
    """SafeDumper that double-quotes strings holding a Unicode line break (NEL, LS, PS): PyYAML
    writes them raw in other styles, and a NEL at the end reads back as a space."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style='"' if any(c in text for c in "\x85\u2028\u2029") else None))


def dump(instance, path: str | os.PathLike) -> None:
    """Write ``instance`` as YAML that ``load`` reads back equal (atomically: a crash mid-write
    leaves the old file)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(yaml.dump(to_dict(instance), Dumper=_Dumper, sort_keys=False, allow_unicode=True),
                         encoding="utf-8")
    os.replace(temporary, path)


def _flatten(data, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf key -> value; an empty mapping has no leaves."""
    if isinstance(data, Mapping):
        return {k: v for key, value in data.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: data}


def differences(a, b) -> list[str]:
    """Dotted keys whose values differ between configs ``a`` and ``b`` (dataclasses or dicts),
    e.g. to tell a user that a resumed run's config is not the saved one."""
    flat_a, flat_b = _flatten(to_dict(a)), _flatten(to_dict(b))
    missing = object()

    def same(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)

    return [key for key in dict.fromkeys([*flat_a, *flat_b])
            if not same(flat_a.get(key, missing), flat_b.get(key, missing))]
