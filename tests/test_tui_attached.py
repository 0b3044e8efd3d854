"""The workbench attached to an engine daemon, as a user over ssh meets it: a real `diffdeck serve`
process, the workbench driven by Pilot. Leaving it leaves the queue running; attaching again shows
what happened meanwhile; a rating made through it is the daemon's to record. Over a stand-in for
ssh, the models offered are the far side's, and the images come back as thumbnails into a cache
folder."""

import asyncio
import sys
from pathlib import Path

import pytest
from daemons import PROMPT, state, stop, until_done
from diffdeck.engines.core.registry import DEMO_FOLDER
from diffdeck.engines.daemon.client import EngineClient
from diffdeck.engines.record.session import Session
from diffdeck.tui.app import Workbench
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import AttachedEngine
from diffdeck.tui.images import image_widget
from diffdeck.tui.themes import load_theme
from diffdeck.tui.widgets.gallery import Thumb
from diffdeck.tui.widgets.picker import Picker
from helpers import diffdeck, screen_text, until
from PIL import Image
from test_tui import SIZE, make_app, type_prompt
from textual.widgets import TextArea

pytestmark = pytest.mark.slow


async def attached_app(engine: AttachedEngine) -> Workbench:
    """The workbench on an engine started as the command line starts it: before the screen."""
    await engine.start()
    config = load_config()
    return Workbench(engine, config, [load_theme(p) for p in config.theme_files], image_class=image_widget("halfcell"))


def statuses(app):
    return {row.id: row.status for row in app.board.rows()}


async def test_leaving_the_workbench_leaves_the_queue_running_and_attaching_again_shows_it(daemon):
    app = await attached_app(AttachedEngine(EngineClient.connect, "daemon"))
    async with app.run_test(size=SIZE) as pilot:
        assert "engine: daemon" in str(app.query_one("#title").render())
        await type_prompt(pilot, PROMPT, steps=60)
        await until(pilot, lambda: statuses(app).get("job-0001") == "running", what="job-0001 running on the daemon")
        await pilot.press("f10")  # detach, mid-render
    assert app.return_code in (None, 0)

    job = await asyncio.to_thread(until_done, "job-0001")
    assert job["status"] == "done"  # nobody was attached when it finished

    again = await attached_app(AttachedEngine(EngineClient.connect, "daemon"))
    async with again.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: again.query(Thumb), what="the image made meanwhile, in the gallery")
        assert statuses(again) == {"job-0001": "done"}
        assert Path(again.board.jobs["job-0001"].images[0]["path"]) == Path(job["images"][0]["path"])
        await again.engine.calls.rate("job-0001", 0, 4)  # as the compare view does
        await until(pilot, lambda: again.marks.get(("job-0001", 0)) == "★4", what="the rating, back as an event")
        await pilot.press("ctrl+q")

    session = Path((await asyncio.to_thread(state))["session"])
    await asyncio.to_thread(stop, daemon)
    assert Session.open(session, create=False).jobs["job-0001"]["images"][0]["rating"] == 4


async def test_the_workbench_on_a_remote_engine_fetches_thumbnails_over_the_ssh_line(tmp_path):
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text(f'#!/bin/sh\nshift  # the host\ncd {tmp_path}  # as ssh starts in the home folder\nexec "$@"\n')
    fake_ssh.chmod(0o755)
    (tmp_path / "models.yaml").write_text(f"models:\n  far-only:\n    source: {DEMO_FOLDER}\n"
                                          "    example: a small green ring on a black background\n")
    line = [str(fake_ssh), "gpubox", sys.executable, "-m", "diffdeck.tui", "attach", "--stdio"]
    cache = tmp_path / "cache"
    try:
        app = await attached_app(AttachedEngine(lambda: EngineClient.over_command(line), "gpubox", cache=cache))
        async with app.run_test(size=SIZE) as pilot:
            assert "engine: gpubox" in str(app.query_one("#title").render())
            assert app.engine.models() == ["demo", "far-only"]  # the far side's models.yaml, not this one's
            app.query_one("#model", Picker).value = "far-only"
            await until(pilot, lambda: "green ring" in app.query_one("#prompt", TextArea).placeholder,
                        what="the far model's example prompt")
            app.query_one("#model", Picker).value = "demo"
            await type_prompt(pilot, PROMPT, steps=4)
            await until(pilot, lambda: "job-0001" in app.board.jobs and app.board.jobs["job-0001"].images,
                        what="the far side's image")
            image = Path(app.board.jobs["job-0001"].images[0]["path"])
            assert image.is_relative_to(cache) and Image.open(image).size == (64, 64)
            far = Path((await asyncio.to_thread(state))["session"])
            assert app.session.folder != far and app.session.jobs["job-0001"]["status"] in ("running", "done")
            assert f"session {far.name} · engine: gpubox" in str(app.query_one("#title").render()), \
                "the title names the far side's session, not the cache folder it is mirrored in"
            await pilot.press("ctrl+q")
        assert app.farewell() == (f"diffdeck: detached; the engine daemon's session {far.name} goes on. "
                                  "diffdeck --remote gpubox attaches again")
    finally:
        await asyncio.to_thread(diffdeck, "stop", cwd=tmp_path)


async def test_a_local_workbench_warns_of_a_daemon_holding_its_model_warm(daemon, tmp_path):
    """A workbench on a session of its own renders in its own workers: a model a running daemon
    holds warm would take its memory twice, and the workbench says so."""
    warm = diffdeck("render", PROMPT, "--steps", "1", "--engine", "daemon", cwd=tmp_path)
    assert warm.returncode == 0, warm.stderr
    app = make_app(tmp_path / "mine")
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: "holds demo loaded already" in screen_text(app), timeout=30,
                    what="the warning of a second copy")
        assert f"daemon (pid {daemon.pid})" in screen_text(app)
