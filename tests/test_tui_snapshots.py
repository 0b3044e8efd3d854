"""SVG snapshots of the workbench layout: the committed example session on a GPU box (NVML
stood in for by FakeNVML, the one thing that cannot exist here), at 120x40 and 80x24.
Deterministic: recorded timings, one telemetry sample, no cursor blink, no clock.
Update with `pytest tests/test_tui_snapshots.py --snapshot-update` after a deliberate change."""

import shutil
from pathlib import Path

import pytest
from test_telemetry import FakeNVML

from engines.registry import load_registry
from engines.session import Session
from engines.telemetry import Telemetry
from tui.app import Workbench
from tui.config import load_config
from tui.images import image_widget
from tui.themes import load_theme
from tui.widgets.gallery import Thumb

EXAMPLE = Path(__file__).resolve().parent.parent / "sessions" / "examples" / "demo-red-circle"


@pytest.fixture
def example_app(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "demo-red-circle")
    config = load_config()
    return Workbench(load_registry(None), Session.open(tmp_path / "demo-red-circle"), config,
                     [load_theme(p) for p in config.theme_files], image_class=image_widget("halfcell"),
                     telemetry=Telemetry(FakeNVML(worker_pid=0)), telemetry_interval_s=3600)


async def settle(pilot):
    app = pilot.app
    for area in app.query("PromptArea"):
        area.cursor_blink = False
    while app.board.telemetry is None or len(app.query(Thumb)) < 2 or not all(
            any(i.image is not None for i in t.query(app.image_class)) for t in app.query(Thumb)):
        await pilot.pause(0.05)
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_main_layout(snap_compare, example_app, size):
    assert snap_compare(example_app, terminal_size=size, run_before=settle)
