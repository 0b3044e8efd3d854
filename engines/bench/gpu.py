"""`diffdeck bench gpu`: the claims that matter on a GPU, measured in one prepared run of about ten
minutes, printed and written as a Markdown table.

It builds SD 1.5-, SDXL-, SD3.5 Medium- and Flux.1 dev-sized pipelines with random weights from the
real component configs (diffdeck.engines.bench.gpu_families; no download), then measures:
- per image, warm, at each family's usual size and steps: bare diffusers in one process against
  diffdeck (Dispatcher and worker), the median of paired rounds; load time; peak memory from torch
  and from NVML (what the workbench's panel shows) side by side;
- isolation: SDXL then Flux then SDXL ... in one process, as a script that keeps its models does,
  against diffdeck's workers under the same budget (on a GPU, the rest of its memory is held by a
  ballast): out-of-memory errors, reserved minus allocated, time per image;
- the memory budget and its LRU under pressure: a queue that cycles through more models than fit;
- batching: one batched call against one call per image, at 512x512 and 1024x1024: throughput, and
  whether the pixels are those of the single-image renders;
- offload modes and dtypes: time and peak memory.
With --toy the same code runs tiny pipelines on a CPU (the test suite's run). Each row is guarded: a
failure (an OOM, a missing class) is a row that says so; rows past the time budget are skipped, named.

UI side: torch runs in diffdeck.engines.bench.gpu_side processes and in diffdeck's workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from diffdeck.engines import __version__
from diffdeck.engines.bench.gpu_families import DEFAULT_BUDGET_S, FAMILIES, Family, load
from diffdeck.engines.core.events import EventKind, Status
from diffdeck.engines.core.registry import Registry
from diffdeck.engines.core.spec import JobSpec, ModelSpec
from diffdeck.engines.core.text import visible
from diffdeck.engines.core.worker_protocol import decode, encode
from diffdeck.engines.queue.dispatcher import Dispatcher, Job
from diffdeck.engines.queue.telemetry import Telemetry, nvml_text
from diffdeck.engines.queue.worker_handles import describe_exit

GRACE_S = 30  # past the budget, for the row under way before it is cut
NO_GPU = "skipped: no GPU"
BUDGET_SPENT = "skipped: time budget spent"
CUT = "cut: time budget spent"
ISOLATION_PAIR = ("sdxl", "flux")
OFFLOAD_FAMILY = "sdxl"
OFFLOAD_ROWS = (("auto", "none"), ("auto", "model"), ("auto", "sequential"), ("float32", "none"), ("bfloat16", "none"))
FAST_MODE_GAIN = 1.2  # batched throughput over one call per image worth offering a fast mode for
GB = 1e9


@dataclass(frozen=True)
class Scale:
    """How much each section renders: on a GPU, enough to measure within the budget; --toy, the least
    that still runs every path."""

    rounds: int
    isolation: tuple[str, ...]  # the in-process sequence, and diffdeck's
    pressure_steps: int | None  # the LRU queue's steps (None: each family's own)
    batches: tuple[tuple[str, int], ...]  # (family, images) rendered one by one and batched
    offload_steps: int | None
    cycles: int  # the LRU queue: every family built this many times over, then the first two again


FULL = Scale(rounds=3, isolation=("sdxl", "flux", "sdxl"), pressure_steps=4,
             batches=(("sd15", 16), ("sdxl", 4)), offload_steps=10, cycles=1)
# Each model a toy run loads in diffdeck is a worker process started, seconds on a CPU: the least that
# still switches models under the budget, and evicts under the LRU queue's pressure.
TOY = Scale(rounds=2, isolation=("sdxl", "flux"), pressure_steps=None, batches=(("sd15", 4), ("sdxl", 2)),
            offload_steps=None, cycles=0)


class SideError(Exception):
    """A request the torch side could not answer (its error), or the side died."""


class TorchSide:
    """A diffdeck.engines.bench.gpu_side process: started on first use, and again after it died or a
    request to it was cut off (its answer would otherwise come to the next request)."""

    def __init__(self):
        self._proc: asyncio.subprocess.Process | None = None
        self.hello: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    async def ask(self, op: str, /, **args: Any) -> dict[str, Any]:
        proc = await self._running()
        try:
            proc.stdin.write(encode(op, **args))
            await proc.stdin.drain()
            answer = await self._answer(proc)
        except BaseException:
            await self.close(grace_s=0)
            raise
        if not answer.get("ok"):
            raise SideError(answer["error"])
        return answer

    async def close(self, grace_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.stdin.close()  # it ends at the end of its input
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    async def _running(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "diffdeck.engines.bench.gpu_side", "--parent", str(os.getpid()),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            self.hello = await self._answer(self._proc)
        return self._proc

    @staticmethod
    async def _answer(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        line = await proc.stdout.readline()
        if not line:
            raise SideError(f"the torch side {describe_exit(await proc.wait())}; its log is above")
        return decode(line)


@dataclass
class Peak:
    bytes: int | None = None  # None: no watched process was listed


class MemoryWatch:
    """Each process's GPU memory as NVML reports it (what the workbench's panel shows), sampled
    20 times a second; the peak of the processes watched."""

    def __init__(self, nvml: Any):
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())] if nvml else []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def describe(self) -> str | None:
        """The GPUs and the driver, for the table's header."""
        if not self._handles:
            return None
        nvml = self._nvml
        try:
            gpus = [f"{nvml_text(nvml.nvmlDeviceGetName(h))} ({nvml.nvmlDeviceGetMemoryInfo(h).total / GB:.1f} GB)"
                    for h in self._handles]
            return f"{', '.join(gpus)}, driver {nvml_text(nvml.nvmlSystemGetDriverVersion())}"
        except nvml.NVMLError as e:
            return f"NVML could not say ({e})"

    @contextlib.asynccontextmanager
    async def peak(self, pids: Callable[[], Iterable[int | None]]):
        seen = Peak()
        if not self._handles:
            yield seen
            return
        sampler = asyncio.create_task(self._sample(pids, seen))
        try:
            yield seen
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            self._once(pids, seen)

    async def _sample(self, pids: Callable[[], Iterable[int | None]], seen: Peak) -> None:
        while True:
            self._once(pids, seen)
            await asyncio.sleep(0.05)

    def _once(self, pids: Callable[[], Iterable[int | None]], seen: Peak) -> None:
        watched = set(pids())
        for handle in self._handles:
            try:
                processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except self._nvml.NVMLError:
                continue
            for process in processes:
                if process.pid in watched and process.usedGpuMemory is not None:
                    seen.bytes = max(seen.bytes or 0, process.usedGpuMemory)


