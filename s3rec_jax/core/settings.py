"""Plug-in settings: each plug-in declares one typed record of its settings, with defaults.

An objective, a view builder or an encoder declares its record once, where it is defined:

  @settings.declare("cl4srec")
  class CL4SRecSettings:
    temperature: float = settings.positive(1.0)
    similarity: str = settings.one_of("dot", ("dot", "cosine"))

`config.settings.<name>` holds the values (configs/default.py fills it from the declared
defaults, so `--config.settings.cl4srec.temperature=0.5` overrides one); `bind_all` checks them
against the records at start-up (a misspelt plug-in or field is one error naming the close
match) and the plug-in reads its record bound: `options.settings_of("cl4srec").temperature`.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Mapping

from s3rec_jax.core import errors

_DECLARED: dict[str, type] = {}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


class SettingsError(errors.UserError):
  pass


def _constrained(default: Any, check: Callable[[Any], str | None]) -> Any:
  return dataclasses.field(default=default, metadata={"check": check})


def one_of(default: str, choices: tuple[str, ...]) -> Any:
  """A field whose value is one of `choices`."""
  return _constrained(default, lambda v: None if v in choices else
                      "expected " + " or ".join(repr(c) for c in choices))


def positive(default: float) -> Any:
  """A number > 0."""
  return _constrained(default, lambda v: None if v > 0 else "expected a value > 0")


def probability(default: float) -> Any:
  """A number in [0, 1]."""
  return _constrained(default, lambda v: None if 0 <= v <= 1 else "expected a value in [0, 1]")


def declare(name: str) -> Callable[[type], type]:
  """Class decorator: the settings record of plug-in `name` (made a frozen dataclass)."""

  def wrap(cls: type) -> type:
    record = dataclasses.dataclass(frozen=True)(cls)
    for f in dataclasses.fields(record):
      if f.type not in _TYPES:
        raise TypeError(f"settings {name}.{f.name}: type {f.type!r} is not one of "
                        f"{', '.join(_TYPES)}")
      if f.default is dataclasses.MISSING:
        raise TypeError(f"settings {name}.{f.name} has no default")
    if name in _DECLARED and _DECLARED[name].__qualname__ != record.__qualname__:
      raise ValueError(f"settings of plug-in {name!r} are declared twice")
    _DECLARED[name] = record
    return record

  return wrap


def declared() -> Mapping[str, type]:
  """Plug-in name -> its settings record, for every plug-in imported so far."""
  return dict(_DECLARED)


def defaults() -> dict[str, dict[str, Any]]:
  """Every declared plug-in's settings at their defaults (what configs/default.py holds)."""
  return {name: dataclasses.asdict(record()) for name, record in sorted(_DECLARED.items())}


def default_of(name: str) -> Any:
  """Plug-in `name`'s record at its defaults."""
  return _record(name)()


def _close(word: str, choices) -> str:
  match = difflib.get_close_matches(word, list(choices), n=1)
  return f"; did you mean {match[0]!r}?" if match else ""


def _record(name: str) -> type:
  if name not in _DECLARED:
    raise SettingsError(f"config.settings.{name}: no plug-in declares settings called {name!r}"
                        f"{_close(name, _DECLARED)} (declared: {', '.join(sorted(_DECLARED))})")
  return _DECLARED[name]


def _coerce(name: str, field: dataclasses.Field, value: Any) -> Any:
  wanted = _TYPES[field.type]
  where = f"config.settings.{name}.{field.name}={value!r}"
  if wanted is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if wanted is int and isinstance(value, float) and value.is_integer():
    value = int(value)
  if not isinstance(value, wanted) or (wanted is not bool and isinstance(value, bool)):
    raise SettingsError(f"{where}: expected a {field.type}")
  check = field.metadata.get("check")
  problem = check(value) if check else None
  if problem:
    raise SettingsError(f"{where}: {problem}")
  return value


def bind(name: str, values: Mapping[str, Any]) -> Any:
  """Plug-in `name`'s record from `values` (missing fields at their defaults), checked."""
  record = _record(name)
  fields = {f.name: f for f in dataclasses.fields(record)}
  for key in values:
    if key not in fields:
      raise SettingsError(f"config.settings.{name}.{key}: {name} has no setting {key!r}"
                          f"{_close(key, fields)} (its settings: {', '.join(fields)})")
  return record(**{key: _coerce(name, fields[key], value) for key, value in values.items()})


def bind_all(values: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[str, Any], ...]:
  """((name, record), ...) for every declared plug-in, from config.settings (name -> fields);
  hashable, so it can ride in a jitted step's static options."""
  for name in values:
    _record(name)
  return tuple((name, bind(name, dict(values.get(name) or {})))
               for name in sorted(_DECLARED))


def find(bound: tuple[tuple[str, Any], ...], name: str) -> Any:
  """The record of `name` in a bind_all result (its defaults when absent)."""
  for key, record in bound:
    if key == name:
      return record
  return default_of(name)
