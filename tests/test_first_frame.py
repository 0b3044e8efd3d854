"""What the workbench does before its first frame, and `diffdeck bench frame`, which measures it."""

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.record.session import Session
from diffdeck.tui.app import Workbench
from diffdeck.tui.cli.bench_frame import compile_diffdeck
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import LocalEngine
from diffdeck.tui.images import tmux_blocks_graphics
from diffdeck.tui.screens.help import HelpScreen
from diffdeck.tui.themes import load_theme
from diffdeck.tui.widgets.footer import Footer
from diffdeck.tui.widgets.queue_view import QueueView
from helpers import diffdeck, screen_text, until
from textual.command import CommandPalette


class RecordsTheme(Workbench):
    def compose(self):
        self.theme_at_compose = self.theme
        yield from super().compose()


async def test_the_configs_theme_is_in_place_before_the_widgets_are_built(tmp_path):
    """Set on mount, a theme parses the whole stylesheet again and restyles every widget, before
    the first frame."""
    config = load_config(tmp_path)
    app = RecordsTheme(LocalEngine(load_registry(None), Session.open(tmp_path / "s")), config,
                       [load_theme(p) for p in config.theme_files])
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert app.theme_at_compose == config.theme == app.theme == "diffdeck-dark"


class SeesTheScreen(LocalEngine):
    """Notes the footer's keys on the screen when the workbench starts it."""

    app: Workbench
    keys_at_start: str | None = None

    async def start(self):
        self.keys_at_start = keys(self.app)
        return await super().start()


def keys(app: Workbench) -> str:
    """The footer's line on the screen."""
    return screen_text(app).splitlines()[-1]


class RecordsToasts(Workbench):
    said: list[str]

    def notify(self, message: str, **options) -> None:
        self.said = [*getattr(self, "said", []), message]
        super().notify(message, **options)


def workbench(engine: LocalEngine, config_dir) -> RecordsToasts:
    config = load_config(config_dir)
    return RecordsToasts(engine, config, [load_theme(p) for p in config.theme_files], history=config_dir / "history")


async def test_the_local_engine_starts_once_the_first_frame_is_whole(tmp_path):
    """Building the engine (its modules, NVML, the telemetry) waits for the first frame, footer
    keys and all; jobs the session could not resume are still said, and marked in the queue."""
    session = Session.open(tmp_path / "s")
    session.append({"type": "queued", "job": "job-0001", "spec": {"prompt": "x", "model": "gone-now", "seeds": [1]},
                    "position": 0})
    engine = SeesTheScreen(load_registry(None), session)
    app = engine.app = workbench(engine, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: engine.started is not None, timeout=30, what="the engine to start")
        assert "Render" in engine.keys_at_start and "Quit" in engine.keys_at_start
        await until(pilot, lambda: "not resumed" in str(app.query_one(QueueView).get_row("job-0001")), timeout=10,
                    what="job-0001 marked as not resumed")
        assert any(toast.startswith("job-0001 not resumed: unknown model 'gone-now'") for toast in app.said), app.said


class NotesTheFirstFrame(RecordsToasts):
    keys_in_first_frame: str | None = None

    async def on_mount(self) -> None:
        await super().on_mount()
        self.call_after_refresh(lambda: setattr(self, "keys_in_first_frame", keys(self)))


async def test_the_first_frame_has_the_prompts_keys_in_the_footer(tmp_path):
    """Textual composes the footer's keys a refresh or two after the focus brings them: the
    first frame had none, and `bench frame` waited for the next ones."""
    config = load_config(tmp_path)
    app = NotesTheFirstFrame(LocalEngine(load_registry(None), Session.open(tmp_path / "s")), config,
                             [load_theme(p) for p in config.theme_files], history=tmp_path / "history")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.keys_in_first_frame is not None, timeout=10, what="the first frame")
        assert all(key in app.keys_in_first_frame for key in ("^j Render", "^t A/B", "^q Quit", "f1 Keys", "^p palette")), \
            app.keys_in_first_frame
        assert app.screen.focused is app.query_one("#prompt")


# what the UI start must not load; what does, loads once the engine or an image needs it
ENGINE_SIDE = ("psutil", "pynvml", "PIL", "diffdeck.engines.queue.dispatcher",
               "diffdeck.engines.service.recorded_queue", "diffdeck.engines.service.replay")


