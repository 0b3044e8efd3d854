"""The hosted worker process: `python -m diffdeck.engines.hosted --model JSON` renders one hosted
model's jobs through its provider's API, one job at a time, speaking the local workers' protocol
(diffdeck.engines.core.worker_protocol) on stdin/stdout.

One event loop: commands are read as they come; a job is a task, and a cancel cancels it, which
drops the request in flight (its connection closes). Once a request is answered its images are
paid for: they are fetched and saved whatever comes, and a cancel meanwhile is honoured after them.
While a request is out, step messages say what it waits for ("waiting for ideogram 12 s",
"ideogram answered 429: retrying in 5 s ...").
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, TypeVar

import httpx
import psutil
from diffdeck.engines import __version__
from diffdeck.engines.core import worker_process as process
from diffdeck.engines.core.pixels import pixel_sha256
from diffdeck.engines.core.registry import key_problem
from diffdeck.engines.core.spec import JobSpec, ModelSpec
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.hosted.client import Client, Reply, Waiting
from diffdeck.engines.hosted.prices import price
from diffdeck.engines.hosted.providers import Answer, Provider, ProviderError, provider
from diffdeck.engines.record.png_metadata import save_png
from PIL import Image, UnidentifiedImageError

log = logging.getLogger("diffdeck.hosted")

LINE_LIMIT = 16 * 1024 * 1024  # one command: a job's spec with a long prompt fits many times over

T = TypeVar("T")


@dataclass
class _JobRun:
    """One job's progress, totals and cost."""

    id: str
    spec: JobSpec
    out_dir: Path
    image: int = 0  # the first image of the request out
    started: float = field(default_factory=time.perf_counter)
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("prepare_s", "denoise_s", "decode_s", "save_s"), 0.0))
    cost_usd: float | None = 0.0

    def add(self, timings: dict[str, float], cost_usd: float | None) -> None:
        for name, seconds in timings.items():
            self.totals[name] += seconds
        self.cost_usd = None if cost_usd is None or self.cost_usd is None else round(self.cost_usd + cost_usd, 6)


