"""The engine daemon as users meet it: a real `diffdeck serve` process with real workers, real
clients (the CLI and the protocol client), renders that outlive their client, a daemon killed
with -9 that resumes its queue, a remote engine over a stand-in for ssh, and the socket's guards."""

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from daemons import PROMPT, serve, state, stop, until_done
from diffdeck.engines.daemon.client import EngineClient
from diffdeck.engines.daemon.server import socket_path
from diffdeck.engines.daemon.wire import PROTOCOL, DaemonError
from diffdeck.engines.record.session import Session
from helpers import diffdeck, readline_within, start
from PIL import Image

pytestmark = pytest.mark.slow


def test_a_render_outlives_its_client_and_a_new_client_sees_it_done(tmp_path, daemon):
    client = start("render", PROMPT, "--steps", "60", "--seed", "3", "--engine", "daemon", "--json", cwd=tmp_path,
                   stderr=subprocess.PIPE, text=True)
    assert "job-0001 queued on the daemon" in readline_within(client.stderr, 120)
    client.kill()  # the connection drops mid-render, as an ssh session does
    client.wait()

    job = until_done("job-0001")
    assert job["status"] == "done" and len(job["images"]) == 1
    session = Path(state()["session"])
    assert session.is_absolute() and Path(job["images"][0]["path"]).is_file()

    status = diffdeck("status", cwd=tmp_path)
    assert status.returncode == 0 and "1 done since the daemon started" in status.stdout
    stop(daemon)
    assert Session.open(session, create=False).jobs["job-0001"]["status"] == "done"
    assert not socket_path().exists()


def test_two_clients_see_the_same_progress_a_bad_job_is_named_and_a_thumbnail_comes_back(daemon):
    async def watch():
        first, second = await EngineClient.connect(), await EngineClient.connect()
        seen = {first: [], second: []}

        async def collect(client):
            async for event in client.events():
                if event.job is not None:  # telemetry ticks may fall between the two attaching
                    seen[client].append((event.type, event.data.get("step")))
                if event.type == "done":
                    return

        watchers = [asyncio.create_task(collect(c)) for c in (first, second)]
        with pytest.raises(DaemonError, match="'nope'"):
            await first.call("submit", spec={"prompt": PROMPT, "model": "nope"})
        job = await first.call("submit", spec={"prompt": PROMPT, "model": "demo", "steps": 6, "seed": 1})
        await asyncio.wait_for(asyncio.gather(*watchers), 120)
        thumbnail = await second.call("image", job=job["id"], image=0, max_side=32)
        for client in (first, second):
            await client.close()
        return job, seen[first], seen[second], thumbnail

    job, first, second, thumbnail = asyncio.run(watch())
    assert job["id"] == "job-0001" and job["status"] == "queued"
    assert Image.open(io.BytesIO(base64.b64decode(thumbnail["png"]))).size == (32, 32)
    steps = [step for kind, step in first if kind == "step"]
    assert steps and steps[-1] == 6 and first == second  # step events are throttled, the same for all


