"""One writer per session: a second render, resume, workbench or daemon writing the same session
folder is refused with one line naming the holder, and a lock whose holder died is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from daemons import serve
from diffdeck.engines.record.session import JOURNAL, LOCK, Session, SessionLocked
from fault_tools import PROMPT
from helpers import diffdeck, readline_within, start, wait_until


def held(folder) -> dict:
    """The lock's holder, once a writer has taken it."""
    def holder() -> dict | None:
        try:
            said = json.loads((folder / LOCK).read_text())
        except (OSError, ValueError):
            return None
        return said if "pid" in said else None
    return wait_until(holder, 60, "a writer to take the session's lock", every=0.02)


def refused(result: subprocess.CompletedProcess, holder_pid: int, command: str) -> None:
    """Exit status 2 and one error line naming the holder (ab and grid say the size of the set first)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("diffdeck: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"is being written by pid {holder_pid} on {socket.gethostname()}" in errors[0] and command in errors[0], errors
    assert result.stdout == ""


@pytest.mark.slow
def test_a_second_render_into_a_session_being_rendered_is_refused_naming_the_first(tmp_path):
    first = start("render", PROMPT, "--count", "3", "--steps", "40", "--session", "s", cwd=tmp_path,  # seconds long
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert held(tmp_path / "s")["pid"] == first.pid
    second = diffdeck("render", "a blue square", "--session", "s", cwd=tmp_path)
    refused(second, first.pid, "diffdeck render 'a large red circle on a blue background' --count 3")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    jobs = Session.open(tmp_path / "s").jobs
    assert list(jobs) == ["job-0001"] and len(jobs["job-0001"]["images"]) == 3
    assert sorted(p.name for p in (tmp_path / "s" / "images").iterdir()) == sorted(
        os.path.basename(p) for p in out.decode().split()), "no image of the refused render"
    assert not (tmp_path / "s" / LOCK).exists(), "let go at the end"


@pytest.mark.slow
def test_a_local_render_into_a_daemons_session_is_refused(tmp_path):
    daemon = serve(tmp_path, "--session", "s")
    try:
        local = diffdeck("render", PROMPT, "--session", "s", "--engine", "local", cwd=tmp_path)
        refused(local, daemon.pid, "diffdeck serve --foreground --session s")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    assert not (tmp_path / "s" / LOCK).exists()


@pytest.mark.slow
def test_two_resumes_at_once_render_each_image_once(tmp_path):
    session = Session.open(tmp_path / "s")
    session.append({"type": "queued", "job": "job-0001", "spec": {"prompt": PROMPT, "model": "demo", "seeds": [3, 4],
                                                                   "count": 2, "steps": 2}})
    session.close()
    resumes = [start("resume", "s", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [tuple(map(bytes.decode, r.communicate(timeout=300))) for r in resumes]
    results = {r.returncode: (r.pid, r.returncode, *output) for r, output in zip(resumes, outputs)}
    assert sorted(results) == [0, 2], results
    winner_pid, _, rendered, _ = results[0]
    refused(subprocess.CompletedProcess([], 2, results[2][2], results[2][3]), winner_pid, "diffdeck resume s")
    assert len(rendered.split()) == 2 and len(list((tmp_path / "s" / "images").iterdir())) == 2
    assert Session.open(tmp_path / "s").jobs["job-0001"]["status"] == "done"


def hold(folder, words: str) -> subprocess.Popen:
    """Another process writing `folder`, as far as its lock goes, until it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom diffdeck.engines.record.session import Session\n"
                               "Session.open_for_writing(sys.argv[1], sys.argv[2])\n"
                               "print('locked', flush=True)\ntime.sleep(60)", str(folder), words],
                              stdout=subprocess.PIPE)
    assert readline_within(holder.stdout, 60) == b"locked\n"
    return holder


@pytest.mark.parametrize("command", [["s"], ["resume", "s"], ["ab", "a", "b", "--session", "s"],
                                     ["grid", PROMPT, "--x", "steps=2,3", "--session", "s"]])
def test_the_workbench_resume_ab_and_grid_refuse_a_session_being_written(tmp_path, command):
    session = Session.open(tmp_path / "s")
    session.append({"type": "queued", "job": "job-0001", "spec": {"prompt": PROMPT, "model": "demo", "seeds": [1]}})
    session.close()
    journal = (tmp_path / "s" / JOURNAL).read_bytes()
    holder = hold(tmp_path / "s", "diffdeck render")
    try:
        refused(diffdeck(*command, cwd=tmp_path), holder.pid, "diffdeck render")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [JOURNAL, LOCK]
    assert (tmp_path / "s" / JOURNAL).read_bytes() == journal, "nothing written"


def test_a_lock_left_by_a_killed_writer_is_taken_over_saying_so(tmp_path):
    holder = hold(tmp_path / "s", "a writer about to be killed")
    with pytest.raises(SessionLocked, match=f"pid {holder.pid} .*a writer about to be killed"):
        Session.open_for_writing(tmp_path / "s", "a second writer")
    holder.kill()
    holder.wait()
    session = Session.open_for_writing(tmp_path / "s", "the next writer")
    (notice,) = session.notices
    assert notice.startswith(f"{tmp_path / 's'}: taking over the lock of pid {holder.pid} on {socket.gethostname()} "
                             "(a writer about to be killed) since ") and notice.endswith(", which is no longer running")
    assert json.loads((tmp_path / "s" / LOCK).read_text())["pid"] == os.getpid()
    session.close()


def test_a_lock_naming_another_host_is_not_taken_but_named(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / LOCK).write_text(json.dumps({"pid": 4242, "host": "gpu-box-7", "command": "diffdeck serve",
                                                   "since": "2026-12-01 10:00:00"}))
    with pytest.raises(SessionLocked, match=f"pid 4242 on gpu-box-7 .*remove {tmp_path / 's' / LOCK}"):
        Session.open_for_writing(tmp_path / "s", "diffdeck resume s")
    assert "gpu-box-7" in (tmp_path / "s" / LOCK).read_text(), "left as it was"
