"""`diffdeck bench fleet`: a mixed queue (renders, A/B sets and grids over several models) simulated
on 1, 2, 4 and 8 GPUs under three placements: diffdeck's (diffdeck.engines.queue.placement, the code
the Dispatcher runs), round-robin, and one instance per GPU without model affinity (each idle GPU
takes the next job and loads its model in place of the one it holds).

A discrete-event simulation, seeded: no process and no GPU. A job takes its model's load time where
its model loads, then for each image its steps times the model's step time plus the image's decode
and save: how the placements compare at scale without the GPUs to run them.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diffdeck.engines.core.text import visible
from diffdeck.engines.queue.placement import Gpu, Plan, QueuedJob, Start, evictions, place, started
from diffdeck.engines.record.session import Session, SessionError

GPU_COUNTS = (1, 2, 4, 8)
GPU_BUDGET_GB = 21.6  # a 24 GB GPU at the Dispatcher's default share, 90 %
MODELS = 6  # a session's models are simulated as fine-tunes of the same cost up to this many
SUBMISSIONS = 150
INTERVAL_S = 1.0  # mean time between submissions (exponential)


@dataclass(frozen=True)
class ModelCost:
    name: str
    memory_gb: float
    load_s: float
    step_s: float
    image_s: float  # an image's decode and save
    steps: int  # its default


# Stated, not measured here: SD 1.5-class at 512x512 and SDXL-class at 1024x1024 in half precision
# on a 24 GB GPU of the RTX 4090 kind, weights loaded from the page cache.
SD_CLASS = (
    *(ModelCost(f"sd15-{tag}", memory_gb=2.5, load_s=3.0, step_s=0.05, image_s=0.05, steps=25) for tag in "abc"),
    *(ModelCost(f"sdxl-{tag}", memory_gb=8.0, load_s=8.0, step_s=0.15, image_s=0.3, steps=30) for tag in "abc"),
)


@dataclass(frozen=True)
class Work:
    """A simulated job: what the queue sees of it, and what rendering it takes."""

    job: QueuedJob
    steps: int
    images: int

    def render_s(self, cost: ModelCost) -> float:
        return self.images * (self.steps * cost.step_s + cost.image_s)


@dataclass(frozen=True)
class Outcome:
    placement: str
    gpus: int
    images: int
    seconds: float  # from the first submission to the last image
    mean_wait_s: float  # from a job's submission to its first step: queue and load
    loads: int

    @property
    def images_per_minute(self) -> float:
        return 60 * self.images / self.seconds


Placer = Callable[[Sequence[Gpu], Sequence[QueuedJob], float], Plan]


def round_robin(count: int) -> Placer:
    """The k-th job submitted goes to GPU k mod `count`, whatever it holds; each GPU takes its own
    jobs in order and keeps models warm within its budget, least recently used evicted first."""
    lanes: dict[str, int] = {}

    def placer(gpus: Sequence[Gpu], queue: Sequence[QueuedJob], now: float) -> Plan:
        for job in queue:
            lanes.setdefault(job.id, len(lanes) % count)
        starts = []
        for gpu in gpus:
            job = next((job for job in queue if lanes[job.id] == gpu.index), None)
            if not gpu.busy and job is not None:
                warm = gpu.holds(job.model)
                starts.append(Start(job.id, gpu.index, load=not warm,
                                    evict=() if warm else evictions(gpu, job.memory_gb) or ()))
        return Plan(tuple(starts), {})

    return placer


def no_affinity(gpus: Sequence[Gpu], queue: Sequence[QueuedJob], now: float) -> Plan:
    """Each idle GPU, in order, takes the next job and holds only its model."""
    idle = [gpu for gpu in gpus if not gpu.busy]
    return Plan(tuple(Start(job.id, gpu.index, load=not gpu.holds(job.model),
                            evict=tuple(m.name for m in gpu.warm if m.name != job.model))
                      for gpu, job in zip(idle, queue)), {})


def placements(count: int) -> dict[str, Placer]:
    return {"diffdeck": place, "round-robin": round_robin(count),
            "one instance per GPU": no_affinity}


def simulate(work: Sequence[Work], costs: dict[str, ModelCost], gpus: int, placer: Placer,
             budget_gb: float = GPU_BUDGET_GB) -> tuple[float, list[float], int]:
    """Run the queue to its end: the second its last image is done, each job's wait, the model loads."""
    arrivals = deque(sorted(work, key=lambda w: w.job.submitted))
    render_s = {w.job.id: w.render_s(costs[w.job.model]) for w in work}
    fleet = {index: Gpu(index, budget_gb) for index in range(gpus)}
    queue: list[QueuedJob] = []
    running: list[tuple[float, int, str]] = []  # (when it ends, GPU, model)
    waits: list[float] = []
    loads, now, wake = 0, 0.0, None
    while arrivals or running or queue:
        moments = [t for t in (arrivals[0].job.submitted if arrivals else None,
                               running[0][0] if running else None, wake) if t is not None]
        if not moments:
            raise RuntimeError("queued jobs that no GPU can take")
        now = min(moments)
        while arrivals and arrivals[0].job.submitted <= now:
            queue.append(arrivals.popleft().job)
        while running and running[0][0] <= now:
            _, index, model = heapq.heappop(running)
            fleet[index] = replace(fleet[index], busy=False, warm=tuple(
                replace(m, last_used=now) if m.name == model else m for m in fleet[index].warm))
        plan = placer(list(fleet.values()), queue, now)
        queue = [replace(job, passed_over=plan.passed_over.get(job.id, job.passed_over)) for job in queue]
        for start in plan.starts:
            job = next(job for job in queue if job.id == start.job)
            queue.remove(job)
            load_s = costs[job.model].load_s if start.load else 0.0
            waits.append(now + load_s - job.submitted)
            loads += start.load
            fleet[start.gpu] = started(fleet[start.gpu], start, job, now)
            heapq.heappush(running, (now + load_s + render_s[job.id], start.gpu, job.model))
        wake = plan.wake_at
    return now, waits, loads


