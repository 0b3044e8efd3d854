"""Routes in the workbench, read off the screen: the route picker beside the model picker (and
none where the engine has no routes), ctrl+r rendering the prompt through `preview`, `f`
promoting an image through `final` with its seed (and, where final's flow starts with img2img,
the image as its init), a flow's stage images in the image view, and an attached workbench
offered the daemon's routes. Real workers render the demo model."""

import shutil

import pytest
import yaml
from daemons import PROMPT
from diffdeck.engines.core.flow_checks import resolve_flow
from diffdeck.engines.core.registry import DEMO, DEMO_FOLDER, Registry, load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.daemon.client import EngineClient
from diffdeck.engines.record.session import Session
from diffdeck.tui.app import Workbench
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import AttachedEngine, LocalEngine
from diffdeck.tui.images import image_widget
from diffdeck.tui.promote import promoted
from diffdeck.tui.screens.image_view import ImageScreen
from diffdeck.tui.themes import load_theme
from diffdeck.tui.widgets.gallery import Thumb
from diffdeck.tui.widgets.picker import Picker
from diffdeck.tui.widgets.prompt_editor import PromptEditor
from helpers import screen_text, until
from test_tui import cell, type_prompt
from test_tui_attached import attached_app
from test_tui_snapshots import EXAMPLES, example, open_image

SIZE = (80, 24)


def workbench(registry: Registry, session: Session) -> Workbench:
    config = load_config()
    return Workbench(LocalEngine(registry, session, telemetry_interval_s=0.5), config,
                     [load_theme(p) for p in config.theme_files], image_class=image_widget("halfcell"))


def line_with(app, *words: str) -> str:
    """The screen's first line that has every word; AssertionError with the screen if none has."""
    shown = screen_text(app)
    found = next((line for line in shown.splitlines() if all(w in line for w in words)), None)
    assert found is not None, f"no line has {words}:\n{shown}"
    return found


