"""A worker process: `python -m diffdeck.engines.worker --model JSON` loads one model and serves
jobs one at a time over JSON lines (diffdeck.engines.core.worker_protocol) on stdin/stdout.

stdout carries protocol messages and nothing else (diffdeck.engines.core.worker_process).
Commands are read on a thread of their own so that a cancel reaches a running job at the
next module it enters (diffdeck.engines.worker.diffusers_adapter.Interrupt). A worker never outlives the Dispatcher:
it dies with the process that started it, and exits soon after its input ends.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO, Callable

import diffusers
import psutil
import torch
from diffdeck.engines import __version__
from diffdeck.engines.core.pixels import pixel_sha256
from diffdeck.engines.core.registry import (
    ModelFiles,
    RegistryError,
    hub_cache_dir,
    inspect_folder,
    locate,
    snapshot_commit,
)
from diffdeck.engines.core.spec import JobSpec, ModelSpec
from diffdeck.engines.core.worker_process import (
    Wire,
    claim_stdout,
    command,
    die_with_parent,
    exit_soon,
    rounded,
    worker_arguments,
)
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.record.png_metadata import save_png
from diffdeck.engines.worker.diffusers_adapter import Cancelled, Hooks, Model, dtype_name, pick_device, pick_dtype
from diffdeck.engines.worker.environment import describe
from diffdeck.engines.worker.previews import encode_preview
from diffdeck.engines.worker.stages import LATENTS_KEY, Handed, StageRunner
from huggingface_hub import constants as hub_constants
from safetensors.torch import save_file

log = logging.getLogger("diffdeck.worker")

class Commands:
    """Reads the Dispatcher's commands; jobs queue up, cancels are noted at once.

    A cancel counts only for a job that has arrived and not yet ended, so a late one
    (the job finished as it was sent) cannot cancel a retry of the same job."""

    def __init__(self, stream: BinaryIO, on_end_of_input: Callable[[], None] | None = None):
        self.jobs: queue.Queue[dict | None] = queue.Queue()
        self._on_end_of_input = on_end_of_input
        self.cancelled: set[str] = set()
        self._open: set[str] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, args=(stream,), daemon=True, name="commands").start()

    def ended(self, job_id: str) -> None:
        with self._lock:
            self._open.discard(job_id)
            self.cancelled.discard(job_id)

    def _read(self, stream: BinaryIO) -> None:
        try:
            for line in stream:
                if (message := command(line, log)) is None:
                    continue
                if message["type"] == "job":
                    with self._lock:
                        self._open.add(message["id"])
                    self.jobs.put(message)
                elif message["type"] == "cancel":
                    with self._lock:
                        if message["id"] in self._open:
                            self.cancelled.add(message["id"])
                elif message["type"] == "shutdown":
                    break
            else:  # the Dispatcher is gone (killed): stop the job, render no more
                with self._lock:
                    self.cancelled |= self._open
                if self._on_end_of_input:
                    self._on_end_of_input()
        finally:
            self.jobs.put(None)  # shutdown, or the Dispatcher is gone


def load_model(spec: ModelSpec, files: ModelFiles) -> Model:
    if files.problem:
        raise RegistryError(files.problem)
    if files.folder is None:  # a hub model not downloaded yet: fetch it, safetensors only
        log.info("downloading %s from the hub", spec.source)
        try:
            folder = diffusers.DiffusionPipeline.download(
                spec.source, revision=spec.revision, use_safetensors=not spec.allow_pickle)
        except OSError as e:  # the hub's and the network's errors; diffusers' own says little more
            log.warning("could not download %s: %s", spec.source, e)
            raise RegistryError(not_downloadable(spec.source)) from None
        files = inspect_folder(spec, Path(folder))
        if files.problem:
            raise RegistryError(files.problem)
    return Model(spec, files)


def not_downloadable(source: str) -> str:
    why = ("HF_HUB_OFFLINE is set" if hub_constants.HF_HUB_OFFLINE
           else "the hub could not be reached, or refused it (the worker's log says which)")
    return (f"{source} is not in the hub cache ({hub_cache_dir()}) and cannot be downloaded: {why}; "
            f"download it where there is network (hf download {source}) and copy the cache here, "
            "or give a local folder as its source")


def out_of_memory_message(error: BaseException) -> str:
    asked = re.search(r"Tried to allocate ([\d.]+ \w+)", str(error))
    free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (0, 0)
    return (f"out of GPU memory: asked for {asked.group(1) if asked else 'more'} with "
            f"{free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB; try a smaller size or count, "
            "or offload: model in models.yaml")


def is_fatal_cuda_error(error: BaseException) -> bool:
    """After a CUDA error other than OOM the context is unusable: the worker must be replaced."""
    accelerator_error = getattr(torch, "AcceleratorError", ())
    return isinstance(error, accelerator_error) or (
        isinstance(error, RuntimeError) and "CUDA error" in str(error))


class Worker:
    def __init__(self, model: Model, wire: Wire, commands: Commands, intervals: Intervals):
        self.model = model
        self.wire = wire
        self.commands = commands
        self.intervals = intervals

    def serve(self) -> int:
        while (message := self.commands.jobs.get()) is not None:
            if self.run(message) == "fatal":
                return 3
        return 0

    def run(self, message: dict[str, Any]) -> str:
        job_id = message["id"]
        try:
            self._render_job(job_id, JobSpec.from_dict(message["spec"]), Path(message["out_dir"]),
                             set(message.get("skip", ())), message.get("stages"), message.get("inputs") or {})
            return "done"
        except Cancelled as c:
            self.wire.send("cancelled", id=job_id, step=c.step)
            return "cancelled"
        except torch.cuda.OutOfMemoryError as e:
            failure = ("oom", out_of_memory_message(e))
        except Exception as e:  # noqa: BLE001 - any failure is reported, the worker lives on
            traceback.print_exc()
            failure = ("fatal" if is_fatal_cuda_error(e) else "error", f"{type(e).__name__}: {e}")
        finally:
            self.commands.ended(job_id)
        # Recover outside the except block, so the traceback no longer pins tensors.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.wire.send("failed", id=job_id, kind=failure[0], error=failure[1])
        return failure[0]

    def _render_job(self, job_id: str, spec: JobSpec, out_dir: Path, skip: set[int],
                    leg: list[int] | None, inputs: dict[str, dict[str, str]]) -> None:
        """A plain job (`leg` None), or stages leg[0]..leg[1] of a flow's (one model's, in a row)."""
        model = self.model
        model.use_scheduler(spec.scheduler)
        out_dir.mkdir(parents=True, exist_ok=True)
        job = _JobRun(self, job_id, spec, out_dir)
        try:
            for index in range(len(spec.seeds)):
                if index in skip:
                    continue
                if job_id in self.commands.cancelled:
                    raise Cancelled(0)
                if leg is None:
                    image, timings, image_peak = model.render(spec, index, job.hooks(None))
                    job.save(index, image, timings, image_peak, None)
                else:
                    self._render_stages(job, index, range(leg[0], leg[1] + 1), inputs.get(str(index), {}))
        finally:
            model.end_job()
        self.wire.send("done", id=job_id, timings=rounded(job.totals), peak_memory=job.peak)

    def _render_stages(self, job: "_JobRun", index: int, stages: range, files: dict[str, str]) -> None:
        runner = StageRunner(self.model, job.spec)
        since: float | None = time.perf_counter()  # the first stage's preparation reads what it starts from
        handed = Handed.read(files, job.spec.init_sha256 if stages[0] == 0 else None)
        for i in stages:
            output = runner.run(i, index, handed, job.hooks(i), since)
            since = None
            handed = Handed(output.image, output.latents)
            leg_ends_before_flow = i == stages[-1] and i + 1 < len(job.spec.stages)
            job.save(index, output.image, output.timings, output.peak, i,
                     output.latents if leg_ends_before_flow else None)  # for the next leg's refine

    def record(self, job_id: str, spec: JobSpec, index: int) -> dict[str, Any]:
        """The PNG's `diffdeck` chunk for image `index` of a job."""
        m = self.model
        return {
            "format": 1,
            "job": job_id,
            "image": index,
            "seed": spec.seeds[index],
            "rng": "cpu",
            "spec": spec.to_dict(),
            "model": {
                "name": m.spec.name, "source": m.spec.source,
                "revision": snapshot_commit(m.folder) or m.spec.revision,
                "family": m.family, "pipeline_class": m.pipeline_class, "dtype": m.dtype_name,
                "device": m.device, "offload": m.spec.offload, "scheduler": m.scheduler_record(),
            },
            "diffdeck": __version__,
        }


