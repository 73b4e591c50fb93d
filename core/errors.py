"""Errors that mean "the input is wrong", as opposed to bugs.

The `pipeline` command prints a `UserError` as one line naming the bad value and
what was expected, and exits with status 2; anything else is a bug and keeps its traceback.
The checks every stage makes of its count and number flags are here too, so each says the
same thing the same way.
"""
from __future__ import annotations

import math


class UserError(Exception):
    """Bad input (a path, a value, a file's content): say which and what was expected."""


def check_count(flag: str, value: int | None, minimum: int = 1) -> int | None:
    """`value` unless it is an integer below `minimum` (None, "not given", passes)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{flag} {value!r}: expected an integer >= {minimum}")
    return value


def check_number(flag: str, value: float | None, minimum: float = 0.0, inclusive: bool = False,
                 unit: str = "") -> float | None:
    """`value` unless it is not a finite number above `minimum` (at least, with `inclusive`)."""
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise UserError(f"{flag} {value!r}: expected a finite number {bound}{' ' + unit if unit else ''}")
    return value