class Clock:
    def __init__(self, budget_s: float):
        self.date = datetime.now(timezone.utc)
        self.started = time.monotonic()
        self.deadline = self.started + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def spent(self) -> bool:
        return self.left() <= 0


@dataclass
class Section:
    title: str
    about: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    labels: int = 1  # the columns that name a row

    @property
    def name(self) -> str:
        return self.title.split(":")[0].split(" (")[0]

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.about, "", _row(self.columns), "|" + "---|" * len(self.columns)]
        lines += [_row(row + ("",) * (len(self.columns) - len(row))) for row in self.rows]
        lines += ["", *(f"- {note}" for note in self.notes)] if self.notes else []
        return "\n".join(lines) + "\n"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(visible(cell).replace("|", "\\|") for cell in cells) + " |"


@dataclass
class Run:
    """One `bench gpu`: its choices, its clock, the torch side, what was built, what was skipped."""

    families: tuple[str, ...]
    toy: bool
    scale: Scale
    clock: Clock
    work: Path
    side: TorchSide = field(default_factory=TorchSide)
    watch: MemoryWatch = field(default_factory=lambda: MemoryWatch(_gpu_nvml()))
    registry: Registry = field(default_factory=lambda: Registry({}))
    problems: dict[str, str] = field(default_factory=dict)  # why a family was not built
    failures: int = 0

    @property
    def gpu(self) -> bool:
        """Whether torch renders on a GPU here: as the torch side says once started, else as NVML does."""
        return self.side.hello.get("device") == "cuda" if self.side.hello else self.watch.available

    def family(self, name: str) -> Family:
        return load(name, self.toy)

    def folder(self, name: str) -> str:
        return self.registry.get(name).source

    async def row(self, label: tuple[str, ...], measure: Callable[[], Awaitable[tuple[str, ...]]],
                  needs: Iterable[str] = ()) -> tuple[str, ...]:
        """A row: `label` and what `measure` found, or why not (a family not built, the time budget
        spent, a failure); cut when the budget and its grace run out."""
        if self.clock.spent:
            return (*label, BUDGET_SPENT)
        missing = [name for name in needs if name not in self.registry.models]
        if missing:
            return (*label, f"skipped: {missing[0]} " + (f"not built ({self.problems[missing[0]]})"
                                                         if missing[0] in self.problems else "not in --families"))
        try:
            return (*label, *await asyncio.wait_for(measure(), self.clock.left() + GRACE_S))
        except asyncio.TimeoutError:
            return (*label, f"{CUT}, {GRACE_S} s past it")
        except Exception as e:  # noqa: BLE001 - one failure is a row; the run goes on
            self.failures += 1
            return (*label, f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}")


