"""Spending caps for hosted models, as `budgets:` in models.yaml writes them (US dollars, each
optional): what one job may cost, what a session may spend, what a day may spend across the
sessions of one folder. Enforced where jobs are queued (diffdeck.engines.service.recorded_queue).
Pure data.

    budgets:
      job_usd: 0.50
      session_usd: 5
      day_usd: 20
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from diffdeck.engines.core.validation import SpecError, check, is_cost


@dataclass(frozen=True)
class Budgets:
    job_usd: float | None = None  # one job (each job of a set)
    session_usd: float | None = None  # a session: recorded, queued and running together
    day_usd: float | None = None  # the local day, across the sessions in one folder (its spend ledger)

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    @classmethod
    def from_entry(cls, data: Any) -> "Budgets":
        """`budgets:` as read from YAML; SpecError naming the key that is wrong."""
        if data is None:
            return cls()
        keys = [f.name for f in fields(cls)]
        check(isinstance(data, dict), "budgets", f"expected a mapping of {', '.join(keys)} (US dollars)")
        unknown = sorted(map(str, set(data) - set(keys)))
        check(not unknown, f"budgets.{unknown[0] if unknown else ''}", f"is not a budget; budgets are {', '.join(keys)}")
        for key, value in data.items():
            check(value is None or is_cost(value), f"budgets.{key}",
                  f"must be a number of US dollars, 0 or more, got {value!r}")
        return cls(**{key: None if value is None else float(value) for key, value in data.items()})


def usd(amount: float) -> str:
    """US dollars as a price list writes them: $0.16, $0.039, $12.00 (to a hundredth of a cent)."""
    whole, _, cents = f"{amount:.4f}".rstrip("0").partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"


class BudgetError(SpecError):
    """A job or set that would take the spend past a budget, refused before anything is sent;
    the message names the estimate and the budget."""

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        self.field, self.message = "budget", message