def outcome(work: Sequence[Work], costs: Sequence[ModelCost], gpus: int, name: str, placer: Placer) -> Outcome:
    end, waits, loads = simulate(work, {cost.name: cost for cost in costs}, gpus, placer)
    first = min(w.job.submitted for w in work)
    return Outcome(name, gpus, sum(w.images for w in work), end - first, statistics.fmean(waits), loads)


def mixed_queue(models: Sequence[ModelCost], submissions: int = SUBMISSIONS, seed: int = 0,
                interval_s: float = INTERVAL_S) -> tuple[list[Work], Counter[str]]:
    """A working session's queue, and how many of each kind of submission it has: renders; A/B sets
    (two jobs, of one model or two); grids (3x3 of steps and guidance on one model, or three models
    by two guidances). A few models are used most (the k-th as often as 1/k)."""
    rng = random.Random(seed)
    weights = [1 / rank for rank in range(1, len(models) + 1)]
    work: list[Work] = []
    kinds: Counter[str] = Counter()
    now = 0.0
    for _ in range(submissions):
        now += rng.expovariate(1 / interval_s)
        kind = rng.choices(("render", "A/B set", "grid"), weights=(5, 3, 2))[0]
        kinds[kind] += 1
        model = rng.choices(models, weights)[0]
        images = rng.choice((1, 2, 4))
        if kind == "render":
            jobs = [(model, model.steps)]
        elif kind == "A/B set":
            other = model if rng.random() < 0.5 else rng.choices(models, weights)[0]
            jobs = [(model, model.steps), (other, other.steps)]
        elif rng.random() < 0.5:
            jobs = [(model, round(model.steps * scale)) for scale in (0.6, 1.0, 1.4) for _ in range(3)]
        else:
            jobs = [(m, m.steps) for m in rng.sample(list(models), 3) for _ in range(2)]
        for cost, steps in jobs:
            job = QueuedJob(f"job-{len(work) + 1:04d}", cost.name, now, cost.memory_gb)
            work.append(Work(job, steps, images))
    return work, kinds


