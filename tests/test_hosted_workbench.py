"""A hosted model in the workbench and the CLI, as the user reads it: the panel's money (a running
job's estimate, the session's and the day's spend against its budget), the queue's ETA measured
from hosted images on lanes apart from the devices, steps and guidance refused rather than paid
for and never sent from the editor, what fits at 80x24, the image view and compare view of a
hosted image, what `render` and `models` print. The workbench runs the real app under Pilot on a
real LocalEngine (no worker starts: the running job's events are applied to its board)."""

import json
import re

import pytest
from diffdeck.engines.core.events import Event, EventKind
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.hosted.prices import PRICES_READ
from diffdeck.engines.queue.devices import CPU
from diffdeck.engines.record.session import Session
from diffdeck.engines.record.spend import Spend, ledger_path, record_spend, today
from diffdeck.themes import STYLESHEET
from diffdeck.tui.app import Workbench
from diffdeck.tui.compare_state import Comparison
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import LocalEngine
from diffdeck.tui.screens.image_view import ImageScreen
from diffdeck.tui.themes import load_theme
from diffdeck.tui.widgets.picker import Picker
from diffdeck.tui.widgets.queue_view import queue_title
from diffdeck.tui.workbench_state import Board, JobRow
from fake_providers import FakeProvider
from helpers import diffdeck, screen_text, until, write_models
from textual.app import App
from textual.widgets import Input

KEY = "test-key"
IDEO = {"kind": "ideogram", "source": "V_2_TURBO", "api_key_env": "IDEOGRAM_API_KEY"}  # $0.05 an image, published
IMAGEN = {"kind": "imagen", "source": "imagen-4.0-generate-001", "api_key_env": "GEMINI_API_KEY"}  # $0.04
# what the hosted worker records of an unseeded provider's request
UNSEEDED = {"provider": "imagen", "model_id": "imagen-4.0-generate-001", "version": None, "seed_sent": None,
            "reproducible": False, "asked": {"width": 1536, "height": 1024}, "sent": {"aspectRatio": "3:2"},
            "returned": {"width": 1248, "height": 832}, "request_id": None}


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    monkeypatch.setenv("IDEOGRAM_API_KEY", KEY)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)


def models_file(folder, budgets=None, **models):
    return write_models(folder, models or {"ideo": IDEO, "imagen": IMAGEN}, budgets or None)


def workbench(tmp_path, budgets=None) -> Workbench:
    config = load_config(tmp_path / "config")
    engine = LocalEngine(load_registry(models_file(tmp_path, budgets)), Session.open(tmp_path / "s"), devices=[CPU],
                         telemetry_interval_s=0.2)
    return Workbench(engine, config, [load_theme(p) for p in config.theme_files], image_class=None)


def running_hosted_job(board: Board, job_id: str, count: int = 1, waited_s: float = 12.3, lane: int = 1) -> None:
    """A hosted job started on a lane (after the one device, the CPU), its request out, as its events come."""
    board.apply(Event(EventKind.QUEUED, job_id, {"spec": JobSpec("a sign", model="ideo", count=count).to_dict()}))
    board.apply(Event(EventKind.DEQUEUED, job_id, {"device": lane}))
    board.apply(Event(EventKind.STEP, job_id, {"image": 0, "count": count, "step": 0, "total": 1, "it_s": None,
                                               "elapsed_s": waited_s,
                                               "waiting": f"waiting for ideogram {waited_s:.0f} s"}))


def hosted_image(index: int, cost: float | None = 0.05, **hosted) -> dict:
    return {"image": index, "seed": 7, "path": f"/nowhere/job-{index}.png", "pixel_sha256": "0" * 64, "peak_memory": 0,
            "timings": {"prepare_s": 0.0, "denoise_s": 4.0, "decode_s": 0.5, "save_s": 0.5}, "cost_usd": cost,
            "hosted": {**UNSEEDED, **hosted}}


# 1. the panel's money

async def test_the_panel_shows_a_running_hosted_jobs_estimate_the_sessions_spend_and_the_days_budget(tmp_path):
    record_spend(ledger_path(), Spend(today(), "another", "job-0009", 0, "ideo", 0.30))  # spent today elsewhere
    app = workbench(tmp_path, budgets={"day_usd": 1.0})
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.board.telemetry is not None, timeout=30, what="the engine started")
        assert app.board.lanes == {"ideo": 2, "imagen": 2}, "the engine says how many jobs each runs at once"
        running_hosted_job(app.board, "job-0001", count=2)
        app._redraw()
        await until(pilot, lambda: "job-0001 running: about $0.10" in screen_text(app)
                    and "today $0.30 of $1.00, $0.70 left" in screen_text(app), timeout=10,
                    what="its estimate and the day's budget")
        app.board.apply(Event(EventKind.IMAGE, "job-0001", hosted_image(0)))
        app._redraw()
        await until(pilot, lambda: "spent $0.05 this session" in screen_text(app), timeout=10, what="the spend")
        shown = screen_text(app)
        assert "job-0001 running: about $0.10, $0.05 so far" in shown and "today $0.35 of $1.00, $0.65 left" in shown


