"""How the network runs, as one value: `Execution` (docs/execution.md).

Every field is a switch between implementations that give the same parameters and the same
values (up to float rounding): which depthwise conv, which focal context, what a training step
keeps for the backward pass, the layout of `f`'s matmul, and how inference chunks the batch.
The model modules take one `execution` field and pass it down; configs (`config.execution`),
the benchmark's flags and the AOT tool's variants are derived from the fields below, so a new
switch is one field here and the line that uses it.

A switch is checked and 'auto' made concrete once, by `Execution.resolve()`, when the model is
built: a built model names what it runs.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Mapping

from focalnet_jax.kernels import aligned_projection, chunking, depthwise
from focalnet_jax.kernels import remat as remat_lib
from focalnet_jax.model import focal_context


def _valid(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """A resolver that keeps the value once `check` (which raises on a bad one) accepts it."""
  return lambda value: (check(value), value)[1]


def _switch(default: Any, help: str, takes: str, resolve: Callable[[Any], Any]) -> Any:  # noqa: A002
  return dataclasses.field(default=default, metadata={"help": help, "takes": takes, "resolve": resolve})


@dataclasses.dataclass(frozen=True)
class Execution:
  """The execution switches of a FocalNet; frozen and hashable (a static part of the module)."""

  depthwise: str = _switch(
      "auto", "the depthwise conv of every focal level (focalnet_jax.kernels.depthwise); 'auto': 'native' or "
      "'shift' on CPU, 'xla' on accelerators", f"one of {depthwise.available()}", depthwise.resolve)
  focal_context: str = _switch(
      "reference", "how Z^out (levels, global context, gated sum) is computed (focalnet_jax.model.focal_context)",
      f"one of {focal_context.available()}", focal_context.check)
  remat: str = _switch(
      "none", "what each block keeps for the backward pass (focalnet_jax.kernels.remat)",
      f"one of {tuple(remat_lib.POLICIES)} (or True / False: 'block' / 'none')", remat_lib.resolve)
  f_align: int = _switch(
      1, "the channel multiple at which f's matmul writes q, f_z and the gates "
      "(focalnet_jax.kernels.aligned_projection; 1: the plain layout)", "an int >= 1", aligned_projection.check_align)
  chunk_elements: int | str = _switch(
      "auto", "inference runs each stage over batch chunks of at most this many activation elements "
      "(focalnet_jax.kernels.chunking); 'auto': cache-sized on CPU, whole batches on accelerators; 0: off",
      "'auto', 0 or a positive int", _valid(lambda v: chunking.resolve_chunk_elements(v, train=False)))

  def resolve(self) -> Execution:
    """The same switches checked, with 'auto' and the remat aliases made concrete; a ValueError
    names the field, its value and the values it takes."""
    return Execution(**{name: resolve_field(name, getattr(self, name)) for name in field_names()})

  @classmethod
  def reference(cls) -> Execution:
    """The plain way every backend runs: 'xla' depthwise convs, the reference focal context, no
    remat, `f` in its own layout, whole batches."""
    return cls(depthwise="xla", focal_context="reference", remat="none", f_align=1, chunk_elements=0)

  def describe(self) -> list[str]:
    """The switches a benchmark row names: the depthwise conv, then each model switch that differs
    from `reference()` (chunking is named by the caller, which knows the chunk sizes)."""
    plain = Execution.reference()
    return [self.depthwise] + [f"{name} {getattr(self, name)}" for name in field_names()
                               if name not in ("depthwise", "chunk_elements")
                               and getattr(self, name) != getattr(plain, name)]


def field_names() -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(Execution))


def field_help(name: str) -> str:
  """What switch `name` chooses and the values it takes (for flags and docs)."""
  meta = _field(name).metadata
  return f"{meta['help']}; {meta['takes']}"


def _field(name: str) -> dataclasses.Field:
  fields = {f.name: f for f in dataclasses.fields(Execution)}
  if name not in fields:
    raise ValueError(f"{name!r} is not an execution switch; the switches are {', '.join(fields)}.")
  return fields[name]


def resolve_field(name: str, value: Any) -> Any:
  """`value` of switch `name`, checked and made concrete; a ValueError says what it takes."""
  meta = _field(name).metadata
  try:
    return meta["resolve"](value)
  except (ValueError, TypeError):
    raise ValueError(f"execution.{name}={value!r} must be {meta['takes']} ({meta['help']}).") from None


def problem(name: str, value: Any) -> str | None:
  """None if `value` is valid for switch `name`, else what it must be (a config check's rule)."""
  try:
    resolve_field(name, value)
  except ValueError:
    return _field(name).metadata["takes"]
  return None


def from_mapping(values: Mapping[str, Any]) -> Execution:
  """An Execution from a mapping of switch names (a config's `execution`, JSON); unknown names are
  an error that lists the switches."""
  for name in values:
    _field(name)
  return Execution(**dict(values))


def parse_text(text: str) -> int | str:
  """A switch's value given as text (a flag, an AOT variant): ints as ints ('8', '0'), else the text."""
  stripped = text.strip()
  return int(stripped) if stripped.lstrip("-").isdigit() else stripped


# --- the switches' former names (FocalNet fields and config.model keys before Execution) ----------

# Deprecated for one release: old name -> Execution field.
LEGACY_NAMES = {"depthwise_impl": "depthwise", "focal_context_impl": "focal_context", "remat": "remat",
                "f_align": "f_align", "chunk_elements": "chunk_elements"}


def take(kwargs: dict[str, Any], caller: str, stacklevel: int = 3) -> Execution:
  """The Execution that model kwargs describe, removed from `kwargs`: `execution` (an Execution or
  a dict of its fields, default `Execution()`) with any legacy switch (`depthwise_impl=...`) found
  in `kwargs` applied, each with a FutureWarning naming the new spelling, reported `stacklevel`
  as `warnings.warn` counts it from here (3: the caller of the function that called `take`)."""
  execution = kwargs.pop("execution", None)
  execution = Execution() if execution is None else execution
  if isinstance(execution, Mapping):  # a config's `execution`, or JSON
    execution = from_mapping(execution)
  return pop_legacy(kwargs, execution, lambda old, new, value: (
      f"{caller}(..., {old}={value!r}) is deprecated and will be removed in the next release; pass "
      f"execution=Execution({new}={value!r}) instead (focalnet_jax.model.Execution, docs/execution.md)."),
      stacklevel + 1)


def pop_legacy(values: dict[str, Any], execution: Execution, message: Callable[[str, str, Any], str],
               stacklevel: int = 3) -> Execution:
  """`execution` with the legacy switches found (and removed) in `values` applied, each with a
  FutureWarning `message(old name, field, value)`."""
  changes = {}
  for old, new in LEGACY_NAMES.items():
    if old in values:
      value = values.pop(old)
      warnings.warn(message(old, new, value), FutureWarning, stacklevel=stacklevel)
      changes[new] = value
  return dataclasses.replace(execution, **changes) if changes else execution
