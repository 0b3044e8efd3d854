"""`diffdeck bench sessions`: what the session record costs, measured side by side in one run.

- autosave: seconds per recorded event, appended to a session of 10 jobs and to one of 10,000
- open: a 10,000-job session, compacted (session.yaml) and uncompacted (all in journal.jsonl)
- replay: `diffdeck replay --check` of a session against the time it took to render it
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from diffdeck.engines.core.events import EventKind
from diffdeck.engines.core.registry import Registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.queue.dispatcher import Dispatcher
from diffdeck.engines.record.session import Session
from diffdeck.engines.service.replay import Check, check_environment, replay
from diffdeck.engines.sets.similarity import Tolerance

PROMPT = "a small red star on a blue background, top left"


def job_events(session: Session, number: int) -> list[dict[str, Any]]:
    """The events `diffdeck render` records for one two-image job, with realistic fields."""
    job = f"job-{number:05d}"
    spec = {"prompt": f"{PROMPT} #{number}", "model": "demo", "negative_prompt": "", "seed": number,
            "seeds": [number, number + 1], "steps": 20, "guidance": 5.0, "width": 64, "height": 64,
            "scheduler": "default", "count": 2, "group": None}
    timings = {"denoise_s": 0.2113, "decode_s": 0.0122, "save_s": 0.0015, "total_s": 0.2251}
    images = [{"type": EventKind.IMAGE, "job": job, "image": i, "seed": number + i,
               "path": str(session.images_dir / f"{job}-{i:02d}-{number + i}.png"), "pixel_sha256": "5e" * 32,
               "timings": timings, "peak_memory": 423_297_024} for i in range(2)]
    return [{"type": EventKind.QUEUED, "job": job, "spec": spec, "position": 0},
            {"type": EventKind.STARTED, "job": job, "queue_wait_s": 0.0004, "load_s": 0.0},
            *images,
            {"type": EventKind.DONE, "job": job, "timings": {**timings, "queue_wait_s": 0.0004, "load_s": 0.0},
             "peak_memory": 423_297_024}]


def make_session(folder: Path, jobs: int, compact: bool = True) -> None:
    session = Session.open(folder)
    for number in range(1, jobs + 1):
        for event in job_events(session, number):
            session.append(event)
    session.compact() if compact else session.close()


def autosave_seconds(jobs: int, appended_jobs: int = 400) -> float:
    """Median seconds to record one event in a session that already holds `jobs` jobs."""
    with tempfile.TemporaryDirectory(prefix="diffdeck-bench-") as tmp:
        folder = Path(tmp) / "s"
        make_session(folder, jobs)
        session = Session.open(folder)
        samples = []
        for number in range(jobs + 1, jobs + 1 + appended_jobs):
            for event in job_events(session, number):
                start = time.perf_counter()
                session.append(event)
                samples.append(time.perf_counter() - start)
        session.close()
        return statistics.median(samples)


def open_seconds(jobs: int, compact: bool, tries: int = 3) -> tuple[float, int]:
    """Best time to open a session of `jobs` jobs, and its size on disk in bytes."""
    with tempfile.TemporaryDirectory(prefix="diffdeck-bench-") as tmp:
        folder = Path(tmp) / "s"
        make_session(folder, jobs, compact)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        best = float("inf")
        for _ in range(tries):
            start = time.perf_counter()
            session = Session.open(folder)
            best = min(best, time.perf_counter() - start)
            assert len(session.jobs) == jobs
        return best, size


async def _render_then_replay(registry: Registry, folder: Path, jobs: int, count: int) -> dict[str, float]:
    session = Session.open(folder / "original")
    start = time.perf_counter()
    async with Dispatcher(registry, session.images_dir) as dispatcher:
        events = dispatcher.subscribe()
        submitted = [dispatcher.submit(JobSpec(PROMPT, seed=n * count, count=count)) for n in range(jobs)]
        for job in submitted:
            await dispatcher.wait(job.id)
        for event in events.drain():
            session.record_event(event)
    render_s = time.perf_counter() - start
    session.compact()

    start = time.perf_counter()
    environment = check_environment(session, registry, ["demo"])
    environment_s = time.perf_counter() - start
    results = await replay(registry, session, list(session.jobs), Session.open(folder / "replay"),
                           Check(Tolerance(), environment.drift), lambda result: None)
    replay_s = time.perf_counter() - start
    kinds = [r.verdict.kind if r.verdict else "not rendered" for r in results]
    if kinds != ["identical"] * (jobs * count):
        raise RuntimeError(f"the replay did not match: {kinds}")
    return {"render_s": render_s, "environment_s": environment_s, "replay_s": replay_s}


def run_session_bench(registry: Registry, jobs: int = 4, count: int = 2) -> int:
    print("diffdeck bench sessions")
    small, large = autosave_seconds(10), autosave_seconds(10_000)
    print(f"autosave per event: {1e6 * small:.1f} us in a 10-job session, {1e6 * large:.1f} us in a 10,000-job "
          f"session (ratio {large / small:.2f}; median of 2,000 events each)")
    for compact, where in ((True, "compacted session.yaml"), (False, "all in journal.jsonl")):
        seconds, size = open_seconds(10_000, compact)
        print(f"open a 10,000-job session ({where}, {size / 1e6:.1f} MB): {seconds:.3f} s, best of 3 (target < 1 s)")
    with tempfile.TemporaryDirectory(prefix="diffdeck-bench-") as tmp:
        t = asyncio.run(_render_then_replay(registry, Path(tmp), jobs, count))
    overhead = t["replay_s"] / t["render_s"] - 1
    print(f"replay --check of {jobs} jobs x {count} images on demo: {t['replay_s']:.2f} s against {t['render_s']:.2f} s "
          f"to render them ({100 * overhead:+.0f} %), of which {t['environment_s']:.2f} s comparing the environment "
          "(a fresh process that imports torch); every image identical")
    return 0