# 2. the queue's ETA

def test_the_eta_counts_a_hosted_models_seconds_an_image_on_its_lanes_apart_from_the_devices():
    board = Board(lanes={"ideo": 2})
    board.set_devices([{"index": 0, "name": "cpu", "gpu": False}])
    for number in (1, 2, 3):  # three hosted jobs done, 5 s an image each (a request's 4 s, the download's, the save's)
        job = f"job-000{number}"
        board.apply(Event(EventKind.QUEUED, job, {"spec": JobSpec("a sign", model="ideo").to_dict()}))
        board.apply(Event(EventKind.DEQUEUED, job, {}))
        board.apply(Event(EventKind.STARTED, job, {"device": number % 2 + 1, "queue_wait_s": 0.0, "load_s": 0.1}))
        board.apply(Event(EventKind.IMAGE, job, hosted_image(0)))
        board.apply(Event(EventKind.DONE, job, {"timings": hosted_image(0)["timings"], "peak_memory": 0}))
    board.apply(Event(EventKind.QUEUED, "job-0004", {"spec": JobSpec("a star", model="demo", steps=10).to_dict()}))
    board.apply(Event(EventKind.DEQUEUED, "job-0004", {}))
    board.apply(Event(EventKind.STARTED, "job-0004", {"device": 0}))
    board.apply(Event(EventKind.STEP, "job-0004", {"image": 0, "count": 1, "step": 0, "total": 10, "it_s": 2.0}))
    running_hosted_job(board, "job-0005", lane=2)  # on ideo's second lane: index 2, which is no device
    for number in (6, 7, 8):
        board.apply(Event(EventKind.QUEUED, f"job-000{number}", {"spec": JobSpec("a sign", model="ideo").to_dict()}))
    board.step_s["demo"] = 0.5
    board.apply(Event(EventKind.QUEUED, "job-0009", {"spec": JobSpec("a star", model="demo", steps=20).to_dict()}))
    # the CPU: the running demo job's 5 s, then the queued one's 10 s; ideo's lanes: 5 s (running) + 5 on one,
    # 5 + 5 on the other. Were each lane a slot of the device sums, the demo job would start on one at 5 s.
    assert board.queue_eta() == (pytest.approx(15.0), 0)
    assert queue_title(board) == "queue · 6 to go · ETA 15s"


# 3. steps and guidance: refused for a hosted model, never sent from the editor

def test_a_grid_over_steps_on_a_hosted_model_is_refused_in_one_line_before_anything_is_paid(tmp_path):
    with FakeProvider("ideogram", key=KEY) as fake:
        models_file(tmp_path, ideo={**IDEO, "base_url": fake.base_url})
        refused = diffdeck("grid", "a sign", "--model", "ideo", "--x", "steps=4,8,16", "--yes", "--session", "s",
                           cwd=tmp_path, env={"IDEOGRAM_API_KEY": KEY}, timeout=120)
    assert not fake.requests(), "nothing sent"
    said = refused.stderr.splitlines()  # the grid's size, then why it is refused
    assert refused.returncode == 2 and len(said) == 2 and said[0].startswith("grid: 3 = 3 jobs"), refused.stderr
    assert said[1].startswith("diffdeck: error: ") and said[1].endswith(
        "ideo is hosted by ideogram: steps are not sent; leave steps out"), refused.stderr
    assert not list(tmp_path.glob("s/images/*.png"))


async def test_the_editor_sends_no_steps_guidance_or_scheduler_for_a_hosted_model(tmp_path):
    app = workbench(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        editor = app.query_one("#editor")
        app.query_one("#prompt").text = "a sign"
        app.query_one("#steps", Input).value, app.query_one("#guidance", Input).value = "20", "6.5"
        app.query_one("#scheduler", Picker).value = "euler"
        app.query_one("#model", Picker).value = "ideo"
        await until(pilot, lambda: all(app.query_one(field).disabled for field in ("#steps", "#guidance", "#scheduler")),
                    timeout=10, what="the fields a hosted model is not sent disabled")
        spec = editor.read_spec()
        assert (spec.model, spec.steps, spec.guidance, spec.scheduler) == ("ideo", None, None, "default")
        app.query_one("#model", Picker).value = "demo"
        await until(pilot, lambda: not app.query_one("#steps").disabled, timeout=10, what="the fields back")
        spec = editor.read_spec()
        assert (spec.steps, spec.guidance, spec.scheduler) == (20, 6.5, "euler"), "a local model has them back"


# 4. what fits at 80x24

@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_a_hosted_model_reads_whole_at_each_size(tmp_path, size):
    app = workbench(tmp_path)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.board.telemetry is not None, timeout=30, what="the engine started")
        app.query_one("#model", Picker).value = "imagen"
        running_hosted_job(app.board, "job-0001", waited_s=12.3)
        app._redraw()

        def running_line() -> str | None:
            return next((line for line in screen_text(app).splitlines() if re.match(r"^ 0001\s+running", line)), None)

        await until(pilot, running_line, timeout=10, what="job-0001 running in the queue")
        queued = running_line()
        assert re.search(r"(waiting for ideogram 12 s|⋯ 12 s)", queued), queued
        await until(pilot, lambda: re.search(r"size 1024x1024\b", screen_text(app)), timeout=10,
                    what="the whole size, where the model's default shows")
        await pilot.click("#model")
        await until(pilot, lambda: "ideo · hosted by" in screen_text(app), timeout=10, what="the model picker's list")
        lines = screen_text(app).splitlines()
        at = next(i for i, line in enumerate(lines) if "ideo · hosted by" in line)
        assert "imagen · hosted by" in lines[at + 1], "a model a line in the picker: " + "\n".join(lines[at:at + 3])


