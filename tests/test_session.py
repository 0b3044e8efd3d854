"""Session folders: journal, snapshot, reopening, and what a kill leaves behind."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from diffdeck.engines.core.pixels import file_pixel_sha256
from diffdeck.engines.record.session import JOURNAL, RECORD, Session, SessionError
from helpers import diffdeck, readline_within, start


def events(folder):
    image = folder / "images" / "job-0001-00-7.png"
    return [
        {"type": "queued", "job": "job-0001", "spec": {"prompt": "a red circle", "model": "demo", "seeds": [7]}, "position": 0},
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


def test_the_snapshot_reads_the_same_in_any_yaml_tool_and_when_edited_by_hand(tmp_path):
    from diffdeck.engines.bench.session_costs import make_session

    make_session(tmp_path / "s", 50)
    text = (tmp_path / "s" / RECORD).read_text()
    assert text.count("\n  \"job-") == 50, "one line per job"
    session = Session.open(tmp_path / "s")
    assert yaml.safe_load(text) == session.record
    assert len(session.jobs) == 50 and all(len(job["images"]) == 2 for job in session.jobs.values())
    (tmp_path / "s" / RECORD).write_text(yaml.safe_dump(session.record))  # block style, as a person might
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
    lines = [json.dumps({**e, "path": "images/a.png"} if "path" in e else e) for e in events(tmp_path / "s")]
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
    (RECORD, b"format: 1\njobs:\n  job-0001:\n    status: done\n    spec: {prompt: p, model: demo}\n"
             b"    images: [{image: 0, seed: 1, path: ../../home/me/.ssh/id_rsa}]\n",
     "job 'job-0001' image 0 has the path '../../home/me/.ssh/id_rsa', which leaves the session folder"),
])
def test_a_mangled_file_is_named_and_left_alone(tmp_path, name, content, message):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / name).write_bytes(content)
    with pytest.raises(SessionError, match=message):
        Session.open(tmp_path / "s")
    assert (tmp_path / "s" / name).read_bytes() == content


@pytest.mark.slow
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


@pytest.mark.slow
def test_kill_9_mid_queue_loses_nothing_and_resume_finishes_the_queue(tmp_path):
    prompts = ["a red circle", "a blue square", "a green star"]
    render = ["render", *prompts, "--count", "3", "--seed", "5"]
    proc = start(*render, "--session", "s", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    written = [readline_within(proc.stdout, 120).strip() for _ in range(2)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # its worker sees the pipe close and stops within a step

    session = Session.open(tmp_path / "s")
    first = session.jobs["job-0001"]
    assert first["status"] == "running"
    kept = {image["path"]: file_pixel_sha256(tmp_path / "s" / image["path"]) for image in first["images"]}
    assert {os.path.relpath(path, "s") for path in written} <= set(kept)
    assert [job.id for job in session.unfinished()] == ["job-0001", "job-0002", "job-0003"]

    resumed = diffdeck("resume", "s", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"job-0001: queued, keeping {len(kept)} image(s) already made" in resumed.stderr
    done = Session.open(tmp_path / "s")
    assert [job["status"] for job in done.jobs.values()] == ["done"] * 3
    for path, pixels in kept.items():  # made before the kill, not rendered again
        assert path not in resumed.stdout and file_pixel_sha256(tmp_path / "s" / path) == pixels

    # the same queue, never interrupted, makes the same pixels
    assert diffdeck(*render, "--session", "straight", cwd=tmp_path).returncode == 0
    straight = Session.open(tmp_path / "straight")
    assert ([[i["pixel_sha256"] for i in sorted(job["images"], key=lambda i: i["image"])] for job in done.jobs.values()]
            == [[i["pixel_sha256"] for i in job["images"]] for job in straight.jobs.values()])


@pytest.mark.slow
def test_a_job_running_at_its_second_stop_is_held_on_resume(tmp_path):
    """It crashed its worker once, was retried, and was running when diffdeck was killed."""
    session = Session.open(tmp_path / "s")
    spec = {"prompt": "p", "model": "demo", "seeds": [1]}
    session.append({"type": "queued", "job": "job-0001", "spec": spec})
    session.append({"type": "started", "job": "job-0001", "queue_wait_s": 0, "load_s": 0})
    session.append({"type": "failed", "job": "job-0001", "error": "worker killed", "worker_crashes": 1})
    session.append({"type": "queued", "job": "job-0001", "spec": spec})
    session.append({"type": "started", "job": "job-0001", "queue_wait_s": 0, "load_s": 0})
    session.append({"type": "queued", "job": "job-0002", "spec": spec})
    session.close()
    result = diffdeck("resume", "s", cwd=tmp_path)
    assert result.returncode == 1
    assert "job-0001 stopped its worker 2 times" in result.stderr
    jobs = Session.open(tmp_path / "s").jobs
    assert jobs["job-0001"]["status"] == "held" and jobs["job-0002"]["status"] == "done"


@pytest.mark.slow
def test_the_crash_a_resume_counts_is_recorded(tmp_path):
    """Else a job that takes diffdeck down at every resume would come back forever."""
    session = Session.open(tmp_path / "s")
    session.append({"type": "queued", "job": "job-0001", "spec": {"prompt": "p", "model": "demo", "seeds": [1]}})
    session.append({"type": "started", "job": "job-0001", "queue_wait_s": 0, "load_s": 0})
    session.close()
    assert diffdeck("resume", "s", cwd=tmp_path).returncode == 0
    job = Session.open(tmp_path / "s").jobs["job-0001"]
    assert job["status"] == "done" and job["worker_crashes"] == 1
