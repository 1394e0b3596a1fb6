"""Implementations of one op, registered by name (the depthwise conv, the focal context)."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

Fn = TypeVar("Fn", bound=Callable)


class Registry(Generic[Fn]):
  """name -> implementation; `field` is the model field that selects one (named in errors)."""

  def __init__(self, field: str):
    self.field = field
    self._impls: dict[str, Fn] = {}

  def register(self, name: str) -> Callable[[Fn], Fn]:
    """Decorator: registers the function under `name`."""
    def wrap(fn: Fn) -> Fn:
      self._impls[name] = fn
      return fn
    return wrap

  def names(self) -> tuple[str, ...]:
    return tuple(self._impls)

  def check(self, name: str, choices: tuple[str, ...] | None = None) -> str:
    """`name` if it is registered; else a ValueError naming the field and `choices`."""
    if name not in self._impls:
      raise ValueError(f"{self.field}={name!r} is not one of {choices or self.names()}.")
    return name

  def __getitem__(self, name: str) -> Fn:
    return self._impls[name]
