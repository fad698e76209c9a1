"""Number predicates and option checks shared by ``app.optim`` and its policies (plain Python, no torch).

Every check raises ``TypeError``/``ValueError`` with a message that names the value and shows a valid one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = ["is_int", "is_float", "is_number", "round_half_up", "check_real", "check_choice", "check_bool"]


def is_int(x: object) -> bool:
    """An integral number that is not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_float(x: object) -> bool:
    """A real number that is neither a bool nor integral."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, numbers.Integral))


def is_number(x: object) -> bool:
    """A real number (int or float) that is not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)``: the rounding every rank and gap rule of the project uses."""
    return int(math.floor(x + 0.5))


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid; choose one of {', '.join(map(repr, choices))}")


def check_real(name: str, value: object, lo: float, example: str, *, strict: bool = False) -> None:
    """``value`` is a finite number ``>= lo`` (``> lo`` with ``strict``)."""
    if not is_number(value):
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; use a float, e.g. {name}={example}")
    if not (math.isfinite(value) and (value > lo if strict else value >= lo)):
        raise ValueError(
            f"{name}={value!r} is invalid: use a finite float {'>' if strict else '>='} {lo:g}, e.g. {name}={example}"
        )


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be a bool (True or False), got {type(value).__name__}")
