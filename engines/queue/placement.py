"""Where queued jobs start when several GPUs serve one queue: diffdeck's placement policy over plain
data (no processes, no torch), so that the Dispatcher and `diffdeck bench fleet` run the same code.

Each GPU runs one job at a time. A job starts on an idle GPU where its model is warm. While its
model is warm only on a busy GPU, it waits for that one, unless the model's queue pressure calls
for a second replica. Otherwise its model loads on the idle GPU whose free memory best fits it,
least recently used models stopped there first where the GPU's budget requires. The Dispatcher's
lookahead holds per GPU: a job close behind the head whose model is warm on the GPU the head would
load on goes first there, and no job is passed over more than `lookahead` times.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

# A model's queue pressure: each queued job counts as 10 seconds of waiting.
SECONDS_PER_QUEUED_JOB = 10.0


@dataclass(frozen=True)
class WarmModel:
    name: str
    memory_gb: float
    last_used: float  # monotonic seconds: when it last started or ended a job


@dataclass(frozen=True)
class Gpu:
    index: int
    budget_gb: float  # what its warm models may hold together
    warm: tuple[WarmModel, ...] = ()
    busy: bool = False  # running a job, or loading a model for one
    one_model: bool = False  # keeps one model warm at a time: another evicts it

    @property
    def free_gb(self) -> float:
        return self.budget_gb - sum(model.memory_gb for model in self.warm)

    def holds(self, model: str) -> bool:
        return any(warm.name == model for warm in self.warm)


@dataclass(frozen=True)
class QueuedJob:
    id: str
    model: str
    submitted: float  # monotonic seconds
    memory_gb: float  # its model's estimate
    gpus: frozenset[int] | None = None  # the model entry's pins; None: any GPU
    passed_over: int = 0  # times a later job went first on the GPU it would have taken

    def may_run_on(self, gpu: Gpu) -> bool:
        return self.gpus is None or gpu.index in self.gpus


@dataclass(frozen=True)
class Start:
    """A queued job that starts now on an idle GPU, after its idle models `evict` are stopped there."""

    job: str
    gpu: int
    load: bool  # its model loads there first
    evict: tuple[str, ...] = ()  # least recently used first
    replica: bool = False  # its model is warm on another GPU too


@dataclass(frozen=True)
class Plan:
    starts: tuple[Start, ...]
    passed_over: dict[str, int]  # the new counts of the jobs passed over in this round
    wake_at: float | None = None  # when a job waiting for its model's busy GPU may start a replica instead


@dataclass(frozen=True)
class Policy:
    lookahead: int = 4  # the Dispatcher's: how far behind the head a warm model's job may go first
    replica_pressure: float = 20.0  # two queued jobs, or one that has waited 10 s


def pins(device: str, gpus: Sequence[int] | None) -> frozenset[int] | None:
    """The GPUs a model entry pins its model to: `gpus: [0, 1]`, or `device: cuda:1`; None: any."""
    if gpus is not None:
        return frozenset(gpus)
    named = re.fullmatch(r"cuda:(\d+)", device)
    return frozenset({int(named[1])}) if named else None


def pressures(queue: Sequence[QueuedJob], now: float) -> dict[str, float]:
    """Each queued model's pressure: 10 for each of its queued jobs, plus the seconds its oldest has waited."""
    oldest: dict[str, float] = {}
    count: dict[str, int] = {}
    for job in queue:
        oldest[job.model] = min(oldest.get(job.model, job.submitted), job.submitted)
        count[job.model] = count.get(job.model, 0) + 1
    return {model: SECONDS_PER_QUEUED_JOB * count[model] + now - oldest[model] for model in count}


def evictions(gpu: Gpu, need_gb: float) -> tuple[str, ...] | None:
    """The models to stop on an idle `gpu`, least recently used first, before a model of `need_gb`
    fits its budget; None when it cannot fit there."""
    if need_gb > gpu.budget_gb:
        return None
    if gpu.one_model:
        return tuple(model.name for model in sorted(gpu.warm, key=lambda m: m.last_used))
    free, stopped = gpu.free_gb, []
    for model in sorted(gpu.warm, key=lambda m: m.last_used):
        if free >= need_gb:
            break
        stopped.append(model.name)
        free += model.memory_gb
    return tuple(stopped) if free >= need_gb else None