def _gpu_nvml() -> Any:
    """The initialised NVML module where it sees a GPU, else None."""
    telemetry = Telemetry()
    return telemetry.nvml if telemetry.has_gpu else None


# the sections


async def built(run: Run) -> list[Section]:
    section = Section("Pipelines", "Random weights from the real component configs (engines/bench/gpu_configs/), in "
                      "the dtype diffdeck's worker loads them in; synthetic tokenizers of the real types; a component "
                      "two pipelines share written once.",
                      ("family", "pipeline", "what", "weights GB", "dtype", "built in s"))
    models: dict[str, dict[str, Any]] = {}

    async def build() -> tuple[str, ...]:
        answer = await run.side.ask("build", families=list(run.families), toy=run.toy, out=str(run.work / "models"))
        models.update(answer["models"])
        return ()

    outcome = await run.row(("all",), build)
    if len(outcome) > 1:  # skipped, cut or failed: no family is built
        run.problems = dict.fromkeys(run.families, outcome[1])
        section.rows.append(outcome)
        return [section]
    specs = {}
    for name in run.families:
        family, model = run.family(name), models[name]
        if "problem" in model:
            run.problems[name] = model["problem"]
            run.failures += 1
            section.rows.append((name, family.pipeline, family.about, f"failed: {model['problem']}"))
        else:
            defaults = {key: value for key, value in family.spec().items() if key != "prompt"}
            specs[name] = ModelSpec(name, model["folder"], defaults=defaults)
            section.rows.append((name, family.pipeline, family.about, _gb(model["bytes"]), model["dtype"],
                                 f"{model['seconds']:.1f}"))
    run.registry = Registry(specs)
    return [section]


async def overhead(run: Run) -> list[Section]:
    section = Section(
        "Per image: bare diffusers against diffdeck",
        f"Warm, one image at a time at each family's usual size and steps; {run.scale.rounds} alternating rounds of "
        "one image by a bare `pipe(...)` and `image.save` in one process, then one image as a job of its own through "
        "the Dispatcher and its worker; medians. Load: the bare `from_pretrained` and move to the device; diffdeck's "
        "from the job leaving the queue to its worker ready (process start, imports, first sight's weight hashing), "
        "the worker's own load in brackets. Peak: torch's max_memory_allocated (RSS on a CPU) and NVML's per process.",
        ("family", "size, steps", "dtype", "bare s/image", "diffdeck s/image", "diffdeck/bare (paired)",
         "load s: bare", "load s: diffdeck", "peak torch GB: bare", "peak torch GB: diffdeck",
         "peak NVML GB: bare", "peak NVML GB: diffdeck"))
    for name in run.families:
        section.rows.append(await run.row((name,), lambda name=name: _overhead(run, name), needs=(name,)))
    return [section]


async def _overhead(run: Run, name: str) -> tuple[str, ...]:
    """A Dispatcher of its own for each family: its worker stops with it, as the bare side unloads."""
    try:
        async with Dispatcher(run.registry, run.work / "overhead") as dispatcher:
            return await _paired(run, dispatcher, name)
    finally:
        await _unload(run)