@dataclass
class _Samples:
    """What a session recorded of one model's jobs."""

    steps: list[int] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    image_s: list[float] = field(default_factory=list)
    memory_gb: list[float] = field(default_factory=list)

    def add(self, job: dict[str, Any], steps: int) -> None:
        self.steps.append(steps)
        if job.get("timings", {}).get("load_s", 0) > 0:
            self.load_s.append(job["timings"]["load_s"])
        for image in job["images"]:
            timings = image.get("timings", {})
            if timings.get("denoise_s", 0) > 0:
                self.step_s.append(timings["denoise_s"] / steps)
            self.image_s.append(timings.get("decode_s", 0) + timings.get("save_s", 0))
            if image.get("peak_memory"):
                self.memory_gb.append(image["peak_memory"] / 1e9)

    def cost(self, name: str) -> ModelCost | None:
        """None until a job loaded the model and an image has its denoise time."""
        if not (self.load_s and self.step_s):
            return None
        return ModelCost(name, max(self.memory_gb, default=0.0), statistics.median(self.load_s),
                         statistics.median(self.step_s), statistics.median(self.image_s),
                         round(statistics.median(self.steps)))


def recorded_costs(folder: Path) -> list[ModelCost]:
    """The step, image and load times and the peak memory of each model a session rendered with
    (its finished jobs without flow stages), as fine-tunes of the same cost up to `MODELS` models."""
    samples: dict[str, _Samples] = {}
    for job in Session.open(folder, create=False).jobs.values():
        spec = job["spec"]
        steps = spec.get("steps")
        if job["status"] == "done" and not spec.get("stages") and isinstance(steps, int) and steps > 0:
            samples.setdefault(spec["model"], _Samples()).add(job, steps)
    costs = [cost for name, s in sorted(samples.items()) if (cost := s.cost(name))]
    if not costs:
        raise SessionError(f"{folder} has no finished job whose model it loaded (a load time) and whose images "
                           "have their denoise times; nothing to simulate with")
    for cost in costs:
        if cost.memory_gb > GPU_BUDGET_GB:
            raise SessionError(f"{folder}: {visible(cost.name)} peaked at {cost.memory_gb:.1f} GB, past a simulated "
                               f"GPU's budget of {GPU_BUDGET_GB:g} GB")
    copies = math.ceil(MODELS / len(costs))
    return costs if copies == 1 else [replace(c, name=f"{c.name}-{i}") for c in costs for i in range(1, copies + 1)]


def table(outcomes: Sequence[Outcome]) -> list[str]:
    lines = [f"{'GPUs':>4}  {'placement':<22}{'images/min':>11}{'mean wait s':>13}{'loads':>7}"]
    for o in outcomes:
        lines.append(f"{o.gpus:>4}  {o.placement:<22}{o.images_per_minute:>11.1f}{o.mean_wait_s:>13.1f}{o.loads:>7}")
    return lines


def run_fleet_bench(session: Path | None = None, seed: int = 0) -> int:
    costs = recorded_costs(session) if session else list(SD_CLASS)
    work, kinds = mixed_queue(costs, seed=seed)
    print(f"diffdeck bench fleet: a simulation, not a measurement (seed {seed})")
    print(f"queue: {SUBMISSIONS} submissions, {INTERVAL_S:g} s apart on average (exponential): "
          + ", ".join(f"{kinds[k]} {k}s" for k in ("render", "A/B set", "grid"))
          + f"; {len(work)} jobs, {sum(w.images for w in work)} images (1, 2 or 4 a job)")
    where = f"recorded in {visible(str(session))}" if session else "stated SD-class constants, fp16, page-cached weights"
    print(f"models ({where}); each GPU's budget {GPU_BUDGET_GB:g} GB (a 24 GB GPU at 90 %):")
    for c in costs:
        print(f"  {visible(c.name):<16} {c.memory_gb:5.2f} GB  load {c.load_s:5.2f} s  {c.step_s:.4f} s/step  "
              f"{c.steps} steps  +{c.image_s:.3f} s/image (decode, save)")
    print("assumed: one job at a time per GPU; GPUs do not slow each other (own PCIe link, weights in the "
          "page cache); stopping a model is free; wait = submission to first step (queue and load)")
    outcomes = [outcome(work, costs, count, name, placer)
                for count in GPU_COUNTS for name, placer in placements(count).items()]
    print("\n".join(table(outcomes)))
    return 0
