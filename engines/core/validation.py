"""What every description of a job checks its fields with: the error that names a field, and the
tests of a value's type. Pure data."""

from __future__ import annotations

import math
from typing import Any

MAX_STEPS = 1000


class SpecError(ValueError):
    """A value in a job or model description is invalid. ``field`` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A real, finite number: not a bool, not NaN or infinite, not an int too large for a float."""
    if not is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_cost(value: Any) -> bool:
    """A number of US dollars, 0 or more; None (a price not known) is not one."""
    return is_finite_number(value) and value >= 0


def check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise SpecError(field_name, message)