# 5. the image view of a hosted image

class ImageHost(App):
    CSS_PATH = STYLESHEET

    def __init__(self, image: dict):
        super().__init__()
        self.image, self.chosen = image, []

    def on_mount(self) -> None:
        self.push_screen(ImageScreen("job-0001", JobSpec("a sign", model="imagen", width=1536, height=1024).to_dict(),
                                     self.image, None, None), self.chosen.append)


async def test_the_image_view_of_an_unseeded_hosted_image_says_what_was_asked_returned_and_paid_and_r_warns():
    app = ImageHost(hosted_image(0, cost=0.04))
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await until(pilot, lambda: "provider" in screen_text(app), timeout=10, what="the image's parameters")
        # the parameters, name: value, as the table on the right shows them
        rows = dict(re.findall(r"│.*?\s{2,}(\w[\w ]*?)\s{2,}(\S.*?)\s*│\s*$", screen_text(app), re.M))
        assert rows["provider"] == "imagen · model imagen-4.0-generate-001"
        assert rows["seed"] == "not sent (not reproducible)"
        assert rows["size"] == "1536x1024 asked · 1248x832 returned"
        assert rows["cost"] == "$0.04" and rows["request"] == "4.000 s"
        assert "denoise" not in rows and "steps" not in rows
        await pilot.press("r")
        await until(pilot, lambda: "new, different image" in screen_text(app), timeout=5, what="the warning")
        assert app.chosen == ["requeue"]


# 6. and 7. the CLI

@pytest.mark.slow
def test_render_prints_a_hosted_images_cost_on_its_line(tmp_path):
    with FakeProvider("ideogram", key=KEY) as fake:
        models_file(tmp_path, ideo={**IDEO, "base_url": fake.base_url})
        made = diffdeck("render", "a sign", "--model", "ideo", "--session", "s", cwd=tmp_path,
                        env={"IDEOGRAM_API_KEY": KEY}, timeout=120)
    assert made.returncode == 0, made.stderr
    path, cost = made.stdout.strip().split("  ")
    assert (tmp_path / path).is_file() and cost == "cost $0.05"


def test_models_shows_a_hosted_models_base_url_and_price_with_its_source(tmp_path):
    models_file(tmp_path, ideo={**IDEO, "base_url": "http://127.0.0.1:8123"}, gpt={
        "kind": "openai", "source": "gpt-image-1", "api_key_env": "OPENAI_API_KEY", "price_usd": 0.02})
    shown = diffdeck("models", cwd=tmp_path, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert (f"  ideo: $0.05 an image at 1024x1024 (published prices read {PRICES_READ}); requests go to "
            "http://127.0.0.1:8123") in shown.stdout, shown.stdout
    assert ("  gpt: $0.02 an image at 1024x1024 (its price_usd in models.yaml); requests go to "
            "https://api.openai.com") in shown.stdout, shown.stdout
    rows = {row["name"]: row for row in json.loads(diffdeck("models", "--json", cwd=tmp_path).stdout)}
    assert rows["ideo"]["base_url"] == "http://127.0.0.1:8123"
    assert rows["ideo"]["price"] == {"usd": 0.05, "source": f"published prices read {PRICES_READ}", "size": "1024x1024"}
    assert rows["gpt"]["price"]["source"] == "models.yaml" and (rows["demo"]["base_url"], rows["demo"]["price"]) == \
        (None, None)


# 8. the compare view

def test_the_compare_view_has_a_cost_row_where_an_image_cost_something(tmp_path):
    session = Session.open(tmp_path / "s")
    local = {"image": 0, "seed": 7, "path": "/nowhere/demo.png", "timings": {}, "peak_memory": 0}
    rows = {"job-0001": JobRow("job-0001", {"model": "imagen"}, images=[hosted_image(0, cost=0.04)]),
            "job-0002": JobRow("job-0002", {"model": "demo"}, images=[local])}
    pair = Comparison.of_pinned(session, rows, [("job-0001", 0), ("job-0002", 0)])
    assert ("cost", "$0.04", "free", True) in pair.parameter_rows()
    both_local = Comparison.of_pinned(session, rows, [("job-0002", 0), ("job-0002", 0)])
    assert "cost" not in [name for name, *_ in both_local.parameter_rows()]
