"""`diffdeck bench keys`: keystroke latency in the workbench, idle and while a worker renders,
measured side by side in one run.

The real app runs headless (Textual's Pilot) with the real Dispatcher and worker. A sample is
the time from a key press to the app having handled it and refreshed the screen (Pilot waits
for the app to go idle), for a letter typed into the prompt editor.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from diffdeck.engines.core.events import Status
from diffdeck.engines.core.registry import Registry
from diffdeck.engines.record.session import Session
from diffdeck.tui.app import Workbench
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import LocalEngine
from diffdeck.tui.themes import load_theme


async def _type(pilot, keys: int) -> list[float]:
    samples = []
    for i in range(keys):
        start = time.perf_counter()
        await pilot.press("a" if i % 8 else "backspace")
        samples.append(time.perf_counter() - start)
        await pilot.pause(0.02)
    return samples


async def _bench(registry: Registry, keys: int, folder: Path) -> tuple[list[float], list[float], float]:
    config = load_config()
    app = Workbench(LocalEngine(registry, Session.open(folder)), config,
                    [load_theme(p) for p in config.theme_files])
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.5)
        idle = await _type(pilot, keys)
        app.query_one("#steps").value, app.query_one("#count").value = "1000", "64"
        app.query_one("#prompt").text = "a long render to keep the worker busy"
        await pilot.press("ctrl+j")
        deadline = time.monotonic() + 120
        while not any(row.status == Status.RUNNING and row.step for row in app.board.rows()):
            if time.monotonic() > deadline:
                raise RuntimeError("the demo render did not start within two minutes")
            await pilot.pause(0.1)
        await pilot.click("#negative_prompt")
        busy = await _type(pilot, keys)
        rate = sum(row.it_s or 0.0 for row in app.board.running())  # the demo's one job, or one a device
        await app.engine.calls.cancel_all()
        await pilot.press("ctrl+q")
    return idle, busy, rate


def run_keys_bench(registry: Registry, keys: int = 200) -> int:
    print(f"diffdeck bench keys: {keys} keystrokes idle, then {keys} while the demo worker renders")
    with tempfile.TemporaryDirectory(prefix="diffdeck-bench-") as tmp:
        idle, busy, rate = asyncio.run(_bench(registry, keys, Path(tmp) / "s"))
    for name, samples in (("idle", idle), ("busy", busy)):
        ordered = sorted(samples)
        print(f"{name}: median {1000 * statistics.median(ordered):.1f} ms, "
              f"p95 {1000 * ordered[int(0.95 * (len(ordered) - 1))]:.1f} ms, max {1000 * ordered[-1]:.1f} ms")
    print(f"busy/idle median ratio {statistics.median(busy) / statistics.median(idle):.2f} "
          f"(the worker rendering at {rate:.1f} it/s meanwhile)")
    return 0
