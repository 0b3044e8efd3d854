"""SVG snapshots of the workbench layout: the committed example session on a GPU box (NVML
stood in for by FakeNVML, the one thing that cannot exist here), at 120x40 and 80x24: the main
screen, the compare view and the image view.
Deterministic: recorded timings, one telemetry sample, no cursor blink, no clock.
Update with `pytest tests/test_tui_snapshots.py --snapshot-update` after a deliberate change."""

import shutil
from pathlib import Path

import pytest
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.queue.telemetry import Telemetry
from diffdeck.engines.record.session import Session
from diffdeck.tui.app import Workbench
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import LocalEngine
from diffdeck.tui.images import image_widget
from diffdeck.tui.screens.compare import CompareScreen
from diffdeck.tui.themes import load_theme
from diffdeck.tui.widgets.gallery import Thumb
from helpers import until
from test_telemetry import FakeNVML

EXAMPLES = Path(__file__).resolve().parent.parent / "sessions" / "examples"


def example(tmp_path, name):
    shutil.copytree(EXAMPLES / name, tmp_path / name)
    config = load_config()
    registry = load_registry(None)
    engine = LocalEngine(registry, Session.open(tmp_path / name), telemetry=Telemetry(FakeNVML(worker_pid=0)),
                         telemetry_interval_s=3600)
    return Workbench(engine, config, [load_theme(p) for p in config.theme_files],
                     image_class=image_widget("halfcell"))


@pytest.fixture
def example_app(tmp_path):
    return example(tmp_path, "demo-red-circle")


async def settle(pilot):
    app = pilot.app
    for area in app.query("PromptArea"):
        area.cursor_blink = False
    await until(pilot, lambda: app.board.telemetry is not None and len(app.query(Thumb)) >= 2 and all(
        any(i.image is not None for i in t.query(app.image_class)) for t in app.query(Thumb)) and all(
        "quality" in i for row in app.board.jobs.values() for i in row.images),
        what="the telemetry, every thumbnail drawn and every image measured")
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_main_layout(snap_compare, example_app, size):
    assert snap_compare(example_app, terminal_size=size, run_before=settle)


async def open_compare(pilot):
    """The committed A/B example (B won image 0 and has four stars there), side by side."""
    await settle(pilot)
    await pilot.press("f5")

    def drawn() -> bool:
        screen = pilot.app.screen
        return isinstance(screen, CompareScreen) and "distance" in str(screen.query_one("#measures").render()) \
            and all(i.image is not None for i in screen.query(pilot.app.image_class))
    await until(pilot, drawn, what="the compare view with its images and measures")
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_compare_view(snap_compare, tmp_path, size):
    assert snap_compare(example(tmp_path, "demo-ab"), terminal_size=size, run_before=open_compare)


async def open_image(pilot):
    """The newest image, larger, beside every parameter it was made with."""
    await settle(pilot)
    await pilot.press("f4", "enter")
    await until(pilot, lambda: type(pilot.app.screen).__name__ == "ImageScreen" and all(
        i.image is not None for i in pilot.app.screen.query(pilot.app.image_class)), what="the image view with its image")
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_image_view(snap_compare, example_app, size):
    assert snap_compare(example_app, terminal_size=size, run_before=open_image)
