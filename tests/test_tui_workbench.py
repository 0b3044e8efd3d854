"""What a new user meets in the workbench, read off the screen as the terminal would show it:
the layout at 80x24 and 120x40, the image view's parameters, focus in dialogs, keys that say
what they do, the theme and the prompt history kept for next time, the queue's ETA, the bell."""

import json
import shutil

import pytest
from diffdeck.engines.core.events import Event, EventKind
from diffdeck.engines.record.session import Session
from diffdeck.tui.history import LIMIT, load_history, save_history
from diffdeck.tui.screens.grid_dialog import GridDialog
from diffdeck.tui.screens.help import HelpScreen
from diffdeck.tui.widgets.gallery import LIVE, Thumb
from helpers import screen_text, until
from test_tui import make_app, type_prompt
from test_tui_snapshots import EXAMPLES, example, settle

SIZES = [(80, 24), (120, 40)]


@pytest.mark.parametrize("size", SIZES)
async def test_the_main_screen_fits_every_column_and_thumbnail(tmp_path, size):
    app = example(tmp_path, "demo-red-circle")
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        # a warm model's label is the longest the picker shows: the point is that it fits its column
        app.board.apply(Event(EventKind.WORKER_READY, None, {"model": "demo", "pid": 1}))
        app._show_warm_models()
        await pilot.pause(0.2)
        shown = screen_text(app)
        header = next(line for line in shown.splitlines() if " job " in line)
        assert all(column in header for column in ("status", "progress", "model", "prompt")), header
        row = next(line for line in shown.splitlines() if " 0001 " in line)
        assert "done" in row and "demo" in row and "a large red" in row, row
        assert "0001·0" in shown, "the first thumbnail's caption is on the screen, under its image"
        assert "demo · warm" in shown, "the model picker says which model and that it is warm"
        assert "▏" not in shown, "no stray one-cell rule"


@pytest.mark.parametrize("size", SIZES)
async def test_the_image_view_shows_the_parameters(tmp_path, size):
    app = example(tmp_path, "demo-red-circle")
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("f4", "enter")
        await until(pilot, lambda: type(app.screen).__name__ == "ImageScreen", timeout=10, what="the image view")
        await pilot.pause(0.2)
        shown = screen_text(app)
        seed = str(app.session.jobs["job-0001"]["images"][1]["seed"])  # F4 goes to the newest image
        for name, value in (("prompt", "a large red"), ("model", "demo"), ("seed", seed), ("steps", "15")):
            assert any(name in line and value in line for line in shown.splitlines()), (name, shown)
        assert app.screen.focused is app.screen.query_one("#parameters"), "a long record scrolls at once"


async def test_dialogs_take_the_keys_typed_at_once(tmp_path):
    app = example(tmp_path, "demo-red-circle")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.click("#prompt")
        await pilot.press(*"a red circle", "ctrl+g", *"steps=4,8")
        assert isinstance(app.screen, GridDialog)
        await until(pilot, lambda: "2 jobs" in screen_text(app), timeout=30, what="the grid counted")
        assert "steps=4,8" in screen_text(app)
        await pilot.press("escape", "f1", *["pagedown"] * 6)
        assert isinstance(app.screen, HelpScreen)
        await pilot.pause(0.2)
        assert "command_palette" in screen_text(app), "F1 scrolls to its last key without a Tab first"


async def test_arrow_keys_walk_the_gallery_and_back_to_the_queue(tmp_path):
    app = example(tmp_path, "demo-red-circle")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)

        def focused():
            widget = app.screen.focused
            return (widget.job_id, widget.image) if isinstance(widget, Thumb) else type(widget).__name__

        await pilot.press("f4")
        assert focused() == ("job-0001", 1)
        await pilot.press("left")
        assert focused() == ("job-0001", 0)
        await pilot.press("left")
        assert focused() == "QueueView"
        await pilot.press("right")
        assert focused() == ("job-0001", 1)


async def test_f10_in_a_local_workbench_says_what_it_is_for(tmp_path):
    app = example(tmp_path, "demo-red-circle")
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await settle(pilot)
        await pilot.press("f10")
        await until(pilot, lambda: "F10 detaches from an engine daemon" in screen_text(app).replace("\n", " "),
                    timeout=30, what="the toast")
        assert app.is_running


