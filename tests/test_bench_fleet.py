"""`diffdeck bench fleet`: the simulated mixed queue on 1, 2, 4 and 8 GPUs, its table, and what it
shows of diffdeck's placement against round-robin and one instance per GPU."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from diffdeck.engines.bench.fleet import (
    SD_CLASS,
    ModelCost,
    Work,
    mixed_queue,
    no_affinity,
    outcome,
    recorded_costs,
    simulate,
)
from diffdeck.engines.queue.placement import QueuedJob, place
from diffdeck.engines.record.session import Session, SessionError
from helpers import diffdeck, one_line_error

EXAMPLE = Path(__file__).parents[1] / "sessions" / "examples" / "demo-ab"
ROW = re.compile(r"^\s*(\d+)\s+(diffdeck|round-robin|one instance per GPU)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$")


def test_the_table_prints_and_diffdecks_placement_loads_less_and_is_not_slower(tmp_path):
    result = diffdeck("bench", "fleet", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "a simulation, not a measurement" in result.stdout and "assumed:" in result.stdout
    rows = {(int(m[1]), m[2]): (float(m[3]), float(m[4]), int(m[5]))
            for m in map(ROW.match, result.stdout.splitlines()) if m}
    assert {gpus for gpus, _ in rows} == {1, 2, 4, 8} and len(rows) == 12
    for gpus in (1, 2, 4, 8):
        ours, robin, instances = (rows[gpus, name] for name in ("diffdeck", "round-robin", "one instance per GPU"))
        assert ours[2] < instances[2], f"{gpus} GPUs: {ours[2]} loads against {instances[2]}"
        assert ours[0] >= robin[0], f"{gpus} GPUs: {ours[0]} images/min against round-robin's {robin[0]}"


def test_the_simulation_counts_loads_waits_and_time_as_a_job_takes_them():
    cost = ModelCost("m", memory_gb=4.0, load_s=5.0, step_s=0.5, image_s=1.0, steps=10)  # 6 s an image
    work = [Work(QueuedJob(f"j{i}", "m", 0.0, 4.0), steps=10, images=2) for i in range(2)]
    end, waits, loads = simulate(work, {"m": cost}, 1, place)
    assert (end, waits, loads) == (5.0 + 12 + 12, [5.0, 17.0], 1)
    end, waits, loads = simulate(work, {"m": cost}, 2, place)
    # the second waits for the GPU where its model is warm until its pressure, 10 + its wait, reaches 20
    # at 10 s; then a replica loads, and it ends at 27 s rather than 29 s
    assert (end, waits, loads) == (27.0, [5.0, 15.0], 2)


def test_the_simulation_is_deterministic_for_a_seed():
    first, kinds = mixed_queue(SD_CLASS, submissions=30, seed=3)
    again, _ = mixed_queue(SD_CLASS, submissions=30, seed=3)
    assert first == again and sum(kinds.values()) == 30 and all(kinds.values())
    assert mixed_queue(SD_CLASS, submissions=30, seed=4)[0] != first
    assert outcome(first, SD_CLASS, 2, "x", no_affinity) == outcome(again, SD_CLASS, 2, "x", no_affinity)


def test_a_sessions_recorded_timings_are_the_models_costs():
    costs = recorded_costs(EXAMPLE)
    assert [c.name for c in costs] == [f"demo-{i}" for i in range(1, 7)]  # one model, as six fine-tunes of it
    demo, jobs = costs[0], Session.open(EXAMPLE).jobs
    loaded, warm = jobs["job-0001"], jobs["job-0002"]  # job-0001 loaded it; job-0002 found it warm
    assert warm["timings"]["load_s"] == 0 and demo.load_s == loaded["timings"]["load_s"] > 0
    assert demo.steps == loaded["spec"]["steps"] == 15
    denoise = [image["timings"]["denoise_s"] / 15 for job in (loaded, warm) for image in job["images"]]
    assert min(denoise) <= demo.step_s <= max(denoise)
    assert demo.memory_gb == pytest.approx(max(job["peak_memory"] for job in (loaded, warm)) / 1e9)


def test_a_session_without_a_recorded_load_is_refused_in_one_line(tmp_path):
    Session.open(tmp_path / "empty").compact()
    with pytest.raises(SessionError, match="no finished job whose model it loaded"):
        recorded_costs(tmp_path / "empty")
    one_line_error(diffdeck("bench", "fleet", "--session", str(tmp_path), cwd=tmp_path), "not a session folder")


def test_a_session_whose_model_fits_no_simulated_gpu_is_refused(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "s", ignore=shutil.ignore_patterns("images", "sheets"))
    record = tmp_path / "s" / "session.yaml"
    record.write_text(re.sub(r'"peak_memory": \d+', '"peak_memory": 40000000000', record.read_text()))
    with pytest.raises(SessionError, match="demo peaked at 40.0 GB, past a simulated GPU's budget of 21.6 GB"):
        recorded_costs(tmp_path / "s")
