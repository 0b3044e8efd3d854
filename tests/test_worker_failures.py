"""How a worker answers GPU failures. A CUDA device cannot exist here, so the model's render
raises the very exceptions torch raises on one; everything around it is the real worker."""

import io
import json

import pytest
import torch
from diffdeck.engines.core.spec import JobSpec
from diffdeck.engines.core.worker_protocol import Intervals
from diffdeck.engines.worker.main import Commands, Wire, Worker
from helpers import wait_until


class GPUModel:
    def __init__(self, error):
        self.error = error

    def use_scheduler(self, name):
        pass

    def render(self, *args, **kwargs):
        raise self.error

    def end_job(self):
        pass


def serve(error, jobs=2, dispatcher_stays=True):
    out = io.BytesIO()
    spec = JobSpec(prompt="p", seeds=(1,), seed=1, steps=2, width=64, height=64, guidance=1.0)
    lines = b"".join(json.dumps({"type": "job", "id": f"j{i}", "spec": spec.to_dict(), "out_dir": "/nonexistent"})
                     .encode() + b"\n" for i in range(jobs))
    if dispatcher_stays:  # it ends its workers with a shutdown; without one the input just ends
        lines += b'{"type": "shutdown"}\n'
    commands = Commands(io.BytesIO(lines))
    wait_until(lambda: commands.jobs.qsize() >= jobs + 1, 10, "the worker's reader to take every command and the end",
               every=0.001)
    status = Worker(GPUModel(error), Wire(out), commands, Intervals()).serve()
    return status, [json.loads(line) for line in out.getvalue().splitlines()]


def test_out_of_memory_is_reported_with_what_was_asked_and_the_worker_lives_on():
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has ...")
    status, messages = serve(oom)
    assert status == 0
    assert [m["id"] for m in messages] == ["j0", "j1"], "the next job is still served"
    assert all(m["type"] == "failed" and m["kind"] == "oom" for m in messages)
    assert "asked for 2.50 GiB" in messages[0]["error"] and "offload" in messages[0]["error"]


def test_any_other_cuda_error_retires_the_worker():
    status, messages = serve(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert status == 3
    assert [(m["type"], m["kind"]) for m in messages] == [("failed", "fatal")], "no further job is taken"


@pytest.mark.parametrize("error", [ValueError("bad things"), KeyError("x")])
def test_an_ordinary_error_fails_the_job_only(error):
    status, messages = serve(error)
    assert status == 0 and [m["kind"] for m in messages] == ["error", "error"]
    assert type(error).__name__ in messages[0]["error"]


def test_a_worker_whose_dispatcher_is_gone_renders_nothing_more():
    """Its input ends (diffdeck was killed): the jobs it was given are cancelled, not rendered."""
    status, messages = serve(AssertionError("render must not be called"), dispatcher_stays=False)
    assert status == 0 and [(m["type"], m["id"]) for m in messages] == [("cancelled", "j0"), ("cancelled", "j1")]