async def _paired(run: Run, dispatcher: Dispatcher, name: str) -> tuple[str, ...]:
    family = run.family(name)
    spec = family.spec()
    out = str(_folder(run.work / "bare"))
    loaded = await run.side.ask("load", folder=run.folder(name), family=family.family)
    await run.side.ask("render", spec=spec, seeds=[0], out=out)  # warm, as diffdeck's worker is
    first = _rendered(await _job(dispatcher, name, spec, seed=0))
    worker = dispatcher.workers[name]
    bare, ours, bare_peaks, our_peaks, bare_nvml, our_nvml = [], [], [], [], [], []
    for seed in range(1, run.scale.rounds + 1):
        async with run.watch.peak(lambda: [run.side.pid]) as peak:
            answer = await run.side.ask("render", spec=spec, seeds=[seed], out=out)
        bare.append(answer["seconds"])
        bare_peaks.append(answer["peak"])
        bare_nvml.append(peak.bytes)
        async with run.watch.peak(lambda: [worker.pid]) as peak:
            started = time.perf_counter()
            job = _rendered(await _job(dispatcher, name, spec, seed))
            ours.append(time.perf_counter() - started)
        our_peaks.append(job.peak_memory or 0)
        our_nvml.append(peak.bytes)
        print(f"  {name} round {seed}: bare {bare[-1]:.3f} s, diffdeck {ours[-1]:.3f} s", file=sys.stderr, flush=True)
    ratio = statistics.median(o / b for o, b in zip(ours, bare))
    return (f"{family.width}x{family.height}, {family.steps}", loaded["dtype"], _s(statistics.median(bare)),
            _s(statistics.median(ours)), f"{100 * (ratio - 1):+.1f} %", _s(loaded["load_s"]),
            f"{_s(first.timings['load_s'])} ({_s(worker.loaded['load_s'])})", _gb(max(bare_peaks)),
            _gb(max(our_peaks)), _nvml(run, bare_nvml), _nvml(run, our_nvml))


async def pressure(run: Run) -> list[Section]:
    """Isolation, then the LRU under pressure: one Dispatcher under one budget, the largest estimate of
    the isolation pair (else of every family built); on a GPU the torch side holds the rest of its
    memory as a ballast, so the budget is all there is for every process."""
    built = [name for name in run.families if name in run.registry.models]
    pair = [name for name in ISOLATION_PAIR if name in built]
    budget_gb = max((run.registry.memory_gb(name) for name in (pair if len(pair) == 2 else built)), default=0.0)
    where = "the GPU's free memory held down to it" if run.gpu else "on a CPU, the Dispatcher's budget of RAM"
    isolation = Section(
        f"Isolation: {' then '.join(run.scale.isolation)}, under a {budget_gb:.2f} GB budget",
        f"One image each in turn, at the usual size and steps ({where}). In one process: a script that keeps "
        "each model it loads and, on an out-of-memory error, drops the others and tries once more. diffdeck: a "
        "worker process per model, the least recently used evicted first to stay within the budget.",
        ("side", "images made", "OOM errors", "evictions (models dropped)", "s/image", "peak torch GB",
         "peak NVML GB (a process)", "reserved - allocated GB (max)"))
    queue = [*built] * run.scale.cycles + built[:2]
    lru = Section(
        "Memory budget and LRU under pressure",
        f"A queue cycling through more models than fit the {budget_gb:.2f} GB budget, submitted at once"
        + (f", {run.scale.pressure_steps} steps an image" if run.scale.pressure_steps else "")
        + ": the Dispatcher stops idle workers before a model would push the warm ones past the budget.",
        ("queue", "budget GB", "done", "failed", "OOM errors", "evictions", "loads", "evictions before any OOM"))
    if len(built) < 2:
        why = BUDGET_SPENT if run.clock.spent else "skipped: needs two families built"
        return [_whole(isolation, why), _whole(lru, why)]
    held = await run.row(("isolation and LRU",), lambda: _ballast(run, budget_gb, isolation))
    if len(held) > 1:  # the budget spent, or no ballast to be had
        return [_whole(isolation, held[1]), _whole(lru, held[1])]
    try:
        async with Dispatcher(run.registry, run.work / "pressure", memory_budget_gb=budget_gb) as dispatcher:
            events = dispatcher.subscribe()
            isolation.rows.append(await run.row(("in one process",), lambda: _in_one_process(run),
                                                needs=run.scale.isolation))
            isolation.rows.append(await run.row(("diffdeck workers",), lambda: _in_workers(run, dispatcher, events),
                                                needs=run.scale.isolation))
            lru.rows.append(await run.row((" ".join(queue),), lambda: _lru(run, dispatcher, events, queue, budget_gb)))
    finally:
        if run.gpu:
            await _release(run)
    return [isolation, lru]


