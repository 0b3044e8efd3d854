"""A queue's spending: the budgets of models.yaml kept before anything is sent, and each hosted
image's cost written to the user's spend ledger (diffdeck.engines.record.spend) as the image is
recorded, so that a day's spend counts every session, wherever its folder.

A job or set is refused (BudgetError, naming the estimate and the budget) when a job of it is
over `job_usd`, or when it would take the session's spend (every image paid for, plus the
estimates of its queued and running jobs' images still to make) past `session_usd`, or the day's
(the ledger's, plus the same estimates) past `day_usd`. Local models cost nothing and are never
refused. A recorded queue and a replay keep them alike.

UI side: never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from diffdeck.engines.core.budgets import BudgetError, usd
from diffdeck.engines.core.events import UNFINISHED, Event, EventKind
from diffdeck.engines.core.registry import Registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.validation import is_cost
from diffdeck.engines.hosted.estimate import Estimate, job_estimate
from diffdeck.engines.queue.dispatcher import Job
from diffdeck.engines.record.session import Session
from diffdeck.engines.record.spend import DayTally, Spend, ledger_path, record_spend, session_spent, today

log = logging.getLogger("diffdeck.costs")


class Costs:
    def __init__(self, registry: Registry, session: Session):
        self.registry, self.session = registry, session
        self.ledger = ledger_path()
        self._tally = DayTally(self.ledger)  # the day budget is checked at each submit: the ledger read as it grows
        self.unwritten: list[Spend] = []  # entries the ledger could not take yet: written with the next
        self._failing = False  # the last write failed (said once in the log)

    def admit(self, ids: list[str], specs: list[JobSpec], jobs: Iterable[Job], whole: str = "the set's") -> None:
        """Refuse the jobs `ids` (`specs`, resolved; a job the session holds images of, a retry or
        a resumed one, is priced for the images it still lacks) where they would go over a budget;
        `jobs`: the queue's, whose unfinished ones' images still to make count as spent. `whole`
        names several jobs together in a refusal ("the set's 2 jobs (job-0001 to job-0002)")."""
        budgets = self.registry.budgets
        if not budgets.any:
            return
        estimates = [job_estimate(spec, self.registry, self._made(job_id)) for job_id, spec in zip(ids, specs)]
        asked = sum(estimates, Estimate())
        if not asked.hosted:
            return
        what = ids[0] if len(ids) == 1 else f"{whole} {len(ids)} jobs ({ids[0]} to {ids[-1]})"
        if asked.unknown:
            raise BudgetError(f"{what}: the price of {', '.join(asked.unknown)} is not known, so the budgets of "
                              f"{self.registry.path} cannot be kept; give it price_usd: in models.yaml")
        for job_id, estimate in zip(ids, estimates):
            if budgets.job_usd is not None and estimate.usd > budgets.job_usd:
                raise BudgetError(f"{job_id} would cost {estimate.text()}: over the job budget of {usd(budgets.job_usd)}")
        queued = self._still_to_pay(job for job in jobs if job.status in UNFINISHED)
        cost = f"{what} would cost {asked.text()}"
        if budgets.session_usd is not None:
            spent = session_spent(self.session.jobs.values()).usd
            if round(spent + queued + asked.usd, 6) > budgets.session_usd:
                raise BudgetError(f"{cost}: with {usd(spent)} spent and {usd(queued)} queued in this session, over "
                                  f"the session budget of {usd(budgets.session_usd)}")
        if budgets.day_usd is not None:
            spent = self._day_spent(what)
            if round(spent + queued + asked.usd, 6) > budgets.day_usd:
                raise BudgetError(f"{cost}: with {usd(spent)} spent today ({self.ledger}) and {usd(queued)} queued "
                                  f"here, over the day's budget of {usd(budgets.day_usd)}")

    def _made(self, job_id: str) -> int:
        """The images of a job the session holds: not made (nor paid for) again."""
        return len(self.session.jobs.get(job_id, {}).get("images") or ())

    def _still_to_pay(self, pending: Iterable[Job]) -> float:
        """The estimates of the images the queue's unfinished jobs have still to make (a hosted
        model without a price, restored from the session: nothing)."""
        total = sum(job_estimate(job.spec, self.registry, self._made(job.id)).usd or 0.0 for job in pending)
        return round(total, 6)

    def _day_spent(self, what: str) -> float:
        """The ledger's today, and what this process could not write to it yet."""
        try:
            written = self._tally.spent(today())
        except OSError as e:
            raise BudgetError(f"{what}: the day's budget cannot be kept: {self.ledger} cannot be read "
                              f"({e.strerror or e})") from None
        return round(written + sum(spend.usd for spend in self.unwritten if spend.date == today()), 6)

    def record_event(self, event: Event) -> None:
        """An event in the session and, a hosted image's cost, in the spend ledger after it."""
        self.session.record_event(event)
        self.record(event)

    def record(self, event: Event) -> None:
        """A hosted image's cost into the ledger, once the session has recorded the image (one of
        a price not known has no entry: its session says so). An entry the ledger cannot take is
        kept, and written before the next one; the first failure is said in the log."""
        cost = event.data.get("cost_usd") if event.type == EventKind.IMAGE else None
        if not is_cost(cost):
            return
        job = self.session.jobs.get(event.job) or {}
        self.unwritten.append(Spend(today(), str(self.session.folder.absolute()), str(event.job),
                                    int(event.data["image"]), str((job.get("spec") or {}).get("model")), float(cost)))
        try:
            while self.unwritten:
                record_spend(self.ledger, self.unwritten[0])
                del self.unwritten[0]
        except OSError as e:
            if not self._failing:
                log.error("%s could not be written (%s); its entries are kept and written with the next image",
                          self.ledger, e.strerror or e)
            self._failing = True
        else:
            self._failing = False
