"""Prompts as an attacker writes them: terminal escapes (set the clipboard with OSC 52, the title,
clear the screen) and Rich markup (a closing tag with nothing open, links, click actions). They are
queued and kept as they are, and shown as text: in a real terminal (tmux), in the workbench (Pilot),
through a daemon, and on the command line. Nothing crashes, nothing reaches the terminal raw."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemons import state
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.daemon.client import EngineClient
from diffdeck.engines.record.session import Session
from diffdeck.tui.engine import AttachedEngine
from helpers import diffdeck, until
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_tmux import tmux, wait_for
from test_tui import SIZE, make_app
from test_tui_attached import attached_app
from textual.widgets import TextArea

CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4gI1BXTkVE\x07"  # OSC 52: the clipboard := "rm -rf ~ #PWNED"
ESCAPES = f"{CLIPBOARD}\x1b]2;PWNED\x1b\\\x1b[2J a red circle"  # and the window title, and a cleared screen
SHOWN = "␛]52;c;cm0gLXJmIH4gI1BXTkVE␇␛]2;PWNED␛\\␛[2J a red circle"
MARKUP = ["[/] a red circle", "[@click=app.quit]x", "[link=file:///etc/passwd]x"]


def screen_text(app) -> str:
    """What the terminal would show: every line of the composed screen, as text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def hostile_png(path: Path) -> Path:
    record = {"seed": 3, "spec": JobSpec(ESCAPES, steps=2).to_dict()}
    info = PngInfo()
    info.add_text("diffdeck", json.dumps(record))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_escapes_in_a_pngs_prompt_reach_no_terminal(tmp_path):
    png = hostile_png(tmp_path / "hostile.png")
    rendered = diffdeck("render", "--from", str(png), "--session", "s", cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    assert "\x1b" not in rendered.stdout + rendered.stderr
    assert Session.open(tmp_path / "s").jobs["job-0001"]["spec"]["prompt"] == ESCAPES  # kept as it was

    socket = f"diffdeck-hostile-{os.getpid()}"
    (tmp_path / "tmux.conf").write_text("set -g set-clipboard on\n")  # OSC 52 would land in tmux's buffer
    program = Path(sys.executable).parent / "diffdeck"
    command = f"cd {tmp_path} && {program} s --images off; echo EXITED $?; sleep 30"
    subprocess.run(["tmux", "-L", socket, "-f", str(tmp_path / "tmux.conf"), "new-session", "-d", "-s", "dd",
                    "-x", "160", "-y", "30", command], env={**os.environ, "TERM": "xterm-256color"}, check=True,
                   timeout=10)
    try:
        wait_for(socket, "^p palette")
        wait_for(socket, "␛]52;c;cm0gLXJm")  # the queue shows the prompt (as much as fits), escapes as text
        shown = wait_for(socket, " done ")
        assert "job   status" in shown and "^p palette" in shown  # the screen was not cleared
        assert tmux("show-buffer", socket=socket).returncode != 0  # no buffer: the clipboard was not set
        title = tmux("display-message", "-p", "-t", "dd", "#{pane_title}", socket=socket).stdout
        assert "PWNED" not in title
        tmux("send-keys", "-t", "dd", "C-q", socket=socket)
        wait_for(socket, "EXITED 0", timeout=30)
    finally:
        tmux("kill-server", socket=socket)


@pytest.mark.slow
async def test_markup_in_prompts_is_queued_and_shown_as_typed_even_when_reopened(tmp_path):
    app = make_app(tmp_path / "s")
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await app.engine.calls.pause()  # nothing renders: what matters is how the jobs are shown
        for n, prompt in enumerate([*MARKUP, ESCAPES], start=1):
            app.query_one("#prompt", TextArea).text = prompt
            await pilot.press("ctrl+j")
            await until(pilot, lambda n=n: len(app.board.jobs) == n, timeout=10, what=f"{prompt!r} queued")
        await until(pilot, lambda: all(p in screen_text(app) for p in MARKUP), timeout=10, what="the prompts, as typed")
        assert SHOWN[:30] in screen_text(app)
        app.notify(f"{MARKUP[0]} failed: {ESCAPES}", title=MARKUP[1])  # as an error about a job would say it
        await until(pilot, lambda: f"{MARKUP[0]} failed:" in screen_text(app), timeout=10, what="the notification")
        assert MARKUP[1] in screen_text(app) and "\x1b" not in screen_text(app)
        await pilot.press("f3", "down", "down", "down", "e")  # the last job back in the editor, as it was
        assert app.query_one("#prompt", TextArea).text == ESCAPES
        await pilot.pause()
        assert "␛]52;c;" in screen_text(app) and "\x1b" not in screen_text(app)  # drawn with its escapes visible
        await pilot.press("ctrl+q")
    assert [job["spec"]["prompt"] for job in Session.open(tmp_path / "s").jobs.values()][:3] == MARKUP

    again = make_app(tmp_path / "s")  # they stayed queued: opening the session again shows them too
    async with again.run_test(size=SIZE) as pilot:
        await again.engine.calls.pause()
        await until(pilot, lambda: all(p in screen_text(again) for p in MARKUP), timeout=10, what="the prompts")
        await pilot.press("ctrl+q")


@pytest.mark.slow
async def test_hostile_prompts_through_a_daemon_reach_attached_workbenches_and_status_as_text(tmp_path, daemon):
    async with await EngineClient.connect() as client:
        await client.call("pause")
        for prompt in [*MARKUP, ESCAPES]:
            await client.call("submit", spec={"prompt": prompt, "steps": 2})

    for _ in range(2):  # the first to attach, and the next
        app = await attached_app(AttachedEngine(EngineClient.connect, "daemon"))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda app=app: all(p in screen_text(app) for p in MARKUP), timeout=10,
                        what="the prompts")
            assert SHOWN[:30] in screen_text(app)
            await pilot.press("f10")
        assert app.return_code in (None, 0)

    status = await asyncio.to_thread(diffdeck, "status", cwd=tmp_path, timeout=60)
    assert status.returncode == 0 and "\x1b" not in status.stdout, status.stderr
    assert f"job-0004 queued   demo: {SHOWN}" in status.stdout and "job-0001 queued   demo: [/] a red circle" in status.stdout
    assert len((await asyncio.to_thread(state))["queue"]) == 4


def test_an_error_relayed_from_a_remote_daemon_is_printed_as_text(tmp_path):
    fake_ssh = tmp_path / "ssh"  # the far side answers with an error that carries escapes
    fake_ssh.write_text("#!/bin/sh\nprintf '%s\\n' '{\"error\": \"\\u001b]2;PWNED\\u0007\\u001b[2J it broke\"}'\n")
    fake_ssh.chmod(0o755)
    result = diffdeck("render", "a red circle", "--remote", "gpubox", cwd=tmp_path, env={"DIFFDECK_SSH": str(fake_ssh)},
                      timeout=60)
    assert result.returncode == 2 and "\x1b" not in result.stderr
    assert result.stderr.splitlines()[-1] == "diffdeck: error: ␛]2;PWNED␇␛[2J it broke"