def place(gpus: Sequence[Gpu], queue: Sequence[QueuedJob], now: float, policy: Policy = Policy()) -> Plan:
    """The jobs of `queue` (in its order) that start now on the idle GPUs of `gpus`, and where."""
    fleet = {gpu.index: gpu for gpu in gpus}
    pending = list(queue)
    starts: list[Start] = []
    passed: dict[str, int] = {}
    while (chosen := _next_start(fleet, pending, now, policy)) is not None:
        start, skipped = chosen
        for job in skipped:
            passed[job.id] = job.passed_over + 1
            pending[pending.index(job)] = dataclasses.replace(job, passed_over=job.passed_over + 1)
        job = next(job for job in pending if job.id == start.job)
        pending.remove(job)
        fleet[start.gpu] = started(fleet[start.gpu], start, job, now)
        starts.append(start)
    return Plan(tuple(starts), passed, _wake_at(fleet, pending, now, policy))


def _next_start(fleet: dict[int, Gpu], pending: list[QueuedJob], now: float,
                policy: Policy) -> tuple[Start, list[QueuedJob]] | None:
    """The next job to start and where, with the jobs it goes ahead of; None when none can start now."""
    runnable = _runnable(fleet, pending, pressures(pending, now), policy)
    window = list(islice(runnable, policy.lookahead + 1))
    while window:
        head = window[0]
        targets = [gpu for gpu in fleet.values() if not gpu.busy and head.may_run_on(gpu)]
        warm = [gpu for gpu in targets if gpu.holds(head.model)]
        if warm:
            return Start(head.id, warm[0].index, load=False), []
        best = _best_fit(head, targets, window[1:])
        if best is None:  # its model fits on none of the idle GPUs it may run on
            window = window[1:] + list(islice(runnable, 1))
            continue
        gpu, evict = best
        if head.passed_over < policy.lookahead:
            for i, job in enumerate(window[1:], start=1):
                if job.may_run_on(gpu) and gpu.holds(job.model):
                    return Start(job.id, gpu.index, load=False), [s for s in window[:i] if s.may_run_on(gpu)]
        replica = any(other.holds(head.model) for other in fleet.values())
        return Start(head.id, gpu.index, load=True, evict=evict, replica=replica), []
    return None


def _runnable(fleet: dict[int, Gpu], pending: list[QueuedJob], pressure: dict[str, float],
              policy: Policy) -> Iterator[QueuedJob]:
    """The queued jobs, in order, that could start now: an idle GPU they may run on, and not
    waiting for their model's busy GPU (unless its pressure calls for a replica)."""
    for job in pending:
        idle = [gpu for gpu in fleet.values() if not gpu.busy and job.may_run_on(gpu)]
        if idle and (any(gpu.holds(job.model) for gpu in idle) or not _waits(job, fleet)
                     or pressure[job.model] >= policy.replica_pressure):
            yield job


def _waits(job: QueuedJob, fleet: dict[int, Gpu]) -> bool:
    """Whether the job's model is warm on a busy GPU it may run on."""
    return any(gpu.busy and job.may_run_on(gpu) and gpu.holds(job.model) for gpu in fleet.values())


def _best_fit(job: QueuedJob, targets: list[Gpu], behind: list[QueuedJob]) -> tuple[Gpu, tuple[str, ...]] | None:
    """The idle GPU to load the job's model on, with what to evict there: first one whose warm
    models no job close behind wants (else that job would go first there), then one that needs no
    eviction, then the one whose evicted models were used longest ago; then the tightest fit."""
    options = []
    for gpu in targets:
        evict = evictions(gpu, job.memory_gb)
        if evict is None:
            continue
        wanted = any(later.may_run_on(gpu) and gpu.holds(later.model) for later in behind)
        evicted_used = max((m.last_used for m in gpu.warm if m.name in evict), default=float("-inf"))
        freed = sum(m.memory_gb for m in gpu.warm if m.name in evict)
        options.append(((wanted, bool(evict), evicted_used, gpu.free_gb + freed - job.memory_gb, gpu.index),
                        gpu, evict))
    if not options:
        return None
    _, gpu, evict = min(options, key=lambda option: option[0])
    return gpu, evict


def started(gpu: Gpu, start: Start, job: QueuedJob, now: float) -> Gpu:
    """`gpu` once `job` started on it: busy, its model warm there, the evicted ones gone."""
    kept = tuple(m for m in gpu.warm if m.name not in start.evict and m.name != job.model)
    memory = next((m.memory_gb for m in gpu.warm if m.name == job.model), job.memory_gb)
    return dataclasses.replace(gpu, warm=(*kept, WarmModel(job.model, memory, now)), busy=True)


def _wake_at(fleet: dict[int, Gpu], pending: list[QueuedJob], now: float, policy: Policy) -> float | None:
    """When the first job left waiting for its model's busy GPU reaches the pressure for a replica
    on a GPU idle now (pressure grows a second a second)."""
    pressure = pressures(pending, now)
    times = [now + policy.replica_pressure - pressure[job.model] for job in pending
             if _waits(job, fleet) and any(not gpu.busy and job.may_run_on(gpu) for gpu in fleet.values())]
    return min((t for t in times if t > now), default=None)
