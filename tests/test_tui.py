"""The workbench driven as a person would, through Textual's Pilot: the real app, the real
Dispatcher, real worker processes rendering the demo model."""

import json
import os
import signal

import pytest
from diffdeck.engines.core.registry import DEMO_FOLDER, load_registry
from diffdeck.engines.record.session import JOURNAL, Session
from diffdeck.tui.app import Workbench
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import LocalEngine
from diffdeck.tui.images import image_widget
from diffdeck.tui.screens.help import HelpScreen
from diffdeck.tui.themes import load_theme
from diffdeck.tui.widgets.gallery import LIVE, Thumb
from diffdeck.tui.widgets.picker import Picker
from diffdeck.tui.widgets.queue_view import QueueView
from helpers import until
from textual.widgets import Input, Static, TextArea
from textual.widgets.data_table import CellDoesNotExist

SIZE = (120, 40)


def make_app(folder, config_dir=None, **kwargs):
    """The workbench on a session folder (or an open Session), with the built-in models."""
    config = load_config(config_dir) if config_dir else load_config()
    registry = load_registry(None)
    session = folder if isinstance(folder, Session) else Session.open(folder)
    return Workbench(LocalEngine(registry, session, telemetry_interval_s=0.2), config,
                     [load_theme(p) for p in config.theme_files], image_class=image_widget("halfcell"), **kwargs)


async def type_prompt(pilot, prompt, steps=None, size=None, count=None):
    await pilot.click("#prompt")
    await pilot.press(*prompt)
    for field, value in (("steps", steps), ("size", size), ("count", count)):
        if value is not None:
            pilot.app.query_one(f"#{field}", Input).value = str(value)
    await pilot.press("ctrl+j")


def statuses(app):
    return {row.id: row.status for row in app.board.rows()}


def cell(app, job_id, column):
    """What the queue shows for a job; None until its row is drawn (redraws are coalesced)."""
    try:
        return str(app.query_one(QueueView).get_cell(job_id, column))
    except CellDoesNotExist:
        return None


@pytest.mark.slow
async def test_a_prompt_goes_queued_running_done_and_its_thumbnail_appears(tmp_path):
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        events = app.engine.dispatcher.subscribe()
        await type_prompt(pilot, "a red circle", steps=400)
        shown, previews = [], []

        def watch():
            shown.append(cell(app, "job-0001", "status"))
            live = [t for t in app.query(Thumb) if t.image == LIVE]
            previews.extend(image.image for t in live for image in t.query(app.image_class))  # once composed
            return shown[-1] == "done"

        await until(pilot, watch, what="job-0001 done")
        assert any(p is not None for p in previews), "the step preview stood in for the image"
        await until(pilot, lambda: not [t for t in app.query(Thumb) if t.image == LIVE], timeout=5,
                    what="the live preview gone once the image came")
        shown = [s for s in shown if s is not None]
        assert [s for i, s in enumerate(shown) if i == 0 or shown[i - 1] != s] in (
            ["queued", "running", "done"], ["running", "done"])
        assert "running" in shown
        seen = [e.type for e in events.drain() if e.job == "job-0001"]
        assert seen[0] == "queued" and seen.index("started") < seen.index("image") < seen.index("done")
        await until(pilot, lambda: app.query(Thumb), what="a thumbnail")
        thumb = app.query(Thumb).first()
        assert (thumb.job_id, thumb.image) == ("job-0001", 0)
        await until(pilot, lambda: any(i.image is not None for i in thumb.query(app.image_class)),
                    what="the thumbnail decoded")
        assert app.query_one("#prompt").text == "a red circle"
        model = app.query_one("#model", Picker)
        await until(pilot, lambda: str(model.label) == "demo · warm", timeout=5,
                    what=f"demo shown warm, not {model.label}")
        await pilot.press("ctrl+q")
    job = Session.open(tmp_path / "s").jobs["job-0001"]
    assert job["status"] == "done" and job["spec"]["steps"] == 400 and (tmp_path / "s" / job["images"][0]["path"]).is_file()


