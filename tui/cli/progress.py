"""Following jobs through their events, for the headless commands: record, show progress on a
terminal, print each image as it is saved, and tell how each job ended. The same loop serves a
local render and one attached to a daemon."""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any, TextIO

from diffdeck.engines.core.events import FINISHING_EVENTS, EventKind, JobRecord, Status, rendering_timings
from diffdeck.engines.core.text import visible
from diffdeck.tui.workbench_state import cost_text


async def follow_jobs(events, jobs: dict[str, JobRecord], as_json: bool,
                      record=None) -> dict[str, tuple[Status, str | None]]:
    """Follow the events of `jobs` (as queued: a resumed flow's with the stage images made
    before) until each has finished or the stream ends: record each (and each job-less one) with
    `record`, show progress on a terminal, print each image as it is saved. Returns how each job
    ended, with its error."""
    if not jobs:
        return {}
    progress = Progress(sys.stderr) if sys.stderr.isatty() and not as_json else None
    ended: dict[str, tuple[Status, str | None]] = {}
    timings: dict[str, dict[str, float]] = {}
    stages = {job_id: list(job.stages) for job_id, job in jobs.items()}
    try:
        async for event in events:
            if event.job is not None and event.job not in jobs:
                continue
            if record:
                record(event)
            if progress:
                progress.show(event)
            if event.type == EventKind.STARTED:
                timings[event.job] = {k: event.data[k] for k in ("queue_wait_s", "load_s")}
            elif event.type == EventKind.STAGE_IMAGE:
                stages[event.job].append(event.data)
            elif event.type == EventKind.IMAGE:
                if progress:
                    progress.clear()  # the path goes on a line of its own
                if as_json:
                    print(json.dumps(image_json(event.data, jobs[event.job], timings.get(event.job, {}),
                                                stages[event.job])), flush=True)
                else:
                    print(visible(image_line(event.data)), flush=True)
            elif event.type in FINISHING_EVENTS:
                ended[event.job] = (Status(event.type), event.data.get("error"))
                if len(ended) == len(jobs):
                    break
    finally:
        if progress:
            progress.clear()
    return ended


def exit_status(ended: dict[str, tuple[Status, str | None]]) -> int:
    status = 0
    for job_id, (how, error) in ended.items():
        if how == Status.CANCELLED:
            print(visible(f"diffdeck: {job_id} cancelled"), file=sys.stderr)
            status = status or 130
        elif how != Status.DONE:
            print(visible(f"diffdeck: error: {job_id} {how}: {error}"), file=sys.stderr)
            status = 1
    return status


def image_line(data: dict[str, Any]) -> str:
    """An image as the plain output prints it: its path, and a hosted image's cost after two spaces."""
    if "cost_usd" not in data:  # a local image: free
        return data["path"]
    return f"{data['path']}  cost {cost_text(data['cost_usd'])}"


def image_json(data: dict[str, Any], job: JobRecord, job_timings: dict[str, float],
               stage_images: list[dict[str, Any]]) -> dict[str, Any]:
    """An image as `--json` prints it: its job's route and flow; its timings (the job's queue wait
    and load, what every stage of the image took added up, the job's time so far as total_s); and
    a flow's stages one by one, the image itself the last."""
    spec, index = job.spec, data["image"]
    made = {s["stage"]: s for s in stage_images if s["image"] == index}  # a stage rendered again: its last
    flow = spec.get("stages") or []
    if flow:
        made[len(flow) - 1] = {**data, "kind": flow[-1]["kind"], "model": flow[-1].get("model") or spec["model"]}
    stages = [{"stage": i, "kind": s["kind"], "model": s["model"], "path": s["path"],
               "timings": rendering_timings([s]), "peak_memory": s["peak_memory"]} for i, s in sorted(made.items())]
    return {"path": data["path"], "seed": data["seed"], "model": spec["model"], "job": job.id, "image": index,
            "route": spec.get("route"), "flow": spec.get("flow"), "cost_usd": data.get("cost_usd", 0.0),
            "timings": {**job_timings, **rendering_timings(list(made.values()) or [data]),
                        "total_s": data["timings"]["total_s"]},
            "stages": stages, "peak_memory": max(m["peak_memory"] or 0 for m in [data, *made.values()])}


class Progress:
    """A one-line progress report on a terminal, rewritten in place; a hosted job's retries each
    on a line of their own, kept."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.width = shutil.get_terminal_size().columns - 1
        self._retries: dict[str, int] = {}  # each job's last retry shown

    def show(self, event) -> None:
        d = event.data
        text = {
            EventKind.LOADING: lambda: f"loading {d['model']} (worker {d['pid']})",
            EventKind.STARTED: lambda: f"{event.job}: rendering on {d['model']}",
            EventKind.STEP: lambda: f"{event.job}: {_step(d)}",
        }.get(event.type)
        if text:
            self.stream.write("\r" + visible(text())[: self.width].ljust(self.width))
            if d.get("retry") is not None and self._retries.get(event.job) != d["retry"]:
                self._retries[event.job] = d["retry"]
                self.stream.write("\n")  # a new retry: its line stays
            self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r" + " " * self.width + "\r")
        self.stream.flush()


def _step(d: dict[str, Any]) -> str:
    """A step's progress: a hosted job's what it waits for ("waiting for ideogram 3 s"), in place of steps."""
    if d.get("waiting"):
        return str(d["waiting"])
    return f"image {d['image'] + 1}/{d['count']}  step {d['step']}/{d['total']}  {d['it_s'] or 0:.1f} it/s"
