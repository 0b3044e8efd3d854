"""Replay a session: say what differs from the recorded environment, render the recorded jobs
again with their recorded seeds into `replay-<n>/` inside the session, and with `check`
compare every image with the one on record. UI side: a client of the Dispatcher.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .compare import Verdict, compare
from .dispatcher import Dispatcher, Job
from .identity import model_identity
from .probe import probe_environment
from .registry import Registry
from .session import Session, SessionError
from .spec import JobSpec
from .variants import VariantSet


@dataclass
class ImageResult:
    job: str
    image: int
    seed: int
    recorded: str
    replayed: str | None
    verdict: Verdict | None  # None: not checked, or not rendered


def replay_folder(session: Path) -> Path:
    n = 1
    while (session / f"replay-{n}").exists():
        n += 1
    return session / f"replay-{n}"


def select_jobs(session: Session, selector: str | None) -> list[str]:
    """'all' (default), or job ids separated by commas."""
    done = [job_id for job_id, job in session.jobs.items() if job["status"] == "done"]
    if not selector or selector == "all":
        return done
    wanted = [s.strip() for s in selector.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in done]
    if unknown:
        raise SessionError(f"no finished job {unknown[0]!r} in {session.folder}; finished: {', '.join(done) or 'none'}")
    return wanted


def describe_differences(session: Session, registry: Registry, models: list[str]) -> list[str]:
    """What differs, for each model, between what it was rendered with and what is here now:
    the environment (Python, libraries, CUDA, GPUs) and the model itself (revision, weight
    hashes, pipeline class, scheduler config)."""
    environment = probe_environment()
    if environment is None:
        return ["this machine's environment could not be read (is torch installed?)"]
    lines = []
    for model in models:
        record = session.record["models"].get(model) or {}
        folder = registry.files(model).folder
        now = {"environment": environment, "model": model_identity(folder) if folder else None}
        then = {"environment": record.get("environment"), "model": record.get("identity")}
        lines += [f"{model}: {d}" for d in differences(then, now)]
    return lines


def differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """'where: recorded -> now' for every leaf that differs, in a stable order."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [line for key in sorted(set(recorded) | set(current), key=str)
                for line in differences(recorded.get(key), current.get(key), f"{prefix}{key}.")]
    return [] if recorded == current else [f"{prefix.rstrip('.')}: {recorded!r} -> {current!r}"]


async def replay(registry: Registry, session: Session, job_ids: list[str], target: Session,
                 check: bool, min_psnr_db: float, max_phash_distance: int,
                 on_result: Callable[[ImageResult], None]) -> list[ImageResult]:
    results = []
    async with Dispatcher(registry, target.images_dir, first_job_number=target.next_job_number()) as dispatcher:
        events = dispatcher.subscribe()
        recorder = asyncio.create_task(target.record_events(events))
        try:
            replayed = _queue(dispatcher, session, job_ids)
            for job_id in job_ids:
                recorded, job = session.jobs[job_id], await dispatcher.wait(replayed[job_id].id)
                new = {image["image"]: image for image in job.images}
                for image in sorted(recorded["images"], key=lambda i: i["image"]):
                    result = _result(session, job_id, image, new.get(image["image"]), check,
                                     min_psnr_db, max_phash_distance)
                    results.append(result)
                    on_result(result)
        finally:
            recorder.cancel()
            for event in events.drain():
                target.record_event(event)
    return results


def _queue(dispatcher: Dispatcher, session: Session, job_ids: list[str]) -> dict[str, Job]:
    """Queue the recorded jobs again: those of an A/B set or grid as that set (its id, labels
    and cells kept), the others one by one. Recorded job id -> its replay."""
    specs = {job_id: JobSpec.from_dict(session.jobs[job_id]["spec"]) for job_id in job_ids}
    replayed: dict[str, Job] = {}
    for set_id, entry in session.sets.items():
        variants, recorded = VariantSet.from_record(entry, specs)
        if variants.variants:
            _, jobs = dispatcher.submit_set(variants, set_id=set_id)
            replayed.update(zip(recorded, jobs))
    for job_id in job_ids:
        if job_id not in replayed:
            replayed[job_id] = dispatcher.submit(specs[job_id])
    return replayed


def _result(session: Session, job_id: str, recorded: dict[str, Any], new: dict[str, Any] | None, check: bool,
            min_psnr_db: float, max_phash_distance: int) -> ImageResult:
    recorded_path = session.resolve(recorded["path"])
    result = ImageResult(job_id, recorded["image"], recorded["seed"], str(recorded_path),
                         new["path"] if new else None, None)
    if check and new is not None:
        result.verdict = (compare(recorded_path, new["path"], min_psnr_db, max_phash_distance)
                          if recorded_path.is_file() else Verdict("missing"))
    return result


def result_dict(result: ImageResult) -> dict[str, Any]:
    data = asdict(result)
    data["verdict"] = asdict(result.verdict) if result.verdict else None
    return data
