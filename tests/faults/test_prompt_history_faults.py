"""A prompt history that cannot be read is said once and left as it is: no run writes over it."""

from diffdeck.tui.history import history_file
from helpers import until
from test_tui import make_app, type_prompt


async def test_an_unreadable_history_is_named_and_not_written_over(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = history_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"prompts": ["a red circle", \xff')  # torn, and not UTF-8
    app = make_app(tmp_path / "s")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("f3", "p")  # paused: the prompt is only queued
        await until(pilot, lambda: app.board.paused, what="paused")
        await type_prompt(pilot, "a blue square")
        await until(pilot, lambda: app.board.queue == ["job-0001"], what="queued")
        assert any("cannot be read" in n.message and str(path) in n.message for n in app._notifications)
        await pilot.press("ctrl+q")
    assert path.read_bytes() == b'{"prompts": ["a red circle", \xff'
