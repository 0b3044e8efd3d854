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