class HostedWorker:
    def __init__(self, model: ModelSpec, key: str, wire: process.Wire, intervals: Intervals):
        self.model, self.key, self.wire, self.intervals = model, key, wire, intervals
        self.provider: Provider = provider(model.kind)
        self.base_url = self.provider.base_url(model)
        self.waiting = Waiting(model.kind)
        self.client = Client(model, self.provider, self.waiting)
        self.jobs: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._open: set[str] = set()  # jobs arrived and not ended: only these can be cancelled
        self._cancelled: set[str] = set()
        self._running: tuple[str, asyncio.Task] | None = None

    async def serve(self, commands: asyncio.StreamReader) -> int:
        runner = asyncio.create_task(self._run_jobs())
        try:
            await self._read(commands)
            await runner
        finally:
            await self.client.aclose()
        return 0

    async def _read(self, commands: asyncio.StreamReader) -> None:
        while line := await commands.readline():
            if (message := process.command(line, log)) is None:
                continue
            if message["type"] == "job":
                self._open.add(message["id"])
                self.jobs.put_nowait(message)
            elif message["type"] == "cancel":
                self._cancel(message["id"])
            elif message["type"] == "shutdown":
                break
        else:  # the Dispatcher is gone: stop the job, render no more
            for job_id in list(self._open):
                self._cancel(job_id)
            process.exit_soon()
        self.jobs.put_nowait(None)

    def _cancel(self, job_id: str) -> None:
        if job_id not in self._open:
            return  # late: the job ended as the cancel was sent
        self._cancelled.add(job_id)
        if self._running and self._running[0] == job_id:
            self._running[1].cancel()

    async def _run_jobs(self) -> None:
        while (message := await self.jobs.get()) is not None:
            job_id = message["id"]
            try:
                if job_id in self._cancelled:  # before it started
                    self.wire.send("cancelled", id=job_id, step=0)
                    continue
                task = asyncio.create_task(self.run(message))
                self._running = (job_id, task)
                await asyncio.wait([task])
                if task.cancelled():  # a cancel that came as the job ended finds it ended: its end is sent
                    self.wire.send("cancelled", id=job_id, step=0)
            finally:
                self._running = None
                self._open.discard(job_id)
                self._cancelled.discard(job_id)

    async def run(self, message: dict[str, Any]) -> None:
        """One job: done, or failed with the error's kind."""
        try:
            job = _JobRun(message["id"], JobSpec.from_dict(message["spec"]), Path(message["out_dir"]))
            await self._render_job(job, set(message.get("skip", ())))
            self.wire.send("done", id=job.id, timings=process.rounded(job.totals), peak_memory=0, cost_usd=job.cost_usd)
        except ProviderError as e:
            self.wire.send("failed", id=message["id"], error=e.message, kind=e.kind)
        except Exception as e:  # noqa: BLE001 - any failure is reported, the worker lives on
            traceback.print_exc()
            self.wire.send("failed", id=message["id"], error=f"{type(e).__name__}: {e}", kind="error")

    async def _render_job(self, job: _JobRun, skip: set[int]) -> None:
        """Its images but those already made, a request at a time."""
        ticker = asyncio.create_task(self._tick(job))
        try:
            job.out_dir.mkdir(parents=True, exist_ok=True)
            for first, count in requests([i for i in range(job.spec.count) if i not in skip],
                                         self.provider.images_per_call(self.model)):
                await self._render(job, first, count)
        finally:
            ticker.cancel()

    async def _tick(self, job: _JobRun) -> None:
        """A step message about every progress interval while the job runs: what it waits for."""
        while True:
            self.wire.send("step", id=job.id, image=job.image, count=job.spec.count, step=0, total=1,
                           elapsed_s=round(time.perf_counter() - job.started, 3), it_s=None,
                           waiting=self.waiting.text(), retry=self.waiting.retry)
            await asyncio.sleep(self.intervals.progress_s)

    async def _render(self, job: _JobRun, first: int, count: int) -> None:
        """Images first..first+count-1 in one request: sent, then kept (a cancel waits for that)."""
        job.image = first
        started = time.perf_counter()
        reply = await self.client.send(self.provider.request(self.model, job.spec, first, count, self.key))
        await finished(self._keep(job, first, count, reply, (time.perf_counter() - started) / count))

    async def _keep(self, job: _JobRun, first: int, count: int, reply: Reply, request_s: float) -> None:
        """The answer's images, paid for: their URLs fetched at once, the images saved."""
        answer = self.provider.answer(self.model, reply.body)
        pictures = answer.pictures[:count]
        fetched = []
        for picture in pictures:  # every URL first: they expire
            began = time.perf_counter()
            fetched.append((picture.data if picture.data is not None else await self.client.fetch(picture.url),
                            time.perf_counter() - began))
        for offset, (picture, (data, fetch_s)) in enumerate(zip(pictures, fetched)):
            began = time.perf_counter()
            image = self._decoded(data)
            timings = {"prepare_s": 0.0, "denoise_s": request_s, "decode_s": fetch_s + time.perf_counter() - began}
            self._save(job, first + offset, image, timings, answer, reply, picture.seed)
        if len(pictures) < count:
            if answer.reasons:
                raise self.provider.refused(self.model, "; ".join(dict.fromkeys(answer.reasons)))
            raise self.provider.malformed(self.model, f"{count} images (it sent {len(pictures)})")

    def _decoded(self, data: bytes) -> Image.Image:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                alpha = "A" in image.getbands() or "transparency" in image.info
                return image.convert("RGBA" if alpha else "RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise self.provider.malformed(self.model, "an image that decodes") from None

    def _save(self, job: _JobRun, index: int, image: Image.Image, timings: dict[str, float], answer: Answer,
              reply: Reply, seed_reported: int | None) -> None:
        began = time.perf_counter()
        spec, model = job.spec, self.model
        seed = spec.seeds[index]
        sent = self.provider.size(model, spec.width, spec.height)
        cost = price(model, sent.width or spec.width, sent.height or spec.height)
        seed_sent = seed if self.provider.seeded else None
        if None not in (seed_sent, seed_reported) and seed_sent != seed_reported:  # the record keeps both
            log.warning("%s image %d: %s reported seed %d, not the %d sent", job.id, index, self.provider.kind,
                        seed_reported, seed_sent)
        hosted = {"provider": self.provider.name, "model_id": model.source, "version": answer.version,
                  "seed_sent": seed_sent, "seed_reported": seed_reported, "reproducible": seed_sent is not None,
                  "asked": {"width": spec.width, "height": spec.height},
                  "sent": self.provider.parameters(model, spec),
                  "returned": {"width": image.width, "height": image.height}, "request_id": reply.request_id}
        pixels = pixel_sha256(image)
        record = {
            "format": 1, "job": job.id, "image": index, "seed": seed, "rng": None, "spec": spec.to_dict(),
            "pixel_sha256": pixels,
            "model": {"name": model.name, "kind": model.kind, "source": model.source, "provider": self.provider.name,
                      "base_url": self.base_url, "version": answer.version},
            "hosted": hosted, "cost_usd": cost.usd, "price": {"usd": cost.usd, "source": cost.source},
            "diffdeck": __version__,
        }
        path = job.out_dir / f"{job.id}-{index:02d}-{seed}.png"
        save_png(image, record, path)
        timings = {**timings, "save_s": time.perf_counter() - began}
        job.add(timings, cost.usd)
        self.wire.send("image", id=job.id, image=index, seed=seed, path=str(path), pixel_sha256=pixels,
                       timings=process.rounded(timings), peak_memory=0, cost_usd=cost.usd, hosted=hosted)


async def finished(work: Awaitable[T]) -> T:
    """`work`'s result once it has run to its end, even where the task awaiting it is cancelled
    meanwhile: that cancel is raised after."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])  # a cancel of this wait leaves the task running
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


def requests(indices: list[int], per_call: int) -> list[tuple[int, int]]:
    """(first, count) of each request: runs of consecutive images, at most `per_call` each."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][0] + runs[-1][1] == index and runs[-1][1] < per_call:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def environment(model: ModelSpec, base_url: str) -> dict[str, Any]:
    return {"python": platform.python_version(), "diffdeck": {"version": __version__}, "httpx": httpx.__version__,
            "provider": model.kind, "base_url": base_url}


async def serve(model: ModelSpec, wire: process.Wire, intervals: Intervals) -> int:
    base_url = provider(model.kind).base_url(model)
    wire.send("hello", pid=os.getpid(), model=model.name, device="hosted", dtype=None,
              environment=environment(model, base_url))
    started = time.perf_counter()
    problem = key_problem(model)
    if problem is not None:
        wire.send("load_failed", error=problem)
        return 2
    worker = HostedWorker(model, os.environ[model.api_key_env].strip(), wire, intervals)
    wire.send("ready", load_s=round(time.perf_counter() - started, 3), family=None, pipeline_class=None,
              device="hosted", dtype=None, scheduler=None,
              settings={"provider": model.kind, "model_id": model.source, "base_url": base_url,
                        "concurrency": model.concurrency, "timeout_s": model.timeout_s, "options": model.options},
              memory={"rss": psutil.Process().memory_info().rss, "gpu": None})
    return await worker.serve(await _stdin())


async def _stdin() -> asyncio.StreamReader:
    """stdin as a stream the loop reads without blocking."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def main(argv: list[str] | None = None) -> int:
    args = process.worker_arguments("python -m diffdeck.engines.hosted", argv)
    process.die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request; the prompt is in none of them
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client cancels; Ctrl-C is not for us
    wire = process.Wire(process.claim_stdout())
    model = ModelSpec.from_dict(json.loads(args.model))
    return asyncio.run(serve(model, wire, Intervals(args.progress_interval, args.preview_interval)))
