"""The value checks every config dataclass repeats, in one place: each raises :class:`ConfigError` naming the field.

All checks refuse booleans where a number is expected (``True`` is an ``int`` in Python) and non-finite floats
(``.inf``, ``.nan``): no config field means anything with them. Values quoted in messages are shortened by
:func:`shown` so that a huge value (a YAML alias bomb, a pasted list) never floods the terminal.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

from ..errors import ConfigError, did_you_mean

#: Longest quoted value in an error message.
MAX_SHOWN_CHARS = 80
#: Seeds go to ``numpy.random.seed`` (``[0, 2**32 - 1]``) as well as to torch and Optuna.
MAX_SEED = 2**32 - 1


def shown(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr(value)`` cut to `limit` characters (``...`` marks the cut)."""
    text = reprlib_safe(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reprlib_safe(value: Any) -> str:
    """``repr`` of containers built lazily enough that a huge value is not formatted whole."""
    short = reprlib.Repr()
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 8
    short.maxstring = short.maxother = MAX_SHOWN_CHARS
    short.maxlevel = 3
    return short.repr(value)


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int or a finite float, not a bool."""
    return is_number(value) and (not isinstance(value, float) or math.isfinite(value))


def finite_number(value: Any, key: str, *, minimum: float | None = None, maximum: float | None = None,
                  exclusive_minimum: bool = False, optional: bool = False, hint: str = "") -> Any:
    """A finite number within ``[minimum, maximum]`` (``(minimum, ...`` with `exclusive_minimum`); `value` back."""
    if value is None and optional:
        return value
    ok = is_finite_number(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        if minimum == 0 and maximum is None:
            what = "a positive" if exclusive_minimum else "a non-negative"
            what += " finite number"
        else:
            low = "-inf" if minimum is None else f"{minimum:g}"
            high = "inf" if maximum is None else f"{maximum:g}"
            what = f"a finite number in {'(' if exclusive_minimum else '['}{low}, {high}]"
        raise ConfigError(f"{key} must be {what}{' or null' if optional else ''}{hint}, got {shown(value)}.")
    return value


def positive_number(value: Any, key: str, *, optional: bool = False, hint: str = "") -> Any:
    """A finite number > 0."""
    return finite_number(value, key, minimum=0, exclusive_minimum=True, optional=optional, hint=hint)


def non_negative_number(value: Any, key: str, *, optional: bool = False, hint: str = "") -> Any:
    """A finite number >= 0."""
    return finite_number(value, key, minimum=0, optional=optional, hint=hint)


def probability(value: Any, key: str, *, optional: bool = False, hint: str = "") -> Any:
    """A number in [0, 1]."""
    return finite_number(value, key, minimum=0, maximum=1, optional=optional, hint=hint)


def integer(value: Any, key: str, *, minimum: int | None = None, maximum: int | None = None,
            optional: bool = False, what: str = "integer", hint: str = "") -> Any:
    """An int (not a bool) in ``[minimum, maximum]``; `value` back."""
    if value is None and optional:
        return value
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        at_most = "" if maximum is None else f" of at most {maximum}"
        if minimum == 1:
            bound = f"a positive {what}{at_most}"
        elif minimum == 0:
            bound = f"a non-negative {what}{at_most}"
        elif maximum is None:
            bound = f"an {what} >= {minimum}"
        else:
            bound = f"an {what} in [{'-inf' if minimum is None else minimum}, {maximum}]"
        raise ConfigError(f"{key} must be {bound}{' or null' if optional else ''}{hint}, got {shown(value)}.")
    return value


def positive_int(value: Any, key: str, *, maximum: int | None = None, optional: bool = False,
                 what: str = "integer", hint: str = "") -> Any:
    """An int >= 1 (and <= `maximum`)."""
    return integer(value, key, minimum=1, maximum=maximum, optional=optional, what=what, hint=hint)


def seed(value: Any, key: str) -> int:
    """A seed numpy, torch and Optuna all accept: an int in ``[0, 2**32 - 1]``."""
    return integer(value, key, minimum=0, maximum=MAX_SEED, what="integer seed")


def boolean(value: Any, key: str, hint: str = "") -> bool:
    """``true`` or ``false`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false{hint}, got {shown(value)}.")
    return value


def non_empty_str(value: Any, key: str, *, optional: bool = False) -> Any:
    """A non-empty string (or None when `optional`)."""
    if value is None and optional:
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string{' or null' if optional else ''}, got {shown(value)}.")
    return value


def non_finite_path(value: Any, path: str = "", _depth: int = 0) -> str | None:
    """The dotted path of the first ``inf``/``nan`` float inside plain data (mappings, lists), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if _depth > 64:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f"{path}.{key}" if path else str(key), _depth + 1)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = non_finite_path(item, f"{path}[{i}]", _depth + 1)
            if found is not None:
                return found
    return None


def section(cls: Any, value: Any, key: str, example: str) -> Any:
    """A nested dataclass section from the recipe: ``None``, an instance of ``cls``, or a mapping of its fields.

    Raises:
        ConfigError: ``value`` is not a mapping (the message shows ``example``, e.g. ``{min_fraction: 0.111}``), or
            it has a key that is not a field of ``cls`` (named as ``<key>.<name>``, with the closest field).
    """
    import dataclasses
    from collections.abc import Mapping

    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"'{key}' must be a mapping {example} or null, got {shown(value)}.")
    names = [f.name for f in dataclasses.fields(cls)]
    for name in value:
        if name not in names:
            raise ConfigError(f"Unknown key '{key}.{name}'." + did_you_mean(str(name), names))
    return cls(**dict(value))

