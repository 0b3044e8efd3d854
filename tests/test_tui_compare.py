"""A/B in the workbench, driven through Pilot: variants taken in the prompt editor with ctrl+t,
rendered by real workers, compared side by side; a pick and a rating survive a reopen."""

import pytest
from diffdeck.engines.record.session import Session
from diffdeck.tui.screens.compare import CompareScreen
from diffdeck.tui.screens.grid_dialog import GridDialog
from diffdeck.tui.screens.grid_view import Cell, GridView
from diffdeck.tui.widgets.gallery import Thumb
from helpers import until
from test_tui import SIZE, make_app
from textual.widgets import DataTable, Input, Static


def texts(screen, selector):
    return str(screen.query_one(selector, Static).render())


async def take_ab(pilot, prompt_a, prompt_b, seed="11", count="2"):
    app = pilot.app
    await pilot.click("#prompt")
    await pilot.press(*prompt_a)
    app.query_one("#seed_mode").value = "fixed"
    app.query_one("#seed", Input).value = seed
    app.query_one("#count", Input).value = count
    app.query_one("#steps", Input).value = "3"
    await pilot.press("ctrl+t")
    app.query_one("#prompt").text = prompt_b
    await pilot.pause()
    assert "editing B, which changes prompt" in texts(app, "#variants")
    await pilot.press("ctrl+j")


def all_done(app):
    return app.board.jobs and all(row.status == "done" for row in app.board.jobs.values())


@pytest.mark.slow
async def test_ab_from_the_editor_then_pick_a_winner_and_rate_and_the_session_keeps_them(tmp_path):
    folder = tmp_path / "s"
    app = make_app(folder)
    async with app.run_test(size=SIZE) as pilot:
        await take_ab(pilot, "a red circle", "a blue circle")
        await until(pilot, lambda: all_done(app) and len(app.board.jobs) == 2, what="both variants rendered")
        a, b = app.engine.dispatcher.jobs["job-0001"], app.engine.dispatcher.jobs["job-0002"]
        assert a.spec.seeds == b.spec.seeds == (11, 12) and a.spec.group == b.spec.group == "set-0001"
        assert not app.query_one("#variants").has_class("-shown"), "queuing the set leaves A/B"

        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), timeout=5, what="the compare view")
        screen = app.screen
        assert "set-0001 · A/B · image 1/2 · A | B" in texts(screen, "#compare-title")
        table = screen.query_one(DataTable)
        rows = {str(table.get_row_at(i)[0]): table.get_row_at(i) for i in range(table.row_count)}
        assert str(rows["prompt"][1]) == "a red circle" and str(rows["prompt"][2]) == "a blue circle"
        assert "bold" in str(rows["prompt"][1].style) and "dim" in str(rows["steps"][1].style)
        assert str(rows["seed"][1]) == str(rows["seed"][2]) == "11"
        await until(pilot, lambda: "perceptual-hash distance" in texts(screen, "#measures"), timeout=10,
                    what="the measured difference")

        await pilot.press("b")  # B wins image 0
        await pilot.press("n", "t")  # image 1: a tie
        await pilot.press("tab", "4")  # the right side's image 1 gets four stars
        await pilot.pause()
        assert "wins: A 0 · B 1 · tie 1" in texts(screen, "#compare-title")
        await pilot.press("escape")
        await until(pilot, lambda: any("★4" in str(t.query_one("Label").render()) for t in app.query(Thumb)),
                    timeout=5, what="the rating in the gallery")

    reopened = Session.open(folder)
    assert reopened.wins("set-0001") == {"A": 0, "B": 1, "tie": 1}
    assert reopened.image_marks()[("job-0002", 0)] == "✓1"
    assert reopened.image_marks()[("job-0002", 1)] == "★4"

    app = make_app(folder)  # and the workbench shows them again
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), timeout=5, what="the compare view")
        assert "wins: A 0 · B 1 · tie 1" in texts(app.screen, "#compare-title")
        assert app.screen.query_one("#side-1").has_class("-winner")


@pytest.mark.slow
async def test_grid_dialog_counts_before_queuing_and_refuses_bad_axes(tmp_path):
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.click("#prompt")
        await pilot.press(*"a red circle")
        app.query_one("#steps", Input).value = "2"
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, GridDialog), timeout=5, what="the grid dialog")
        dialog = app.screen
        dialog.query_one("#axis-x", Input).value = "steps=10..30 step 0"
        await pilot.pause()
        assert "step 0" in texts(dialog, "#grid-count")
        dialog.query_one("#axis-x", Input).value = "red -> green"
        dialog.query_one("#axis-y", Input).value = "seed=1..30"
        await pilot.pause()
        assert texts(dialog, "#grid-count").startswith("2 × 30 = 60 jobs")
        dialog.query_one("#axis-x", Input).focus()
        await pilot.press("enter")
        assert "enter again" in texts(dialog, "#grid-count") and not app.engine.dispatcher.jobs, "a large grid asks first"
        dialog.query_one("#axis-y", Input).value = "seed=1, 2"
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, GridDialog), timeout=5, what="the dialog closed")
        assert [j.spec.prompt for j in app.engine.dispatcher.jobs.values()] == ["a red circle", "a green circle"] * 2
        await until(pilot, lambda: all_done(app) and len(app.board.jobs) == 4, what="the grid rendered")

        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, GridView), timeout=5, what="the grid view")
        await pilot.pause()
        assert len(app.screen.query("Cell")) == 4
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), timeout=5, what="two cells compared")
        assert "prompt=red · seed=1 | prompt=green · seed=1" in texts(app.screen, "#compare-title")
        await pilot.press("a", "escape")  # the red cell wins; back in the grid view, it says so
        await until(pilot, lambda: isinstance(app.screen, GridView), timeout=5, what="back to the grid")
        await until(pilot, lambda: "wins: prompt=red · seed=1 1" in texts(app.screen, "#grid-title"), timeout=5,
                    what="the pick counted in the grid view")
        assert isinstance(app.screen.focused, Cell), "a cell keeps the focus when the page is drawn again"


async def test_two_pinned_images_open_side_by_side(tmp_path):
    import shutil
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "sessions" / "examples" / "demo-red-circle"
    shutil.copytree(example, tmp_path / "s")
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(app.query(Thumb)) == 2, timeout=10, what="the two thumbnails")
        for thumb in app.query(Thumb):
            thumb.focus()
            await pilot.press("enter")
            await until(pilot, lambda: app.screen.id != "_default", timeout=5, what="the image view")
            await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), timeout=5, what="the pinned pair")
        assert texts(app.screen, "#compare-title").startswith("pinned images · A | B")
        await pilot.press("b")  # no set: no pick, and no crash
        await pilot.press("4")
        await until(pilot, lambda: "★★★★" in texts(app.screen, "#side-0 .side-caption"), timeout=5,
                    what="the rating on the left image")
    assert Session.open(tmp_path / "s").image_marks() == {("job-0001", 0): "★4"}