async def _ballast(run: Run, budget_gb: float, section: Section) -> tuple[str, ...]:
    """On a GPU, all its free memory but the budget held by the torch side; on a CPU, nothing to hold."""
    if not run.gpu:
        return ()
    await run.side.ask("unload")
    held = await run.side.ask("ballast", leave_bytes=int(budget_gb * GB))
    section.notes.append(f"ballast: {_gb(held['held'])} GB held by the torch side, {_gb(held['free'])} GB of the GPU "
                         "left free for the processes measured (each CUDA context comes out of it)")
    return ()


async def _release(run: Run) -> None:
    try:
        await run.side.ask("release")
    except (SideError, OSError):
        await run.side.close(grace_s=0)  # its memory goes with it


async def _in_one_process(run: Run) -> tuple[str, ...]:
    mixed = TorchSide()
    sequence = [{"family": run.family(name).family, "folder": run.folder(name), "spec": run.family(name).spec(),
                 "seed": i} for i, name in enumerate(run.scale.isolation)]
    try:
        await mixed.ask("unload")  # started (torch imported, the device set up) before the sequence
        async with run.watch.peak(lambda: [mixed.pid]) as peak:
            images = (await mixed.ask("mixed", sequence=sequence, out=str(_folder(run.work / "mixed"))))["images"]
    finally:
        await mixed.close()
    fragmented = [i["reserved"] - i["allocated"] for i in images if i["reserved"] is not None]
    return (f"{sum(i['made'] for i in images)}/{len(images)}", _on_gpu(run, sum(i["ooms"] for i in images)),
            str(sum(i["dropped"] for i in images)), _s(statistics.fmean(i["seconds"] for i in images)),
            _gb(max(i["peak"] for i in images)), _nvml(run, [peak.bytes]),
            _gb(max(fragmented)) if fragmented else NO_GPU)


async def _in_workers(run: Run, dispatcher: Dispatcher, events) -> tuple[str, ...]:
    events.drain()
    jobs, nvml, started = [], [], time.perf_counter()
    for seed, name in enumerate(run.scale.isolation):  # one at a time: the queue would otherwise run a warm model's first
        async with run.watch.peak(lambda: [w.pid for w in dispatcher.all_workers()]) as peak:
            jobs.append(await _job(dispatcher, name, run.family(name).spec(), seed))
        nvml.append(peak.bytes)
    seconds = (time.perf_counter() - started) / len(jobs)
    evicted = [e for e in events.drain() if e.type == EventKind.WORKER_EVICTED and e.data.get("reason") == "memory budget"]
    return (f"{sum(job.status == Status.DONE for job in jobs)}/{len(jobs)}", _on_gpu(run, sum(map(_oom, jobs))),
            str(len(evicted)), _s(seconds), _gb(max(job.peak_memory or 0 for job in jobs)), _nvml(run, nvml),
            "not reported (a process a model)")


async def _lru(run: Run, dispatcher: Dispatcher, events, queue: list[str], budget_gb: float) -> tuple[str, ...]:
    events.drain()
    jobs = [dispatcher.submit(JobSpec(model=name, seed=seed, **run.family(name).spec(run.scale.pressure_steps)))
            for seed, name in enumerate(queue)]
    for job in jobs:
        await dispatcher.wait(job.id)
    evictions, loads, oom_at = 0, 0, None
    for event in events.drain():
        if event.type == EventKind.WORKER_EVICTED and event.data.get("reason") == "memory budget":
            evictions += 1
        elif event.type == EventKind.WORKER_SPAWNED:
            loads += 1
        elif event.type in (EventKind.FAILED, EventKind.HELD) and oom_at is None and _oom(dispatcher.jobs[event.job]):
            oom_at = evictions
    done = sum(job.status == Status.DONE for job in jobs)
    if not run.gpu:
        verdict = NO_GPU
    elif oom_at is not None:
        verdict = f"no: an OOM after {oom_at} evictions"
    else:
        verdict = "yes" if evictions else "no eviction was needed"
    return (f"{budget_gb:.2f}", str(done), str(len(jobs) - done), _on_gpu(run, sum(map(_oom, jobs))), str(evictions),
            str(loads), verdict)