def test_the_workbench_starts_without_the_engines_modules():
    """The local engine is built after the first frame, images drawn later still: its modules
    (the Dispatcher's, psutil, PIL: the replay options' defaults need no image code) are not
    imported before it."""
    probe = ("import sys; import diffdeck.tui.cli.main as m; m.build_parser(); m.build_workbench_parser(); "
             "import diffdeck.tui.app, diffdeck.tui.engine, diffdeck.tui.images, diffdeck.tui.themes; "
             f"print(' '.join(name for name in {ENGINE_SIDE!r} if name in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            timeout=60).stdout.split()
    assert loaded == [], loaded


def test_the_frame_bench_starts_diffdeck_from_bytecode():
    """Compiled once before the starts it times, as an install is (PYTHONDONTWRITEBYTECODE set
    compiled diffdeck from source at every start, and Textual not)."""
    import diffdeck.tui.plain as module

    source = module.__file__
    cached = importlib.util.cache_from_source(source)
    if os.path.exists(cached):
        os.unlink(cached)
    compile_diffdeck()
    assert os.path.getmtime(cached) >= os.path.getmtime(source)


async def test_a_local_engine_asked_before_it_started_starts_and_records_what_it_is_asked(tmp_path):
    """A key pressed before the workbench started its engine still reaches a recorded queue."""
    engine = LocalEngine(load_registry(None), Session.open(tmp_path / "s"))
    await engine.calls.pause()  # nothing renders: no worker starts
    queued = await engine.calls.submit(JobSpec(prompt="a red circle", model="demo", seed=1))
    assert await engine.shut_down() is None
    engine.session.close()
    assert Session.open(tmp_path / "s").jobs[queued.id]["status"] == "queued"


async def test_the_footer_follows_the_focus_and_a_click_on_a_key_presses_it(tmp_path):
    app = workbench(LocalEngine(load_registry(None), Session.open(tmp_path / "s")), tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: "Render" in keys(app), timeout=10, what="the prompt's keys in the footer")
        await pilot.click(Footer, offset=(keys(app).index("f1 Keys") + 1, 0))
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=10, what="the keys' help")
        await pilot.press("escape")
        app.action_focus("queue")
        await until(pilot, lambda: "Cancel" in keys(app), timeout=10, what="the queue's keys in the footer")
        assert "Render" not in keys(app) and keys(app).rstrip().endswith("^p palette")


async def test_a_resized_terminal_is_laid_out_again(tmp_path):
    """The main screen skips the resize events that bring the size it has; a new size is laid out."""
    app = workbench(LocalEngine(load_registry(None), Session.open(tmp_path / "s")), tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: "Render" in keys(app), timeout=10, what="the first frame")
        assert app.screen.has_class("-wide") and len(screen_text(app).splitlines()) == 30
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: len(screen_text(app).splitlines()) == 24 and "^p palette" in keys(app),
                    timeout=10, what="the 80x24 layout")
        assert app.screen.has_class("-narrow") and app.screen.has_class("-short")
        assert app.query_one("#gpu").region.right <= 80
        await pilot.press("f1")  # the keys' help over the screen as the terminal grows
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=10, what="the keys' help")
        await pilot.resize_terminal(120, 40)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen.has_class("-wide") and app.screen.has_class("-tall"), timeout=10,
                    what=f"the 120x40 classes, not {app.screen.classes}")


async def test_at_80_columns_the_footer_shows_whole_keys_and_its_palette_key_opens_the_palette(tmp_path):
    app = workbench(LocalEngine(load_registry(None), Session.open(tmp_path / "s")), tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "Render" in keys(app), timeout=10, what="the first frame")
        line = keys(app)
        assert line.endswith("^p palette") and line[:line.index("^p palette")].rstrip().endswith("f1 Keys"), line
        await pilot.click(Footer, offset=(line.index("^p"), 0))
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), timeout=10, what="the command palette")


def test_tmux_is_asked_about_graphics_only_for_a_mode_that_sends_them(tmp_path, monkeypatch):
    """Asking runs tmux, before the first frame: not for --images off or halfcell."""
    asked = tmp_path / "asked"
    fake = tmp_path / "bin" / "tmux"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {asked}\necho off\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TMUX", "/tmp/tmux-test/default,1,0")
    assert not tmux_blocks_graphics("off") and not tmux_blocks_graphics("halfcell")
    assert not asked.exists()
    assert tmux_blocks_graphics("auto")
    assert asked.read_text() == "show -gv allow-passthrough\n"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_bench_frame_measures_both_apps_and_the_import(tmp_path):
    """The frame bench's whole path, one round: both apps start in tmux, draw, and quit."""
    result = diffdeck("bench", "frame", "--rounds", "1", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"round 1: minimal [\d.]+ s   workbench [\d.]+ s", out), out
    assert re.search(r"minimal: median [\d.]+ s, range [\d.]+-[\d.]+ s", out), out
    assert re.search(r"workbench: median [\d.]+ s, range [\d.]+-[\d.]+ s", out), out
    assert re.search(r"workbench/minimal median ratio [\d.]+", out), out
    assert re.search(r"UI-side import of engines \+ diffdeck.tui.cli.main: \d+ ms", out), out
    assert not list(tmp_path.iterdir()), "the bench leaves nothing behind"


async def test_devices_that_cannot_be_read_end_the_workbench_with_the_reason_not_a_traceback(tmp_path, monkeypatch):
    """The local engine starts after the first frame: what stops it is said, and the app ends (exit 2)."""
    monkeypatch.setenv("DIFFDECK_FAKE_GPUS", "two")
    app = workbench(LocalEngine(load_registry(None), Session.open(tmp_path / "s")), tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.return_code is not None, timeout=10, what="the app to end")
    assert app.return_code == 2 and app.start_error.startswith("DIFFDECK_FAKE_GPUS='two': expected a device count")
    said = diffdeck("render", "a red circle", "--steps", "2", cwd=tmp_path, env={"DIFFDECK_FAKE_GPUS": "two"})
    assert said.returncode == 2 and said.stderr.strip().splitlines() == [f"diffdeck: error: {app.start_error}"]
