"""The workbench's board folds engine events into what it draws: a flow's progress and ETA count
every stage, each as many steps as diffusers denoises in it."""

import pytest
from diffdeck.engines.core.events import Event, EventKind
from diffdeck.engines.core.flow_checks import resolve_flow
from diffdeck.engines.core.registry import load_registry
from diffdeck.engines.core.spec import JobSpec
from diffdeck.tui.workbench_state import Board


def test_a_flows_progress_and_eta_count_every_stage_as_diffusers_steps_it():
    final = resolve_flow(JobSpec("a red star", route="final", count=2), load_registry(None))
    assert [(s.kind, s.steps, s.strength) for s in final.stages] == [("txt2img", 20, None), ("upscale", 12, 0.5)]
    board = Board()
    board.apply(Event(EventKind.QUEUED, "job-0001", {"spec": final.to_dict()}))
    board.apply(Event(EventKind.STARTED, "job-0001", {}))
    row = board.jobs["job-0001"]
    assert row.stage_steps == [20, 6] and row.steps_total == 52, "an upscale at strength 0.5 denoises 6 of its 12 steps"
    board.apply(Event(EventKind.STEP, "job-0001", {"image": 1, "count": 2, "step": 3, "total": 6, "it_s": 13.0,
                                                    "stage": 1, "stages": 2}))
    assert row.steps_done == 26 + 20 + 3
    assert row.eta_s() == pytest.approx(3 / 13.0)


def test_a_job_without_a_flow_counts_its_steps_as_before():
    board = Board()
    board.apply(Event(EventKind.QUEUED, "job-0001", {"spec": JobSpec("a red star", steps=15, count=2).to_dict()}))
    board.apply(Event(EventKind.STARTED, "job-0001", {}))
    board.apply(Event(EventKind.STEP, "job-0001", {"image": 1, "count": 2, "step": 5, "total": 15, "it_s": 10.0}))
    row = board.jobs["job-0001"]
    assert (row.steps_done, row.steps_total, row.eta_s()) == (20, 30, pytest.approx(1.0))


def two_devices_board() -> Board:
    """Two fake GPUs: demo warm on both, demo2 on gpu1; job-0001 (demo) runs on gpu0, job-0002
    (demo2) on gpu1, two more demo jobs queued; demo measured at 0.1 s a step."""
    board = Board()
    board.set_devices([{"index": i, "name": f"fake GPU {i}", "uuid": f"FAKE-GPU-{i}", "gpu": True, "fake": True,
                        "budget_gb": 21.6, "job": None, "workers": {}} for i in (0, 1)])
    board.step_s["demo"] = 0.1
    for pid, model, device in ((101, "demo", 0), (102, "demo2", 1), (103, "demo", 1)):
        board.apply(Event(EventKind.WORKER_SPAWNED, None, {"model": model, "pid": pid, "device": device}))
        board.apply(Event(EventKind.WORKER_READY, None, {"model": model, "pid": pid, "device": "cpu"}))
    for number, model in enumerate(("demo", "demo2", "demo", "demo"), 1):
        board.apply(Event(EventKind.QUEUED, f"job-000{number}", {"spec": JobSpec("a star", model=model, steps=100).to_dict()}))
    for number, device in ((1, 0), (2, 1)):
        board.apply(Event(EventKind.DEQUEUED, f"job-000{number}", {}))
        board.apply(Event(EventKind.STARTED, f"job-000{number}", {"model": "x", "pid": 100 + number, "device": device}))
    board.apply(Event(EventKind.STEP, "job-0001", {"image": 0, "count": 1, "step": 50, "total": 100, "it_s": 10.0}))
    board.apply(Event(EventKind.STEP, "job-0002", {"image": 0, "count": 1, "step": 0, "total": 100, "it_s": 2.0}))
    return board


def test_with_two_devices_the_board_keeps_workers_per_device_and_every_running_job_with_its_device():
    board = two_devices_board()
    assert board.warm == {("demo", 0): ("warm", 101), ("demo2", 1): ("warm", 102), ("demo", 1): ("warm", 103)}
    assert [(row.id, row.device) for row in board.running()] == [("job-0001", 0), ("job-0002", 1)]
    assert board.device_tags() == {"job-0001": "gpu0", "job-0002": "gpu1"}
    board.apply(Event(EventKind.WORKER_EVICTED, None, {"model": "demo", "pid": 103, "device": 1, "reason": "idle"}))
    assert board.warm_models() == {"demo": "warm", "demo2": "warm"}, "its replica on gpu0 is still warm"
    assert ("demo", 1) not in board.warm and ("demo", 0) in board.warm
    board.set_devices([{"index": 0, "name": "cpu", "gpu": False}])
    assert board.device_tags() == {}, "one device: nothing to say of where a job runs"


def test_the_queue_eta_spreads_the_queued_jobs_over_the_devices_as_they_free_up():
    board = two_devices_board()
    # gpu0 frees in 5 s (50 steps at 10 it/s), gpu1 in 50 s (100 at 2 it/s): both queued demo jobs
    # (10 s each at 0.1 s a step) go to gpu0, one after the other, and the queue ends with gpu1
    assert board.queue_eta() == (pytest.approx(50.0), 0)
    board.apply(Event(EventKind.STEP, "job-0002", {"image": 0, "count": 1, "step": 90, "total": 100, "it_s": 2.0}))
    # gpu1 frees at 5 s too: one queued job each, both done at 15 s, not one after the other (25 s)
    assert board.queue_eta() == (pytest.approx(15.0), 0)


def test_a_flows_later_leg_on_another_device_moves_its_job_there_by_its_steps():
    board = two_devices_board()
    board.apply(Event(EventKind.STEP, "job-0001", {"image": 0, "count": 1, "step": 1, "total": 6, "it_s": 5.0,
                                                    "stage": 1, "stages": 2, "device": 1}))  # its model warm there
    assert board.device_tags()["job-0001"] == "gpu1"
