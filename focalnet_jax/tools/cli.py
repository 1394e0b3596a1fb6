"""The command-line convention every tool shares: `--override KEY=VALUE` for FocalNet fields.

VALUE is read as JSON (`true`, `4`, `1e-4`, `[2,2,6,2]`); text that is not JSON, such as
`bfloat16` or `add`, is taken as a string. The value is then checked against the type of the
FocalNet field it sets, so `use_gating=false` is the bool False and `use_gating=maybe`,
`depths=3x` or a misspelt field is an error that names the field, the value and what the
field accepts, never a string that Python would read as truthy.
"""
from __future__ import annotations

import argparse
import difflib
import json
from typing import Any, Callable, Iterable

# Fields that are model plumbing, not architecture; `execution` says how the model runs, which
# neither a summary nor a conversion depends on.
_NOT_FIELDS = ("parent", "name", "execution")


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not the int 1


def _is_ints(v: Any) -> bool:
  return isinstance(v, list) and bool(v) and all(map(_is_int, v))


def _is_dtype_name(v: Any) -> bool:
  if not isinstance(v, str):
    return False
  import jax.numpy as jnp

  try:
    jnp.dtype(v)
  except TypeError:
    return False
  return True


# FocalNet's annotations (strings under `from __future__ import annotations`) -> (check, what
# the field accepts). A field whose annotation is missing here is reported, not passed through.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (_is_int, "an int"),
    "float": (lambda v: _is_int(v) or isinstance(v, float), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "Sequence[int]": (_is_ints, "a list of ints such as [2,2,6,2]"),
    "IntOrSeq": (lambda v: _is_int(v) or _is_ints(v), "an int, or a list of ints (one per stage)"),
    "Dtype": (_is_dtype_name, "a dtype name such as float32 or bfloat16"),
    "Dtype | None": (lambda v: v is None or _is_dtype_name(v), "a dtype name such as bfloat16, or null"),
}


def focalnet_fields() -> dict[str, str]:
  """{field: annotation} of every FocalNet field an override may set."""
  from focalnet_jax.model import FocalNet

  fields = FocalNet.__dataclass_fields__
  return {k: str(f.type) for k, f in fields.items() if k not in _NOT_FIELDS}


def _json_or_text(raw: str) -> Any:
  try:
    return json.loads(raw)
  except json.JSONDecodeError:
    return raw  # a bare word: bfloat16, add, xla


def check_override(key: str, value: Any) -> Any:
  """`value` for FocalNet field `key` (floats are made float); raises ValueError otherwise."""
  from focalnet_jax.model.execution import LEGACY_NAMES

  fields = focalnet_fields()
  if key in LEGACY_NAMES:
    raise ValueError(f"{key} is an execution switch (now execution.{LEGACY_NAMES[key]}), not part of the model: "
                     "parameters, GFLOPs and converted weights do not depend on it (docs/execution.md).")
  if key not in fields:
    close = difflib.get_close_matches(key, fields, n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"Unknown FocalNet field {key!r}.{hint} Valid fields: {', '.join(fields)}.")
  annotation = fields[key]
  if annotation not in _CHECKS:  # a new field type: extend _CHECKS rather than guess
    raise ValueError(f"--override cannot set {key} (type {annotation}) from the command line.")
  accepts, expected = _CHECKS[annotation]
  if not accepts(value):
    got = f"the string {value!r}" if isinstance(value, str) else f"{type(value).__name__} {json.dumps(value)}"
    hint = " Lists are written in JSON: [2,2,6,2]." if isinstance(value, str) and value[:1] == "(" else ""
    raise ValueError(f"{key} takes {expected}, got {got}.{hint}")
  return float(value) if annotation == "float" else value


def parse_override(text: str) -> tuple[str, Any]:
  """`'KEY=VALUE'` -> (key, checked value); the `type` of every tool's `--override`."""
  key, sep, raw = text.partition("=")
  key = key.strip()
  if not sep or not key:
    raise argparse.ArgumentTypeError(f"--override expects KEY=VALUE, got {text!r}.")
  try:
    return key, check_override(key, _json_or_text(raw.strip()))
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from e


def add_override_argument(parser: argparse.ArgumentParser) -> None:
  """Adds the repeatable `--override KEY=VALUE` option (collected with `overrides`)."""
  parser.add_argument(
      "--override", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
      help="set a FocalNet field; VALUE is JSON (true, 4, 1e-4, [2,2,6,2]) or a bare word "
      "(bfloat16, add), checked against the field's type; repeatable",
  )


def overrides(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
  """The parsed `--override` pairs as FocalNet kwargs; a repeated key keeps its last value."""
  return dict(pairs)
