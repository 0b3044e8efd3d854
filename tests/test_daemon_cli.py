"""The daemon's queue from the command line, as a user on a GPU box over ssh runs it: a real
`diffdeck serve` with a real worker, and the CLI in processes of its own."""

import re
import signal
import time
from pathlib import Path

import pytest
from daemons import PROMPT, call, state
from diffdeck.engines.daemon.server import place
from diffdeck.engines.record.session import Session
from helpers import diffdeck, one_line_error, readline_within, start, wait_until


def job(job_id: str) -> dict:
    return next(j for j in state()["jobs"] if j["id"] == job_id)


@pytest.mark.slow
def test_the_daemons_queue_from_the_command_line_and_a_stop_that_says_what_it_waits_for(tmp_path, daemon):
    render = start("render", PROMPT, "--steps", "1000", "--size", "128x128", "--seed", "1", "--engine", "daemon",
                   cwd=tmp_path, capture=True)
    assert "job-0001 queued on the daemon" in readline_within(render.stderr, 120)
    wait_until(lambda: job("job-0001")["progress"], 120, "job-0001 rendering")
    render.send_signal(signal.SIGINT)
    assert "detached; job-0001 goes on in the daemon" in render.communicate(timeout=60)[1]

    paused = diffdeck("queue", "pause", cwd=tmp_path)
    assert paused.returncode == 0 and "queue is paused" in paused.stdout and state()["paused"]
    call("submit", spec={"prompt": PROMPT, "model": "demo", "steps": 4, "seed": 2})  # job-0002, held back
    cancelled = diffdeck("queue", "cancel", "job-0002", "job-0099", cwd=tmp_path)
    assert cancelled.returncode == 2 and "job-0002 cancelled" in cancelled.stdout, cancelled.stderr
    assert "no job 'job-0099'" in cancelled.stderr and job("job-0002")["status"] == "cancelled"
    retried = diffdeck("queue", "retry", "job-0002", cwd=tmp_path)
    assert retried.returncode == 0 and "job-0002 queued again" in retried.stdout
    status = diffdeck("status", cwd=tmp_path).stdout
    assert re.search(r"job-0001 running .*\(image 1/1, step \d+/1000\)", status), status
    assert "1 queued, 1 running" in status, status

    watch = start("status", "--watch", cwd=tmp_path, capture=True)
    frames = 0
    while frames < 2:  # drawn, then drawn again; each line within its own deadline
        line = readline_within(watch.stdout, 60, "a line of status --watch")
        assert line, "status --watch stopped drawing"
        frames += line.startswith("daemon pid")
    watch.send_signal(signal.SIGINT)
    assert watch.wait(timeout=30) == 0 and "Traceback" not in watch.stderr.read()

    local = diffdeck("render", PROMPT, "--steps", "1", "--session", "here", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert f"warning: the engine daemon (pid {daemon.pid}) holds demo loaded already" in local.stderr

    session = Path(state()["session"])
    stopping = start("stop", cwd=tmp_path, capture=True)
    assert re.search(r"waiting for job-0001 \(image 1/1, step \d+/1000\) to finish; diffdeck stop --now",
                     readline_within(stopping.stderr, 60))
    now = diffdeck("stop", "--now", cwd=tmp_path)
    assert now.returncode == 0 and "2 jobs stay queued in its session" in now.stdout, now.stdout + now.stderr
    assert "2 jobs stay queued in its session" in stopping.communicate(timeout=60)[0]
    assert daemon.wait(timeout=60) == 0
    assert [job.id for job in Session.open(session, create=False).unfinished()] == ["job-0001", "job-0002"]


def test_logs_shows_the_daemons_last_lines_and_follows_what_it_writes(tmp_path):
    log = place().log
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("one\ntwo\nthree \x1b]0;title\x07\n")
    shown = diffdeck("logs", "-n", "2", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout == "two\nthree \u241b]0;title\u2407\n"

    follow = start("logs", "-f", "-n", "1", cwd=tmp_path, capture=True)
    assert readline_within(follow.stdout, 30) == "three \u241b]0;title\u2407\n"
    with open(log, "a") as out:
        out.write("fo")
        out.flush()
        time.sleep(0.5)  # half a line written: it waits for the rest
        out.write("ur\n")
    assert readline_within(follow.stdout, 30) == "four\n"
    follow.send_signal(signal.SIGINT)
    assert follow.wait(timeout=30) == 0 and "Traceback" not in follow.stderr.read()


@pytest.mark.parametrize(("args", "says"), [
    (["queue", "cancel"], "queue: cancel needs job ids, such as job-0003 (diffdeck status lists them), or --all"),
    (["queue", "retry", "--all"], "--all: is for cancel"),
    (["queue", "pause", "job-0001"], "queue: pause is for the whole queue; it takes no job ids"),
    (["status", "--watch", "--json"], "--watch: draws the status for a person to read"),
])
def test_a_queue_command_that_cannot_mean_anything_is_one_line_before_any_daemon_is_asked(tmp_path, args, says):
    one_line_error(diffdeck(*args, cwd=tmp_path), says)


def test_queue_control_of_a_session_nobody_renders_changes_its_record(tmp_path):
    """Without a daemon: cancel and retry jobs of a session folder at rest, for `resume` (or the
    workbench) to render later; a session being written by another process is refused by name."""
    spec = {"prompt": PROMPT, "model": "demo", "seeds": [1], "count": 1, "steps": 2}
    session = Session.open(tmp_path / "s")
    for n, end in ((1, None), (2, "failed"), (3, "held")):
        session.append({"type": "queued", "job": f"job-000{n}", "spec": spec})
        if end:
            session.append({"type": end, "job": f"job-000{n}", "error": "boom", "worker_crashes": 2})
    session.close()

    cancelled = diffdeck("queue", "cancel", "job-0001", "--session", "s", cwd=tmp_path)
    assert cancelled.returncode == 0 and cancelled.stdout == "job-0001 cancelled\n", cancelled.stderr
    retried = diffdeck("queue", "retry", "job-0002", "--session", "s", cwd=tmp_path)
    assert retried.returncode == 0 and "job-0002 queued again; diffdeck resume s renders it" in retried.stdout
    one_line_error(diffdeck("queue", "retry", "job-0003", "--session", "s", cwd=tmp_path), "job-0003 is held", "--force")
    assert diffdeck("queue", "retry", "job-0003", "--force", "--session", "s", cwd=tmp_path).returncode == 0
    jobs = Session.open(tmp_path / "s").jobs
    assert [jobs[j]["status"] for j in ("job-0001", "job-0002", "job-0003")] == ["cancelled", "queued", "queued"]
    assert jobs["job-0003"]["worker_crashes"] == 0 and jobs["job-0002"]["worker_crashes"] == 2

    one_line_error(diffdeck("queue", "pause", "--session", "s", cwd=tmp_path), "--session: takes cancel or retry")
    holder = Session.open_for_writing(tmp_path / "s", "a workbench")
    try:
        one_line_error(diffdeck("queue", "cancel", "--all", "--session", "s", cwd=tmp_path), "is being written by",
                       "a workbench")
    finally:
        holder.close()
    assert diffdeck("queue", "cancel", "--all", "--session", "s", cwd=tmp_path).stdout.count("cancelled") == 2