async def batching(run: Run) -> list[Section]:
    section = Section(
        "Batching: one batched call against one call per image",
        "The images of one job (one prompt, a seed each, each image's noise from its own generator as diffdeck "
        "seeds it) rendered by one call per image, then by one batched call (after a warm-up call of the batch); "
        "pixels compared with the single-image renders.",
        ("family", "size, steps", "images", "one call each: images/s", "batched: images/s", "gain", "pixels",
         "peak torch GB: one / batched"))
    verdicts = []
    for name, count in run.scale.batches:
        async def measure(name=name, count=count) -> tuple[str, ...]:
            family = run.family(name)
            await run.side.ask("load", folder=run.folder(name), family=family.family)
            await run.side.ask("render", spec=family.spec(), seeds=[0], out=str(_folder(run.work / "bare")))
            result = await run.side.ask("batching", spec=family.spec(), seeds=list(range(1, count + 1)))
            gain = result["single_s"] / result["batched_s"]
            verdicts.append(_fast_mode(name, family, gain, result))
            return (f"{family.width}x{family.height}, {family.steps}", str(count), f"{count / result['single_s']:.3f}",
                    f"{count / result['batched_s']:.3f}", f"{gain:.2f}x", _pixels(result),
                    f"{_gb(result['single_peak'])} / {_gb(result['batched_peak'])}")
        section.rows.append(await run.row((name,), measure, needs=(name,)))
    await _unload(run)
    section.notes += verdicts
    return [section]


def _pixels(result: dict[str, Any]) -> str:
    if result["identical"] == result["images"]:
        text = "identical"
    else:
        text = (f"differ: {result['identical']}/{result['images']} identical, up to {result['max_difference']}/255, "
                f"{100 * result['differing']:.2f} % of values")
    return text + (" (uniform images: random weights drew no signal)" if result["uniform"] else "")


def _fast_mode(name: str, family: Family, gain: float, result: dict[str, Any]) -> str:
    """What the run says of a batching fast mode for this row: offered only where measured worth it."""
    at = f"{name} at {family.width}x{family.height}, {result['images']} images: {gain:.2f}x"
    if gain < FAST_MODE_GAIN:
        return f"{at}, under {FAST_MODE_GAIN}x: no fast mode; one call per image stays"
    if result["identical"] == result["images"] and not result["uniform"]:
        return f"{at} with identical pixels: batching could render a job's images by default"
    return (f"{at} and the pixels are not shown identical: worth an explicit fast mode that the record names "
            "(replay renders the same way), never a silent default")


async def offload(run: Run) -> list[Section]:
    family = run.family(OFFLOAD_FAMILY)
    steps = run.scale.offload_steps or family.steps
    section = Section(
        f"Offload modes and dtypes ({OFFLOAD_FAMILY}, {family.width}x{family.height}, {steps} steps)",
        "Bare diffusers, one image after a warm-up call: model offload moves each component to the GPU when it runs "
        "(enable_model_cpu_offload), sequential each layer (enable_sequential_cpu_offload); auto is the dtype "
        "diffdeck's worker picks (half precision on a GPU).",
        ("dtype", "offload", "loaded as", "load s", "s/image", "peak torch GB", "peak NVML GB"), labels=2)
    for dtype, mode in OFFLOAD_ROWS:
        if mode != "none" and not run.gpu:
            section.rows.append((dtype, mode, NO_GPU))
            continue

        async def measure(dtype=dtype, mode=mode) -> tuple[str, ...]:
            loaded = await run.side.ask("load", folder=run.folder(OFFLOAD_FAMILY), family=family.family, dtype=dtype,
                                        offload=mode)
            out = str(_folder(run.work / "bare"))
            await run.side.ask("render", spec=family.spec(2), seeds=[0], out=out)
            async with run.watch.peak(lambda: [run.side.pid]) as peak:
                answer = await run.side.ask("render", spec=family.spec(steps), seeds=[1], out=out)
            return (loaded["dtype"], _s(loaded["load_s"]), _s(answer["seconds"]), _gb(answer["peak"]),
                    _nvml(run, [peak.bytes]))

        section.rows.append(await run.row((dtype, mode), measure, needs=(OFFLOAD_FAMILY,)))
    await _unload(run)
    return [section]


# parts


async def _job(dispatcher: Dispatcher, name: str, spec: dict[str, Any], seed: int) -> Job:
    job = dispatcher.submit(JobSpec(model=name, seed=seed, **spec))
    await dispatcher.wait(job.id)
    return job


