"""One registry style for everything chosen by name: models, scores, controllers, methods,
datasets.

``Registry`` is a read-only mapping from names to items, in registration order, filled with
``register(name, item)`` or ``@register(name)``; ``get(name)`` raises the registry's error type
naming the known names. Choice lists (the configuration's rules, help texts) come from
``names()``. No JAX here: the configuration's rules import registries before JAX starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")
_MISSING = object()


class Registry(Mapping[str, T], Generic[T]):
  """``kind`` names what is registered (in messages); ``error`` is raised for unknown names."""

  def __init__(self, kind: str, error: type[Exception] = ValueError):
    self.kind = kind
    self.error = error
    self._items: dict[str, T] = {}

  def register(self, name: str, item=_MISSING):
    """``register(name, item)`` adds ``item``; ``@register(name)`` adds the decorated object.
    A name registered twice is a programming error (ValueError)."""
    if item is _MISSING:

      def deco(obj: T) -> T:
        self.register(name, obj)
        return obj

      return deco
    if name in self._items:
      raise ValueError(f"{self.kind} {name!r} is registered twice")
    self._items[name] = item
    return item

  def get(self, name: str, default=_MISSING) -> T:  # type: ignore[override]
    """The item registered as ``name``; unknown names raise ``error`` listing the known ones
    (or return ``default`` when one is given)."""
    try:
      return self._items[name]
    except (KeyError, TypeError):
      if default is not _MISSING:
        return default
      raise self.error(
        f"Unknown {self.kind} {name!r}. Known {self.kind}s: {', '.join(self._items)}."
      ) from None

  def names(self) -> tuple[str, ...]:
    return tuple(self._items)

  def __getitem__(self, name: str) -> T:
    return self._items[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)

  def __len__(self) -> int:
    return len(self._items)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}: {', '.join(self._items)})"


def of(kind: str, items: Mapping[str, T], error: type[Exception] = ValueError) -> Registry[T]:
  """A registry filled from ``items`` (in their order)."""
  reg: Registry[T] = Registry(kind, error)
  for name, item in items.items():
    reg.register(name, item)
  return reg


Factory = Callable[..., object]