async def test_an_invalid_size_is_marked_on_its_field_and_nothing_is_queued(tmp_path):
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        await type_prompt(pilot, "a blue square", size="60x64")
        size = app.query_one("#size", Input)
        assert size.has_class("-invalid")
        assert "60 is not a multiple of 8" in str(app.query_one("#problem", Static).render())
        assert app.engine.dispatcher.jobs == {} and not (tmp_path / "s" / JOURNAL).exists()
        await pilot.click("#size")
        await pilot.press("end", "backspace")
        await pilot.pause()
        assert not size.has_class("-invalid"), "editing the field clears the mark"
        await pilot.press("ctrl+q")


@pytest.mark.slow
async def test_cancel_a_running_job_with_a_remapped_key(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("keys:\n  cancel_job: k\n")
    app = make_app(tmp_path / "s", tmp_path / "config")
    async with app.run_test(size=SIZE) as pilot:
        await type_prompt(pilot, "a slow star", steps=1000, count=8)
        await until(pilot, lambda: statuses(app).get("job-0001") == "running", what="job-0001 running")
        await pilot.press("f3", "k")
        await until(pilot, lambda: statuses(app)["job-0001"] == "cancelled", timeout=10, what="cancelled")
        assert app.engine.dispatcher.jobs["job-0001"].status == "cancelled"
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        assert ("queue", "k", "Cancel", "cancel_job") in app.screen.rows
        await pilot.press("escape")
        await pilot.press("ctrl+q")
    assert Session.open(tmp_path / "s").jobs["job-0001"]["status"] == "cancelled"


@pytest.mark.slow
async def test_the_queue_reorders_and_runs_in_its_new_order(tmp_path):
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3", "p")  # pause: nothing starts while we reorder
        await until(pilot, lambda: app.board.paused, what="paused")
        for prompt in ("first", "second", "third"):
            await type_prompt(pilot, prompt)
            app.query_one("#prompt").text = ""
        await until(pilot, lambda: app.board.queue == ["job-0001", "job-0002", "job-0003"], what="three queued")
        await pilot.press("f3", "down", "down", "t")  # third to the front
        await until(pilot, lambda: app.board.queue[0] == "job-0003", what="moved to front")
        await pilot.press("home", "d")  # the cursor follows job-0003; down one place
        await until(pilot, lambda: app.board.queue == ["job-0001", "job-0003", "job-0002"], what="moved down")
        assert [str(app.query_one(QueueView).get_row_at(i)[4]) for i in range(3)] == ["first", "third", "second"]
        events = app.engine.dispatcher.subscribe()
        await pilot.press("p")  # resume
        await until(pilot, lambda: all(s == "done" for s in statuses(app).values()), what="all done")
        started = [e.job for e in events.drain() if e.type == "started"]
        assert started == ["job-0001", "job-0003", "job-0002"]
        await pilot.press("ctrl+q")


@pytest.mark.slow
async def test_a_worker_killed_mid_job_fails_that_job_and_the_app_carries_on(tmp_path):
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        await type_prompt(pilot, "doomed", steps=1000, count=8)
        await until(pilot, lambda: statuses(app).get("job-0001") == "running", what="job-0001 running")
        os.kill(app.engine.dispatcher.workers["demo"].pid, signal.SIGKILL)
        await until(pilot, lambda: statuses(app)["job-0001"] == "failed", timeout=10, what="failed")
        assert "killed by SIGKILL" in cell(app, "job-0001", "progress")
        app.query_one("#prompt").text = ""
        await type_prompt(pilot, "next", steps="", count=1)  # the fields keep what was typed last
        await until(pilot, lambda: statuses(app).get("job-0002") == "done", what="job-0002 done on a new worker")
        await pilot.press("ctrl+q")


@pytest.mark.slow
async def test_reopening_a_session_resumes_its_queue_and_shows_its_images(tmp_path):
    session = Session.open(tmp_path / "s")
    spec = {"prompt": "left over", "model": "demo", "seeds": [4], "count": 1, "steps": 10}
    session.append({"type": "queued", "job": "job-0001", "spec": spec})
    session.close()
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: statuses(app).get("job-0001") == "done", what="the restored job done")
        await pilot.press("ctrl+q")
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        assert [(t.job_id, t.image) for t in app.query(Thumb)] == [("job-0001", 0)]
        assert cell(app, "job-0001", "status") == "done"
        await pilot.press("f4", "enter")
        await until(pilot, lambda: type(app.screen).__name__ == "ImageScreen", timeout=10, what="the image view")
        rows = dict(map(str, app.screen.query_one("#parameters").get_row_at(i)) for i in range(3))
        assert rows["prompt"] == "left over"
        await pilot.press("escape", "ctrl+q")