def _rendered(job: Job) -> Job:
    if job.status != Status.DONE:
        raise RuntimeError(f"{job.id} {job.status}: {job.error}")
    return job


def _oom(job: Job) -> bool:
    return job.error_kind == "oom" or "out of GPU memory" in (job.error or "")


async def _unload(run: Run) -> None:
    if run.side.pid is not None:
        with contextlib.suppress(SideError):
            await run.side.ask("unload")


def _whole(section: Section, why: str) -> Section:
    section.rows.append(("all", why))
    return section


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _s(seconds: float) -> str:
    return f"{seconds:.3f}"


def _gb(size: float) -> str:
    return f"{size / GB:.2f}"


def _on_gpu(run: Run, count: int) -> str:
    return str(count) if run.gpu else NO_GPU


def _nvml(run: Run, peaks: list[int | None]) -> str:
    if not run.gpu or not run.watch.available:
        return NO_GPU
    seen = [peak for peak in peaks if peak is not None]
    return _gb(max(seen)) if seen else "not listed by NVML (another PID namespace?)"


def _summary(run: Run, sections: list[Section]) -> str:
    """The table's header: when, on what, with which versions, what the budget left out."""
    hello = run.side.hello
    versions = {name: _version(name) for name in ("torch", "diffusers", "transformers", "accelerate")}
    torch = f"torch {versions.pop('torch')}" + (f" (CUDA {hello['cuda']})" if hello.get("cuda") else "")
    lines = [f"# diffdeck bench gpu{' --toy' if run.toy else ''}", "",
             f"- date: {run.clock.date:%Y-%m-%d %H:%M} UTC",
             f"- GPU: {run.watch.describe() or hello.get('gpu') or 'none (the CPU)'}",
             f"- versions: diffdeck {__version__}, {torch}, " + ", ".join(f"{k} {v}" for k, v in versions.items())
             + f", Python {platform.python_version()}",
             f"- scale: {'toy (tiny pipelines of the same classes)' if run.toy else 'full'}; families "
             f"{', '.join(run.families)}; {run.scale.rounds} rounds; time budget "
             f"{run.clock.deadline - run.clock.started:.0f} s, {time.monotonic() - run.clock.started:.0f} s spent"]
    if hello and run.watch.available and not run.gpu:
        lines.append("- NVML sees a GPU but torch renders on the CPU: a CPU build of torch?")
    skipped = [f"{section.name} ({', '.join(' '.join(row[:section.labels]) for row in rows)})" for section in sections
               if (rows := [row for row in section.rows if any(cell.startswith((BUDGET_SPENT, CUT)) for cell in row)])]
    if skipped:
        lines.append(f"- left out for the time budget: {'; '.join(skipped)}")
    return "\n".join(lines) + "\n"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _write(path: Path, text: str) -> None:
    """The table so far, atomically; a write that fails is said, and the run goes on (stdout has it all)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except OSError as e:
        print(visible(f"diffdeck: {path} could not be written ({e.strerror or e}); the table is on stdout"),
              file=sys.stderr)


async def _bench(families: tuple[str, ...], toy: bool, rounds: int | None, out: Path | None, budget_s: float) -> int:
    scale = TOY if toy else FULL
    with tempfile.TemporaryDirectory(prefix="diffdeck-bench-gpu-") as work:
        run = Run(families, toy, replace(scale, rounds=rounds or scale.rounds), Clock(budget_s), Path(work))
        sections: list[Section] = []
        try:
            for make in (built, overhead, pressure, batching, offload):
                for section in await make(run):
                    sections.append(section)
                    print(section.markdown(), flush=True)
                    if out is not None:  # after each section: a run cut short leaves what it measured
                        _write(out, "\n".join([_summary(run, sections), *(s.markdown() for s in sections)]))
        finally:
            await run.side.close()
    print(_summary(run, sections) + (f"\nwritten: {visible(str(out))}" if out is not None else ""))
    return 1 if run.failures else 0


def run_gpu_bench(families: tuple[str, ...] = FAMILIES, toy: bool = False, rounds: int | None = None,
                  out: Path | None = None, budget_s: float = DEFAULT_BUDGET_S) -> int:
    return asyncio.run(_bench(families, toy, rounds, out, budget_s))