class _JobRun:
    """One job message's progress messages, files and totals."""

    def __init__(self, worker: Worker, job_id: str, spec: JobSpec, out_dir: Path):
        self.worker, self.job_id, self.spec, self.out_dir = worker, job_id, spec, out_dir
        self.totals = {"prepare_s": 0.0, "denoise_s": 0.0, "decode_s": 0.0, "save_s": 0.0}
        self.peak = 0
        self._last_step = 0.0
        self._previewing = True

    def hooks(self, stage: int | None) -> Hooks:
        """Progress of a plain job, or (with "stage" and "stages") of one stage of a flow."""
        wire, job_id, intervals = self.worker.wire, self.job_id, self.worker.intervals
        where = {} if stage is None else {"stage": stage, "stages": len(self.spec.stages)}

        def on_step(info):
            now = time.monotonic()
            if now - self._last_step < intervals.progress_s and info.step < info.total:
                return
            self._last_step = now
            wire.send("step", id=job_id, image=info.image, count=self.spec.count, step=info.step,
                      total=info.total, elapsed_s=round(info.elapsed_s, 4),
                      it_s=round(info.step / info.elapsed_s, 3) if info.elapsed_s else None, **where)

        def on_preview(index, step, make_rgb):
            if not self._previewing:
                return
            try:
                mime, data = encode_preview(make_rgb())
            except Exception:  # noqa: BLE001 - a preview is a nicety: it never fails the job
                log.exception("%s: previews stopped for this job", job_id)
                self._previewing = False
                return
            wire.send("preview", id=job_id, image=index, step=step, mime=mime, data=base64.b64encode(data).decode())

        return Hooks(on_step, on_preview, intervals.preview_s, lambda: job_id in self.worker.commands.cancelled)

    def save(self, index: int, image, timings: dict[str, float], peak: int, stage: int | None,
             latents=None) -> None:
        """The job's image (a plain job's, or a flow's last stage's), or a stage image of a flow;
        with `latents`, those too, for the next stage in another worker."""
        started = time.perf_counter()
        seed = self.spec.seeds[index]
        last = stage is None or stage == len(self.spec.stages) - 1
        kind = None if stage is None else self.spec.stages[stage].kind
        name = f"{self.job_id}-{index:02d}-{seed}"
        path = self.out_dir / (f"{name}.png" if last else f"{name}.s{stage}-{kind}.png")
        pixels = pixel_sha256(image)
        record = {**self.worker.record(self.job_id, self.spec, index), "pixel_sha256": pixels}
        if not last:
            record.update(stage=stage, stage_kind=kind)
        save_png(image, record, path)
        extra = {}
        if latents is not None:
            extra["latents"] = str(save_latents(latents, self.out_dir / f"{name}.s{stage}.latents.safetensors"))
        timings = {**timings, "save_s": time.perf_counter() - started}
        for key, value in timings.items():
            self.totals[key] += value
        self.peak = max(self.peak, peak)
        message = dict(id=self.job_id, image=index, seed=seed, path=str(path), pixel_sha256=pixels,
                       timings=rounded(timings), peak_memory=peak)
        if last:
            self.worker.wire.send("image", **message)
        else:
            self.worker.wire.send("stage_image", **message, stage=stage, kind=kind,
                                  model=self.worker.model.spec.name, **extra)