@pytest.mark.slow
async def test_quitting_leaves_unfinished_jobs_queued_for_next_time(tmp_path):
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        await type_prompt(pilot, "still running", steps=1000, count=8)
        await until(pilot, lambda: statuses(app).get("job-0001") == "running", what="job-0001 running")
        await pilot.press("f3", "p")
        app.query_one("#prompt").text = ""
        await type_prompt(pilot, "tomorrow")
        await until(pilot, lambda: app.board.queue == ["job-0002"], what="queued")
        await pilot.press("ctrl+q")
    unfinished = {job.id: job for job in Session.open(tmp_path / "s").unfinished()}
    assert list(unfinished) == ["job-0001", "job-0002"]
    assert unfinished["job-0001"].worker_crashes == 0, "a quit is not a crash"
    lines = [json.loads(line) for line in (tmp_path / "s" / JOURNAL).read_text().splitlines()]
    assert not any(e["type"] == "cancelled" for e in lines)


async def test_prompt_history_walks_with_up_and_down_and_a_user_theme_applies(tmp_path):
    (tmp_path / "config" / "themes").mkdir(parents=True)
    (tmp_path / "config" / "config.yaml").write_text("theme: mine\n")
    (tmp_path / "config" / "themes" / "mine.yaml").write_text("name: mine\nprimary: '#ff8800'\ndark: false\n")
    app = make_app(tmp_path / "s", tmp_path / "config")
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "mine" and app.current_theme.primary == "#ff8800"
        await pilot.press("f3", "p")  # paused: these only queue
        for prompt in ("one", "two"):
            await type_prompt(pilot, prompt)
            app.query_one("#prompt").text = ""
        prompt = app.query_one("#prompt")
        walked = []
        for key in ("up", "up", "down", "down"):
            await pilot.press(key)
            walked.append(prompt.text)
        assert walked == ["two", "one", "two", ""]
        await pilot.press("ctrl+q")


async def test_the_prompt_editor_shows_what_the_chosen_model_draws(tmp_path):
    (tmp_path / "models.yaml").write_text(
        f"models:\n  foxes:\n    source: {DEMO_FOLDER}\n    description: draws foxes in the snow\n"
        f"    example: a red fox in the snow\n  plain:\n    source: {DEMO_FOLDER}\n")
    config = load_config()
    registry = load_registry(tmp_path / "models.yaml")
    app = Workbench(LocalEngine(registry, Session.open(tmp_path / "s")), config,
                    [load_theme(p) for p in config.theme_files], image_class=image_widget("halfcell"))
    async with app.run_test(size=SIZE) as pilot:
        prompt, model = app.query_one("#prompt", TextArea), app.query_one("#model", Picker)
        model.value = "foxes"
        await until(pilot, lambda: str(prompt.placeholder) == "prompt, for example: a red fox in the snow",
                    what="the model's example in the empty prompt")
        assert str(model.tooltip) == "draws foxes in the snow"
        model.value = "plain"  # a models.yaml entry without an example or a description
        await until(pilot, lambda: str(prompt.placeholder) == "prompt", what="the placeholder to follow the model")
        assert model.tooltip is None
        await pilot.press("ctrl+q")