def test_the_daemon_killed_with_9_resumes_its_queue_and_loses_nothing(tmp_path, daemon):
    first = diffdeck("render", PROMPT, "--steps", "4", "--seed", "1", "--engine", "daemon", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    made = Path(json.loads(first.stdout)["path"])

    async def queue_two_and_see_the_first_run():
        async with await EngineClient.connect() as client:
            jobs = [await client.call("submit", spec={"prompt": PROMPT, "model": "demo", "steps": 400, "seed": 2}),
                    await client.call("submit", spec={"prompt": PROMPT, "model": "demo", "steps": 4, "seed": 3})]

            async def first_stepping():
                async for event in client.events():
                    if event.type == "step" and event.job == jobs[0]["id"]:
                        return

            await asyncio.wait_for(first_stepping(), 120)
    asyncio.run(queue_two_and_see_the_first_run())
    session = Path(state()["session"])
    daemon.kill()  # -9: no goodbye, no compaction
    daemon.wait()

    again = serve(tmp_path)  # no --session: the killed daemon's session, resumed
    try:
        assert state()["session"] == str(session)
        resumed = until_done("job-0002", timeout=240)
        assert resumed["status"] == "done" and resumed["worker_crashes"] == 1  # a run cut short counts
        assert until_done("job-0003")["status"] == "done"
        stop(again)
    finally:
        if again.poll() is None:
            again.kill()
    jobs = Session.open(session, create=False).jobs
    assert [jobs[j]["status"] for j in ("job-0001", "job-0002", "job-0003")] == ["done"] * 3
    assert made.is_file()


def test_a_remote_engine_over_ssh_renders_on_the_far_side_and_its_session_can_be_fetched(tmp_path):
    """A stand-in for ssh runs the command here, so the stdio transport is exercised end to end;
    `attach --stdio` starts the far side's daemon on demand."""
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text('#!/bin/sh\nshift  # the host\nexec "$@"\n')
    fake_ssh.chmod(0o755)
    env = {"DIFFDECK_SSH": str(fake_ssh), "DIFFDECK_REMOTE": f"{sys.executable} -m diffdeck.tui"}
    result = diffdeck("render", PROMPT, "--steps", "4", "--seed", "5", "--remote", "gpubox", "--json", "--fetch", "here",
                      cwd=tmp_path, env=env)
    try:
        assert result.returncode == 0, result.stderr
        image = json.loads(result.stdout)
        assert image["job"] == "job-0001" and image["seed"] == 5
        far = Path(image["path"])  # on "the GPU box", in its daemon's session
        assert (tmp_path / "here" / far.name).read_bytes() == far.read_bytes()

        refused = diffdeck("fetch", "--remote", "gpubox", "here", cwd=tmp_path, env=env, timeout=60)
        assert refused.returncode == 2 and "is not an empty folder" in refused.stderr
        fetched = diffdeck("fetch", "--remote", "gpubox", "copy", cwd=tmp_path, env=env, timeout=120)
        assert fetched.returncode == 0, fetched.stderr
        copy = Session.open(tmp_path / "copy", create=False)
        job = copy.jobs["job-0001"]
        assert job["status"] == "done" and copy.resolve(job["images"][0]["path"]).read_bytes() == far.read_bytes()
    finally:
        diffdeck("stop", cwd=tmp_path)


def test_a_client_of_another_version_or_sending_garbage_is_told_what_is_wrong(daemon):
    async def exchange(*lines):
        reader, writer = await asyncio.open_unix_connection(str(socket_path()))
        answers = []
        for line in lines:
            writer.write(line + b"\n")
            answer, deadline = {"event": None}, time.monotonic() + 60
            while "event" in answer:  # telemetry may come in between
                assert time.monotonic() < deadline, f"no answer to {line!r}, only events"
                answer = json.loads(await asyncio.wait_for(reader.readline(), max(deadline - time.monotonic(), 0)))
            answers.append(answer)
        writer.close()
        return answers

    hello = json.dumps({"hello": {"protocol": PROTOCOL}}).encode()
    (other,) = asyncio.run(exchange(json.dumps({"hello": {"protocol": PROTOCOL + 1}}).encode()))
    assert f"speaks diffdeck protocol {PROTOCOL}" in other["error"] and f"spoke {PROTOCOL + 1}" in other["error"]
    _, unknown, bad_args, missing = asyncio.run(exchange(
        hello, b'{"id": 1, "call": "explode"}', b'{"id": 2, "call": "cancel", "args": [1]}',
        b'{"id": 3, "call": "cancel", "args": {}}'))
    assert unknown == {"id": 1, "error": "unknown call 'explode'"}
    assert bad_args["error"] == "the arguments of 'cancel' must be a JSON object"
    assert missing["error"] == "'cancel' needs the argument 'job'"
    _, garbage = asyncio.run(exchange(hello, b"this is not json"))
    assert garbage["error"].startswith("closing the connection:")
    assert state()["clients"] == 1  # only the one asking: the others are gone, the daemon is fine


def test_the_socket_is_the_users_alone(tmp_path, monkeypatch):
    short = Path(tempfile.mkdtemp(prefix="diffdeck-test-"))  # /tmp: a path that another user may walk
    monkeypatch.setenv("DIFFDECK_SOCKET", str(short / "run" / "engine.sock"))
    daemon = serve(tmp_path)
    try:
        path = socket_path()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.getuid()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        if os.getuid() != 0:
            pytest.skip("connecting as another user needs root; the modes above are what keeps them out")
        path.chmod(0o666)  # past the file modes, the daemon's own check of the peer's uid must refuse
        path.parent.chmod(0o755)
        short.chmod(0o755)
        refused = subprocess.run(
            [sys.executable, "-c", "import os, socket, sys; os.setuid(65534); s = socket.socket(socket.AF_UNIX); "
             "s.connect(sys.argv[1]); print(s.recv(4096).decode())",
             str(path)], capture_output=True, text=True, timeout=30)
        assert "uid 65534 refused" in refused.stdout, refused.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        shutil.rmtree(short)