def save_latents(latents, path: Path) -> Path:
    """A stage's latents for the next stage in another worker: key "latents", written atomically."""
    partial = path.with_name(path.name + ".part")
    save_file({LATENTS_KEY: latents.detach().to("cpu").contiguous()}, str(partial))
    os.replace(partial, path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = worker_arguments("python -m diffdeck.engines.worker", argv)
    die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client cancels; Ctrl-C is not for us
    diffusers.utils.logging.disable_progress_bar()  # keeps the stderr tail readable
    wire = Wire(claim_stdout())
    spec = ModelSpec.from_dict(json.loads(args.model))
    files = locate(spec)
    device = pick_device(spec)
    dtype = dtype_name(pick_dtype(spec, files.family, device)) if files.family else None
    wire.send("hello", pid=os.getpid(), model=spec.name, device=device, dtype=dtype, environment=describe())
    commands = Commands(sys.stdin.buffer, on_end_of_input=exit_soon)
    started = time.perf_counter()
    try:
        model = load_model(spec, files)
    except Exception as e:  # noqa: BLE001 - reported to the Dispatcher, which tells the user
        traceback.print_exc()
        reason = (out_of_memory_message(e) if isinstance(e, torch.cuda.OutOfMemoryError)
                  else str(e) if isinstance(e, RegistryError) else f"{type(e).__name__}: {e}")
        wire.send("load_failed", error=f"could not load model {spec.name!r}: {reason}")
        return 2
    wire.send(
        "ready", load_s=round(time.perf_counter() - started, 3), family=model.family,
        pipeline_class=model.pipeline_class, device=model.device,
        dtype=model.dtype_name, scheduler=model.scheduler_record(), settings=model.settings(),
        memory={"rss": psutil.Process().memory_info().rss,
                "gpu": torch.cuda.memory_allocated() if model.device == "cuda" else None},
    )
    return Worker(model, wire, commands, Intervals(args.progress_interval, args.preview_interval)).serve()

