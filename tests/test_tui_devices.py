"""The workbench and `diffdeck status` with two devices (two fake GPUs, declared by
DIFFDECK_FAKE_GPUS at discovery): the GPU panel shows each with its memory, workers and job, the
queue which device a running job is on. Snapshots from events; one run with real workers."""

import shutil

import pytest
from diffdeck.engines.core.events import Event, EventKind, Status
from diffdeck.engines.core.registry import DEMO_FOLDER, load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.record.session import Session
from diffdeck.tui.app import Workbench
from diffdeck.tui.cli.daemon import status_lines
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import LocalEngine
from diffdeck.tui.themes import load_theme
from helpers import screen_text, until, write_models
from test_tui_snapshots import example, settle

SIZES = [(80, 24), (120, 40)]


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setenv("DIFFDECK_FAKE_GPUS", "2:24")


async def two_jobs_running(pilot):
    """demo warm on gpu0 and rendering job-0002 there, demo2 rendering job-0003 on gpu1, job-0004 queued."""
    await settle(pilot)
    app = pilot.app
    for pid, model, device in ((901, "demo", 0), (902, "demo2", 1)):
        app.board.apply(Event(EventKind.WORKER_SPAWNED, None, {"model": model, "pid": pid, "device": device}))
        app.board.apply(Event(EventKind.WORKER_READY, None, {"model": model, "pid": pid}))
    for number, model in ((2, "demo"), (3, "demo2"), (4, "demo")):
        app.board.apply(Event(EventKind.QUEUED, f"job-000{number}", {"spec": JobSpec(
            f"a small blue square {number}", model=model, steps=30, seed=number).to_dict()}))
    for number, device in ((2, 0), (3, 1)):
        app.board.apply(Event(EventKind.DEQUEUED, f"job-000{number}", {}))
        app.board.apply(Event(EventKind.STARTED, f"job-000{number}", {"device": device}))
        app.board.apply(Event(EventKind.STEP, f"job-000{number}", {"image": 0, "count": 1, "step": 5 * number,
                                                                    "total": 30, "it_s": 4.0 * number}))
    app._redraw()
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", SIZES)
def test_two_devices_layout(snap_compare, two_gpus, tmp_path, size):
    assert snap_compare(example(tmp_path, "demo-red-circle"), terminal_size=size, run_before=two_jobs_running)


@pytest.mark.parametrize("size", SIZES)
async def test_each_device_its_workers_and_job_fit_on_the_screen(two_gpus, tmp_path, size):
    app = example(tmp_path, "demo-red-circle")
    async with app.run_test(size=size) as pilot:
        await two_jobs_running(pilot)
        shown = screen_text(app)
        for number, device in (("0002", "gpu0"), ("0003", "gpu1")):
            row = next(line for line in shown.splitlines() if line.startswith(f" {number} "))
            assert f"on {device}" in row and "/30" in row, row
        for device, worker in (("gpu0 fake GPU 0", "demo busy 0002 8.0 it/s"), ("gpu1 fake GPU 1", "demo2 busy 0003")):
            assert device in shown and worker in shown, shown
        assert "3 to go" in shown and "on 2 GPUs" in shown, "the queue's title: its ETA over both devices"


@pytest.mark.slow
async def test_two_jobs_render_at_once_each_on_its_device_in_the_panel_queue_and_status(two_gpus, tmp_path):
    second = tmp_path / "demo-copy"
    shutil.copytree(DEMO_FOLDER, second)
    registry = load_registry(write_models(tmp_path, {"demo2": {"source": str(second), "memory_gb": 0.1}}))
    config = load_config()
    app = Workbench(LocalEngine(registry, Session.open(tmp_path / "s"), telemetry_interval_s=0.2), config,
                    [load_theme(p) for p in config.theme_files])
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.engine.started is not None, what="the engine")
        for model in ("demo", "demo2"):
            await app.engine.calls.submit(JobSpec("a red circle", model=model, steps=1000, count=4, width=64, height=64))

        def both_rendering() -> bool:
            return sum(row.status == Status.RUNNING and row.step > 0 for row in app.board.rows()) == 2
        await until(pilot, both_rendering, timeout=180, what="both jobs rendering at once")
        await pilot.pause(0.5)
        shown = screen_text(app)
        devices = {row.device for row in app.board.running()}
        assert devices == {0, 1}, devices
        for row in app.board.running():
            line = next(line for line in shown.splitlines() if line.startswith(f" {row.id.removeprefix('job-')} "))
            assert f"on gpu{row.device}" in line, line
            assert f"{row.spec['model']} busy {row.id.removeprefix('job-')}" in shown, shown
        state = {"pid": 1, "version": "test", "clients": 1, **await app.engine.queue.state()}
        lines = status_lines(state)
        for row in app.board.running():
            assert any(line.startswith(f"  gpu{row.device} fake GPU {row.device} ") and f"rendering {row.id}" in line
                       for line in lines), lines
            assert any(line.startswith(f"  {row.id} running") and f"(on gpu{row.device}, image " in line
                       for line in lines), lines
        assert sum(line.startswith("    worker ") for line in lines) == 2, lines
        assert {state["devices"][row.device]["job"] for row in app.board.running()} == {row.id for row in app.board.running()}
        await app.engine.calls.cancel_all()
        await pilot.press("ctrl+q")
