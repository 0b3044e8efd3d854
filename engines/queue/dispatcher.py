"""The Dispatcher: a render queue in front of one warm worker process per model.

Commands go in (submit, cancel, cancel_all, move, pause, resume, retry); an async
stream of `Event`s comes out. It knows nothing of its clients: the TUI, the headless
CLI and later a daemon all speak this one API. UI side: never imports torch.

Each device (diffdeck.engines.queue.devices: the GPUs, else the CPU) runs one job at a time, so
N GPUs run N jobs at once; diffdeck.engines.queue.placement decides which queued job starts where.
Workers are kept per (model, device), each pinned to its GPU, and stay warm after a job; an
idle worker is stopped after `idle_timeout_s`, or earlier, least recently used first, when a
model about to load on its device would push the warm models' memory past that device's budget.

A hosted model (diffdeck.engines.hosted) renders on lanes of its own, `concurrency` of them, each
a slot like a device's that runs one job at a time in a worker process of its own, here (never on
a Ray cluster): its jobs take no GPU and no CPU slot from local models, nor theirs a lane.

A flow's job runs in legs: each leg the stages in a row of one model, placed on a device of its
own, one job message to that model's worker there, handed the previous leg's images (or latents, for a refine) through the files
it wrote. A resumed flow starts at the first leg some image has not been through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
from diffdeck.engines.core.budgets import BudgetError
from diffdeck.engines.core.events import (
    UNFINISHED,
    Event,
    EventKind,
    EventStream,
    JobRecord,
    Status,
    rendering_timings,
)
from diffdeck.engines.core.flow_checks import resolve_flow
from diffdeck.engines.core.identity import model_identity
from diffdeck.engines.core.registry import ModelFiles, Registry, RegistryError, key_problem
from diffdeck.engines.core.spec import JobSpec, ModelSpec, SpecError, draw_seeds
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.hosted.providers import provider
from diffdeck.engines.queue.devices import Device, discover
from diffdeck.engines.queue.footprint import Budget, Footprint, check_size, element_bytes
from diffdeck.engines.queue.placement import Gpu, Plan, Policy, QueuedJob, Start, WarmModel, pins, place
from diffdeck.engines.queue.telemetry import Telemetry, WorkerView
from diffdeck.engines.queue.worker_handles import IDLE, LOADING, STARTING, WorkerError, WorkerProcess, describe_exit
from diffdeck.engines.sets.variants import VariantSet

log = logging.getLogger("diffdeck.dispatcher")

CRASHES_BEFORE_HOLD = 2


@dataclass
class Job:
    """A job in the queue, live; `record()` is how every other side sees it."""

    id: str
    spec: JobSpec  # resolved: model defaults filled in, seeds fixed
    status: Status = Status.QUEUED
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # when it left the queue
    images: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory: int | None = None
    error: str | None = None
    error_kind: str | None = None
    worker_crashes: int = 0
    passed_over: int = 0  # times a later job for a warm model went first
    progress: dict[str, Any] = field(default_factory=dict)  # its last step: image, count, step, total, it_s
    stages: list[dict[str, Any]] = field(default_factory=list)  # a flow's stage images (stage_image messages)
    leg: Leg | None = None  # the leg of its flow that runs, or is next to
    placed: asyncio.Future[Placed | None] | None = None  # while a later leg of its flow waits for a device
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    leg_ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    run: Run | None = None  # its attempt now, from leaving the queue; a retry is another
    cancel_asked: bool = False  # a cancel came while it ran: it ends at its leg's end at the latest

    @property
    def model(self) -> str:
        """The model whose worker renders it now: its leg's, else its own."""
        return self.leg.model if self.leg else self.spec.model

    def record(self) -> JobRecord:
        return JobRecord(self.id, self.spec.to_dict(), self.status, self.images, self.timings, self.peak_memory,
                         self.error, self.worker_crashes, self.progress, self.stages)


@dataclass(frozen=True)
class Leg:
    """Stages `first` to `last` (inclusive) of a flow, all of one model: one job message to its worker."""

    model: str
    first: int
    last: int

    def hands_over(self, spec: JobSpec) -> bool:
        """Whether another leg of the flow comes after it."""
        return self.last < len(spec.stages) - 1


def legs(spec: JobSpec) -> list[Leg]:
    """A resolved flow's stages cut where the model changes; [] for a job without stages."""
    cut: list[Leg] = []
    for i, stage in enumerate(spec.stages):
        model = stage.model or spec.model
        if cut and cut[-1].model == model:
            cut[-1] = Leg(model, cut[-1].first, i)
        else:
            cut.append(Leg(model, i, i))
    return cut


