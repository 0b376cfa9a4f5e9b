"""Fill a :class:`~sea_dist.config.sections.Config` from a file and ``section.key=value`` overrides.

In increasing precedence: the dataclass defaults, a config file (TOML, or YAML when PyYAML is
installed, or JSON), then overrides. Overrides are typed by the dataclass field, so a typo or a
bad value fails at start-up with a message naming the key and the valid choices, instead of an
hour into a cluster job. The command line (:mod:`sea_dist.config_cli`) is a thin layer over
this; the launcher and the Ray workers use it to rebuild a config from its dict.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import typing
from typing import Any, Iterable, Mapping

from sea_dist.config.checks import ConfigError
from sea_dist.config.sections import Config

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 (pyproject pins tomli there)
    import tomli as _toml  # type: ignore[no-redef]

__all__ = [
    "iter_options",
    "config_to_dict",
    "type_name",
    "parse_value",
    "apply_overrides",
    "load_config_file",
]

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


# --------------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved field types of a dataclass (the sections use postponed annotations)."""
    return typing.get_type_hints(cls)


def _sections(cfg_or_cls: Any = Config) -> dict[str, type]:
    """``{section name: section dataclass}`` of the top-level config."""
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    hints = _field_types(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def iter_options(cfg: Config | None = None) -> Iterable[tuple[str, type, Any, str]]:
    """Yield ``(dotted key, type, current value, help)`` for every option, in declaration order.

    With ``cfg=None`` the values are the defaults. Used by ``--help`` and by tests that check
    every field is documented.
    """
    cfg = cfg if cfg is not None else Config()
    for section_name, section_cls in _sections(cfg).items():
        section = getattr(cfg, section_name)
        hints = _field_types(section_cls)
        for f in dataclasses.fields(section_cls):
            yield (
                f"{section_name}.{f.name}",
                hints[f.name],
                getattr(section, f.name),
                f.metadata.get("help", ""),
            )


def config_to_dict(cfg: Config) -> dict:
    """Nested plain dict (JSON/TOML-serialisable) of ``cfg``, e.g. for ``summary.json``."""
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------------
# Value parsing
# --------------------------------------------------------------------------------------------
def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _parse_scalar(text: str) -> Any:
    """A list element from a string: int if it parses, else float, else the stripped string."""
    text = text.strip()
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _bad(key: str, value: Any, tp: Any, why: str = "") -> ConfigError:
    extra = f" ({why})" if why else ""
    return ConfigError(
        f"invalid value {value!r} for {key}: expected {type_name(tp)}{extra}"
    )


def _number(key: str, value: Any, tp: type) -> int | float:
    """An int or float field from a number or a string; never from a bool (``true`` is not one
    epoch), and an int field takes a float only when it is whole (``3.0`` from YAML)."""
    if isinstance(value, bool):
        raise _bad(key, value, tp)
    if isinstance(value, int) or (tp is float and isinstance(value, float)):
        return tp(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return tp(value.strip())
        except ValueError:
            pass
    raise _bad(key, value, tp)


def parse_value(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a typed value from a file) to
    the field type ``tp``; raises :class:`ConfigError` naming key, value and expected type.

    Strings are accepted for every type because command-line overrides are always strings.
    """
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(key, value, tp, "true/false, yes/no or 1/0")
    if tp in (int, float):
        return _number(key, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        # YAML/TOML turn e.g. run_name: 42 into a number; the user meant the text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(key, value, tp)
    if tp is list or typing.get_origin(tp) is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise _bad(key, value, tp, f"invalid JSON list: {exc.msg}") from None
                if not isinstance(parsed, list):
                    raise _bad(key, value, tp)
                return parsed
            return [_parse_scalar(part) for part in text.split(",")]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]  # a single cut-off, e.g. eval.topk=20 from a file
        raise _bad(key, value, tp, "a JSON list or comma-separated values")
    raise ConfigError(f"{key}: unsupported field type {type_name(tp)}")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------
def _flatten(overrides: Mapping[str, Any] | Iterable[str]) -> list[tuple[str, Any]]:
    """Normalise every accepted override shape to ``[(dotted key, value), ...]``."""
    if isinstance(overrides, Mapping):
        items: list[tuple[str, Any]] = []
        for key, value in overrides.items():
            if isinstance(value, Mapping):
                for sub_key, sub_value in _flatten(value):
                    items.append((f"{key}.{sub_key}", sub_value))
            else:
                items.append((str(key), value))
        return items
    if isinstance(overrides, str):
        overrides = [overrides]
    items = []
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"override {text!r} is not of the form section.key=value")
        key, value = text.split("=", 1)
        items.append((key.strip(), value))
    return items


def apply_overrides(cfg: Config, overrides: Mapping[str, Any] | Iterable[str]) -> Config:
    """Return a copy of ``cfg`` with ``overrides`` applied (``cfg`` itself is not modified).

    ``overrides`` is a dict (nested ``{"model": {"knn_k": 20}}`` as read from a file, or flat
    ``{"model.knn_k": "20"}``) or a list of ``"section.key=value"`` strings. Dashes in key
    names are accepted for underscores (``train.batch-size``), as on most command lines.
    """
    new = copy.deepcopy(cfg)
    sections = _sections(new)
    for key, value in _flatten(overrides):
        parts = key.split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"unknown key {key!r}: keys are section.key with section one of "
                f"{', '.join(sections)}"
            )
        section_name, field_name = (p.replace("-", "_") for p in parts)
        if section_name not in sections:
            raise ConfigError(
                f"unknown section {parts[0]!r} in key {key!r}; valid sections: "
                f"{', '.join(sections)}"
            )
        section_cls = sections[section_name]
        hints = _field_types(section_cls)
        if field_name not in hints:
            valid = ", ".join(f.name for f in dataclasses.fields(section_cls))
            raise ConfigError(
                f"unknown key {key!r}; valid keys of section {section_name!r}: {valid}"
            )
        setattr(
            getattr(new, section_name),
            field_name,
            parse_value(f"{section_name}.{field_name}", value, hints[field_name]),
        )
    return new


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def load_config_file(path: str) -> dict:
    """Read a config file into a (nested) dict for :func:`apply_overrides`.

    ``.toml`` uses the standard library; ``.yaml``/``.yml`` need PyYAML (an optional
    dependency, so TOML is the documented format); ``.json`` is accepted too.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ModuleNotFoundError:
                raise ConfigError(
                    f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML"
                ) from None
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
            data = {} if data is None else data
        elif ext == ".json":
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        elif ext == ".toml":
            with open(path, "rb") as fh:
                data = _toml.load(fh)
        else:
            raise ConfigError(
                f"{path}: unknown config format {ext or '(no extension)'}; "
                "use .toml, .yaml/.yml or .json"
            )
    except ConfigError:
        raise
    except Exception as exc:  # parse errors from any of the three parsers
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table/mapping of sections")
    return data
