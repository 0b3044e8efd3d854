"""`diffdeck bench`: what diffdeck costs per image over a bare diffusers loop.

Both sides run warm, in their own process, on the same model and settings, in
alternating rounds within one run, so the ratio is measured side by side. diffdeck's
side is the path `diffdeck render` takes: Dispatcher, worker process, JSON lines,
step events, throttled previews, PNG with metadata.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffdeck.engines.core.events import Status
from diffdeck.engines.core.registry import Registry, RegistryError
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.queue.dispatcher import Dispatcher

PROMPT = "a small red star on a blue background"
# What the workbench's start imports (diffdeck.tui.cli.main, then what run_workbench imports), and
# with it whatever of engines those modules import; Textual's core is imported before the clock
# starts, as every Textual app imports it. Engines the UI imports only later (the Dispatcher, with
# the engine built after the first frame) are not counted: they do not delay the start.
IMPORT_PROBE = ("import time, textual.app; t = time.perf_counter(); import diffdeck.tui.cli.main, diffdeck.tui.app, "
                "diffdeck.tui.engine, diffdeck.tui.images, diffdeck.tui.themes; print(time.perf_counter() - t)")


def ui_import_seconds(tries: int = 5) -> float:
    """The UI start's imports (IMPORT_PROBE), in a fresh interpreter: best of `tries`."""
    return min(float(subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True,
                                    check=True, stdin=subprocess.DEVNULL).stdout) for _ in range(tries))


async def _bench(registry: Registry, model: str, n: int, rounds: int, workdir: Path) -> list[tuple[float, float, float]]:
    files = registry.files(model)
    if not files.available:
        raise RegistryError(files.problem or f"model {model!r} is not downloaded")
    defaults = registry.defaults(model, files.family)
    spec = {"prompt": PROMPT, **{k: defaults[k] for k in ("steps", "guidance", "width", "height")}}
    bare = subprocess.Popen(
        [sys.executable, "-m", "diffdeck.engines.bench.bare_loop", "--folder", str(files.folder), "--spec", json.dumps(spec),
         "--out", str(workdir / "bare")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    results = []
    try:
        # One side warms up at a time: two torch processes loading at once on few cores thrash.
        if bare.stdout.readline().strip() != "ready":
            raise RuntimeError("the bare diffusers loop did not start; see its output above")
        async with Dispatcher(registry, workdir / "diffdeck") as dispatcher:
            await _diffdeck_round(dispatcher, model, spec, 1)  # warm the worker
            for _ in range(rounds):
                bare.stdin.write(f"{n}\n")
                bare.stdin.flush()
                bare_s = float(bare.stdout.readline())
                ours_s, rendering_s = await _diffdeck_round(dispatcher, model, spec, n)
                results.append((bare_s / n, ours_s / n, (ours_s - rendering_s) / n))
                print(f"  round {len(results)}: bare {bare_s / n:.4f} s/image   diffdeck {ours_s / n:.4f} s/image"
                      f"   {100 * (ours_s / bare_s - 1):+.1f} %", flush=True)
    finally:
        bare.stdin.close()
        bare.wait()
    return results


async def _diffdeck_round(dispatcher: Dispatcher, model: str, spec: dict, n: int) -> tuple[float, float]:
    """Wall time for n one-image jobs, and the part of it the worker spent rendering and saving."""
    start = time.perf_counter()
    jobs = [dispatcher.submit(JobSpec(model=model, seed=i, **spec)) for i in range(n)]
    for job in jobs:
        await dispatcher.wait(job.id)
        if job.status != Status.DONE:
            raise RuntimeError(f"{job.id} {job.status}: {job.error}")
    rendering = sum(job.timings[k] for job in jobs for k in ("denoise_s", "decode_s", "save_s"))
    return time.perf_counter() - start, rendering


def run_bench(registry: Registry, model: str, n: int, rounds: int) -> int:
    print(f"diffdeck bench: {model}, {n} images a round, {rounds} rounds; each image a job of its own")
    with tempfile.TemporaryDirectory(prefix="diffdeck-bench-") as workdir:
        results = asyncio.run(_bench(registry, model, n, rounds, Path(workdir)))
    bare = statistics.median(r[0] for r in results)
    ours = statistics.median(r[1] for r in results)
    ratio = statistics.median(r[1] / r[0] for r in results)
    outside = statistics.median(r[2] for r in results)
    print(f"median: bare diffusers {bare:.4f} s/image, diffdeck {ours:.4f} s/image "
          f"({100 * (ours / bare - 1):+.1f} %); median of paired ratios {100 * (ratio - 1):+.1f} % (target < 5 %)")
    print(f"outside the worker's render and save (queue, dispatch, messages): {1000 * outside:.1f} ms/image "
          f"({100 * outside / bare:.1f} % of a bare image)")
    print(f"UI-side import of engines + diffdeck.tui.cli.main: {1000 * ui_import_seconds():.0f} ms, best of 5 (target < 150 ms)")
    return 0