@dataclass
class DeviceSlot:
    """One device of the Dispatcher: its warm workers, within its memory budget, and the job it
    runs (one at a time)."""

    device: Device
    budget_gb: float
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    job: Job | None = None

    def state(self) -> dict[str, Any]:
        return {"index": self.device.index, "name": self.device.name, "uuid": self.device.uuid,
                "gpu": self.device.is_gpu, "fake": self.device.fake, "budget_gb": self.budget_gb,
                "job": self.job.id if self.job else None,
                "workers": {name: {"pid": w.pid, "state": w.state, "memory_gb": w.memory_gb}
                            for name, w in self.workers.items()}}


@dataclass(eq=False)
class Run:
    """One attempt at a job: the tasks of an attempt that was cancelled (a model still loading)
    check theirs before they touch the job, which a retry may have sent running again."""

    slot: DeviceSlot | None = None  # the device it holds now


@dataclass(frozen=True)
class Placed:
    """Where placement put a job (or a leg of its flow): the device, and what to stop there first."""

    slot: DeviceSlot
    start: Start


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        images_dir: Path,
        *,
        memory_budget_gb: float | None = None,
        idle_timeout_s: float = 600.0,
        cancel_grace_s: float = 3.0,
        lookahead: int = 4,
        intervals: Intervals = Intervals(),
        telemetry_interval_s: float = 1.0,
        telemetry: Telemetry | None = None,
        first_job_number: int = 1,
        first_set_number: int = 1,
        devices: list[Device] | None = None,
        launcher: Callable[..., WorkerProcess] = WorkerProcess,
        admit: Callable[[list[str], list[JobSpec]], None] | None = None,
    ):
        """`devices`: what to render on; None: discovered (diffdeck.engines.queue.devices).
        `memory_budget_gb`: each device's; None: 90 % of a GPU's memory, half the RAM for the CPU.
        `launcher`: starts a worker, with WorkerProcess's arguments; a Ray cluster's: ray_workers.RayWorker.
        `admit`: told the ids and resolved specs of the jobs about to be queued (a set's together),
        it raises to refuse them (budgets: diffdeck.engines.service.recorded_queue)."""
        self.launcher = launcher
        self.admit = admit
        self.registry = registry
        self.images_dir = Path(images_dir)
        self.idle_timeout_s = idle_timeout_s
        self.cancel_grace_s = cancel_grace_s
        self.lookahead = lookahead
        self.intervals = intervals
        self.telemetry_interval_s = telemetry_interval_s
        self.telemetry = telemetry or Telemetry()
        devices = devices if devices is not None else discover(self.telemetry.nvml)
        _check_numbered(devices)
        self.devices = [DeviceSlot(device, memory_budget_gb or _default_budget_gb(device)) for device in devices]
        self.lanes = [DeviceSlot(lane, 0.0) for lane in _lanes(registry, first=len(devices))]
        self._slots = self.devices + self.lanes  # by index: the devices, then the lanes
        self.memory_budget_gb = max(slot.budget_gb for slot in self.devices)  # the most a job may take
        self.jobs: dict[str, Job] = {}
        self.queue: list[Job] = []
        self._legs_waiting: list[Job] = []  # running flows whose next leg waits for a device, first come first
        self._memory: dict[str, float] = {}  # each model's estimate
        self.paused = False
        self._next_job = first_job_number
        self._set_ids = itertools.count(first_set_number)
        self._subscribers: list[EventStream] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._runs: set[asyncio.Task] = set()  # the running jobs', one per busy device
        self._footprints: dict[str, Footprint | None] = {}  # per model, read at its first job  # cancels being enforced, workers being retired

    # lifecycle

    async def __aenter__(self) -> "Dispatcher":
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._schedule()), asyncio.create_task(self._watch())]

    async def close(self, grace_s: float = 5.0) -> None:
        """Cancel what is queued or running (a running job stops within a step), then stop
        every worker."""
        self.paused = True
        self.cancel_all()
        running = [j.finished.wait() for j in self.jobs.values() if j.status == Status.RUNNING]
        if running:
            await asyncio.wait([asyncio.ensure_future(w) for w in running], timeout=grace_s)
        for task in (*self._tasks, *self._runs):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._runs, *self._background, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in self.all_workers()))

    @property
    def workers(self) -> dict[str, WorkerProcess]:
        """Each warm model's worker: where it has replicas on several devices, the one used last
        (`devices` has them all)."""
        return {w.model: w for w in sorted(self.all_workers(), key=lambda w: w.last_used)}

    def all_workers(self) -> list[WorkerProcess]:
        return [worker for slot in self._slots for worker in slot.workers.values()]

    def _in_background(self, work) -> None:
        """Run `work` as a task that is kept until it ends (the loop holds tasks weakly), and that
        `close` waits for."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def subscribe(self) -> EventStream:
        return EventStream(self._subscribers)

    # commands

    def submit(self, spec: JobSpec) -> Job:
        """Validate, resolve seeds and defaults, and queue. Raises SpecError or RegistryError."""
        resolved = self.resolve(spec)  # first: bad input uses up no job number
        self._admit([resolved])
        job = Job(self._job_ids(1)[0], resolved)
        self.jobs[job.id] = job
        return self._enqueue(job)

    def submit_set(self, variants: VariantSet, set_id: str | None = None) -> tuple[str, list[Job]]:
        """Queue an A/B set or a grid, one job per variant in the set's order, after an event
        that records the set. Every variant is checked first: on bad input nothing is queued.
        Raises SpecError or RegistryError naming the variant. `set_id`: a replay keeps its own."""
        specs = []
        for variant in variants.variants:
            try:
                specs.append(self.resolve(variant.spec))
            except SpecError as e:
                raise SpecError(e.field, f"variant {variant.label}: {e.message}") from None
            except RegistryError as e:
                raise RegistryError(f"variant {variant.label}: {e}") from None
        self._admit(specs)
        set_id = set_id or f"set-{next(self._set_ids):04d}"
        ids = self._job_ids(len(specs))
        jobs = [Job(job_id, dataclasses.replace(spec, group=set_id)) for job_id, spec in zip(ids, specs)]
        self._emit(EventKind.SET, None, set=set_id, **variants.record(),
                   variants=[{**v.to_dict(), "job": job.id} for v, job in zip(variants.variants, jobs)])
        for job in jobs:
            self.jobs[job.id] = job
            self._enqueue(job)
        return set_id, jobs

    def next_job_ids(self, count: int) -> list[str]:
        """The ids the next `count` jobs will get."""
        return [f"job-{number:04d}" for number in range(self._next_job, self._next_job + count)]

    def _job_ids(self, count: int) -> list[str]:
        ids = self.next_job_ids(count)
        self._next_job += count
        return ids

    def _admit(self, specs: list[JobSpec], ids: list[str] | None = None) -> None:
        """`admit` told of jobs about to be queued: new ones (the ids they will get), or `ids` again."""
        if self.admit is not None:
            self.admit(ids or self.next_job_ids(len(specs)), specs)

    def restore(self, record: JobRecord) -> Job:
        """Queue again a job from a reopened session, under its own id and with its seeds.
        Images it already made are kept and not rendered again; a job that stopped its worker
        twice is held instead, and one that `admit` refuses (over a budget, with the jobs restored
        before it) fails, saying why. Raises SpecError or RegistryError."""
        if record.id in self.jobs:
            raise ValueError(f"{record.id} is already in this queue")
        job = Job(record.id, self.resolve(JobSpec.from_dict(record.spec)), images=list(record.images),
                  worker_crashes=record.worker_crashes, stages=list(record.stages))
        held = job.worker_crashes >= CRASHES_BEFORE_HOLD
        refused = None if held else self._refused(job)
        self.jobs[job.id] = job
        if held:
            self._fail(job, f"{job.id} stopped its worker {job.worker_crashes} times (a crash, or diffdeck "
                            "stopping mid-run); held: retry it with force to run it again", "crash")
        elif refused:
            self._fail(job, refused, "budget")
        else:
            self._enqueue(job)
        return job

    def _refused(self, job: Job) -> str | None:
        """Why `admit` refuses a job restored from a session (over a budget); None: admitted."""
        try:
            self._admit([job.spec], [job.id])
        except BudgetError as e:
            return str(e)
        return None

    def resolve(self, spec: JobSpec) -> JobSpec:
        """The spec as it would be queued: its route, flow, stages, LoRAs, the model's defaults and
        the seeds filled in, checked. Raises SpecError or RegistryError; queues nothing."""
        spec = resolve_flow(spec, self.registry, self._check_size)  # its route, flow, stages and LoRAs
        spec.validate()
        files = self.registry.files(spec.model)
        if files.problem:
            raise RegistryError(files.problem)
        entry = self.registry.get(spec.model)
        defaults = self.registry.defaults(spec.model, files.family)
        job = spec.resolved(defaults, files.family, spec.seeds or draw_seeds(spec.seed, spec.count))
        if entry.hosted:
            _check_hosted(entry, job)
        else:
            self._check_size(job)
        for model in {job.model, *(stage.model for stage in job.stages if stage.model)}:
            self._check_pins(model)
        return job

    def _runs_on(self, model: str) -> frozenset[int]:
        """The slots a model's jobs may start on: a hosted model's lanes; a local model's pinned GPUs,
        else any device (never a lane)."""
        lanes = frozenset(slot.device.index for slot in self.lanes if slot.device.lane == model)
        return lanes or self._pins(model) or frozenset(slot.device.index for slot in self.devices)

    def _check_pins(self, model: str) -> None:
        """RegistryError when a model is pinned to GPUs this machine does not have."""
        pinned = self._pins(model)
        gpus = {slot.device.index for slot in self.devices if slot.device.is_gpu}
        if pinned is not None and not pinned & gpus:
            have = f"GPUs {', '.join(map(str, sorted(gpus)))}" if gpus else "no GPU"
            raise RegistryError(f"{model!r} is pinned to GPU {', '.join(map(str, sorted(pinned)))}; "
                                f"this machine has {have}")

    def _pins(self, model: str) -> frozenset[int] | None:
        spec = self.registry.get(model)
        return pins(spec.device, spec.gpus)

    def _check_size(self, job: JobSpec) -> None:
        """SpecError when `job.model` cannot render `job`'s size: past its area, or past the memory budget."""
        files = self.registry.files(job.model)
        defaults = self.registry.defaults(job.model, files.family)
        check_size(job, (defaults["width"], defaults["height"]), self._footprint(job.model, files),
                   Budget(self._budget_gb(job.model), "GPU" if self.telemetry.has_gpu else "RAM"))

    def _budget_gb(self, model: str) -> float:
        """The most memory a job of `model` may take: the largest budget of the devices it may run on."""
        pinned = self._pins(model)
        return max((slot.budget_gb for slot in self.devices if pinned is None or slot.device.index in pinned),
                   default=self.memory_budget_gb)  # pinned to GPUs not here: refused by _check_pins

    def _footprint(self, name: str, files: ModelFiles) -> Footprint | None:
        """What a model's sizes cost, read from its configs once per Dispatcher (a grid asks per cell)."""
        if files.folder is None or files.family is None:
            return None
        if name not in self._footprints:
            model = self.registry.get(name)
            if model.offload != "none":  # its weights stream through the GPU: the estimate does not apply
                self._footprints[name] = None
            else:
                on_gpu = self.telemetry.has_gpu and model.device != "cpu"
                self._footprints[name] = Footprint.read(files.folder, files.family, self.registry.memory_gb(name),
                                                        element_bytes(model.dtype, on_gpu))
        return self._footprints[name]

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job, or stop a running one: at the next module its worker enters,
        or within `cancel_grace_s` by stopping the worker."""
        job = self._job(job_id)
        if job.status == Status.QUEUED:
            self.queue.remove(job)
            self._finish(job, Status.CANCELLED)
        elif job.status == Status.RUNNING:
            job.cancel_asked = True  # a leg that ends before its worker reads the cancel is the last
            slot = job.run.slot if job.run else None
            worker = slot.workers.get(job.model) if slot else None
            if worker is not None and worker.job_id == job.id:
                worker.cancel(job.id)  # the worker answers `cancelled` at the next module it enters
                self._in_background(self._enforce_cancel(job, worker))
            else:  # its model still loading, or between two legs of its flow
                self._finish(job, Status.CANCELLED)
                if (worker is not None and worker.state in (STARTING, LOADING)
                        and not any(j.model == worker.model for j in self.queue)):
                    self._in_background(self._retire(worker, "cancelled while loading"))
        else:
            return False
        return True

    async def _enforce_cancel(self, job: Job, worker: WorkerProcess) -> None:
        """A cancel the worker has not answered within `cancel_grace_s` (one long kernel of a
        huge render cannot be cut) stops the worker; the job still ends cancelled."""
        run = job.run
        # A hosted worker answered by its provider saves the images paid for before it ends the job
        grace_s = self.cancel_grace_s + (worker.spec.timeout_s if worker.device.lane else 0.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(job.finished.wait(), grace_s)
            return
        if job.run is run and job.status == Status.RUNNING:
            self._finish(job, Status.CANCELLED, step=None)
            if worker.job_id == job.id:  # No await in between: out of service before any task can give it a job.
                await self._retire(worker, "the cancel did not land in time", grace_s=0.0)

    def cancel_all(self) -> int:
        targets = [j for j in self.jobs.values() if j.status in UNFINISHED]
        return sum(self.cancel(j.id) for j in targets)

    def move(self, job_id: str, position: int) -> None:
        """Put a queued job at `position` in the queue (0: next; clamped to the queue)."""
        job = self._job(job_id)
        if job.status != Status.QUEUED:
            raise ValueError(f"{job_id} is {job.status}; only queued jobs can be moved")
        self.queue.remove(job)
        position = max(0, min(position, len(self.queue)))
        self.queue.insert(position, job)
        self._emit(EventKind.MOVED, job, position=position)

    def pause(self) -> None:
        """Start no new job once the current one ends."""
        self.paused = True
        self._emit(EventKind.PAUSED, None)

    def resume(self) -> None:
        self.paused = False
        self._emit(EventKind.RESUMED, None)
        self._wakeup.set()

    def retry(self, job_id: str, force: bool = False) -> Job:
        """Queue a failed, cancelled or (with force) held job again, with the same seeds."""
        job = self._job(job_id)
        if job.status == Status.HELD and not force:
            raise ValueError(f"{job_id} is held: it crashed its worker {job.worker_crashes} times; "
                             "retry with force to try again")
        if job.status not in (Status.FAILED, Status.CANCELLED, Status.HELD):
            raise ValueError(f"{job_id} is {job.status}; only failed, cancelled or held jobs can be retried")
        self._admit([job.spec], [job.id])
        kept = job.images if self.registry.get(job.spec.model).hosted else []  # paid for: not asked for again
        job.status, job.images, job.timings, job.error, job.error_kind = Status.QUEUED, kept, {}, None, None
        job.submitted_at, job.started_at, job.passed_over, job.progress = time.monotonic(), None, 0, {}
        job.stages, job.leg, job.peak_memory, job.cancel_asked = [], None, None, False
        job.finished = asyncio.Event()
        return self._enqueue(job)

    def _enqueue(self, job: Job) -> Job:
        job.leg = next(_legs_to_run(job))  # placed by its model (a flow: its first leg's)
        self.queue.append(job)
        self._emit(EventKind.QUEUED, job, spec=job.spec.to_dict(), position=len(self.queue) - 1,
                   worker_crashes=job.worker_crashes)
        self._wakeup.set()
        return job

    async def wait(self, job_id: str) -> Job:
        job = self._job(job_id)
        await job.finished.wait()
        return job

    # scheduling

    def _plan(self) -> list[Plan]:
        """Where the legs of running flows that wait for a device start now, then, on the devices
        still idle (and unless paused), the queued jobs: a queued job never goes before a flow
        that has begun."""
        gpus = [Gpu(slot.device.index, slot.budget_gb, busy=slot.job is not None, one_model=slot.device.one_model,
                    warm=tuple(WarmModel(w.model, w.memory_gb, w.last_used) for w in slot.workers.values()
                               if w.state == IDLE)) for slot in self._slots]
        plans = []
        for waiting in (self._legs_waiting, [] if self.paused else self.queue):
            if not waiting:
                continue
            # a model past every budget of its devices runs alone on one
            queue = [QueuedJob(job.id, job.model, job.submitted_at, min(self._memory_gb(job.model), self._budget_gb(job.model)),
                               self._runs_on(job.model), job.passed_over) for job in waiting]
            plans.append(place(gpus, queue, time.monotonic(), Policy(lookahead=self.lookahead)))
            taken = {start.gpu for start in plans[-1].starts}
            gpus = [dataclasses.replace(gpu, busy=True) if gpu.index in taken else gpu for gpu in gpus]
        for plan in plans:
            for job_id, count in plan.passed_over.items():
                self.jobs[job_id].passed_over = count
        return plans

    def _memory_gb(self, model: str) -> float:
        """The model's estimate, its weights' size read once (0 while a hub model is not here yet: asked again)."""
        if not self._memory.get(model):
            self._memory[model] = self.registry.memory_gb(model)
        return self._memory[model]

    async def _schedule(self) -> None:
        while True:
            plans = self._plan()
            starts = [start for plan in plans for start in plan.starts]
            for start in starts:
                self._start(start)
            if not starts:
                self._wakeup.clear()
                wake_at = min((plan.wake_at for plan in plans if plan.wake_at is not None), default=None)
                wait = None if wake_at is None else max(0.0, wake_at - time.monotonic())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)

    def _start(self, start: Start) -> None:
        """A job placed: a leg of a running flow goes on, a queued job leaves the queue and runs."""
        job, slot = self.jobs[start.job], self._slots[start.gpu]
        slot.job, placed = job, Placed(slot, start)
        if job in self._legs_waiting:
            self._legs_waiting.remove(job)
            job.run.slot = slot
            job.placed.set_result(placed)
            return
        self.queue.remove(job)
        job.status, job.started_at, job.run = Status.RUNNING, time.monotonic(), Run(slot)
        self._emit(EventKind.DEQUEUED, job)  # its model may take a while to load before `started`
        task = asyncio.create_task(self._run(job, placed))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _run(self, job: Job, placed: Placed) -> None:
        run = job.run
        try:
            await self._run_legs(job, placed, run)
        except Exception as e:  # noqa: BLE001 - one job's failure must not stop the queue
            log.exception("%s failed in the dispatcher", job.id)
            if _current(job, run):
                self._fail(job, f"{type(e).__name__}: {e}", "error")
        finally:
            self._free(job, run)

    async def _run_legs(self, job: Job, placed: Placed, run: Run) -> None:
        """The job's one message to its model's worker, or its flow's legs one after another, each
        placed on a device of its own."""
        job.timings = {"queue_wait_s": round(job.started_at - job.submitted_at, 4), "load_s": 0.0}
        job.peak_memory, started = None, False
        for leg in _legs_to_run(job):
            if leg != job.leg:  # a later leg of its flow
                self._free(job, run)
                job.leg = leg
                placed = await self._placed_again(job)
                if placed is None:
                    return
            job.leg_ended = asyncio.Event()
            made = _made(job, leg)
            try:
                leg_fields = {} if leg is None else {"stages": [leg.first, leg.last], "inputs": _inputs(job, leg, made)}
            except ValueError as e:  # a resumed flow's record lacks what the leg starts from
                self._fail(job, str(e), "error")
                return
            worker = await self._ready_worker(job, placed, run)
            if worker is None:
                return
            try:
                worker.assign(job.id, spec=job.spec.to_dict(), out_dir=str(self.images_dir), skip=sorted(made),
                              **leg_fields)
            except WorkerError as e:  # it died, or is being retired, between its load and now
                self._fail(job, str(e), "crash")
                return
            if not started:
                self._emit(EventKind.STARTED, job, model=job.spec.model, pid=worker.pid, device=placed.slot.device.index,
                           **job.timings)
                started = True
            await job.leg_ended.wait()
            worker.release()
            if _current(job, run) and job.cancel_asked:  # its worker ended the leg before it read the cancel
                self._finish(job, Status.CANCELLED, step=None)
            if not _current(job, run):
                return

    async def _placed_again(self, job: Job) -> Placed | None:
        """The device the job's next leg runs on, once placement gives it one; None if the job ended meanwhile."""
        job.placed = asyncio.get_running_loop().create_future()
        self._legs_waiting.append(job)
        self._wakeup.set()
        return await job.placed

    def _free(self, job: Job, run: Run) -> None:
        """The device the job's attempt `run` holds is free for the next (not one a retry holds)."""
        if run.slot is not None and run.slot.job is job:
            run.slot.job = None
            self._wakeup.set()
        run.slot = None

    async def _ready_worker(self, job: Job, placed: Placed, run: Run) -> WorkerProcess | None:
        """The worker of `job.model` on the placed device, warm, or started now after what placement
        evicts there is stopped (its load time added to the job's); None when the job ended
        meanwhile (its model failed to load, a cancel)."""
        slot = placed.slot
        worker = slot.workers.get(job.model)
        if worker is None:
            loading = time.monotonic()
            for model in placed.start.evict:
                if model in slot.workers:
                    await self._retire(slot.workers[model], "memory budget", budget_gb=slot.budget_gb,
                                       needed_gb=self._memory_gb(job.model))
            if not _current(job, run):  # cancelled while those stopped
                return None
            worker = await self._spawn(job.model, slot)
            self._emit(EventKind.LOADING, job, model=job.model, pid=worker.pid)
            identity = self._identify(job.model)  # hashes weights while the worker loads
            try:
                await worker.wait_ready()
            except WorkerError as e:
                if _current(job, run):  # else it was cancelled, and its worker stopped
                    self._fail(job, str(e), "load")
                return None
            identity = identity or self._identify(job.model)  # a hub model it just downloaded
            self._emit(EventKind.WORKER_READY, None, model=worker.model, pid=worker.pid, environment=worker.environment,
                       identity=await identity if identity else None,
                       **{k: worker.loaded[k] for k in ("load_s", "family", "device", "dtype", "settings", "memory")})
            if not _current(job, run):  # cancelled while its model loaded
                return None
            job.timings["load_s"] = round(job.timings["load_s"] + time.monotonic() - loading, 4)
        return worker if _current(job, run) else None

    async def _spawn(self, model: str, slot: DeviceSlot) -> WorkerProcess:
        spec = self.registry.get(model)
        if spec.device.startswith("cuda:"):  # pinned to that GPU, the one it sees
            spec = dataclasses.replace(spec, device="cuda")
        launcher = WorkerProcess if slot.device.lane else self.launcher  # a hosted model's worker runs here
        keys = {m.api_key_env for m in self.registry.models.values() if m.api_key_env}  # each worker gets its own only
        worker = launcher(spec, self._memory_gb(model), self._on_worker_message, self._on_worker_exit,
                          self.intervals, device=slot.device, key_variables=keys)
        await worker.start()
        slot.workers[model] = worker
        self._emit(EventKind.WORKER_SPAWNED, None, model=model, pid=worker.pid, device=slot.device.index)
        return worker

    def _identify(self, model: str) -> asyncio.Future | None:
        """The model's identity (diffdeck.engines.core.identity), worked out in a thread; None while its
        files are not on this machine yet."""
        folder = self.registry.files(model).folder
        return None if folder is None else asyncio.ensure_future(asyncio.to_thread(_identity_or_none, folder))

    async def _retire(self, worker: WorkerProcess, reason: str, grace_s: float = 5.0, **data: Any) -> None:
        """Take a worker out of service and stop it (killed after `grace_s`); its memory is free
        when this returns."""
        self._forget(worker)
        self._emit(EventKind.WORKER_EVICTED, None, model=worker.model, pid=worker.pid, reason=reason,
                   device=worker.device.index, **data)
        await worker.stop(grace_s)

    def _forget(self, worker: WorkerProcess) -> None:
        """Out of service: no job is given to it again."""
        workers = self._slots[worker.device.index].workers
        if workers.get(worker.model) is worker:
            del workers[worker.model]

    async def _watch(self) -> None:
        """Telemetry at about 1 Hz, and idle workers stopped after their timeout."""
        while True:
            views = [WorkerView(w.pid, w.model, w.state) for w in self.all_workers() if w.pid]
            try:
                self._emit(EventKind.TELEMETRY, None, **self.telemetry.sample(views))
            except Exception:  # noqa: BLE001 - a sensor failing must not stop idle eviction
                log.exception("telemetry sample failed")
            now = time.monotonic()
            for worker in self.all_workers():
                if worker.state == IDLE and now - worker.last_used > self.idle_timeout_s:
                    await self._retire(worker, "idle timeout")
            await asyncio.sleep(self.telemetry_interval_s)

    # worker events

    def _on_worker_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        kind = message.pop("type")
        if kind in ("hello", "ready", "load_failed"):
            return  # the worker keeps these; _run reports the load
        job = self.jobs.get(message.pop("id", None))
        if job is None or job.status != Status.RUNNING:
            return
        if kind in ("image", "stage_image"):
            message["timings"]["total_s"] = round(time.monotonic() - job.submitted_at, 4)
            if worker.device.is_gpu:
                message["gpu"] = worker.device.record()  # which one rendered it: replay names another as drift
            if kind == "image":
                job.images.append(message)
            else:
                job.stages = [s for s in job.stages if (s["image"], s["stage"]) != (message["image"], message["stage"])]
                job.stages.append(message)
        elif kind == "done":  # of the job, or of a leg of its flow
            if job.leg is not None and job.leg.hands_over(job.spec):
                job.leg_ended.set()  # on to the next leg
                return
            # every stage of every image, those made before the job was resumed too
            job.timings.update(rendering_timings(job.stages + job.images), total_s=round(time.monotonic() - job.submitted_at, 4))
            job.peak_memory = max([message["peak_memory"], *(m["peak_memory"] or 0 for m in job.stages + job.images)])
            self._finish(job, Status.DONE, images=job.images, timings=job.timings, peak_memory=job.peak_memory)
            return
        elif kind == "cancelled":
            self._finish(job, Status.CANCELLED, step=message["step"])
            return
        elif kind == "failed":
            if message["kind"] == "fatal":
                self._forget(worker)  # it exits by itself; the next job gets a new one
            self._fail(job, message["error"], message["kind"])
            return
        elif kind == "step":
            message["device"] = worker.device.index  # a flow's later leg may run on another device
            job.progress = message  # decoded afresh for each message
        self._emit(EventKind(kind), job, **message)  # step, preview, image, stage_image

    def _on_worker_exit(self, worker: WorkerProcess) -> None:
        self._forget(worker)
        self._emit(EventKind.WORKER_EXITED, None, model=worker.model, pid=worker.pid, returncode=worker.returncode,
                   device=worker.device.index)
        job = self.jobs.get(worker.job_id) if worker.job_id else None
        if job is not None and job.status == Status.RUNNING:
            if worker.stop_requested:  # we stopped it: the job did not crash anything
                self._fail(job, f"the worker for {worker.model!r} was stopped during {job.id}", "stopped")
                return
            job.worker_crashes += 1
            message = (f"the worker for {worker.model!r} {describe_exit(worker.returncode)} during "
                       f"{job.id}; last log lines:\n{worker.stderr_text()}")
            self._fail(job, message, "crash")
        self._wakeup.set()

    # state changes

    def _fail(self, job: Job, error: str, kind: str) -> None:
        job.error, job.error_kind = error, kind
        status = Status.HELD if job.worker_crashes >= CRASHES_BEFORE_HOLD else Status.FAILED
        self._finish(job, status, error=error, kind=kind, worker_crashes=job.worker_crashes)

    def _finish(self, job: Job, status: Status, /, **data: Any) -> None:
        job.status = status
        job.finished.set()
        job.leg_ended.set()
        if job in self._legs_waiting:  # a flow ended between two legs
            self._legs_waiting.remove(job)
            job.placed.set_result(None)
        self._emit(EventKind(status), job, **data)
        self._wakeup.set()

    def _emit(self, event_type: EventKind, job: Job | None, /, **data: Any) -> None:
        event = Event(event_type, job.id if job else None, data)
        for subscriber in list(self._subscribers):
            subscriber.put(event)

    def _job(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise ValueError(f"no job {job_id!r}") from None


def _lanes(registry: Registry, first: int) -> list[Device]:
    """Each hosted model's lanes, `concurrency` of them, numbered on from `first` (after the devices)."""
    lanes = [(spec.name, n) for spec in registry.models.values() if spec.hosted for n in range(1, spec.concurrency + 1)]
    return [Device(first + i, f"{name} lane {n}", lane=name) for i, (name, n) in enumerate(lanes)]


def _check_hosted(model: ModelSpec, job: JobSpec) -> None:
    """What a hosted model's job would be refused for once sent, refused now: its key's variable
    unset (RegistryError), what its provider cannot take (SpecError)."""
    if (problem := key_problem(model)) is not None:
        raise RegistryError(problem)
    provider(model.kind).check(model, job)


def _current(job: Job, run: Run) -> bool:
    """Whether `run` is the job's attempt now and still running (not cancelled, nor retried since)."""
    return job.run is run and job.status == Status.RUNNING


def _legs_to_run(job: Job) -> Iterator[Leg | None]:
    """The legs of a job's flow still to run, worked out one at a time as the ones before end
    (None: a job without a flow, one message)."""
    for leg in legs(job.spec) or [None]:
        if leg is not None and leg.hands_over(job.spec) and len(_made(job, leg)) == len(job.spec.seeds):
            continue  # every image went through it before the job was resumed
        yield leg


def _made(job: Job, leg: Leg | None) -> set[int]:
    """The images that need not go through `leg` (None: the whole job): finished, or (a leg
    before the flow's last) through its last stage already, before the job was resumed."""
    made = {image["image"] for image in job.images}
    if leg is not None and leg.hands_over(job.spec):
        made |= {stage["image"] for stage in job.stages if stage["stage"] == leg.last}
    return made


def _inputs(job: Job, leg: Leg, made: set[int]) -> dict[str, dict[str, str]]:
    """What each image the leg renders starts from: the flow's init image, or the image of the
    stage before the leg (with its latents where the leg starts with a refine)."""
    indices = [i for i in range(len(job.spec.seeds)) if i not in made]
    if leg.first == 0:
        return {str(i): {"image": job.spec.init_image} for i in indices} if job.spec.init_image else {}
    handed = {stage["image"]: stage for stage in job.stages if stage["stage"] == leg.first - 1}
    needs = ("path", "latents") if job.spec.stages[leg.first].kind == "refine" else ("path",)
    missing = [f"image {i}'s {need}" for i in indices for need in needs if not (handed.get(i) or {}).get(need)]
    if missing:
        raise ValueError(f"{job.id}: the record of stage {leg.first - 1} lacks {', '.join(missing)}, which stage "
                         f"{leg.first} starts from; retry the job to render the flow from its start")
    return {str(i): {"image": handed[i]["path"], "pixel_sha256": handed[i].get("pixel_sha256"),
                     **({"latents": handed[i]["latents"]} if "latents" in needs else {})} for i in indices}


def _identity_or_none(folder: Path) -> dict[str, Any] | None:
    try:
        return model_identity(folder)
    except (OSError, ValueError) as e:
        log.warning("could not identify the model in %s: %s", folder, e)
        return None


def _check_numbered(devices: list[Device]) -> None:
    """ValueError unless `devices` are some, numbered 0..N-1 in order (what models.yaml's pins name)."""
    if not devices:
        raise ValueError("devices: no device to render on")
    indices = [device.index for device in devices]
    if indices != list(range(len(devices))):
        raise ValueError(f"devices: numbered 0 to {len(devices) - 1} in order, not {', '.join(map(str, indices))}")


def _default_budget_gb(device: Device) -> float:
    """90 % of a GPU's memory, else half the RAM (CPU workers share it with the system)."""
    gpu = device.memory_bytes
    return round((gpu * 0.9 if gpu else psutil.virtual_memory().total * 0.5) / 1e9, 2)
