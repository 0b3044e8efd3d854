"""A daemon whose session is larger than one protocol line may be (LINE_LIMIT): its hello comes in
pages, so `status`, `stop` and attaching still work; and a prompt of megabytes is refused when it
is submitted, not recorded to lock everyone out later."""

import asyncio
import json

import pytest
from daemons import serve, stop
from diffdeck.engines.core.spec import MAX_PROMPT, JobSpec
from diffdeck.engines.daemon.client import EngineClient
from diffdeck.engines.daemon.wire import LINE_LIMIT, DaemonError
from diffdeck.engines.record.session import Session
from helpers import diffdeck

pytestmark = pytest.mark.slow

JOBS = 1800
PROMPT = ("a large red circle on a blue background, " * 300)[:MAX_PROMPT - 10]  # long, yet accepted


def big_session(folder):
    """A session whose record is larger than LINE_LIMIT: cancelled jobs with long prompts."""
    session = Session.open(folder)
    for n in range(1, JOBS + 1):
        spec = JobSpec(f"{n} {PROMPT}", seed=n, seeds=(n,), steps=2).to_dict()
        session.append({"type": "queued", "job": f"job-{n:04d}", "spec": spec})
        session.append({"type": "cancelled", "job": f"job-{n:04d}"})
    session.compact()
    session.close()
    assert (folder / "session.yaml").stat().st_size > LINE_LIMIT


def test_a_session_past_the_line_limit_still_lets_clients_in_and_a_huge_prompt_is_refused(tmp_path):
    big_session(tmp_path / "s")
    daemon = serve(tmp_path, "--session", str(tmp_path / "s"))  # waits until a client gets its answer
    try:
        status = diffdeck("status", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert f"{tmp_path / 's'}" in status.stdout and "0 queued, 0 running" in status.stdout

        async def attach_and_submit():
            async with await EngineClient.connect() as client:
                jobs = client.hello["record"]["jobs"]
                assert len(jobs) == JOBS and jobs[f"job-{JOBS:04d}"]["spec"]["prompt"] == f"{JOBS} {PROMPT}"
                refusals = []
                for _ in range(2):  # two were enough to lock everyone out
                    try:
                        await client.call("submit", spec={"prompt": "a red circle " * 700_000, "steps": 2})
                    except DaemonError as e:
                        refusals.append(str(e))
                return refusals

        refusals = asyncio.run(attach_and_submit())
        assert refusals == ["prompt: is 9,100,000 characters long; at most 10,000 are taken"] * 2
        assert json.loads(diffdeck("status", "--json", cwd=tmp_path).stdout)["queue"] == []  # nothing recorded
    finally:
        stop(daemon)
    assert len(Session.open(tmp_path / "s").jobs) == JOBS
