"""Temporary, reference-counted changes to a caller's models, undone when the last user is done.

A criterion changes the models it is given in two ways while it distils: a model running SDPA is switched
to eager attention (so that attention maps exist) and the dropout acting on mapped student attention maps
is set to 0. Several criteria may hold such a change on the same model at once (e.g. a stage's criterion
and a search's host criterion); the original value comes back only when the last of them releases it, so
that releasing one criterion never breaks another that is still attached.

Holds are kept in a :class:`weakref.WeakKeyDictionary` keyed by the changed object itself (never by
``id()``), so a model that is garbage-collected takes its holds with it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

Getter = Callable[[Any], Any]
Setter = Callable[[Any, Any], None]


@dataclass
class _Hold:
    original: Any
    count: int
    setter: Setter


_HOLDS: "weakref.WeakKeyDictionary[Any, dict[str, _Hold]]" = weakref.WeakKeyDictionary()


def is_held(obj: Any, name: str) -> bool:
    """Whether some user currently holds an override of `name` on `obj`."""
    return name in _HOLDS.get(obj, {})


def hold(obj: Any, name: str, value: Any, getter: Getter, setter: Setter) -> bool:
    """Set `name` of `obj` to `value` (through `setter`) and take one hold on that change.

    When the override is already held by another user, only the count grows. When `obj` already has
    `value` and nobody holds it, nothing changes and no hold is taken (returns False); otherwise returns
    True, and the caller must call :func:`release` once.
    """
    holds = _HOLDS.get(obj)
    if holds is not None and name in holds:
        holds[name].count += 1
        return True
    original = getter(obj)
    if original == value:
        return False
    setter(obj, value)
    _HOLDS.setdefault(obj, {})[name] = _Hold(original=original, count=1, setter=setter)
    return True


def join(obj: Any, name: str) -> bool:
    """Take one more hold on an override someone else made (returns False when there is none)."""
    holds = _HOLDS.get(obj)
    if holds is None or name not in holds:
        return False
    holds[name].count += 1
    return True


def release(obj: Any, name: str) -> None:
    """Give back one hold; the last one restores the original value."""
    holds = _HOLDS.get(obj)
    if holds is None or name not in holds:
        return
    entry = holds[name]
    entry.count -= 1
    if entry.count > 0:
        return
    del holds[name]
    if not holds:
        del _HOLDS[obj]
    entry.setter(obj, entry.original)


def get_attn_implementation(model: Any) -> Any:
    """The attention implementation a Transformers model runs (None for other models)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def set_attn_implementation(model: Any, value: Any) -> None:
    """Switch a Transformers model's attention implementation (``"eager"``, ``"sdpa"``, ...)."""
    model.set_attn_implementation(value)


def get_attribute(name: str) -> Getter:
    """A getter of attribute `name`."""
    return lambda obj: getattr(obj, name)


def set_attribute(name: str) -> Setter:
    """A setter of attribute `name`."""
    return lambda obj, value: setattr(obj, name, value)