async def test_a_theme_picked_in_the_palette_is_saved_keeping_the_rest(tmp_path):
    (tmp_path / "config").mkdir()
    config = tmp_path / "config" / "config.yaml"
    config.write_text("# my settings\nimages: halfcell  # fast over ssh\ntheme: diffdeck-dark  # was\n"
                      "keys:\n  cancel_job: k\n")
    app = make_app(tmp_path / "s", tmp_path / "config")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+p", *"Theme: diffdeck-light")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: app.theme == "diffdeck-light", timeout=30, what="the theme applied")
        await pilot.press("ctrl+q")
    assert config.read_text() == ("# my settings\nimages: halfcell  # fast over ssh\ntheme: diffdeck-light  # was\n"
                                  "keys:\n  cancel_job: k\n")
    assert not list(config.parent.glob("*.part")), "written beside it, then renamed over it"


@pytest.mark.slow
async def test_the_running_job_stays_in_view_and_the_queue_has_an_eta(tmp_path, monkeypatch):
    """A session with many finished jobs and one left queued, at 80x24: when it runs, its row is
    on the screen; the queue's title has an ETA for the whole queue; F4 opens a finished image,
    not the live preview; quitting says what it waits for."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    shutil.copytree(EXAMPLES / "demo-red-circle", tmp_path / "s")
    session = Session.open(tmp_path / "s")
    for n in range(2, 22):
        session.append({"type": "queued", "job": f"job-{n:04d}", "spec": {"prompt": f"old {n}", "model": "demo",
                                                                          "seeds": [n], "count": 1, "steps": 4}})
        session.append({"type": "cancelled", "job": f"job-{n:04d}"})
    for n in (22, 23):
        session.append({"type": "queued", "job": f"job-{n:04d}", "spec": {"prompt": f"slow {n}", "model": "demo",
                                                                          "seeds": list(range(8)), "count": 8,
                                                                          "steps": 1000}})
    session.close()
    app = make_app(tmp_path / "s")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.board.jobs["job-0022"].it_s, what="job-0022 running at a measured rate")
        await until(pilot, lambda: any(t.image == LIVE for t in app.query(Thumb)), what="the live preview")
        await pilot.pause(0.5)
        shown = screen_text(app)
        assert any("0022" in line and "running" in line for line in shown.splitlines()), shown
        assert "queue · 2 to go · ETA " in shown, shown
        await pilot.press("f4")
        assert (app.screen.focused.job_id, app.screen.focused.image) == ("job-0001", 1)
        assert app._leaving_text() == "quitting: waiting for job-0022 to stop at its next step and the worker " \
                                      "(demo) to exit…"
        await pilot.press("ctrl+q")
    assert app.farewell() == f"diffdeck: session {tmp_path / 's'} (2 jobs queued, resumed when it opens); " \
                             f"reopen it with: diffdeck {tmp_path / 's'}"


@pytest.mark.slow
async def test_prompts_outlive_the_workbench_and_the_bell_rings_when_the_queue_empties(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("notify: bell\n")
    app = make_app(tmp_path / "s", tmp_path / "config")
    async with app.run_test(size=(80, 24)) as pilot:
        written = []
        terminal = app._driver.write
        app._driver.write = lambda data: (written.append(data), terminal(data))[1]
        await type_prompt(pilot, "a red circle", steps=2)
        await until(pilot, lambda: app.board.jobs.get("job-0001") and app.board.jobs["job-0001"].status == "done",
                    what="job-0001 done")
        await until(pilot, lambda: "\a" in written, timeout=30, what="the bell")
        await pilot.press("ctrl+q")
    assert load_history(tmp_path / "state" / "diffdeck" / "prompts.json") == ["a red circle"]
    app = make_app(tmp_path / "s2")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.click("#prompt")
        await pilot.press("up")
        assert app.query_one("#prompt").text == "a red circle"
        await pilot.press("ctrl+q")


def test_the_history_keeps_the_newest_prompts(tmp_path):
    path = tmp_path / "prompts.json"
    save_history(path, [f"prompt {n}" for n in range(LIMIT + 50)])
    kept = load_history(path)
    assert len(kept) == LIMIT and kept[-1] == f"prompt {LIMIT + 49}" and kept[0] == "prompt 50"
    assert json.loads(path.read_text())["prompts"] == kept


async def test_quitting_a_new_session_that_queued_nothing_says_none_was_kept(tmp_path):
    """As `diffdeck` ends: the workbench quits, the session is let go (a folder made for nothing is
    removed), then the farewell is printed; it must not offer to reopen what is gone."""
    app = make_app(Session.open_for_writing(tmp_path / "new", "diffdeck"))
    async with app.run_test() as pilot:
        await pilot.press("ctrl+q")
    await app.engine.shut_down()
    app.engine.session.close()
    assert not (tmp_path / "new").exists()
    assert app.farewell() == "diffdeck: nothing was queued, so no session was kept"
