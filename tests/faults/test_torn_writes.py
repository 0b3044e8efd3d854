"""Writes that fail half way: a journal line cut short, a file-size limit, a full or read-only
disk. Real processes under a real RLIMIT_FSIZE (SIGXFSZ ignored: a write past it gets EFBIG, as on a
full quota), and a real 2 MB tmpfs."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from daemons import serve, state
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.daemon.server import place
from diffdeck.engines.record.session import JOURNAL, RECORD, Session, SessionWriteError
from diffdeck.engines.service.recorded_queue import RecordedQueue
from fault_tools import PROMPT, fill
from helpers import diffdeck, readline_within, start

SPEC = {"prompt": PROMPT, "model": "demo", "seeds": [1], "steps": 2}


def cancelled_jobs(folder: Path, n: int) -> Session:
    """A session of `n` jobs queued and cancelled, written through the Session as diffdeck does."""
    session = Session.open(folder)
    for number in range(1, n + 1):
        session.append({"type": "queued", "job": f"job-{number:04d}", "spec": SPEC})
        session.append({"type": "cancelled", "job": f"job-{number:04d}", "error": None})
    return session


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffdeck: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.slow
def test_a_render_that_cannot_append_stops_at_once_and_the_journal_stays_whole(tmp_path):
    cancelled_jobs(tmp_path / "s", 40).close()  # a journal longer than an image file, so images still fit
    journal = tmp_path / "s" / JOURNAL
    before = journal.read_bytes()
    began = time.monotonic()
    failed = diffdeck("render", PROMPT, "--steps", "2", "--session", "s", cwd=tmp_path, file_limit=len(before) + 100)
    line = one_line_error(failed.stderr)
    assert failed.returncode == 1 and time.monotonic() - began < 60
    assert f"{Path('s') / JOURNAL}" in line and "File too large" in line and "no longer recorded" in line
    assert journal.read_bytes() == before, "the line cut short at the limit is taken back"
    assert not (tmp_path / "s" / RECORD).exists(), "nothing compacted from a record the journal does not hold"

    # the lock is let go: the next render writes the session, and one more crash loses nothing
    render = start("render", PROMPT, "--count", "3", "--steps", "40", "--session", "s", cwd=tmp_path,
                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert readline_within(render.stdout, 120)  # its first image, recorded
    os.kill(render.pid, signal.SIGKILL)
    render.wait()
    job = Session.open(tmp_path / "s").jobs["job-0041"]
    assert job["status"] == "running" and len(job["images"]) >= 1


@pytest.mark.slow
def test_a_torn_last_line_is_set_aside_before_the_next_event_and_a_crash_after_loses_nothing(tmp_path):
    session = cancelled_jobs(tmp_path / "s", 2)
    session.close()
    journal = tmp_path / "s" / JOURNAL
    whole = journal.read_bytes()
    torn = json.dumps({"type": "queued", "job": "job-0003", "spec": SPEC}).encode()[:37]
    journal.write_bytes(whole + torn)  # what a write cut short by a full disk or a kill leaves

    render = start("render", PROMPT, "--count", "3", "--steps", "40", "--session", "s", cwd=tmp_path,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert readline_within(render.stdout, 120)
    os.kill(render.pid, signal.SIGKILL)  # before it compacts
    render.wait()
    said = render.stderr.read().decode()
    (aside,) = (tmp_path / "s").glob("journal.torn-*")
    assert aside.read_bytes() == torn
    assert "37 bytes" in said and aside.name in said, said
    reopened = Session.open(tmp_path / "s")  # before: "journal.jsonl line 5 is not a JSON event"
    assert list(reopened.jobs) == ["job-0001", "job-0002", "job-0003"]
    assert reopened.jobs["job-0003"]["status"] == "running" and reopened.jobs["job-0003"]["images"]
    assert journal.read_bytes().startswith(whole)


def test_a_torn_line_is_set_aside_by_the_first_append_and_reading_changes_nothing(tmp_path):
    cancelled_jobs(tmp_path / "s", 1).close()
    journal = tmp_path / "s" / JOURNAL
    journal.write_bytes(journal.read_bytes() + b'{"type": "queu')
    cut = journal.read_bytes()
    Session.open(tmp_path / "s")  # a reader: nothing moved
    assert journal.read_bytes() == cut and not list((tmp_path / "s").glob("journal.torn-*"))
    session = Session.open(tmp_path / "s")
    session.append({"type": "queued", "job": "job-0002", "spec": SPEC})
    session.close()
    assert list(Session.open(tmp_path / "s").jobs) == ["job-0001", "job-0002"]
    assert session.notices and "journal.torn-" in session.notices[0]


def test_a_torn_line_that_cannot_be_set_aside_stops_the_recording(small_disk):
    cancelled_jobs(small_disk / "s", 1).close()
    journal = small_disk / "s" / JOURNAL
    journal.write_bytes(journal.read_bytes() + b'{"type": "queu')
    cut = journal.read_bytes()
    fill(small_disk)
    session = Session.open(small_disk / "s")
    for _ in range(2):  # the first event, and every one after it: the record would hold what the journal does not
        with pytest.raises(SessionWriteError, match="could not be set aside"):
            session.append({"type": "queued", "job": "job-0002", "spec": SPEC})
    (small_disk / "filler").unlink()  # room again: still nothing the journal does not hold is written
    with pytest.raises(SessionWriteError):
        session.compact()
    assert journal.read_bytes() == cut and not (small_disk / "s" / RECORD).exists()


@pytest.mark.slow
def test_a_render_whose_compaction_fails_says_the_journal_holds_everything(tmp_path):
    cancelled_jobs(tmp_path / "s", 60).compact()
    record = (tmp_path / "s" / RECORD).read_bytes()
    # the journal of one more job fits under the limit; session.yaml with that job does not
    done = diffdeck("render", PROMPT, "--steps", "2", "--session", "s", cwd=tmp_path, file_limit=len(record) + 100)
    assert done.returncode == 0, done.stderr
    (path,) = done.stdout.split()
    line = one_line_error(done.stderr)
    assert "session.yaml" in line and "the journal still holds everything" in line
    assert not (tmp_path / "s" / (RECORD + ".part")).exists()
    assert (tmp_path / "s" / RECORD).read_bytes() == record
    job = Session.open(tmp_path / "s").jobs["job-0061"]
    assert job["status"] == "done" and (tmp_path / "s" / job["images"][0]["path"]).samefile(tmp_path / path)


def test_compaction_on_a_full_disk_and_on_a_read_only_one_changes_nothing(small_disk):
    session = cancelled_jobs(small_disk / "s", 5)
    fill(small_disk)
    for problem in ("No space left on device", "Read-only file system"):
        if problem.startswith("Read-only"):
            (small_disk / "filler").unlink()
            session.close()  # a file open for writing keeps a disk from turning read-only
            subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        with pytest.raises(SessionWriteError, match=f"{problem}.*the journal still holds everything"):
            session.compact()
        assert sorted(p.name for p in (small_disk / "s").iterdir()) == [JOURNAL]
        assert Session.open(small_disk / "s").record == session.record


async def test_a_recorded_queue_whose_compaction_fails_shuts_down_and_says_why(small_disk):
    queue = RecordedQueue(load_registry(), cancelled_jobs(small_disk / "s", 3))
    queue.start()
    fill(small_disk)
    problem = await queue.shut_down()
    assert "No space left on device" in problem and "the journal still holds everything" in problem
    assert not (small_disk / "s" / (RECORD + ".part")).exists()
    assert len(Session.open(small_disk / "s").jobs) == 3


@pytest.mark.slow
def test_a_daemon_that_cannot_write_its_journal_stops_promptly_and_lets_everything_go(tmp_path):
    import asyncio

    from diffdeck.engines.daemon.client import EngineClient

    cancelled_jobs(tmp_path / "s", 40).close()
    journal = tmp_path / "s" / JOURNAL
    before = journal.read_bytes()
    daemon = serve(tmp_path, "--session", "s", file_limit=len(before) + 100)

    async def submit():
        async with await EngineClient.connect() as client:
            await client.call("submit", spec={"prompt": PROMPT, "model": "demo", "steps": 2})
    asyncio.run(submit())
    began = time.monotonic()
    try:
        status = daemon.wait(timeout=30)
        took = time.monotonic() - began
    finally:
        if daemon.poll() is None:
            daemon.kill()
    log = (tmp_path / "daemon.log").read_text()
    assert status != 0 and took < 10, f"{took:.1f} s; {log}"  # before: still running after 30 s
    assert "Traceback" not in log and "File too large" in log and "no longer recorded" in log, log
    assert not place().socket.exists()
    assert journal.read_bytes() == before
    again = serve(tmp_path, "--session", "s")  # the daemon's lock and the session's are free
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=60) == 0


@pytest.mark.slow
async def test_a_workbench_whose_disk_is_full_stops_its_workers_and_ends_saying_why(small_disk):
    from diffdeck.tui.app import Workbench
    from diffdeck.tui.config import load_config
    from diffdeck.tui.engine import LocalEngine
    from diffdeck.tui.images import image_widget
    from diffdeck.tui.themes import load_theme

    config = load_config()
    engine = LocalEngine(load_registry(), Session.open(small_disk / "s"))
    app = Workbench(engine, config, [load_theme(p) for p in config.theme_files], image_class=image_widget("off"))
    fill(small_disk)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.click("#prompt")
        await pilot.press(*"a red circle", "ctrl+j")
        deadline = time.monotonic() + 30
        while app.return_code is None and time.monotonic() < deadline:
            await pilot.pause(0.02)
    assert app.return_code == 1, "ended, its engine shut down: nothing renders unrecorded"
    problem = await engine.shut_down()  # what `diffdeck` prints once the screen is gone
    assert "No space left on device" in problem and "no longer recorded" in problem
    assert (small_disk / "s" / JOURNAL).read_bytes() == b""


@pytest.mark.slow
def test_serve_names_the_remembered_session_it_cannot_read_and_starts_no_other(tmp_path):
    daemon = serve(tmp_path, "--session", "s")  # remembered, to resume after a crash
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    queued = json.dumps({"type": "queued", "job": "job-0001", "spec": SPEC})
    journal = tmp_path / "s" / JOURNAL
    journal.write_text(f"{queued[:40]}\n{queued}\n")  # a line appended after a torn one, by an older diffdeck
    for args in (["--foreground"], []):
        refused = diffdeck("serve", *args, cwd=tmp_path, timeout=60)
        line = one_line_error(refused.stderr)
        assert refused.returncode == 2
        assert f"{tmp_path / 's' / JOURNAL} line 1 is not a JSON event" in line and "--new-session" in line, line
    assert journal.read_text() == f"{queued[:40]}\n{queued}\n"
    assert not (tmp_path / "sessions").exists(), "no new session in its place"

    fresh = serve(tmp_path, "--new-session")  # when told to
    assert state()["session"].startswith(str(tmp_path / "sessions"))
    fresh.send_signal(signal.SIGTERM)
    assert fresh.wait(timeout=60) == 0
