"""What the workbench shows, folded from Dispatcher events. No widgets here: the app applies
events to a Board and hands the widgets what they need to draw.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Literal

from diffdeck.engines.core.budgets import usd
from diffdeck.engines.core.events import UNFINISHED, Event, JobRecord, Status, render_seconds
from diffdeck.engines.core.flows import denoising_steps, stages_from
from diffdeck.engines.core.validation import is_cost
from diffdeck.engines.record.session import Session
from diffdeck.engines.record.spend import Spent, job_spent, today, total

HISTORY = 60  # telemetry samples kept for the sparklines (about a minute)
# The board's own status: a job of a reopened session that could not be queued again.
NOT_RESUMED = "not resumed"
RowStatus = Status | Literal["not resumed"]


@dataclass
class JobRow(JobRecord):
    """A job's record, with what the board draws of its run: the step, the rate, the preview."""

    status: RowStatus = Status.QUEUED
    preview: bytes | None = None  # the running image's latest step preview (JPEG)
    device: int | None = None  # the index of the device it runs on (or ran on last)
    spent: Spent = Spent()  # what its hosted images cost, every attempt's (as its session keeps it)

    @property
    def image(self) -> int:
        """The image being rendered, from its last step (`progress`, as the Dispatcher keeps it)."""
        return int(self.progress.get("image") or 0)

    @property
    def step(self) -> int:
        return int(self.progress.get("step") or 0)

    @property
    def total(self) -> int:
        return int(self.progress.get("total") or 0)

    @property
    def it_s(self) -> float | None:
        return self.progress.get("it_s")

    @property
    def waiting(self) -> str | None:
        """What a hosted model's job waits for, with how long it has (its worker's words: "waiting for
        ideogram 12 s", a retry's), in place of steps it does not have."""
        return self.progress.get("waiting") or None

    @property
    def hosted(self) -> bool:
        """Rendered by a provider: its images record their requests."""
        return any(hosted_record(image) is not None for image in self.images)

    @property
    def count(self) -> int:
        count = self.spec.get("count")
        return count if isinstance(count, int) and count > 0 else 1

    def render_s(self) -> float | None:
        """Time spent making its images: no queue wait, no load."""
        return render_seconds(self.timings)

    @property
    def stage_steps(self) -> list[int]:
        """The steps of each stage of one image: a job without a flow has one stage, as its steps
        counter says (a scheduler may count otherwise than `steps`). A hosted model's job has no
        steps (none are sent): each image counts as one, its request."""
        return self._flow_steps or [self.total or int(self.spec.get("steps") or 0) or 1]

    @cached_property
    def _flow_steps(self) -> list[int]:
        """A flow's steps a stage, read once: the board asks on every redraw, for every row."""
        return denoising_steps(stages_from(self.spec.get("stages") or ()))

    @property
    def steps_done(self) -> int:
        per_stage = self.stage_steps
        stage = int(self.progress.get("stage") or 0)
        return self.image * sum(per_stage) + sum(per_stage[:stage]) + self.step

    @property
    def steps_total(self) -> int:
        return self.count * sum(self.stage_steps)

    def eta_s(self) -> float | None:
        """Seconds left at the measured step rate; None before a rate is known."""
        if self.status != Status.RUNNING or not self.it_s:
            return None
        return max(0, self.steps_total - self.steps_done) / self.it_s

    def steps_left(self) -> int:
        """Steps still to render: a job resumed with some images kept renders only the rest."""
        return max(0, self.steps_total - len(self.images) * sum(self.stage_steps))


@dataclass
class DeviceRow:
    """A device of the engine's (its DeviceSlot state): a GPU, a fake one for tests, or the CPU."""

    index: int
    name: str
    gpu: bool = True
    fake: bool = False
    budget_gb: float | None = None
    uuid: str | None = None

    @property
    def tag(self) -> str:
        """Its short name in a queue cell or the status: gpu1, cpu."""
        return f"gpu{self.index}" if self.gpu else "cpu"

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DeviceRow:
        return cls(int(state["index"]), str(state["name"]), bool(state.get("gpu", True)), bool(state.get("fake")),
                   state.get("budget_gb"), state.get("uuid"))

    def workers(self, board: Board) -> dict[str, tuple[str, int]]:
        """Its workers: model -> (loading / warm, pid)."""
        return {model: warm for (model, device), warm in board.warm.items() if device == self.index}

    def jobs(self, board: Board) -> list[JobRow]:
        """The job it runs (one at a time; a list, for a moment between two)."""
        return [row for row in board.running() if row.device == self.index]


