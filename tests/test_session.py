"""Session folders: journal, snapshot, reopening, and what a kill leaves behind."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from engines.compare import file_pixel_sha256
from engines.session import JOURNAL, RECORD, Session, SessionError


def events(folder):
    image = folder / "images" / "job-0001-00-7.png"
    return [
        {"type": "queued", "job": "job-0001", "spec": {"prompt": "a red circle", "seeds": [7]}, "position": 0},
        {"type": "worker_ready", "job": None, "model": "demo", "family": "sd", "device": "cpu",
         "dtype": "float32", "environment": {"python": "3.11"}},
        {"type": "started", "job": "job-0001", "queue_wait_s": 0.1, "load_s": 2.0},
        {"type": "image", "job": "job-0001", "image": 0, "seed": 7, "path": str(image),
         "pixel_sha256": "ab" * 32, "timings": {"denoise_s": 0.2}, "peak_memory": 1000},
        {"type": "done", "job": "job-0001", "timings": {"total_s": 2.5}, "peak_memory": 1000},
    ]


def test_every_event_is_journaled_and_reopens_to_the_same_record(tmp_path):
    session = Session.open(tmp_path / "s")
    for event in events(tmp_path / "s"):
        session.append(event)
    session.close()
    assert len((tmp_path / "s" / JOURNAL).read_text().splitlines()) == 5
    reopened = Session.open(tmp_path / "s")
    assert reopened.record == session.record
    job = reopened.jobs["job-0001"]
    assert job["status"] == "done" and job["images"][0]["path"] == "images/job-0001-00-7.png"
    assert reopened.record["models"]["demo"]["family"] == "sd"
    assert reopened.next_job_number() == 2


def test_compact_folds_the_journal_into_readable_yaml(tmp_path):
    session = Session.open(tmp_path / "s")
    for event in events(tmp_path / "s"):
        session.append(event)
    session.compact()
    assert (tmp_path / "s" / JOURNAL).read_text() == ""
    record = yaml.safe_load((tmp_path / "s" / RECORD).read_text())
    assert record["format"] == 1 and record["jobs"]["job-0001"]["status"] == "done"
    assert Session.open(tmp_path / "s").record == session.record


def test_replaying_events_the_snapshot_already_holds_changes_nothing(tmp_path):
    """As after a crash between writing the snapshot and emptying the journal."""
    session = Session.open(tmp_path / "s")
    for event in events(tmp_path / "s"):
        session.append(event)
    journal = (tmp_path / "s" / JOURNAL).read_text()
    session.compact()
    (tmp_path / "s" / JOURNAL).write_text(journal)
    assert Session.open(tmp_path / "s").record == session.record


def test_a_last_line_cut_short_by_a_kill_is_ignored(tmp_path):
    lines = [json.dumps(e) for e in events(tmp_path / "s")]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / JOURNAL).write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    job = Session.open(tmp_path / "s").jobs["job-0001"]
    assert job["status"] == "running" and len(job["images"]) == 1


@pytest.mark.parametrize(("name", "content", "message"), [
    (JOURNAL, b'{"type": "queued"\n{"type": "done", "job": "x"}\n', "line 1 is not a JSON event"),
    (JOURNAL, b'{"type": "teleport", "job": "x"}\n', "line 1 is not a session event"),
    (JOURNAL, b'{"type": "done", "job": "job-9"}\n', "unknown job 'job-9'"),
    (JOURNAL, b'{"type": "queued", "job": "job-1"}\n', "line 1: queued event is incomplete"),
    (RECORD, b"format: 2\njobs: {}\n", "session format 2; this diffdeck reads format 1"),
    (RECORD, b"format: 1\njobs: [unclosed\n", "line \\d: not valid YAML"),
    (RECORD, b"- a list\n", "not a diffdeck session record"),
    (RECORD, b"format: 1\nname: caf\xe9\njobs: {}\n", "is not UTF-8 text"),
])
def test_a_mangled_file_is_named_and_left_alone(tmp_path, name, content, message):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / name).write_bytes(content)
    with pytest.raises(SessionError, match=message):
        Session.open(tmp_path / "s")
    assert (tmp_path / "s" / name).read_bytes() == content


def diffdeck(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tui", *args], cwd=cwd, capture_output=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_renders_into_one_session_add_up(tmp_path):
    for seed in ("1", "2"):
        assert diffdeck("render", "a red circle", "--seed", seed, "--session", "s", cwd=tmp_path).returncode == 0
    session = Session.open(tmp_path / "s")
    assert list(session.jobs) == ["job-0001", "job-0002"]
    for job in session.jobs.values():
        image = job["images"][0]
        assert job["status"] == "done" and not os.path.isabs(image["path"])
        assert image["pixel_sha256"] == file_pixel_sha256(tmp_path / "s" / image["path"])
    assert session.jobs["job-0002"]["spec"]["seeds"] == [2]


def test_bad_input_leaves_no_session_behind(tmp_path):
    assert diffdeck("render", "x", "--steps", "0", cwd=tmp_path).returncode == 2
    assert not (tmp_path / "sessions").exists()


def test_kill_9_mid_job_loses_no_completed_image(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tui", "render", "p", "--count", "40", "--steps", "10",
                             "--session", "s"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    written = [proc.stdout.readline() for _ in range(3)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    job = Session.open(tmp_path / "s").jobs["job-0001"]
    assert job["status"] == "running"
    recorded = {image["path"] for image in job["images"]}
    assert {os.path.relpath(line.decode().strip(), "s") for line in written} <= recorded
    for path in recorded:
        assert (tmp_path / "s" / path).is_file()
