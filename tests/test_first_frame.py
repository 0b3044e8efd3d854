"""What the workbench does before its first frame, and `diffdeck bench frame`, which measures it."""

import os
import re
import shutil
import stat

import pytest
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.record.session import Session
from diffdeck.tui.app import Workbench
from diffdeck.tui.config import load_config
from diffdeck.tui.engine import LocalEngine
from diffdeck.tui.images import tmux_blocks_graphics
from diffdeck.tui.themes import load_theme
from helpers import diffdeck


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