async def test_the_route_picker_sits_beside_the_model_picker_and_what_it_picks_is_the_jobs_route(tmp_path):
    app = workbench(load_registry(None), Session.open(tmp_path / "s"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        line_with(app, "demo", "no route")  # on the model picker's line
        route = app.query_one("#route", Picker)
        route.focus()
        await pilot.press("enter")  # its list
        await pilot.pause(0.2)
        assert "▊ preview" in line_with(app, "preview") and "▊ final" in line_with(app, "final")
        await pilot.press("down", "down", "enter")
        await pilot.pause(0.2)
        line_with(app, "demo", "final")
        await pilot.click("#prompt")
        await pilot.press(*"a red circle")
        assert app.query_one(PromptEditor).read_spec().route == "final"
        assert "demo-final" in str(route.tooltip), "the tooltip says what the route renders"


async def test_without_routes_the_picker_shows_only_the_model(tmp_path):
    app = workbench(Registry({"demo": DEMO}, routes={}), Session.open(tmp_path / "s"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await pilot.pause(0.2)
        assert "no route" not in screen_text(app)
        line_with(app, "demo")
        await pilot.click("#prompt")
        await pilot.press(*"a red circle", "ctrl+r")
        await until(pilot, lambda: "no preview route" in screen_text(app).replace("\n", " "), timeout=10,
                    what="the toast saying there is no preview route")
        assert app.query_one(PromptEditor).read_spec().route is None
        assert not app.board.jobs, "nothing was queued"


@pytest.mark.slow
async def test_ctrl_r_previews_and_f_promotes_the_image_through_final_with_its_seed(tmp_path):
    app = workbench(load_registry(None), Session.open(tmp_path / "s"))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.click("#prompt")
        await pilot.press(*PROMPT, "ctrl+r")
        await until(pilot, lambda: cell(app, "job-0001", "status") == "done", what="the preview done")
        preview = app.board.jobs["job-0001"].spec
        assert (preview["route"], preview["flow"], [s["steps"] for s in preview["stages"]]) == \
            ("preview", "demo-preview", [8])
        assert cell(app, "job-0001", "model") == "demo › preview"

        await pilot.press("f4", "f")  # the newest image: the preview's
        await until(pilot, lambda: cell(app, "job-0002", "status") == "done", what="the promoted job done")
        final, image = app.board.jobs["job-0002"].spec, app.board.jobs["job-0001"].images[0]
        assert (final["route"], final["flow"], final["prompt"], final["seeds"]) == \
            ("final", "demo-final", PROMPT, [image["seed"]])
        assert [s["kind"] for s in final["stages"]] == ["txt2img", "upscale"]
        assert final["init_image"] is None, "demo-final renders from the prompt: no init image"
        assert cell(app, "job-0002", "model") == "demo › final"

        await until(pilot, lambda: any(t.job_id == "job-0002" for t in app.query(Thumb)), what="its thumbnail")
        await pilot.press("f4", "enter")
        await until(pilot, lambda: isinstance(app.screen, ImageScreen), timeout=10, what="the image view")
        await pilot.pause(0.2)
        assert "▸ stage 1" in line_with(app, "stage 1", "upscale", " s ·"), "the job's image is the upscale's"
        line_with(app, "stage 0", "txt2img", " s ·")
        await pilot.press("left_square_bracket")
        await pilot.pause(0.2)
        line_with(app, "▸ stage 0", "txt2img")
        assert app.screen.shown[app.screen.at][0]["path"].endswith(".s0-txt2img.png")
        await pilot.press("ctrl+q")


@pytest.mark.slow
async def test_promoting_through_a_final_that_starts_with_img2img_hands_it_the_image(tmp_path):
    models = tmp_path / "models.yaml"
    models.write_text("flows:\n  polish:\n    description: the image again, at half strength\n    stages:\n"
                      "      - {kind: img2img, strength: 0.5, steps: 4}\n"
                      "routes:\n  final: {flow: polish}\n")
    folder = tmp_path / "demo-red-circle"
    shutil.copytree(EXAMPLES / folder.name, folder)
    app = workbench(load_registry(models), Session.open(folder))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(app.query(Thumb)) >= 2, what="the thumbnails")
        await pilot.press("f4", "f")  # job-0001 image 1, made without a route
        await until(pilot, lambda: cell(app, "job-0002", "status") == "done", what="the promoted job done")
        promoted, made = app.board.jobs["job-0002"], app.board.jobs["job-0001"].images[1]
        assert promoted.spec["init_image"] == str(folder / "images" / "job-0001-01-2.png") == made["path"]
        assert (promoted.spec["flow"], promoted.spec["seeds"], promoted.spec["stages"][0]["kind"]) == \
            ("polish", [made["seed"]], "img2img")
        assert promoted.images and promoted.images[0]["pixel_sha256"] != made["pixel_sha256"]
        await pilot.press("ctrl+q")


@pytest.mark.slow
async def test_an_attached_workbench_is_offered_the_daemons_routes(daemon):
    app = await attached_app(AttachedEngine(EngineClient.connect, "daemon"))
    async with app.run_test(size=SIZE) as pilot:
        assert set(app.engine.routes()) == {"preview", "final"}
        line_with(app, "demo", "no route")
        await type_prompt(pilot, PROMPT)  # through the route picker's "no route"
        await pilot.click("#prompt")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "job-0002" in app.board.jobs, what="the preview queued on the daemon")
        assert app.board.jobs["job-0001"].spec["route"] is None
        assert app.board.jobs["job-0002"].spec["flow"] == "demo-preview"
        await pilot.press("f10")


async def open_stage_zero(pilot):
    """The committed flow example's final image, its first stage in view."""
    await open_image(pilot)
    await pilot.press("left_square_bracket")
    await pilot.pause(0.3)


def test_the_image_view_of_a_flow_at_80x24(snap_compare, tmp_path):
    assert snap_compare(example(tmp_path, "demo-flow"), terminal_size=SIZE, run_before=open_stage_zero)


def test_a_promoted_image_keeps_the_users_settings_and_leaves_what_the_preview_filled_in_to_final():
    preview = JobSpec("a red circle", model="demo", seed=5, steps=4, guidance=5.0, width=96, height=64,
                      route="preview", flow="demo-preview", routed_by="route preview, as asked", group="set-0001")
    filled = {"steps": 4, "guidance": 5.0, "width": 64, "height": 64}  # the route's 4 steps, the model's defaults
    final = promoted(preview.to_dict(), 5, "/s/images/job-0001-00-5.png", filled)
    assert (final.steps, final.guidance, final.width, final.height) == (None, None, 96, 64)  # a size is kept whole
    assert (final.route, final.flow, final.stages, final.routed_by, final.group) == ("final", None, (), None, None)
    assert (final.seed, final.count, final.init_image, final.prompt) == (5, 1, "/s/images/job-0001-00-5.png", "a red circle")


def test_a_preview_whose_route_took_another_model_is_promoted_on_the_users_model(tmp_path):
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({
        "models": {"demo2": {"source": str(DEMO_FOLDER)}},
        "flows": {"hires": {"stages": [{"kind": "txt2img"}, {"kind": "upscale", "factor": 2, "strength": 0.5}]}},
        "routes": {"preview": {"model": "demo2", "steps": 4}, "final": {"flow": "hires"}}}))  # on the job's model
    registry = load_registry(tmp_path / "models.yaml")
    preview = resolve_flow(JobSpec("a red circle", model="demo", seed=5, route="preview"), registry)
    assert (preview.model, preview.routed_from) == ("demo2", "demo")
    final = resolve_flow(promoted(preview.to_dict(), 5, None, {"steps": 4}), registry)
    assert (final.model, final.route, final.routed_from) == ("demo", "final", None)
