"""A daemon's calls and a far side's answers that are not what they should be: numbers that are
not whole numbers (inf, NaN, true, "3", 10**30) are answered with an error on a line that stays
open; a far side's session record and image names never put a file outside the fetched folder,
and the copy opens again."""

import asyncio
import base64
import io
import json
import math
import shlex
import sys

import pytest
from daemons import PROMPT
from diffdeck.engines.daemon.client import EngineClient
from diffdeck.engines.daemon.wire import DaemonError
from diffdeck.engines.record.session import Session
from helpers import diffdeck
from PIL import Image

NOT_WHOLE = [math.inf, -math.inf, math.nan, True, "3", 2.5, 10**30, [1], {"n": 1}]


@pytest.mark.slow
def test_a_call_with_a_number_that_is_not_whole_is_answered_and_the_line_stays_open(daemon, tmp_path):
    async def calls() -> tuple[list[str], dict]:
        async with await EngineClient.connect() as client:
            await client.call("pause")  # the job stays queued: no worker is needed
            job = (await client.call("submit", spec={"prompt": PROMPT, "steps": 2}))["id"]
            calls = [("move", {"job": job}, "position"), ("rate", {"job": job, "stars": 1}, "image"),
                     ("rate", {"job": job, "image": 0}, "stars"), ("image", {"job": job}, "image"),
                     ("image", {"job": job, "image": 0}, "max_side"),
                     ("pick", {"set": "set-0001", "left": job, "right": job, "winner": "tie"}, "image")]
            errors = []
            for name, args, key in calls:
                for value in NOT_WHOLE:
                    try:
                        await client.call(name, **args, **{key: value})
                    except DaemonError as e:
                        errors.append(str(e))
            return errors, await client.call("state")

    errors, state = asyncio.run(calls())
    assert len(errors) == 6 * len(NOT_WHOLE)
    for error in errors:
        assert "must be a whole number of at most 2,147,483,647, not " in error, error
    assert state["clients"] == 1 and [job["status"] for job in state["jobs"]] == ["queued"]
    assert "rating" not in next((tmp_path / "sessions").glob("*/journal.jsonl")).read_text()


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(out, "PNG")
    return out.getvalue()


def far_record(*paths: str) -> dict:
    images = [{"image": i, "seed": 5 + i, "path": path, "pixel_sha256": "00" * 32, "timings": {"denoise_s": 0.1},
               "peak_memory": 1} for i, path in enumerate(paths)]
    job = {"spec": {"prompt": PROMPT, "model": "demo", "seeds": [5 + i for i in range(len(paths))],
                    "count": len(paths)}, "status": "done", "images": images}
    return {"format": 1, "name": "far", "created": "2026-01-01", "models": {}, "sets": {}, "jobs": {"job-0001": job}}


FAR_SIDE = """\
import json, sys
record, answers = (json.load(open(path)) for path in sys.argv[1:3])
for line in sys.stdin:
    message = json.loads(line)
    if "hello" in message:
        reply = {"hello": {**message["hello"], "session": "/far/s", "record": record, "paused": False,
                           "models": {}, "jobs": [], "workers": {}}}
    else:
        reply = {"id": message["id"], **answers[str(message["args"]["image"])]}
    print(json.dumps(reply), flush=True)
"""


def far_side(tmp_path, monkeypatch, record: dict, answers: dict) -> None:
    """A far side (in place of ssh) that sends `record` as its session and `answers` to the image calls."""
    for name, content in (("far.py", FAR_SIDE), ("record.json", json.dumps(record)),
                          ("answers.json", json.dumps(answers))):
        (tmp_path / name).write_text(content)
    monkeypatch.setenv("DIFFDECK_SSH", shlex.join([sys.executable, *(str(tmp_path / n) for n in
                                                                    ("far.py", "record.json", "answers.json"))]))


def fetch(tmp_path, monkeypatch, record: dict, answers: dict):
    """`diffdeck fetch copy --remote far` from such a far side."""
    far_side(tmp_path, monkeypatch, record, answers)
    return diffdeck("fetch", "copy", "--remote", "far", cwd=tmp_path, timeout=60)


def test_a_far_session_with_an_image_path_outside_it_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    result = fetch(tmp_path, monkeypatch, far_record("images/job-0001-00-5.png", "/etc/passwd"),
                   {"0": {"result": {"name": "a.png", "png": base64.b64encode(png_bytes()).decode()}},
                    "1": {"error": "job-0001 has no image 1 (yet)"}})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "the daemon's session record: job 'job-0001' image 1 has the path '/etc/passwd'" in line
    assert not (tmp_path / "copy").exists()


def test_a_far_sides_image_names_never_leave_the_fetched_folder_and_the_copy_reopens(tmp_path, monkeypatch):
    picture = png_bytes()
    result = fetch(tmp_path, monkeypatch, far_record("images/job-0001-00-5.png", "images/job-0001-01-6.png"),
                   {"0": {"result": {"name": "..", "png": base64.b64encode(picture).decode()}},
                    "1": {"result": {"name": "b.png", "png": "this is not base64!"}}})
    assert result.returncode == 1, result.stderr  # one image could not be had
    assert "image 1: the daemon's answer is not an image" in result.stderr and "Traceback" not in result.stderr
    copy = Session.open(tmp_path / "copy", create=False)
    images = copy.jobs["job-0001"]["images"]
    assert [image["path"] for image in images] == ["images/job-0001-00-5.png", "images/job-0001-01-6.png"]
    assert copy.resolve(images[0]["path"]).read_bytes() == picture
    assert sorted(p.name for p in (tmp_path / "copy" / "images").iterdir()) == ["job-0001-00-5.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.json", "copy", "far.py", "record.json"]


def test_a_workbench_attached_to_a_far_session_with_a_hostile_path_refuses_it_in_one_line(tmp_path, monkeypatch):
    far_side(tmp_path, monkeypatch, far_record("/etc/passwd"), {})
    result = diffdeck("--remote", "far", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()[-1:]
    assert "job 'job-0001' image 0 has the path '/etc/passwd'" in line and "Traceback" not in result.stderr