@dataclass
class DaySpend:
    """The day's spend on hosted models: what the spend ledger held when the engine started, plus what
    this session's images have cost since; and the day's budget (None: none is set)."""

    date: str
    usd: float  # spent on `date`
    budget_usd: float | None = None

    @property
    def today_usd(self) -> float:
        """Spent today: past midnight, nothing yet."""
        return self.usd if self.date == today() else 0.0

    def paid(self, cost: Any) -> None:
        """One more hosted image, of `cost` (as the ledger, it counts what is known)."""
        if is_cost(cost):
            self.date, self.usd = today(), round(self.today_usd + cost, 6)


def no_estimate(spec: dict[str, Any]) -> float | None:
    return None


@dataclass
class Board:
    jobs: dict[str, JobRow] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # jobs that left the queue, in that order
    queue: list[str] = field(default_factory=list)  # queued jobs, in the Dispatcher's order
    telemetry: dict[str, Any] | None = None
    memory_history: dict[int, deque] = field(default_factory=dict)  # GPU index -> used fractions
    ram_history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    devices: dict[int, DeviceRow] = field(default_factory=dict)  # by index, as the engine reported them
    warm: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)  # (model, device) -> (loading / warm, pid)
    worker_device: dict[int, int] = field(default_factory=dict)  # worker pid -> its device's index
    paused: bool = False
    last_done: str | None = None
    set_ids: list[str] = field(default_factory=list)  # A/B sets and grids, oldest first
    variant_of: dict[str, tuple[str, str]] = field(default_factory=dict)  # job id -> (set id, variant label)
    # model -> seconds a step (a hosted model's: an image), as its last job took
    step_s: dict[str, float] = field(default_factory=dict)
    lanes: dict[str, int] = field(default_factory=dict)  # each hosted model's lanes: how many of its jobs run at once
    # what a job (its spec) is estimated to cost on hosted models, as the engine prices it; None: nothing, or not known
    estimate: Callable[[dict[str, Any]], float | None] = no_estimate
    day: DaySpend | None = None  # where the engine keeps a spend ledger
    _estimates: dict[str, float | None] = field(default_factory=dict, init=False)  # job id -> estimate, asked once

    def load(self, session: Session) -> None:
        """The jobs of a reopened session, as recorded; image paths made absolute as events have them."""
        for set_id, entry in session.sets.items():
            self._on_set(None, {"set": set_id, **entry})
        for job_id, job in session.jobs.items():
            row = self.jobs[job_id] = JobRow.from_dict({"id": job_id, **job})
            row.spent = job_spent(job)
            row.images = [{**image, "path": str(session.folder / image["path"])} for image in row.images]
            row.stages = [{**stage, "path": str(session.folder / stage["path"])} for stage in row.stages]
            (self.queue if row.status in UNFINISHED else self.history).append(job_id)
            if row.status == Status.RUNNING:
                row.status = Status.QUEUED  # it is queued again
            elif row.status == Status.DONE:
                self.last_done = job_id
                self._measure(row)

    def apply(self, event: Event) -> None:
        handler = getattr(self, f"_on_{event.type}", None)
        if handler is not None:
            handler(event.job, event.data)

    def images(self) -> list[tuple[JobRow, dict[str, Any]]]:
        """Every finished image of the session, oldest first."""
        return [(row, image) for row in self.rows() for image in sorted(row.images, key=lambda i: i["image"])]

    def rows(self) -> list[JobRow]:
        return [self.jobs[job_id] for job_id in self.history + self.queue]

    def newest_set(self) -> str | None:
        return self.set_ids[-1] if self.set_ids else None

    def running(self) -> list[JobRow]:
        """The running jobs: one a device."""
        return [row for row in self.jobs.values() if row.status == Status.RUNNING]

    def estimate_of(self, row: JobRow) -> float | None:
        """What the job is estimated to cost on hosted models (None: nothing, or not known)."""
        if row.id not in self._estimates:
            self._estimates[row.id] = self.estimate(row.spec)
        return self._estimates[row.id]

    def spent(self) -> Spent:
        """What the session's hosted images cost."""
        return total(row.spent for row in self.jobs.values())

    def set_day(self, spent: tuple[float, float | None] | None) -> None:
        """What the engine's spend ledger holds for today, and the day's budget (None: no ledger here)."""
        self.day = None if spent is None else DaySpend(today(), *spent)

    def set_devices(self, states: Iterable[dict[str, Any]]) -> None:
        """The engine's devices, as its state lists them (DeviceSlot.state)."""
        self.devices = {row.index: row for row in map(DeviceRow.from_state, states)}

    @property
    def several_devices(self) -> bool:
        return len(self.devices) > 1

    def device_tags(self) -> dict[str, str]:
        """Job id -> the device each running job is on (gpu1), where the engine has several (with
        one there is nothing to say). A hosted model's job runs on none (its lane is not a device)."""
        if not self.several_devices:
            return {}
        return {row.id: self.devices[row.device].tag for row in self.running() if row.device in self.devices}

    def warm_models(self) -> dict[str, str]:
        """Each model with a worker: warm where any of its replicas is, else loading."""
        states: dict[str, str] = {}
        for (model, _device), (state, _pid) in self.warm.items():
            states[model] = "warm" if "warm" in (state, states.get(model)) else state
        return states

    def queue_eta(self) -> tuple[float, int]:
        """Seconds until the queue is empty, and how many jobs are on models not measured yet (not
        counted in it). Each device first finishes its running job (at that job's own rate), then
        the queued jobs, in order, each start on the device that frees first and take their model's
        measured rate: the Dispatcher's order on idle devices. A hosted model's jobs do the same on
        its lanes, apart from the devices. Model loads, warm-model affinity and pinned GPUs are not
        counted."""
        unmeasured = 0

        def seconds(row: JobRow) -> float:
            nonlocal unmeasured
            eta, step_s = row.eta_s(), self.step_s.get(str(row.spec.get("model")))
            if eta is None and step_s is None:
                unmeasured += 1
                return 0.0
            return eta if eta is not None else step_s * row.steps_left()

        running = self.running()
        local = [row for row in running if row.spec.get("model") not in self.lanes]
        count = max([len(self.devices), len(local), 1, *((row.device or 0) + 1 for row in local)])
        # when each device, and each lane of each hosted model, is free, from now
        free_at = {None: [0.0] * count, **{model: [0.0] * max(1, lanes) for model, lanes in self.lanes.items()}}
        for row in running:
            slots = free_at.get(row.spec.get("model"), free_at[None])
            slots[row.device if row in local and row.device is not None else slots.index(min(slots))] += seconds(row)
        for row in (self.jobs[job_id] for job_id in self.queue):
            slots = free_at.get(row.spec.get("model"), free_at[None])
            slots[slots.index(min(slots))] += seconds(row)
        return max(max(slots) for slots in free_at.values()), unmeasured

    def _measure(self, row: JobRow) -> None:
        """A done job's render time per step (decode and save included) stands for its model's rate."""
        render_s, steps = row.render_s(), len(row.images) * sum(row.stage_steps)
        if render_s and steps:
            self.step_s[str(row.spec.get("model"))] = render_s / steps

    # events

    def _on_set(self, job_id: None, data: dict[str, Any]) -> None:
        if data["set"] not in self.set_ids:
            self.set_ids.append(data["set"])
        for variant in data["variants"]:
            self.variant_of[variant["job"]] = (data["set"], variant["label"])

    def _on_queued(self, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs.get(job_id)
        if row is None:
            row = self.jobs[job_id] = JobRow(job_id, data["spec"])
        else:  # a retry, or a restored job: keep what it already made
            row.status, row.error, row.progress, row.preview = Status.QUEUED, None, {}, None
        self._leave(job_id)
        self.queue.insert(data.get("position", len(self.queue)), job_id)

    def _on_moved(self, job_id: str, data: dict[str, Any]) -> None:
        self._leave(job_id)
        self.queue.insert(data["position"], job_id)

    def _on_started(self, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs[job_id]
        row.status, row.progress = Status.RUNNING, {"image": 0, "step": 0, "total": int(row.spec.get("steps") or 0)}
        row.device = data.get("device", row.device)
        row.timings = {k: data[k] for k in ("queue_wait_s", "load_s") if k in data}

    def _leave(self, job_id: str) -> None:
        for ids in (self.queue, self.history):
            if job_id in ids:
                ids.remove(job_id)

    def _on_step(self, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs[job_id]
        row.progress, row.device = data, data.get("device", row.device)  # a flow's later leg: maybe another

    def _on_preview(self, job_id: str, data: dict[str, Any]) -> None:
        self.jobs[job_id].preview = base64.b64decode(data["data"])

    def _on_image(self, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs[job_id]
        row.images = [i for i in row.images if i["image"] != data["image"]] + [data]
        row.preview = None
        if "cost_usd" in data:  # a hosted image: paid for, made again or not
            row.spent = row.spent.paid(data["cost_usd"])
            if self.day is not None:
                self.day.paid(data["cost_usd"])

    def _on_stage_image(self, job_id: str, data: dict[str, Any]) -> None:
        """A flow's image of a stage before its last (shown in the image view)."""
        row = self.jobs[job_id]
        row.stages = [s for s in row.stages if (s["stage"], s["image"]) != (data["stage"], data["image"])] + [data]

    def _on_quality(self, job_id: str, data: dict[str, Any]) -> None:
        """What an image measures (diffdeck.engines.sets.quality), recorded after the image."""
        row = self.jobs.get(job_id)
        if row is not None:
            row.images = [{**i, "quality": data["quality"]} if i["image"] == data["image"] else i for i in row.images]

    def _on_done(self, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs[job_id]
        row.status, row.timings, row.peak_memory = Status.DONE, {**row.timings, **data["timings"]}, data["peak_memory"]
        row.progress, row.preview = {}, None
        self.last_done = job_id
        self._measure(row)

    def _finish(self, status: RowStatus, job_id: str, data: dict[str, Any]) -> None:
        row = self.jobs[job_id]
        row.status, row.error, row.progress, row.preview = status, data.get("error"), {}, None
        if job_id in self.queue:  # cancelled or held before it ran
            self._leave(job_id)
            self.history.append(job_id)

    def _on_failed(self, job_id, data):
        self._finish(Status.FAILED, job_id, data)

    def _on_cancelled(self, job_id, data):
        self._finish(Status.CANCELLED, job_id, data)

    def _on_held(self, job_id, data):
        self._finish(Status.HELD, job_id, data)

    def not_resumed(self, job_id: str, error: str) -> None:
        """A job of the reopened session that could not be queued again (its model is gone...)."""
        self._finish(NOT_RESUMED, job_id, {"error": error})

    def _on_dequeued(self, job_id: str, data: dict[str, Any]) -> None:
        self.jobs[job_id].status = Status.RUNNING
        self.jobs[job_id].device = data.get("device")  # an attached engine's preface says where it runs
        self._leave(job_id)
        self.history.append(job_id)

    def _on_worker_spawned(self, job_id, data):
        self.worker_device[data["pid"]] = int(data.get("device") or 0)
        self.warm[(data["model"], self.worker_device[data["pid"]])] = ("loading", data["pid"])

    def _on_loading(self, job_id, data):
        device = self.worker_device.get(data["pid"], 0)
        self.warm[(data["model"], device)] = ("loading", data["pid"])
        if job_id in self.jobs:  # a later leg of a flow may load on another device than its first
            self.jobs[job_id].device = device

    def _on_worker_ready(self, job_id, data):
        self.warm[(data["model"], self.worker_device.get(data["pid"], 0))] = ("warm", data["pid"])

    def _on_worker_exited(self, job_id, data):
        key = (data["model"], self.worker_device.pop(data["pid"], int(data.get("device") or 0)))
        if self.warm.get(key, (None, None))[1] == data["pid"]:  # not its replacement
            del self.warm[key]

    _on_worker_evicted = _on_worker_exited

    def _on_paused(self, job_id, data):
        self.paused = True

    def _on_resumed(self, job_id, data):
        self.paused = False

    def _on_telemetry(self, job_id: str | None, data: dict[str, Any]) -> None:
        self.telemetry = data
        for gpu in data.get("gpus") or ():
            history = self.memory_history.setdefault(gpu["index"], deque(maxlen=HISTORY))
            history.append(gpu["memory_used"] / gpu["memory_total"] if gpu["memory_total"] else 0.0)
        if data.get("ram_total"):
            self.ram_history.append(data["ram_used"] / data["ram_total"])


def hosted_record(image: dict[str, Any]) -> dict[str, Any] | None:
    """What a hosted model's image records of its request (None: a local model's image)."""
    hosted = image.get("hosted")
    return hosted if isinstance(hosted, dict) else None


def cost_text(cost: Any) -> str:
    """A hosted image's cost as recorded: "$0.05", or where its model's price is not known, so."""
    return usd(cost) if is_cost(cost) else "not known (its model's price is not known)"


def reproducible(image: dict[str, Any]) -> bool:
    """Whether rendering it again with its seed gives it back: a local image, or a seeded provider's."""
    hosted = hosted_record(image)
    return hosted is None or hosted.get("reproducible") is True


def pressure(fraction: float) -> str:
    """Memory pressure in words, as well as the colour the widgets give it."""
    if fraction >= 0.9:
        return "critical"
    if fraction >= 0.75:
        return "high"
    return "ok"
