"""Renders that must stop: whatever happens to diffdeck, its workers do not render on for minutes.

The demo model at 1024x1024 spends about 9 s in one denoising step here: long enough that a
worker which only looks at its commands between steps would still be running seconds later."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from diffdeck.engines.core.registry import DEMO
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.worker_protocol import encode
from helpers import readline_within, start, wait_until

pytestmark = pytest.mark.slow

SLOW = ["--size", "1024x1024", "--steps", "1000"]
GONE_WITHIN_S = 15.0  # ~3 s here alone; before the fix 20 s to minutes (margin for a shared 2-core machine)


def gone_within(pid: int, seconds: float) -> float | None:
    """Seconds until `pid` no longer runs (a zombie counts as gone), or None."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return time.monotonic() - began
        except psutil.NoSuchProcess:
            return time.monotonic() - began
        time.sleep(0.05)
    return None


def render_in_the_background(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """`diffdeck render` of a slow job, once its worker is inside the first step; and the worker's pid."""
    cli = start("render", "slow", *SLOW, "--session", "s", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True)
    journal = tmp_path / "s" / "journal.jsonl"

    def started() -> bool:
        if journal.is_file() and '"started"' in journal.read_text():
            return True
        assert cli.poll() is None, cli.communicate()
        return False
    wait_until(started, 120, "the render to start")
    (worker,) = psutil.Process(cli.pid).children()
    time.sleep(1.0)  # into the step
    return cli, worker.pid


def test_killing_the_cli_leaves_no_worker_running(tmp_path):
    cli, worker = render_in_the_background(tmp_path)
    cli.kill()
    cli.communicate()
    took = gone_within(worker, GONE_WITHIN_S)
    if took is None:
        os.kill(worker, signal.SIGKILL)
    assert took is not None, f"the worker still ran {GONE_WITHIN_S} s after diffdeck was killed"


def test_ctrl_c_mid_step_cancels_and_exits_130_within_seconds(tmp_path):
    cli, worker = render_in_the_background(tmp_path)
    began = time.monotonic()
    os.killpg(cli.pid, signal.SIGINT)  # as a terminal does: the whole foreground group
    out, err = cli.communicate(timeout=60)
    took = time.monotonic() - began
    assert cli.returncode == 130, err.decode(errors="replace")
    assert took < GONE_WITHIN_S, f"render took {took:.1f} s to stop after ctrl+c"
    assert "job-0001 cancelled" in err.decode() and out == b""
    assert gone_within(worker, GONE_WITHIN_S) is not None


def test_a_worker_whose_input_ends_mid_step_exits(tmp_path):
    """Its Dispatcher is gone without a word (the pipe closed): the worker stops at once."""
    worker = subprocess.Popen([sys.executable, "-m", "diffdeck.engines.worker", "--model", json.dumps(DEMO.to_dict())],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while json.loads(readline_within(worker.stdout, max(deadline - time.monotonic(), 0)))["type"] != "ready":
            assert time.monotonic() < deadline, "the worker never said it was ready"
        spec = JobSpec(prompt="slow", seed=1, seeds=(1,), steps=1000, width=1024, height=1024, guidance=5.0)
        worker.stdin.write(encode("job", id="job-1", spec=spec.to_dict(), out_dir=str(tmp_path)))
        worker.stdin.flush()
        time.sleep(1.5)  # into the first step
        worker.stdin.close()
        took = gone_within(worker.pid, GONE_WITHIN_S)
        assert took is not None, f"the worker still ran {GONE_WITHIN_S} s after its input ended"
    finally:
        worker.kill()
        worker.wait()
